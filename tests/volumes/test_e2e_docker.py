"""End to end: the real daemon on a fake GPU host, driven by the real Docker Engine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest

from tests.dockerenv import DockerEngine, ImageFactory, PluginDaemon, wait_for
from tests.requirements import need_tool
from tests.unixhttp import unix_post

pytestmark = pytest.mark.docker
MOUNT = "/usr/local/nvidia"
REPO = Path(__file__).resolve().parents[2]
StartPlugin = Callable[..., PluginDaemon]


def docker_run(image: str, volume: str, *command: str, detach: bool = False,
               ) -> subprocess.CompletedProcess[str]:
    """`docker run` through the CLI, as a user (or the nvidia-docker wrapper) would."""
    argv = [need_tool("docker"), "run", "--net=none", "--volume-driver=nvidia-docker",
            "-v", f"{volume}:{MOUNT}:ro"]
    argv += ["-d"] if detach else ["--rm"]
    return subprocess.run([*argv, image, *command], capture_output=True, text=True, timeout=120)


def plugin_get(daemon: PluginDaemon, name: str) -> dict[str, object]:
    body = json.dumps({"Name": name}).encode()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(daemon.socket_path))
        sock.sendall(b"POST /VolumeDriver.Get HTTP/1.0\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


def builds(daemon: PluginDaemon) -> int:
    return daemon.log().count("Built volume ")


def test_volume_create_ls_inspect_rm(docker_engine: DockerEngine, running_plugin: StartPlugin):
    daemon = running_plugin()
    name = f"nvidia_driver_{daemon.host.version}"
    volume = docker_engine.client.volumes.create(name, driver="nvidia-docker")
    assert volume.attrs["Driver"] == "nvidia-docker"
    assert volume.attrs["Mountpoint"] == str(daemon.volumes_dir / "nvidia_driver" /
                                             daemon.host.version)
    listed = docker_engine.client.volumes.list(filters={"driver": "nvidia-docker"})
    assert [v.name for v in listed] == [name]
    inspected = docker_engine.api.inspect_volume(name)
    assert inspected["CreatedAt"] != "0001-01-01T00:00:00Z"  # our RFC 3339 CreatedAt arrived
    assert inspected["Status"] == {"Mounts": 0}
    assert inspected["Scope"] == "local"
    with pytest.raises(docker.errors.APIError, match=r"invalid volume version: nvidia_driver_1\.0"):
        docker_engine.client.volumes.create("nvidia_driver_1.0", driver="nvidia-docker")
    volume.remove()
    assert not (daemon.volumes_dir / "nvidia_driver" / daemon.host.version).exists()
    assert docker_engine.client.volumes.list(filters={"driver": "nvidia-docker"}) == []
    assert "Received create request for volume" in daemon.log()
    assert "Received remove request for volume" in daemon.log()


def test_docker_run_sees_files_and_links(running_plugin: StartPlugin, make_image: ImageFactory):
    daemon = running_plugin()
    v = daemon.host.version
    out = docker_run(make_image(), f"nvidia_driver_{v}", "sh", "-c",
                     f"ls -lR {MOUNT}; readlink {MOUNT}/lib64/libcuda.so.1; "
                     f"readlink {MOUNT}/lib64/libGLX_indirect.so.0; test -x {MOUNT}/bin/nvidia-smi "
                     f"&& touch {MOUNT}/x 2>/dev/null || echo read-only")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert f"libcuda.so.{v}" in lines and f"libGLX_nvidia.so.{v}" in lines
    assert lines[-1] == "read-only"
    assert any(line.endswith(f"libcuda.so -> libcuda.so.{v}") for line in lines)
    assert any(line.endswith("nvidia-smi") for line in lines)
    assert builds(daemon) == 1


def test_plugin_restart_keeps_the_running_containers_count(
        docker_engine: DockerEngine, running_plugin: StartPlugin, make_image: ImageFactory):
    daemon = running_plugin()
    name = f"nvidia_driver_{daemon.host.version}"
    started = docker_run(make_image(), name, "sleep", "300", detach=True)
    assert started.returncode == 0, started.stderr
    container = docker_engine.client.containers.get(started.stdout.strip())
    try:
        daemon.restart()  # no Activate again: Docker re-dials the same socket
        assert plugin_get(daemon, name)["Volume"]["Status"] == {"Mounts": 1}
        container.stop(timeout=1)
        assert plugin_get(daemon, name)["Volume"]["Status"] == {"Mounts": 0}
    finally:
        container.remove(force=True)
    docker_engine.client.volumes.get(name).remove()
    assert builds(daemon) == 1


def test_fifty_concurrent_runs_share_one_build(running_plugin: StartPlugin,
                                               make_image: ImageFactory):
    daemon = running_plugin()
    image, name = make_image(), f"nvidia_driver_{daemon.host.version}"
    with ThreadPoolExecutor(max_workers=50) as pool:
        runs = list(pool.map(lambda _: docker_run(image, name, "ls", f"{MOUNT}/lib64"), range(50)))
    failed = [r.stderr for r in runs if r.returncode != 0]
    assert failed == []
    assert all(f"libcuda.so.{daemon.host.version}" in r.stdout.split() for r in runs)
    assert builds(daemon) == 1
    assert plugin_get(daemon, name)["Volume"]["Status"] == {"Mounts": 0}


def test_volumes_on_a_tmpfs_are_copies(running_plugin: StartPlugin, make_image: ImageFactory,
                                       tmp_path: Path):
    point = tmp_path / "tmpfs"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(point)], check=True)
    try:
        daemon = running_plugin(volumes_dir=point / "volumes")
        v = daemon.host.version
        out = docker_run(make_image(), f"nvidia_driver_{v}", "sh", "-c",
                         f"wc -c < {MOUNT}/lib64/libcuda.so.1")
        assert out.returncode == 0, out.stderr
        built = point / "volumes" / "nvidia_driver" / v / "lib64" / f"libcuda.so.{v}"
        source = daemon.host.root / "usr/lib/x86_64-linux-gnu" / f"libcuda.so.{v}"
        assert int(out.stdout) == source.stat().st_size
        assert built.read_bytes() == source.read_bytes()
        assert os.stat(built).st_dev != os.stat(source).st_dev
        daemon.stop()
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_garbage_on_the_socket_leaves_the_daemon_healthy(
        docker_engine: DockerEngine, running_plugin: StartPlugin):
    daemon = running_plugin()
    for payload in (b"\x00\xff garbage\r\n\r\n", b"POST /VolumeDriver.Create HTTP/1.1\r\n"
                    b"Content-Length: 5\r\n\r\n{oops", b"POST /VolumeDriver.Mount HTTP/1.0\r\n"
                    b"Content-Length: 30\r\n\r\n" + b'{"Name":"nvidia_driver_/../x"}'):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(daemon.socket_path))
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
    assert unix_post(daemon.socket_path, "/Plugin.Activate")
    name = f"nvidia_driver_{daemon.host.version}"
    docker_engine.client.volumes.create(name, driver="nvidia-docker").remove()
    assert daemon.proc is not None and daemon.proc.poll() is None


NEW_VERSION = "590.10.01"


def _upgrade(daemon: PluginDaemon, fake_host_factory: Callable[..., object]) -> None:
    """A newer driver installed over the running one; the daemon's watcher sees it."""
    host = daemon.host
    assert host is not None
    fake_host_factory(root=daemon.driver_root, version=NEW_VERSION)
    config = json.loads(host.nvml_config.read_text())
    config["driver_version"] = NEW_VERSION
    host.nvml_config.write_text(json.dumps(config))
    changed = f"NVIDIA driver changed from {host.version} to {NEW_VERSION}"
    assert wait_for(lambda: changed in daemon.log()), daemon.log()[-2000:]


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_tool("docker"), *args], capture_output=True, text=True,
                          timeout=120)


def _gc(daemon: PluginDaemon) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvplugin", "gc", "--driver-root",
                           str(daemon.driver_root), "-s", str(daemon.socket_dir), "-d",
                           str(daemon.volumes_dir)], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={**os.environ, **daemon.env, "PYTHONPATH": str(REPO)})


def test_an_old_volume_goes_with_its_last_container_and_docker_agrees(
        docker_engine: DockerEngine, running_plugin: StartPlugin, make_image: ImageFactory,
        fake_host_factory: Callable[..., object]):
    daemon = running_plugin()
    old_version = daemon.host.version if daemon.host else ""
    old = f"nvidia_driver_{old_version}"
    started = docker_run(make_image(), old, "sleep", "300", detach=True)
    assert started.returncode == 0, started.stderr
    container = started.stdout.strip()
    _upgrade(daemon, fake_host_factory)
    # Mounted: kept, and `gc` (asking the running daemon) keeps it too. The daemon says so
    # right after "driver changed": waited for, as a loaded machine may log it a moment later.
    assert wait_for(lambda: f"Keeping volume {old} of driver" in daemon.log()), daemon.log()
    gc = _gc(daemon)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert gc.stdout.splitlines() == [
        f"Kept {old}: 1 container(s) mount it",
        f"(0 removed, 1 kept, by the running daemon ({daemon.socket_path}))"]
    assert old in _docker("volume", "ls", "-q").stdout.split()
    # The container stops: Docker unmounts, and the volume goes.
    assert _docker("stop", "-t", "1", container).returncode == 0
    assert wait_for(lambda: f"Removed volume {old} of driver" in daemon.log())
    assert not (daemon.volumes_dir / "nvidia_driver" / old_version).exists()
    # Docker's view: not listed, and inspect and rm both say so.
    assert old not in _docker("volume", "ls", "-q").stdout.split()
    for argv in (("volume", "inspect", old), ("volume", "rm", old)):
        done = _docker(*argv)
        assert done.returncode == 1 and f"{old}: no such volume" in done.stderr, done.stderr
    assert _docker("volume", "rm", "-f", old).returncode == 0
    # The stopped container of the old driver cannot start, and says why; removing it works.
    restart = _docker("start", container)
    assert restart.returncode != 0 and "no such volume" in restart.stderr
    assert _docker("rm", container).returncode == 0
    new = f"nvidia_driver_{NEW_VERSION}"
    assert docker_run(make_image(), new, "true").returncode == 0
    assert _docker("volume", "ls", "-q").stdout.split().count(new) == 1


def test_keep_old_volumes_keeps_them_for_docker_and_gc(
        docker_engine: DockerEngine, running_plugin: StartPlugin, make_image: ImageFactory,
        fake_host_factory: Callable[..., object]):
    daemon = running_plugin(extra_args=("--keep-old-volumes",))
    old = f"nvidia_driver_{daemon.host.version if daemon.host else ''}"
    assert docker_run(make_image(), old, "true").returncode == 0
    _upgrade(daemon, fake_host_factory)
    assert "Keeping volume" not in daemon.log() and "Removed volume" not in daemon.log()
    assert old in _docker("volume", "ls", "-q").stdout.split()
    assert _docker("volume", "inspect", old).returncode == 0
    gc = _gc(daemon)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert gc.stdout.startswith(f"Removed {old}: ") and "MiB of them freed by removal" in gc.stdout
    assert old not in _docker("volume", "ls", "-q").stdout.split()
    assert _docker("volume", "rm", "-f", old).returncode == 0
