"""Stand-ins for `sudo docker` and helpers to run the wrapper as an unprivileged user.

`NV_DOCKER='sudo docker'` means "a docker command that reaches the engine when the calling user
cannot". Without sudo on the test host (and without a sudoers file to manage), the same thing is a
private relay: a unix socket only the test user may open, piped by the test process (root) to the
real `/var/run/docker.sock`, and an NV_DOCKER script that runs the real docker CLI against it. The
user still cannot open the engine's own socket, so the wrapper's API path is really refused.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.requirements import need, need_root, need_tool

ENGINE_SOCKET = "/var/run/docker.sock"
TEST_USER = "nvptest"


def relay_forever(
    listener: socket.socket, target: str, stop: threading.Event,
    on_request: Callable[[bytes], None] | None = None,
) -> None:
    """Accept on `listener` and pipe each connection both ways to the unix socket `target`.
    `on_request`, if given, sees each chunk the client sends, before it is forwarded."""

    def pipe(src: socket.socket, dst: socket.socket, seen: Callable[[bytes], None] | None) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if seen:
                    seen(data)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    while not stop.is_set():
        try:
            client, _ = listener.accept()
        except OSError:
            return
        engine = socket.socket(socket.AF_UNIX)
        engine.connect(target)
        for a, b, seen in ((client, engine, on_request), (engine, client, None)):
            threading.Thread(target=pipe, args=(a, b, seen), daemon=True).start()


@contextlib.contextmanager
def relaying(
    listener: socket.socket, target: str, on_request: Callable[[bytes], None] | None = None
) -> Iterator[None]:
    """`relay_forever` on a thread while inside; on leaving, stop it and close `listener`."""
    stop = threading.Event()
    threading.Thread(target=relay_forever, args=(listener, target, stop, on_request),
                     daemon=True).start()  # fmt: skip
    try:
        yield
    finally:
        stop.set()
        listener.close()


@dataclass
class UserHome:
    """A private directory of the test user: its HOME, the relay socket and the NV_DOCKER log."""

    path: Path
    uid: int
    gid: int

    @property
    def log(self) -> Path:
        return self.path / "nv_docker.log"

    def calls(self) -> list[str]:
        """The docker argument lines NV_DOCKER was run with, in order."""
        return self.log.read_text().splitlines() if self.log.exists() else []

    def script(self, name: str, body: str) -> Path:
        """A shell script the user may run (but not change)."""
        path = self.path / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return path


def runuser() -> str:
    return need_tool("runuser")


def ensure_test_user() -> pwd.struct_passwd:
    """The throwaway user `nvptest` (no home, not in the docker group), created if missing."""
    need_root()
    runuser()
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "-M", TEST_USER], check=True, capture_output=True)
    return pwd.getpwnam(TEST_USER)


@contextlib.contextmanager
def user_home(user: pwd.struct_passwd) -> Iterator[UserHome]:
    # Not pytest's tmp_path: it lives under a root-only directory the user cannot enter.
    path = Path(tempfile.mkdtemp(prefix="nvptest-"))
    os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(0o700)
    try:
        yield UserHome(path, user.pw_uid, user.pw_gid)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def private_engine_socket(home: UserHome) -> Iterator[Path]:
    """A socket in the user's private home that reaches the real engine (the relay)."""
    path = home.path / "engine.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    os.chown(path, home.uid, home.gid)
    path.chmod(0o600)
    listener.listen(16)
    with relaying(listener, ENGINE_SOCKET):
        yield path


def sudo_docker(home: UserHome, engine_socket: Path, pull_from: str | None = None) -> Path:
    """The NV_DOCKER stand-in for `sudo docker`: logs its arguments, runs the real docker CLI on
    the private socket. With `pull_from`, `pull REF` is served by tagging that local image as REF
    (there is no registry here), printing pull-like lines on stdout as `docker pull` does."""
    docker = need_tool("docker")
    pull = ""
    if pull_from:
        pull = (
            'if [ "$1" = pull ]; then\n'
            '  eval "ref=\\${$#}"\n'
            '  echo "latest: Pulling from $ref"\n'
            f'  "{docker}" -H "unix://{engine_socket}" tag {pull_from} "$ref" || exit 1\n'
            '  echo "Status: Downloaded newer image for $ref"\n'
            "  exit 0\n"
            "fi\n"
        )
    # Named so that its basename does not start with `docker`: the wrapper must not take it for
    # the docker CLI and read global options out of it.
    log = f'printf "%s\\n" "$*" >> "{home.log}"\n'
    return home.script("nv-sudo", f'{log}{pull}exec "{docker}" -H "unix://{engine_socket}" "$@"\n')


def user_python(user: pwd.struct_passwd, repo: Path) -> str:
    """An interpreter the user can run that imports the wrapper (the test's own may sit under
    root's home, e.g. pyenv)."""
    candidates = [sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")]
    for exe in dict.fromkeys(c for c in candidates if c):
        probe = subprocess.run(
            [runuser(), "-u", user.pw_name, "--", exe, "-c",
             "import nvplugin.wrapper.nvidia_docker"],
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(repo)},
            capture_output=True, cwd=repo,
        )  # fmt: skip
        if probe.returncode == 0:
            return exe
    need(False, f"a python3 that the user {user.pw_name} can run")
    raise AssertionError("unreachable")


def run_as(
    user: pwd.struct_passwd, home: UserHome, argv: Sequence[str], env: dict[str, str],
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` as `user` with exactly `env` (plus PATH and HOME), from the repository."""
    environ = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home.path), **env}
    words = [f"{k}={v}" for k, v in environ.items()]
    return subprocess.run([runuser(), "-u", user.pw_name, "--", "env", "-i", *words, *argv],
                          capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parents[2])  # fmt: skip
