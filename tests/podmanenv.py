"""Podman for the CDI end-to-end tests: images made with `podman import`, containers run with the
spec a test daemon keeps, and that daemon, isolated from the host's plugin socket.

Podman 4.3 (Debian 12) reads CDI specs only from /etc/cdi and /var/run/cdi: it has neither
`--cdi-spec-dir` nor containers.conf's `cdi_spec_dirs`. So each `podman run` gets a private mount
namespace in which a test's spec directory is bind-mounted over /var/run/cdi and /etc/cdi is
emptied: the host's own directories, which real engines read, never see a test's spec, and
several test runs never see each other's. The daemon runs in a private mount namespace too, with
a tmpfs over /run/docker/plugins, so it never takes the plugin socket that Docker tests (and
Docker) use; tests reach it over TCP and read its CDI directory.

Podman needs `default_ulimits = []` (containers.conf.d) in these sandboxes, else runc fails with
`error setting rlimit type 7`: scripts/run-tests installs it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.dockerenv import (
    PLUGIN_SOCKET_DIR,
    GpuHost,
    PluginDaemon,
    busybox,
    rootfs_tar,
    tcp_ok,
)
from tests.requirements import need, need_root, need_tool

IMAGE_REPOSITORY = "localhost/nvplugin-test/cdi"
# Mount the test's spec directory over /run/cdi (made first: an empty directory is what a
# fresh host has there) and hide /etc/cdi, then run podman with the remaining arguments.
_ISOLATE = ('mount --bind "$0" /run/cdi && { [ ! -d /etc/cdi ] || mount -t tmpfs nvplugin-cdi '
            '/etc/cdi; } && exec podman "$@"')


@dataclass
class Podman:
    program: str

    def run(self, spec_dir: Path, *args: str, timeout: float = 120,
            ) -> subprocess.CompletedProcess[bytes]:
        """`podman run --rm --network=none ARGS` reading only `spec_dir`'s CDI specs."""
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _ISOLATE,
                str(spec_dir), "run", "--rm", "--network=none", *args]
        return subprocess.run(argv, capture_output=True, timeout=timeout)

    def run_text(self, spec_dir: Path, *args: str) -> str:
        """stdout of a run that must succeed."""
        done = self.run(spec_dir, *args)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout.decode(errors="replace")


@pytest.fixture(scope="session")
def podman() -> Podman:
    need_root()
    program = need_tool("podman")
    need_tool("unshare")
    info = subprocess.run([program, "info"], capture_output=True, text=True, timeout=120)
    need(info.returncode == 0, f"a working podman ({info.stderr.strip()[-300:]})")
    Path("/run/cdi").mkdir(parents=True, exist_ok=True)  # the mount point, as on any CDI host
    return Podman(program)


@dataclass
class PodmanImages:
    podman: Podman
    made: dict[str, str] = field(default_factory=dict)

    def __call__(self, env: Mapping[str, str] | None = None,
                 extra_files: Mapping[str, bytes] | None = None) -> str:
        """A busybox image (with `extra_files`) whose environment is `env` alone."""
        env, extra_files = dict(env or {}), dict(extra_files or {})
        key = repr((sorted(env.items()),
                    sorted((k, hashlib.sha256(v).hexdigest()) for k, v in extra_files.items())))
        if key in self.made:
            return self.made[key]
        tag = f"{IMAGE_REPOSITORY}:{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        changes = [f"ENV {name}={value}" for name, value in env.items()]
        changes.append('CMD ["/bin/sh"]')
        argv = [self.podman.program, "import", *(a for c in changes for a in ("--change", c)),
                "-", tag]
        done = subprocess.run(argv, input=rootfs_tar(busybox(), extra_files),
                              capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        self.made[key] = tag
        return tag


@pytest.fixture(scope="session")
def podman_image(podman: Podman) -> PodmanImages:
    return PodmanImages(podman)


class IsolatedDaemon(PluginDaemon):
    """The daemon in a private mount namespace (an `unshare` prefix): its plugin socket lives
    on a tmpfs there."""

    def ready(self) -> bool:
        # The REST API is the last thing the daemon starts, after writing its CDI spec.
        return tcp_ok(self.port)


@pytest.fixture
def cdi_daemon(gpu_host_factory: Callable[..., GpuHost], tmp_path: Path,
               ) -> Iterator[Callable[..., IsolatedDaemon]]:
    """Start the real daemon on a fresh fake GPU host, its spec in `<tmp>/cdiN`:
    `cdi_daemon(n_gpus=2, minors=[0, 5])`."""
    need_tool("unshare")
    started: list[IsolatedDaemon] = []
    counter = iter(range(1000))

    def start(n_gpus: int = 1, **host_options: Any) -> IsolatedDaemon:
        host = gpu_host_factory(n_gpus=n_gpus, **host_options)
        run_dir = tmp_path / f"cdi-daemon{next(counter)}"
        run_dir.mkdir()
        # The mount point of the namespace's tmpfs: the default socket directory.
        PLUGIN_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        daemon = IsolatedDaemon(driver_root=host.root, dev_root=host.root,
                                volumes_dir=run_dir / "volumes", env=host.env(),
                                log_path=run_dir / "daemon.log", cdi_dir=run_dir / "cdi",
                                prefix=("unshare", "--mount", "--propagation", "private", "--",
                                        "sh", "-c", 'mount -t tmpfs nvplugin-socket "$0" && '
                                        'exec "$@"', str(PLUGIN_SOCKET_DIR)))
        daemon.host = host
        started.append(daemon)
        daemon.start()
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def ldd_closure(program: Path) -> dict[str, bytes]:
    """The C library files `program` needs, at the paths the loader names (for an image)."""
    ldd = shutil.which("ldd")
    need(ldd is not None, "ldd (libc-bin)")
    done = subprocess.run([str(ldd), str(program)], capture_output=True, text=True, check=True)
    files: dict[str, bytes] = {}
    for line in done.stdout.splitlines():
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0] if words else ""
        if path.startswith("/"):
            files[path] = Path(path).resolve().read_bytes()
    return files
