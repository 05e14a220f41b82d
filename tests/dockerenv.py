"""The real Docker Engine for end-to-end tests, test images made with `docker import`, and a
running plugin daemon on a fake driver host.

There is no registry: images are a static busybox in a tarball, imported with labels and
environment. Containers run with `--net=none`: the engine runs without a bridge.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.requirements import in_ci, need, need_root
from tests.unixhttp import unix_post

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
BUSYBOX_APPLETS = (
    "sh", "ls", "cat", "true", "false", "sleep", "echo", "readlink", "find", "stat", "grep",
    "test", "wc", "env", "id", "head", "tail", "sort", "uname", "mount", "sed",
)
# 1.0's images found the driver volume through these; ours do the same.
GPU_IMAGE_ENV = {
    "PATH": "/usr/local/nvidia/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LD_LIBRARY_PATH": "/usr/local/nvidia/lib:/usr/local/nvidia/lib64",
}
PLUGIN_SOCKET_DIR = Path("/run/docker/plugins")
STARTED_LINE = "Start-up took "  # the daemon's last start-up line (debug)
E2E_LOCK = Path("/run/lock/nvplugin-docker-e2e.lock")
DOCKERD_FLAGS = (
    "--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-forward=false",
    "--ip-masq=false",
)


@dataclass
class DockerEngine:
    client: docker.DockerClient
    started_here: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> docker.APIClient:
        return self.client.api


def _engine_answers() -> docker.DockerClient | None:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
        return client
    except Exception:  # any failure means "no engine here yet"
        return None


def _start_dockerd() -> subprocess.Popen[bytes]:
    dockerd = shutil.which("dockerd")
    need(dockerd is not None, "a Docker Engine (dockerd; apt-get install docker.io)")
    need_root()
    log = open("/var/log/nvplugin-test-dockerd.log", "ab")  # noqa: SIM115 - lives with dockerd
    return subprocess.Popen([str(dockerd), *DOCKERD_FLAGS], stdout=log, stderr=log,
                            start_new_session=True)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A Docker Engine that answers: the running one, or one started for this session."""
    client = _engine_answers()
    proc = None
    if client is None:
        proc = _start_dockerd()
        deadline = time.monotonic() + 60
        while client is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            client = _engine_answers()
        need(client is not None, "a running Docker Engine (dockerd did not answer)")
    assert client is not None
    engine = DockerEngine(client=client, started_here=proc)
    yield engine
    client.close()
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=30)


def busybox() -> Path:
    for candidate in BUSYBOX_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    need(False, "a static busybox (apt-get install busybox-static)")
    raise AssertionError("unreachable")


def rootfs_tar(busybox: Path, extra_files: Mapping[str, bytes]) -> bytes:
    """A busybox root filesystem (the applets above) with `extra_files`, as a tarball."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "dev", "etc", "proc", "sys", "tmp", "usr", "usr/local"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(busybox), arcname="bin/busybox")
        for applet in BUSYBOX_APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        for name, data in extra_files.items():
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class ImageFactory:
    engine: DockerEngine
    made: dict[str, str] = field(default_factory=dict)

    def __call__(self, labels: Mapping[str, str] | None = None,
                 env: Mapping[str, str] | None = None,
                 extra_files: Mapping[str, bytes] | None = None) -> str:
        """A busybox image with these labels and environment; returns its tag."""
        labels, env = dict(labels or {}), {**GPU_IMAGE_ENV, **(env or {})}
        extra_files = dict(extra_files or {})
        key = repr((sorted(labels.items()), sorted(env.items()),
                    sorted((k, hashlib.sha256(v).hexdigest()) for k, v in extra_files.items())))
        if key in self.made:
            return self.made[key]
        tag = "nvplugin-test/busybox:" + hashlib.sha256(key.encode()).hexdigest()[:12]
        changes = [f"ENV {name}={value}" for name, value in env.items()]
        changes += [f"LABEL {name}={value}" for name, value in labels.items()]
        changes.append('CMD ["/bin/sh"]')
        data = rootfs_tar(busybox(), extra_files)
        repository, _, version = tag.partition(":")
        self.engine.api.import_image_from_data(data, repository=repository, tag=version,
                                               changes=changes)
        self.made[key] = tag
        return tag


@pytest.fixture(scope="session")
def make_image(docker_engine: DockerEngine) -> ImageFactory:
    return ImageFactory(docker_engine)


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PluginDaemon:
    """`nvidia-docker-plugin` running as a real process on a fake driver host."""

    driver_root: Path
    dev_root: Path
    volumes_dir: Path
    env: dict[str, str]
    socket_dir: Path = PLUGIN_SOCKET_DIR
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()
    host: GpuHost | None = None
    # argv put before the daemon's own (e.g. `unshare ... exec "$@"`): it must exec, keeping the pid
    prefix: tuple[str, ...] = ()
    # Never the host's /var/run/cdi, where engines would read a spec of a test's fake host.
    cdi_dir: Path | None = None
    python_flags: tuple[str, ...] = ()  # e.g. ("-X", "importtime")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / "nvidia-docker.sock"

    @property
    def cdi_path(self) -> Path:
        return (self.cdi_dir or self.volumes_dir.parent / "cdi") / "nvidia-docker.json"

    def argv(self) -> list[str]:
        return [
            *self.prefix, sys.executable, *self.python_flags, "-m", "nvplugin",
            "--driver-root", str(self.driver_root), "--dev-root", str(self.dev_root),
            "-s", str(self.socket_dir), "-d", str(self.volumes_dir),
            "-l", f"127.0.0.1:{self.port}", "--log-level", "debug",
            "--cdi-dir", str(self.cdi_path.parent), *self.extra_args,
        ]

    def start(self, timeout: float = 30.0, *, settled: bool = True) -> None:
        """Start it and wait until both sockets answer and, with `settled`, until start-up's
        background half (NVML, discovery, health, metrics, the page) is done too: its last
        line (debug) is logged."""
        log_path = self.log_path or self.volumes_dir.parent / "daemon.log"
        self.log_path = log_path
        before = self.log().count(STARTED_LINE)
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        repo = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, **self.env, "PYTHONPATH": repo}
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log, env=env, cwd=repo)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"plugin daemon exited {self.proc.returncode}:\n{self.log()}")
            if self.ready() and (not settled or self.log().count(STARTED_LINE) > before):
                return
            time.sleep(0.05)
        raise RuntimeError(f"plugin daemon did not become ready:\n{self.log()}")

    def ready(self) -> bool:
        return unix_post(self.socket_path, "/Plugin.Activate") is not None and tcp_ok(self.port)

    def stop(self, sig: int = 15, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


def tcp_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def remove_plugin_volumes(engine: DockerEngine) -> None:
    """Forget every nvidia-docker volume, so the next test starts from a clean engine."""
    for volume in engine.client.volumes.list(filters={"driver": "nvidia-docker"}):
        for container in engine.client.containers.list(all=True, filters={"volume": volume.name}):
            container.remove(force=True)
        # The plugin may already be gone; force also drops Docker's own record.
        with contextlib.suppress(docker.errors.APIError):
            volume.remove(force=True)


@pytest.fixture
def plugin_daemon_factory(docker_engine: DockerEngine, tmp_path: Path,
                          ) -> Iterator[type[PluginDaemon]]:
    """Start plugin daemons on fake hosts; all are stopped and their volumes removed after."""
    need_root()
    started: list[PluginDaemon] = []
    # The plugin socket and volume names are host-global: test runs from several checkouts on
    # one engine take turns, test by test.
    E2E_LOCK.parent.mkdir(parents=True, exist_ok=True)
    lock = open(E2E_LOCK, "a")  # noqa: SIM115 - held until the fixture ends
    fcntl.flock(lock, fcntl.LOCK_EX)

    class _Tracked(PluginDaemon):
        def start(self, timeout: float = 30.0, *, settled: bool = True) -> None:
            if self not in started:
                started.append(self)
            super().start(timeout, settled=settled)

    yield _Tracked
    for daemon in started:
        try:
            if daemon.proc is not None and daemon.proc.poll() is None:
                remove_plugin_volumes(docker_engine)
        finally:
            daemon.stop()
    if in_ci():
        for daemon in started:
            print(f"--- plugin daemon log ({daemon.log_path}) ---\n{daemon.log()[-4000:]}")
    lock.close()


@dataclass
class GpuHost:
    """A fake NVIDIA host (driver files, fake NVML config, device nodes) ready for a daemon."""

    root: Path
    version: str
    nvml_config: Path
    minors: list[int]
    uuids: list[str]

    def env(self) -> dict[str, str]:
        return {"FAKE_NVML_CONFIG": str(self.nvml_config)}


@pytest.fixture
def gpu_host_factory(fake_host_factory: Any, tmp_path: Path) -> Callable[..., GpuHost]:
    """Build fake GPU hosts: `gpu_host_factory(n_gpus=2, minors=[3, 1], **fake_host_options)`."""
    from tests.fakehost.build import make_dev_nodes, write_mig_capabilities
    from tests.fakenvml.build import gpu, make_config, write_config

    counter = iter(range(1000))

    def make(n_gpus: int = 1, minors: list[int] | None = None,
             mig: Mapping[tuple[int, int], tuple[int, int]] | None = None,
             **host_options: Any) -> GpuHost:
        """`mig`: GPU 0 in MIG mode, one MIG device per (GI, CI) key, whose access nodes get
        the (GI, CI) minors of its value (capability files and nvidia-caps nodes)."""
        need_root()
        host = fake_host_factory(**host_options)
        minors = list(minors if minors is not None else range(n_gpus))
        gpus = [gpu(i, minor=minor) for i, minor in enumerate(minors)]
        if mig:
            gpus[0].update(mig_mode=True, mig_devices=[
                {"uuid": f"MIG-{gi:04x}{ci:04x}-0000-0000-0000-000000000000",
                 "gpu_instance_id": gi, "compute_instance_id": ci} for gi, ci in mig])
            write_mig_capabilities(host.root, host.root, dict(mig), gpu_minor=minors[0])
        config_path = tmp_path / f"fakenvml-{next(counter)}.json"
        write_config(config_path, make_config(gpus=gpus, driver_version=host.version))
        make_dev_nodes(host.root, minors)
        return GpuHost(root=host.root, version=host.version, nvml_config=config_path,
                       minors=minors, uuids=[g["uuid"] for g in gpus])

    return make


@pytest.fixture
def running_plugin(gpu_host_factory: Callable[..., GpuHost],
                   plugin_daemon_factory: type[PluginDaemon], tmp_path: Path,
                   ) -> Callable[..., PluginDaemon]:
    """Start the real daemon on a fresh fake GPU host: `running_plugin(n_gpus=2)`."""
    counter = iter(range(1000))

    def start(n_gpus: int = 1, *, volumes_dir: Path | None = None,
              extra_args: tuple[str, ...] = (), prefix: tuple[str, ...] = (),
              python_flags: tuple[str, ...] = (), nvml: dict[str, Any] | None = None,
              settled: bool = True, **host_options: Any) -> PluginDaemon:
        """`nvml`: keys to set in the fake NVML's config (e.g. init_delay_ms); `settled`: see
        `PluginDaemon.start`."""
        host = gpu_host_factory(n_gpus=n_gpus, **host_options)
        if nvml:
            from tests.fakenvml.build import write_config

            config = json.loads(host.nvml_config.read_text())
            write_config(host.nvml_config, {**config, **nvml})
        run_dir = tmp_path / f"plugin{next(counter)}"
        run_dir.mkdir()
        daemon = plugin_daemon_factory(
            driver_root=host.root, dev_root=host.root,
            volumes_dir=volumes_dir or run_dir / "volumes", env=host.env(),
            log_path=run_dir / "daemon.log", extra_args=extra_args, prefix=prefix,
            python_flags=python_flags,
        )
        daemon.host = host
        daemon.start(settled=settled)
        return daemon

    return start
