"""`nvidia-docker-plugin gc` without a daemon (it takes the volumes directory's lock itself), and
refusing clearly when a daemon holds the lock but does not answer. With a running daemon it is
tested against the real Docker Engine in tests/volumes/test_e2e_docker.py."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

from nvplugin.cli.gc import _sockets
from nvplugin.core.config import load
from nvplugin.volumes.mount_table import STATE_FILE

REPO = Path(__file__).resolve().parents[2]
CURRENT = "580.159.04"


def gc(root: Path, volumes: Path, *args: str, socket_dir: Path | None = None,
       ) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "nvplugin", "gc", *args, "--driver-root", str(root),
            "-d", str(volumes), "-s", str(socket_dir or volumes.parent / "sockets")]
    env = {k: v for k, v in os.environ.items() if k != "FAKE_NVML_CONFIG"}
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**env, "PYTHONPATH": str(REPO)})


def volume(volumes: Path, version: str, size: int = 300_000) -> Path:
    path = volumes / "nvidia_driver" / version / "lib64"
    path.mkdir(parents=True)
    (path / f"libcuda.so.{version}").write_bytes(b"\0" * size)
    return path.parent


def test_gc_without_a_daemon_removes_what_nothing_mounts(fake_host, tmp_path):
    volumes = tmp_path / "volumes"
    for version in ("570.86.15", "575.51.03", CURRENT):
        volume(volumes, version)
    (volumes / STATE_FILE).write_text(json.dumps(
        {"format": 1, "mounts": {"nvidia_driver_575.51.03": {"c0ffee": 1}}}))
    done = gc(fake_host.root, volumes)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Removed nvidia_driver_570.86.15: 0.3 MiB, 0.3 MiB of them freed")
    assert lines[1:] == ["Kept nvidia_driver_575.51.03: 1 container(s) mount it",
                         "(1 removed, 1 kept, by nvidia-docker-plugin gc)"]
    left = sorted(p.name for p in (volumes / "nvidia_driver").iterdir())
    assert left == ["575.51.03", CURRENT]
    again = gc(fake_host.root, volumes, "--json")
    assert json.loads(again.stdout) == {
        "Removed": [], "Kept": [{"Name": "nvidia_driver_575.51.03", "Mounts": 1}],
        "By": "nvidia-docker-plugin gc"}


def test_gc_without_a_driver_cannot_tell_what_is_old(tmp_path):
    volumes = tmp_path / "volumes"
    volume(volumes, "570.86.15")
    (tmp_path / "empty").mkdir()
    done = gc(tmp_path / "empty", volumes)
    assert done.returncode == 1
    assert done.stdout.startswith("nvidia-docker-plugin gc: error: cannot tell which volumes "
                                  "are old: ")
    assert "remove them with docker volume rm" in done.stdout and "Traceback" not in done.stderr
    assert (volumes / "nvidia_driver" / "570.86.15").is_dir()


def test_gc_refuses_a_lock_held_by_a_daemon_that_does_not_answer(fake_host, tmp_path):
    volumes = tmp_path / "volumes"
    volume(volumes, "570.86.15")
    holder = os.open(volumes / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        done = gc(fake_host.root, volumes, socket_dir=tmp_path / "nowhere")
    finally:
        os.close(holder)
    assert done.returncode == 1
    assert done.stdout.startswith(
        f"nvidia-docker-plugin gc: error: a running nvidia-docker-plugin holds {volumes}, but "
        f"its socket {tmp_path / 'nowhere' / 'nvidia-docker.sock'} does not answer (")
    assert done.stdout.rstrip().endswith("give gc the daemon's --socket-dir, or stop the daemon "
                                         "and run gc again")
    assert (volumes / "nvidia_driver" / "570.86.15").is_dir()


def test_gc_with_no_volumes_says_so(tmp_path):
    done = gc(tmp_path, tmp_path / "none")
    assert (done.returncode, done.stdout) == (
        0, f"No volumes of older drivers in {tmp_path / 'none'}\n")
    assert not (tmp_path / "none").exists()  # gc creates nothing


def test_gc_finds_the_socket_of_a_daemon_running_as_its_own_user():
    default = Path("/run/docker/plugins")
    assert _sockets(load([], environ={})) == [default / "nvidia-docker.sock",
                                              default / "nvidia-docker/nvidia-docker.sock"]
    assert _sockets(load(["-s", "/srv/s"], environ={})) == [Path("/srv/s/nvidia-docker.sock")]
