"""`nvidia-docker-plugin doctor`: checks this host the way the daemon and Docker will use it.

The probes here do the I/O: driver files and /proc under --driver-root, nodes under --dev-root,
NVML through `GpuService`, Docker through its SDK, our socket and REST port through plain HTTP,
the CDI spec against the one the driver gives now and the engines' spec directories.
Each yields `Check` records (doctor_checks.py, where the pure verdicts and the rendering live).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import json
import os
import socket
import stat
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from nvplugin.cdi.spec import ENGINE_SPEC_DIRS, Spec
from nvplugin.cli.doctor_checks import (
    FAIL,
    PASS,
    SKIP,
    WARN,
    Check,
    Name,
    VolumeFacts,
    cdi_conflicts_check,
    cdi_spec_check,
    compare_versions,
    exit_status,
    health_check,
    nodes_check,
    render_json,
    render_text,
    stale_check,
    uvm_check,
)
from nvplugin.core.config import Config
from nvplugin.core.errors import DockerError
from nvplugin.core.names import DRIVER_VOLUME_KIND
from nvplugin.driver import driver_version
from nvplugin.engine.client import Engine
from nvplugin.engine.transport import UnixHTTPConnection

PROBE_TIMEOUT_S = 5.0


@dataclass(slots=True)
class Facts:
    """What earlier probes learnt that later ones build on."""

    kernel_version: str | None = None
    library_version: str | None = None
    nvml_version: str | None = None
    nvml_library: str | None = None
    gpu_nodes: list[str] = field(default_factory=list)
    docker: Engine | None = None
    socket_answers: bool = False
    daemon_pid: int | None = None  # the process behind the plugin socket (SO_PEERCRED)
    rest_host: tuple[str, int] | None = None  # where the REST API answered
    unhealthy: frozenset[str] = frozenset()  # UUIDs the daemon holds unhealthy

    @property
    def current_version(self) -> str | None:
        return self.nvml_version or self.kernel_version or self.library_version


# ---------------------------------------------------------------- probes


def probe_driver(cfg: Config, facts: Facts) -> Check:
    from nvplugin.core.errors import UnsafeFileError
    from nvplugin.driver.discovery import PROC_VERSION, read_kernel_version_text

    path = cfg.driver_root / PROC_VERSION.lstrip("/")
    try:
        text = read_kernel_version_text(cfg.driver_root)
    except UnsafeFileError as err:
        return Check(Name.DRIVER, FAIL, err.message, "the kernel module makes this file: "
                     "remove what replaced it, then reload the driver")
    except OSError as err:
        return Check(Name.DRIVER, FAIL, f"NVIDIA kernel module not loaded ({path}: "
                     f"{err.strerror})", "install the NVIDIA driver, or load it: nvidia-modprobe")
    facts.kernel_version = driver_version.from_proc(text)
    if facts.kernel_version is None:
        return Check(Name.DRIVER, FAIL, f"no version in {path}: {text[:80]!r}",
                     "reinstall the NVIDIA driver")
    return Check(Name.DRIVER, PASS, f"NVIDIA kernel module {facts.kernel_version} loaded")


def probe_libraries(cfg: Config, facts: Facts) -> Check:
    from nvplugin.core.errors import NvpluginError
    from nvplugin.driver import discovery

    try:
        facts.nvml_library = discovery.find_nvml_library(cfg.driver_root)
    except NvpluginError as err:
        return Check(Name.LIBRARIES, FAIL, str(err),
                     "install the NVIDIA driver's user-space libraries, then run ldconfig")
    facts.library_version = driver_version.from_file_name(facts.nvml_library)
    return compare_versions(facts.kernel_version, facts.library_version)


def probe_nvml(cfg: Config, facts: Facts) -> Check:
    from nvplugin.gpu.service import GpuService

    async def read() -> Check:
        gpus = await GpuService.start(driver_root=cfg.driver_root, dev_root=cfg.dev_root,
                                      nvml_library=facts.nvml_library)
        try:
            if not gpus.available:
                return Check(Name.NVML, FAIL, f"NVML cannot be used: {gpus.reason}",
                             "fix the driver checks above; a mismatch needs a reboot")
            inventory = await gpus.inventory()
            facts.nvml_version = inventory.versions.driver
            facts.gpu_nodes = [g.host_path for g in inventory.gpus]
            return Check(Name.NVML, PASS, f"NVML loaded: {len(inventory.gpus)} GPU(s), driver "
                         f"{inventory.versions.driver}, CUDA {inventory.versions.cuda or 'N/A'}")
        finally:
            await gpus.close()

    return asyncio.run(read())


def _proc_minors(driver_root: Path) -> list[int]:
    from nvplugin.core.errors import NvpluginError
    from nvplugin.driver.hostroot import HostRoot

    root = HostRoot(driver_root)
    minors = []
    for bus in root.listdir("/proc/driver/nvidia/gpus"):
        with contextlib.suppress(OSError, NvpluginError):
            text = root.read_bytes(f"/proc/driver/nvidia/gpus/{bus}/information", 1 << 16)
            for line in text.decode(errors="replace").splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "Device Minor" and value.strip().isdigit():
                    minors.append(int(value))
    return minors


def _node_state(path: Path) -> tuple[int | None, bool]:
    """The node's mode, and whether this process may open it read-write. An open, not
    `os.access`: a device cgroup (systemd's DevicePolicy=) refuses with EPERM where the mode
    bits allow. ENXIO/ENODEV mean the node passed every check and no device answered (a node
    left by an unloaded driver): that is the driver's problem, reported by the checks above."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None, False
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        return mode, err.errno in (errno.ENXIO, errno.ENODEV)
    os.close(fd)
    return mode, True


def probe_nodes(cfg: Config, facts: Facts) -> list[Check]:
    dev = cfg.dev_root / "dev"
    gpu_nodes = [Path(p) for p in facts.gpu_nodes] or [
        dev / f"nvidia{m}" for m in _proc_minors(cfg.driver_root)]
    states = [(path, *_node_state(path)) for path in (dev / "nvidiactl", *gpu_nodes)]
    uvm = dev / "nvidia-uvm"
    return [nodes_check(dev, states), uvm_check(uvm, *_node_state(uvm))]


def probe_docker(cfg: Config, facts: Facts) -> Check:
    """The engine the docker CLI (and so the wrapper) would use: DOCKER_HOST, DOCKER_CONTEXT,
    the current context, else the default socket."""
    from nvplugin.engine.client import Engine, speaks_api
    from nvplugin.engine.endpoint import NoOptions, resolve_endpoint

    fix = "start Docker (systemctl start docker) or fix DOCKER_HOST / the docker context"
    try:
        endpoint = resolve_endpoint(NoOptions(), os.environ)
    except DockerError as err:
        return Check(Name.DOCKER, FAIL, f"cannot tell which Docker Engine to check: {err}", fix)
    where = endpoint.host
    if not speaks_api(endpoint):
        return Check(Name.DOCKER, SKIP, f"Docker Engine at {where} is reached through the docker "
                     "CLI only; run doctor on that host")
    try:
        engine = Engine(endpoint, timeout=PROBE_TIMEOUT_S)
        version = engine.version()
    except DockerError as err:
        return Check(Name.DOCKER, FAIL, f"Docker Engine not reachable at {where}: {err}", fix)
    facts.docker = engine
    return Check(Name.DOCKER, PASS, f"Docker Engine {version.get('Version')} at {where}")


def _request(conn: http.client.HTTPConnection, method: str, route: str) -> tuple[int, bytes]:
    try:
        conn.request(method, route, headers={"Accept": "application/vnd.docker.plugins.v1.2+json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def probe_socket(cfg: Config, facts: Facts) -> Check:
    path = cfg.socket_path
    restart = "systemctl restart nvidia-docker (or start nvidia-docker-plugin)"
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return Check(Name.SOCKET, FAIL, f"{path} is absent: the plugin daemon is not running",
                     "systemctl start nvidia-docker (or start nvidia-docker-plugin)")
    if not stat.S_ISSOCK(mode):
        return Check(Name.SOCKET, FAIL, f"{path} is not a socket", f"remove it, then {restart}")
    try:
        connection = UnixHTTPConnection(str(path), PROBE_TIMEOUT_S)
        status, body = _request(connection, "POST", "/Plugin.Activate")
        implements = json.loads(body).get("Implements", [])
    except (OSError, ValueError, AttributeError, http.client.HTTPException) as err:
        return Check(Name.SOCKET, FAIL, f"stale socket {path}: nobody answers ({err}); Docker "
                     "waits ~15 s for it on every `docker volume ls`", restart)
    if status != 200 or "VolumeDriver" not in implements:
        return Check(Name.SOCKET, FAIL, f"{path} answered Activate with {status} {body[:80]!r}",
                     "another program owns this socket: stop it, then " + restart)
    facts.socket_answers = True
    facts.daemon_pid = _peer_pid(path)
    detail = f"{path} answers Activate (VolumeDriver)"
    if cfg.needs_spec_file and not cfg.spec_path.is_file():
        return Check(Name.SOCKET, WARN, detail + f", but {cfg.spec_path} is missing: Docker "
                     "will not find it", restart)
    return Check(Name.SOCKET, PASS, detail)


def probe_docker_driver(cfg: Config, facts: Facts) -> Check:
    if facts.docker is None or not facts.socket_answers:
        return Check(Name.DOCKER_DRIVER, SKIP, "needs Docker and the plugin socket (see above)")
    name = cfg.plugin_name
    try:
        volumes = facts.docker.volumes(driver=name)
        plugins = facts.docker.info().get("Plugins", {}).get("Volume") or []
    except DockerError as err:
        return Check(Name.DOCKER_DRIVER, FAIL, f"Docker cannot list {name} volumes: {err}",
                     "journalctl -u nvidia-docker -u docker, then systemctl restart nvidia-docker")
    names = ", ".join(sorted(str(v.get("Name")) for v in volumes)) or "none yet"
    used = "in use by Docker" if name in plugins else "found by Docker"
    return Check(Name.DOCKER_DRIVER, PASS, f"volume driver {name} {used}; volumes: {names}")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def probe_volumes_dir(cfg: Config, facts: Facts) -> Check:
    target = _nearest_existing(cfg.volumes_dir)
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".doctor-"):
            pass
    except OSError as err:
        return Check(Name.VOLUMES_DIR, FAIL, f"{target} is not writable: {err.strerror}",
                     f"chown it to the daemon's user, or add {cfg.volumes_dir} to the unit's "
                     "ReadWritePaths=")
    where = "exists" if target == cfg.volumes_dir else f"will be created under {target}"
    if facts.nvml_library is None:
        return Check(Name.VOLUMES_DIR, PASS, f"{cfg.volumes_dir} {where}, writable")
    return Check(Name.VOLUMES_DIR, PASS, f"{cfg.volumes_dir} {where}, writable; driver files "
                 + _placement(Path(facts.nvml_library).resolve(), target, facts.daemon_pid))


def _peer_pid(path: Path) -> int | None:
    """The pid of the process serving the unix socket `path` (the kernel's SO_PEERCRED)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(PROBE_TIMEOUT_S)
            sock.connect(str(path))
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = struct.unpack("3i", creds)[0]
    return pid or None


def _mount_id(mountinfo: str, path: Path) -> str | None:
    """The ID of the mount holding `path` in a /proc/<pid>/mountinfo text: the longest mount
    point that is `path` or one of its parents (later mounts over the same point win)."""
    best: tuple[int, str] | None = None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape")  # \040 and friends
        if path == Path(point) or Path(point) in path.parents:
            depth = len(Path(point).parts)
            if best is None or depth >= best[0]:
                best = (depth, fields[0])
    return best[1] if best else None


def _mounts_differ(pid: int | str, source: Path, target: Path) -> bool | None:
    """Whether process `pid` sees `source` and `target` on different mounts (link() then fails
    with EXDEV even on one filesystem, as under systemd's ReadWritePaths=); None if unknown."""
    try:
        mountinfo = Path(f"/proc/{pid}/mountinfo").read_text()
    except OSError:
        return None
    ours, theirs = _mount_id(mountinfo, source), _mount_id(mountinfo, target)
    return None if ours is None or theirs is None else ours != theirs


def _placement(source: Path, target: Path, daemon_pid: int | None = None) -> str:
    """What a volume build will do: a hard link from the driver into the directory, tried
    here; and where the running daemon sees the two on different mounts, a copy whatever this
    process could do."""
    # Only the daemon's own namespace splitting them is news: on different mounts here too
    # (another filesystem), the link tried below says so itself.
    if daemon_pid is not None and _mounts_differ(daemon_pid, source, target) \
            and _mounts_differ("self", source, target) is False:
        return (f"will be copied (reflinked where supported): the running daemon (pid "
                f"{daemon_pid}) sees {target} as a mount of its own (a sandbox such as the "
                "unit's ReadWritePaths=), and hard links cannot cross mounts")
    link = target / f".doctor-link-{os.getpid()}"
    try:
        os.link(source, link)
    except OSError as err:
        where = "another filesystem" if os.stat(source).st_dev != os.stat(target).st_dev \
            else "the same filesystem"
        return (f"will be copied (reflinked where supported): hard link from {where} "
                f"failed ({err.strerror})")
    link.unlink()
    return "will be hard-linked (no copies)"


def probe_stale(cfg: Config, facts: Facts) -> Check:
    from nvplugin.volumes.mount_table import STATE_FILE, read_counts
    from nvplugin.volumes.usage import disk_usage

    kind_dir = cfg.volumes_dir / DRIVER_VOLUME_KIND
    try:
        versions = [p.name for p in kind_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except FileNotFoundError:
        versions = []
    except OSError as err:
        return Check(Name.STALE, FAIL, f"cannot read {kind_dir}: {err.strerror}",
                     "run doctor as the daemon's user or root")
    try:
        mounts = read_counts(cfg.volumes_dir / STATE_FILE)
    except (OSError, ValueError):
        mounts = {}  # the daemon sets a damaged file aside; sizes still tell
    return stale_check([VolumeFacts(v, disk_usage(kind_dir / v) if v != facts.current_version
                                    else None, mounts.get(f"{DRIVER_VOLUME_KIND}_{v}", 0))
                        for v in versions], facts.current_version, kind_dir)


def probe_rest(cfg: Config, facts: Facts) -> Check:
    address = cfg.listen_host_port
    if address is None:
        return Check(Name.REST, SKIP, "REST API disabled (-l '')")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address[0], address[0])
    route = "/v1.0/gpu/info/json"
    try:
        status, _ = _request(http.client.HTTPConnection(host, address[1],
                                                        timeout=PROBE_TIMEOUT_S), "GET", route)
    except (OSError, http.client.HTTPException) as err:
        return Check(Name.REST, FAIL, f"nothing answers on {cfg.listen} ({err})",
                     "start the daemon, or point doctor at its address with -l")
    if status == 200:
        facts.rest_host = (host, address[1])
        return Check(Name.REST, PASS, f"GET {route} on {cfg.listen}: 200")
    return Check(Name.REST, WARN, f"GET {route} on {cfg.listen}: {status}",
                 "fix the driver checks above, then systemctl reload-or-restart nvidia-docker")


def probe_health(cfg: Config, facts: Facts) -> Check:
    """GPU health as the running daemon tracks it (it watches NVML's events; doctor cannot)."""
    if facts.rest_host is None:
        return Check(Name.HEALTH, SKIP, "needs the daemon's REST API (see rest-api)")
    documents = []
    for route in ("/v1.0/gpu/status/json", "/v1.0/gpu/info/json"):
        try:
            status, body = _request(http.client.HTTPConnection(
                *facts.rest_host, timeout=PROBE_TIMEOUT_S), "GET", route)
            document = json.loads(body) if status == 200 else None
        except (OSError, ValueError, http.client.HTTPException) as err:
            return Check(Name.HEALTH, FAIL, f"GET {route} on {cfg.listen} failed: {err}",
                         "journalctl -u nvidia-docker, then systemctl restart nvidia-docker")
        if not isinstance(document, dict):
            return Check(Name.HEALTH, WARN, f"GET {route} on {cfg.listen}: {status}",
                         "fix the driver checks above, then systemctl reload-or-restart "
                         "nvidia-docker")
        documents.append([d for d in document.get("Devices") or [] if isinstance(d, dict)])
    devices, infos = documents
    uuids = {info.get("Index"): info.get("UUID") for info in infos}
    # The daemon's CDI spec leaves unhealthy GPUs out of `all`: cdi-spec compares likewise.
    facts.unhealthy = frozenset(
        str(uuids.get(d.get("Index"))) for d in devices
        if isinstance(d.get("Health"), dict) and d["Health"].get("Status") == "unhealthy")
    return health_check(devices)


CDI_SUFFIXES = (".json", ".yaml")  # the spec files engines read


def probe_cdi_spec(cfg: Config, facts: Facts) -> Check:
    from nvplugin.cdi.writer import read_spec, spec_from_host
    from nvplugin.core.errors import CdiError, NvpluginError

    path = cfg.cdi_path
    if path is None:
        return cdi_spec_check(None, None, NvpluginError("disabled"), read_by_default=False)
    written: Spec | NvpluginError | None
    try:
        written = read_spec(path)
    except CdiError as err:
        written = err
    now: Spec | NvpluginError
    try:
        now = asyncio.run(spec_from_host(
            cfg, healthy=lambda uuid: uuid not in facts.unhealthy))[0]
    except NvpluginError as err:
        now = err
    return cdi_spec_check(path, written, now, read_by_default=any(
        _same_dir(cfg.host_root / d.lstrip("/"), path.parent) for d in ENGINE_SPEC_DIRS))


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def probe_cdi_conflicts(cfg: Config, facts: Facts) -> Check:
    """Other spec files that declare our kind, in the engines' directories (as the engine's host
    has them, under --host-root) and in ours. One beside ours makes engines refuse both; one in
    a directory read after ours wins; against a directory of the user's choosing only the
    former is known."""
    from nvplugin.cdi.spec import declared_kind

    ours = cfg.cdi_path
    dirs = [cfg.host_root / d.lstrip("/") for d in ENGINE_SPEC_DIRS]  # in the order read
    ours_at = next((i for i, d in enumerate(dirs) if ours and _same_dir(d, ours.parent)), None)
    custom = ours is not None and ours_at is None
    if ours is not None and ours_at is None:
        dirs.append(ours.parent)
        ours_at = len(dirs) - 1
    seen: set[tuple[int, int]] = set()
    if ours is not None:
        with contextlib.suppress(OSError):
            st = os.stat(ours)
            seen.add((st.st_dev, st.st_ino))
    claims: list[tuple[Path, bool]] = []
    for rank, directory in enumerate(dirs):
        try:
            files = sorted(p for p in directory.iterdir() if p.suffix in CDI_SUFFIXES)
        except OSError:
            continue
        for path in files:
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) in seen or not stat.S_ISREG(st.st_mode):
                    continue
                seen.add((st.st_dev, st.st_ino))
                kind = declared_kind(path.read_bytes(), path.suffix)
            except OSError:
                continue
            if kind == cfg.cdi_kind:
                wins = ours_at is not None and (rank == ours_at
                                                or (not custom and rank > ours_at))
                claims.append((path, wins))
    return cdi_conflicts_check(cfg.cdi_kind, ours, claims)


Probe = Callable[[Config, Facts], "Check | list[Check]"]
PROBES: tuple[Probe, ...] = (
    probe_driver, probe_libraries, probe_nvml, probe_nodes, probe_docker, probe_socket,
    probe_docker_driver, probe_volumes_dir, probe_stale, probe_rest, probe_health, probe_cdi_spec,
    probe_cdi_conflicts,
)


def collect(cfg: Config, probes: Sequence[Probe] = PROBES) -> list[Check]:
    facts, checks = Facts(), []
    for probe in probes:
        result = probe(cfg, facts)
        checks.extend(result if isinstance(result, list) else [result])
    if facts.docker is not None:
        facts.docker.close()
    return checks


def run_doctor(cfg: Config, *, as_json: bool, out: TextIO) -> int:
    checks = collect(cfg)
    out.write(render_json(checks) if as_json else render_text(checks))
    return exit_status(checks)
