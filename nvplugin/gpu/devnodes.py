"""Device nodes under `--dev-root`: the control nodes every GPU container needs, the nodes of a
selection (GPUs and MIG devices) and the MIG access nodes.

1.0 refused to start without `nvidia-modprobe`; here it is only tried when `/dev/nvidia-uvm` is
missing, at start-up and on re-discovery (never on a request), only from the driver root and only
if root owns it and no one else may write it; its absence is no error when the nodes are there.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from nvplugin.core.errors import DeviceAccessError, DiscoveryError, NvpluginError
from nvplugin.driver.hostroot import HostRoot, OpenFile
from nvplugin.gpu.records import DeviceNode, Gpu, MigDevice
from nvplugin.gpu.selection import Selection

log = logging.getLogger(__name__)

# (name, required): 1.0 always passed nvidiactl and nvidia-uvm, and uvm-tools when present;
# nvidia-modeset is passed when present, as nvidia-container-toolkit does.
CONTROL_NODES = (("nvidiactl", True), ("nvidia-uvm", True), ("nvidia-uvm-tools", False),
                 ("nvidia-modeset", False))
MODPROBE_DIRS = ("usr/bin", "usr/sbin", "usr/local/bin", "usr/local/nvidia/bin", "bin", "sbin")
MODPROBE_TIMEOUT_S = 10.0
CAPABILITIES = "proc/driver/nvidia/capabilities"

Runner = Callable[[list[str], tuple[int, ...]], object]


def find_modprobe(driver_root: Path) -> OpenFile | None:
    """The driver root's nvidia-modprobe, opened inside the root, if it is one we may run: a
    regular executable owned by root and writable by no one else (it is usually set-user-ID
    root). The caller runs the open file and closes it. Untrusted candidates are named in a
    warning and skipped."""
    root = HostRoot(driver_root)
    for directory in MODPROBE_DIRS:
        inner = f"/{directory}/nvidia-modprobe"
        try:
            opened = root.open_fd(inner)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, NvpluginError) as err:
            why = getattr(err, "strerror", None) or str(err)
            log.warning("Not running %s: %s", root.host(inner), why)
            continue
        problem = _untrusted(opened.st)
        if problem is None:
            return opened
        os.close(opened.fd)
        log.warning("Not running %s: %s", opened.path, problem)
    return None


def _untrusted(st: os.stat_result) -> str | None:
    if st.st_uid != 0:
        return f"owned by uid {st.st_uid}, not root"
    if st.st_mode & 0o022:
        return f"writable by its group or others (mode {stat.S_IMODE(st.st_mode):o})"
    if not st.st_mode & 0o111:
        return "not executable"
    return None


def _run(argv: list[str], pass_fds: tuple[int, ...]) -> object:
    return subprocess.run(argv, check=True, capture_output=True, timeout=MODPROBE_TIMEOUT_S,
                          pass_fds=pass_fds)


def load_uvm(dev_root: Path, driver_root: Path, *, run: Runner = _run) -> None:
    """Load nvidia-uvm when its node is missing, with the driver root's nvidia-modprobe, and
    say which required control nodes are still missing. At start-up and on re-discovery only:
    never on a request (a docker/cli burst once spawned it every second). Blocking."""
    dev = dev_root / "dev"
    # nvidia-modprobe creates nodes in this process's /dev, so only when that is the dev root.
    if not (dev / "nvidia-uvm").exists() and dev_root.resolve() == Path("/"):
        modprobe = find_modprobe(driver_root)
        if modprobe is not None:
            try:
                # The very file checked above, through its open descriptor.
                run([f"/proc/self/fd/{modprobe.fd}", "-u", "-c=0"], (modprobe.fd,))
            except (OSError, subprocess.SubprocessError) as err:
                log.warning("Could not load nvidia-uvm with %s: %s", modprobe.path, err)
            finally:
                os.close(modprobe.fd)
    # Without the kernel module the nodes are missing for the reason the daemon already gives
    # in its one "NVIDIA driver not found" line; only with it loaded is a missing node news.
    missing_level = logging.WARNING if (driver_root / "proc/driver/nvidia").is_dir() \
        else logging.DEBUG
    for name, required in CONTROL_NODES:
        if required and not (dev / name).exists():
            log.log(missing_level, "%s is missing; containers will not reach the GPUs until it "
                    "exists", dev / name)


def control_nodes(dev_root: Path) -> tuple[DeviceNode, ...]:
    """The control nodes that exist now (a few stats: nothing is run or logged)."""
    dev = dev_root / "dev"
    return tuple(DeviceNode(host_path=str(dev / name), path=f"/dev/{name}")
                 for name, _required in CONTROL_NODES if (dev / name).exists())


def _capability_minor(text: str) -> int | None:
    """`DeviceFileMinor: 12` from a driver capability file (`DeviceFileMode`, ... ignored)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "DeviceFileMinor" and value.strip().isdigit():
            return int(value.strip())
    return None


def mig_access(driver_root: Path, dev_root: Path, gpu_minor: int, mig: MigDevice) -> MigDevice:
    """`mig` with its access nodes: the GPU instance's, then the compute instance's, as the
    driver numbers them in `proc/driver/nvidia/capabilities/gpu<minor>/mig/gi<G>[/ci<C>]/access`
    under the driver root (NVIDIA's toolkit reads the same files). Without them the device
    cannot be handed out, and `access_problem` says why. Blocking (file reads)."""
    gi, ci = mig.gpu_instance, mig.compute_instance
    if gi is None or ci is None:
        return replace(mig, caps=(), access_problem="NVML does not report its GPU and compute "
                       "instance ids")
    root = HostRoot(driver_root)
    caps = []
    for name in (f"gpu{gpu_minor}/mig/gi{gi}/access", f"gpu{gpu_minor}/mig/gi{gi}/ci{ci}/access"):
        proc = f"/{CAPABILITIES}/{name}"
        try:
            minor = _capability_minor(root.read_bytes(proc).decode(errors="replace"))
        except (OSError, DiscoveryError) as err:
            why = getattr(err, "strerror", None) or str(err)
            return replace(mig, caps=(), access_problem=f"{root.host(proc)} cannot be read "
                           f"({why}); is the MIG instance still there?")
        if minor is None:
            return replace(mig, caps=(), access_problem=f"{root.host(proc)} names no "
                           "DeviceFileMinor")
        node = dev_root / "dev" / "nvidia-caps" / f"nvidia-cap{minor}"
        if not node.exists():
            return replace(mig, caps=(), access_problem=(
                f"{node} is missing; create it with 'nvidia-modprobe -f {proc}', then reload "
                "nvidia-docker-plugin (SIGHUP)"))
        caps.append(DeviceNode(host_path=str(node), path=f"/dev/nvidia-caps/{node.name}"))
    return replace(mig, caps=tuple(caps), access_problem=None)


def with_mig_access(gpus: Iterable[Gpu], driver_root: Path, dev_root: Path) -> tuple[Gpu, ...]:
    """The GPUs with each MIG device's access nodes looked up (see `mig_access`). Blocking."""
    return tuple(
        replace(gpu, mig_devices=tuple(mig_access(driver_root, dev_root, gpu.minor, mig)
                                       for mig in gpu.mig_devices)) if gpu.mig_devices else gpu
        for gpu in gpus)


def selection_nodes(chosen: Selection) -> tuple[DeviceNode, ...]:
    """Every node a container needs for `chosen` besides the control nodes: the GPU nodes in
    index order (whole GPUs and the parents of MIG devices), then each MIG device's access nodes.

    The one answer to "which nodes does this selection get" for docker/cli and CDI. Raises
    DeviceAccessError for a MIG device whose access nodes were not found: handing out the parent
    alone would give nothing usable, and its whole node is not what was asked for. Pure.
    """
    nodes = [DeviceNode(host_path=g.host_path, path=g.path)
             for g in sorted(chosen.gpus, key=lambda g: g.index)]
    seen: set[str] = set()
    for gpu, mig in chosen.mig_devices:
        if mig.access_problem is not None or not mig.caps:
            raise DeviceAccessError(
                f"MIG device {gpu.index}:{mig.index} ({mig.uuid}) cannot be given to a "
                f"container: {mig.access_problem or 'its access nodes were not found'}")
        for cap in mig.caps:
            if cap.host_path not in seen:
                seen.add(cap.host_path)
                nodes.append(cap)
    return tuple(nodes)


def _listing(directory: Path, depth: int, prefix: str = "") -> tuple[tuple[str, int], ...]:
    """(relative name, st_rdev) of what is under `directory`, `depth` levels down; at the top
    level only the names starting with `prefix`."""
    found: list[tuple[str, int]] = []
    try:
        with os.scandir(directory) as scan:
            entries = sorted((e for e in scan if e.name.startswith(prefix)),
                             key=lambda e: e.name)
    except OSError:
        return ()
    for entry in entries:
        try:
            rdev = entry.stat(follow_symlinks=False).st_rdev
        except OSError:
            continue
        found.append((entry.name, rdev))
        if depth > 1 and entry.is_dir(follow_symlinks=False):
            found += [(f"{entry.name}/{name}", sub)
                      for name, sub in _listing(Path(entry.path), depth - 1)]
    return tuple(found)


def gpu_set_fingerprint(driver_root: Path, dev_root: Path) -> tuple[object, ...]:
    """Changes when the GPUs a container can be given do, without asking NVML: a GPU appears or
    goes (`proc/driver/nvidia/gpus/<bus id>`), a MIG instance is made or destroyed (its
    capability files under `proc/driver/nvidia/capabilities`), or a node appears, goes or changes
    its major/minor after a module reload (`dev/nvidia*`, `dev/nvidia-caps/*`). Blocking: a few
    directory listings, cheap enough for the driver watcher's interval."""
    dev = dev_root / "dev"
    return (_listing(dev, 1, "nvidia"), _listing(dev / "nvidia-caps", 1),
            _listing(driver_root / "proc/driver/nvidia/gpus", 1),
            _listing(driver_root / CAPABILITIES, 5))
