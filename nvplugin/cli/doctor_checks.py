"""`doctor`'s findings as data: one `Check` per finding, the pure verdicts, and their rendering.

Each check is PASS, WARN, FAIL or SKIP, with what was found and the one-line fix. The verdicts
below take values the probes (doctor.py) read from the host; the text and JSON reports and the
exit status are functions of the records alone.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from nvplugin.cdi.spec import ENGINE_SPEC_DIRS, Spec, describe_change
from nvplugin.core.errors import NvpluginError
from nvplugin.core.names import DAEMON_PROGRAM as PROGRAM
from nvplugin.core.names import DRIVER_VOLUME_KIND as KIND
from nvplugin.volumes.usage import DiskUsage

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"


class Name(StrEnum):
    DRIVER = "driver-module"
    LIBRARIES = "driver-libraries"
    NVML = "nvml"
    NODES = "device-nodes"
    UVM = "nvidia-uvm"
    DOCKER = "docker"
    SOCKET = "plugin-socket"
    DOCKER_DRIVER = "docker-volume-driver"
    VOLUMES_DIR = "volumes-dir"
    STALE = "stale-volumes"
    REST = "rest-api"
    HEALTH = "gpu-health"
    CDI_SPEC = "cdi-spec"
    CDI_CONFLICTS = "cdi-conflicts"


@dataclass(frozen=True, slots=True)
class Check:
    """One doctor finding: what was checked, how it went, and the fix."""

    check: str
    status: str
    detail: str
    fix: str = ""


def compare_versions(kernel: str | None, library: str | None) -> Check:
    if library is None:
        return Check(Name.LIBRARIES, FAIL, "no libnvidia-ml.so.<version> found through the "
                     "ld.so.cache or the usual library directories",
                     "install the NVIDIA driver's user-space libraries, then run ldconfig")
    if kernel is None or kernel == library:
        return Check(Name.LIBRARIES, PASS, f"user-space libraries {library}")
    return Check(Name.LIBRARIES, FAIL,
                 f"Driver/library version mismatch: kernel module {kernel}, libraries {library}",
                 "reboot, or reload the module: rmmod nvidia_uvm nvidia_drm nvidia_modeset "
                 "nvidia && nvidia-modprobe -u -c=0")


def node_check(name: str, path: Path, mode: int | None, accessible: bool) -> Check | None:
    """None when the node is fine; `mode` is None when the path is missing."""
    if mode is None:
        return Check(name, FAIL, f"{path} is missing",
                     "load the driver (nvidia-modprobe -u -c=0) or check --dev-root")
    if not stat.S_ISCHR(mode):
        return Check(name, FAIL, f"{path} is not a character device",
                     f"remove {path} and reload the driver (nvidia-modprobe -u -c=0)")
    if not accessible:
        return Check(name, FAIL, f"{path} cannot be opened read-write here (file mode, or a "
                     "device cgroup)", "run as root; in a container add --device for each "
                     "/dev/nvidia* node; under systemd keep DeviceAllow=char-nvidia*")
    if mode & 0o006 != 0o006:
        return Check(name, WARN, f"{path} has mode {stat.S_IMODE(mode):04o}: containers running "
                     "as other users cannot open it",
                     f"chmod 0666 {path} (or NVreg_DeviceFileMode=0666)")
    return None


NodeState = tuple[Path, int | None, bool]  # path, st_mode (None: missing), opens read-write


def nodes_check(dev: Path, states: Sequence[NodeState]) -> Check:
    """One verdict over nvidiactl (first) and the GPU nodes: every problem, at its worst status."""
    problems = [problem for path, mode, accessible in states
                if (problem := node_check(Name.NODES, path, mode, accessible)) is not None]
    if not problems:
        return Check(Name.NODES, PASS, f"{dev}/nvidiactl and {len(states) - 1} GPU node(s) "
                     "present and usable")
    if len(problems) == 1:
        return problems[0]
    return Check(Name.NODES, max((p.status for p in problems), key=_severity),
                 "; ".join(p.detail for p in problems), problems[0].fix)


def _severity(status: str) -> int:
    return {PASS: 0, SKIP: 0, WARN: 1, FAIL: 2}[status]


def uvm_check(uvm: Path, mode: int | None, accessible: bool) -> Check:
    problem = node_check(Name.UVM, uvm, mode, accessible)
    if problem is None:
        return Check(Name.UVM, PASS, f"{uvm} present")
    if mode is None:
        return Check(Name.UVM, FAIL, f"{uvm} is missing: CUDA programs fail in containers",
                     "nvidia-modprobe -u -c=0 (the nvidia-docker service runs it)")
    return problem


@dataclass(frozen=True, slots=True)
class VolumeFacts:
    """A driver volume on disk, as doctor found it."""

    version: str
    usage: DiskUsage | None = None  # None when it could not be measured
    mounts: int = 0  # containers mounting it, from the daemon's state.json


def stale_check(volumes: Iterable[VolumeFacts], current: str | None, kind_dir: Path) -> Check:
    """Volumes of other driver versions: which, the disk they hold, who mounts them, and how
    they go (`gc` removes those nothing mounts; the others after their containers stop)."""
    others = sorted((v for v in volumes if v.version != current), key=lambda v: v.version)
    if not others:
        return Check(Name.STALE, PASS, f"no volumes of other driver versions in {kind_dir}")
    listed = ", ".join(f"{v.version} ({_held(v)})" for v in others)
    if current is None:
        return Check(Name.STALE, WARN, f"volumes {listed} in {kind_dir}, and no driver "
                     "version to compare them with", "fix the driver first")
    measured = [v.usage for v in others if v.usage is not None]
    total = DiskUsage(sum(u.total for u in measured), sum(u.freed for u in measured))
    mounted = [f"{KIND}_{v.version}" for v in others if v.mounts]
    fixes = [f"{PROGRAM} gc removes those no container mounts"] if len(mounted) < len(others) \
        else []
    fixes += [f"stop the containers using {name} (docker ps --filter volume={name}) and it "
              "goes, unless the daemon runs with --keep-old-volumes" for name in mounted]
    return Check(Name.STALE, WARN, f"volumes of old drivers: {listed}; {total.describe()} in "
                 f"all (current {current})", "; ".join(fixes))


def _held(volume: VolumeFacts) -> str:
    size = volume.usage.describe() if volume.usage is not None else "size unknown"
    return f"{size}; mounted by {volume.mounts} container(s)" if volume.mounts else size


def health_check(devices: Sequence[dict[str, Any]]) -> Check:
    """The daemon's view of each GPU's health (gpu/status/json's `Health`). An unhealthy GPU is
    a warning: the daemon works, and leaves the GPU out of `docker/cli`'s every-GPU answer until
    it recovers on its own."""
    sick = []
    for device in devices:
        health = device.get("Health")
        if isinstance(health, dict) and health.get("Status") == "unhealthy":
            sick.append(f"GPU {device.get('Index')} unhealthy since {health.get('Since')}: "
                        f"{health.get('Reason')}")
    if not sick:
        return Check(Name.HEALTH, PASS, f"all {len(devices)} GPU(s) healthy")
    return Check(Name.HEALTH, WARN, "; ".join(sick),
                 "look for Xid lines in the kernel log (dmesg); the GPU is healthy again after "
                 "--health-recovery without critical events; a GPU that fell off the bus needs "
                 "a reset (nvidia-smi -r) or a reboot")


RELOAD = "systemctl reload nvidia-docker (SIGHUP); if the spec stays stale, read the daemon's log"


def cdi_spec_check(path: Path | None, written: Spec | NvpluginError | None,
                   now: Spec | NvpluginError, *, read_by_default: bool) -> Check:
    """The spec the daemon wrote against the one this host's driver and GPUs give now;
    `read_by_default`: its directory is one engines read unless told otherwise."""
    if path is None:
        return Check(Name.CDI_SPEC, SKIP, "no CDI spec is written (--cdi-dir '')")
    where = "" if read_by_default else (
        f"; engines read {' and '.join(ENGINE_SPEC_DIRS)} unless told to read {path.parent} "
        "(containerd and CRI-O cdi_spec_dirs, dockerd cdi-spec-dirs)")
    if isinstance(written, NvpluginError):
        return Check(Name.CDI_SPEC, FAIL, written.message,
                     f"remove {path}; the daemon writes it again (systemctl reload "
                     "nvidia-docker)")
    if isinstance(now, NvpluginError):
        if written is None:
            return Check(Name.CDI_SPEC, FAIL, f"no {path}, and none can be made: {now.message}",
                         "fix the checks above; the daemon writes it once a driver and GPUs "
                         "answer")
        return Check(Name.CDI_SPEC, FAIL, f"{path} is stale: no spec can be made now "
                     f"({now.message}), yet engines still read it", RELOAD)
    if written is None:
        return Check(Name.CDI_SPEC, FAIL, f"no {path}: the daemon is not running, or cannot "
                     "write there", "systemctl start nvidia-docker (or start "
                     f"nvidia-docker-plugin); its log says why it cannot write {path}")
    if written != now:
        return Check(Name.CDI_SPEC, FAIL, f"{path} is stale, the driver now gives: "
                     f"{describe_change(written, now)}", RELOAD)
    return Check(Name.CDI_SPEC, PASS, f"{path} matches the driver and GPUs now: "
                 f"{describe_change(now, now).removeprefix('unchanged: ')}{where}")


def cdi_conflicts_check(kind: str, ours: Path | None, claims: Sequence[tuple[Path, bool]],
                        ) -> Check:
    """`claims`: other spec files declaring `kind`, each with whether engines prefer it to ours
    or cannot choose (same directory, or a later one): those fail, the rest warn."""
    if not claims:
        return Check(Name.CDI_CONFLICTS, PASS, f"no other CDI spec claims {kind}")
    winning = [str(p) for p, wins in claims if wins]
    files = ", ".join(str(p) for p, _ in claims)
    toolkit = any(p.name.startswith("nvidia.") for p, _ in claims)
    fix = (f"remove {files}" + (" and stop NVIDIA's toolkit regenerating it (systemctl "
                                "disable --now nvidia-cdi-refresh.path)" if toolkit else "")
           + ", or give this daemon another kind: --cdi-kind")
    mine = f" as {ours} does" if ours else ""
    if winning:
        return Check(Name.CDI_CONFLICTS, FAIL, f"{', '.join(winning)} also claim {kind}{mine}: "
                     "engines refuse a name two specs of one directory define, and take the "
                     "later directory's (/var/run/cdi over /etc/cdi)", fix)
    return Check(Name.CDI_CONFLICTS, WARN, f"{files} also claim {kind}{mine}: ours wins for the "
                 "names both define, theirs still answers the others (stale paths after a "
                 "driver change)", fix)


def exit_status(checks: Sequence[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


def render_text(checks: Sequence[Check]) -> str:
    width = max((len(c.check) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"{c.status}  {c.check:<{width}}  {c.detail}")
        if c.fix and c.status in (FAIL, WARN):
            lines.append(f"{'':4}  {'':<{width}}  fix: {c.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in (PASS, WARN, FAIL, SKIP)}
    lines.append(f"{counts[PASS]} passed, {counts[WARN]} warning(s), {counts[FAIL]} failed, "
                 f"{counts[SKIP]} skipped")
    return "\n".join(lines) + "\n"


def render_json(checks: Sequence[Check]) -> str:
    return json.dumps([asdict(c) for c in checks], indent=2) + "\n"

