"""The Dockerfile, proven end to end: a local base image (debootstrap + docker import, no
registry), an offline `docker build`, the daemon in a container on a fake GPU host, a volume
created through it and mounted by another container, doctor inside it, a clean SIGTERM stop.

Slow the first time (debootstrap, ~1-2 min); the rootfs and wheels are cached afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.dockerenv import E2E_LOCK, PLUGIN_SOCKET_DIR, _unix_post
from tests.packaging import image
from tests.requirements import need, need_root

pytestmark = [pytest.mark.docker, pytest.mark.root]

IMAGE_TAG = "nvplugin-ci/plugin:test"
# The image adds the venv (nvplugin and its dependencies) to the base: keep that layer small.
MAX_ADDED_BYTES = 40 * 1000 * 1000


@pytest.fixture(scope="module")
def plugin_image(docker_engine, tmp_path_factory) -> str:
    need_root()
    debootstrap = shutil.which("debootstrap") or shutil.which("/usr/sbin/debootstrap")
    need(image.image_exists(image.BASE_TAG) or debootstrap is not None,
         "debootstrap (apt-get install debootstrap) to make the base image")
    base = image.ensure_base_image(debootstrap)
    context = image.build_context(tmp_path_factory.mktemp("context"), image.python_of(base))
    return image.build_image(context, base, IMAGE_TAG)


@pytest.fixture
def plugin_container(plugin_image, docker_engine, gpu_host_factory, tmp_path,
                     ) -> Iterator[docker.models.containers.Container]:
    # The plugin name and socket are host-wide: hold the lock every daemon-starting test takes.
    with open(E2E_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        host = gpu_host_factory()
        for node in (host.root / "dev").glob("nvidia*"):
            node.chmod(0o666)
        volumes_dir = tmp_path / "volumes"
        volumes_dir.mkdir()
        PLUGIN_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        container = docker_engine.client.containers.run(
            plugin_image, detach=True, network_mode="none", name=f"nvplugin-image-{os.getpid()}",
            volumes={
                str(host.root): {"bind": "/host", "mode": "ro"},
                str(PLUGIN_SOCKET_DIR): {"bind": str(PLUGIN_SOCKET_DIR), "mode": "rw"},
                str(volumes_dir): {"bind": str(volumes_dir), "mode": "rw"},
                str(host.nvml_config): {"bind": "/etc/fakenvml.json", "mode": "ro"},
            },
            # As on a real host: NVML opens the nodes, so the device cgroup must allow them.
            devices=[f"{n}:/dev/{n.name}:rwm" for n in (host.root / "dev").glob("nvidia*")],
            environment={"NVP_VOLUMES_DIR": str(volumes_dir),
                         "FAKE_NVML_CONFIG": "/etc/fakenvml.json"},
        )
        container.host = host  # type: ignore[attr-defined]
        try:
            yield container
        finally:
            for volume in docker_engine.client.volumes.list(filters={"driver": "nvidia-docker"}):
                # The plugin may be stopped already; force drops Docker's record anyway.
                with contextlib.suppress(docker.errors.APIError):
                    volume.remove(force=True)
            container.remove(force=True)


def wait_until_serving(container, timeout: float = 120.0) -> None:
    """Until our container serves the socket. The plugin name is host-global: on a shared
    machine another test's daemon may hold the socket for a while, so that case is retried."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        logs = container.logs().decode(errors="replace")
        if container.status != "running":
            if "already serving" not in logs:
                raise AssertionError(f"plugin container stopped ({container.status}):\n{logs}")
            time.sleep(1)
            container.start()
            continue
        if "Serving plugin API" in logs and _unix_post(
                PLUGIN_SOCKET_DIR / "nvidia-docker.sock", "/Plugin.Activate"):
            return
        time.sleep(0.2)
    raise AssertionError(f"plugin container not serving:\n{container.logs().decode()}")


def test_image_is_small(plugin_image):
    added = image.image_size(plugin_image) - image.image_size(image.BASE_TAG)
    print(f"image {image.image_size(plugin_image) / 1e6:.1f} MB, "
          f"{added / 1e6:.1f} MB over the base")
    assert 0 < added < MAX_ADDED_BYTES


def test_version_from_the_image(plugin_image, docker_engine):
    out = docker_engine.client.containers.run(plugin_image, ["-v"], network_mode="none",
                                              remove=True)
    assert out.decode().strip().startswith("NVIDIA Docker plugin: ")


def test_daemon_in_a_container_serves_a_volume_to_another_container(
        plugin_container, docker_engine, make_image):
    container = plugin_container
    version = container.host.version
    wait_until_serving(container)
    socket_path = PLUGIN_SOCKET_DIR / "nvidia-docker.sock"
    socket_inode = os.lstat(socket_path).st_ino
    client = docker_engine.client

    name = f"nvidia_driver_{version}"
    volume = client.volumes.create(name, driver="nvidia-docker")
    mountpoint = Path(volume.attrs["Mountpoint"])
    # Docker bind-mounts this host path: it must be where the daemon wrote the volume.
    assert (mountpoint / "lib64" / f"libnvidia-ml.so.{version}").is_file()
    listing = client.containers.run(
        make_image(), ["sh", "-c", "ls /usr/local/nvidia/lib64 /usr/local/nvidia/bin"],
        volumes={name: {"bind": "/usr/local/nvidia", "mode": "ro"}}, network_mode="none",
        remove=True).decode()
    assert f"libnvidia-ml.so.{version}" in listing
    assert f"libcuda.so.{version}" in listing
    assert "nvidia-smi" in listing

    exit_code, output = container.exec_run(["nvidia-docker-plugin", "doctor", "--json"])
    checks = {c["check"]: c for c in json.loads(output)}
    for passing in ("driver-module", "driver-libraries", "nvml", "device-nodes", "nvidia-uvm",
                    "plugin-socket", "volumes-dir", "stale-volumes", "rest-api"):
        assert checks[passing]["status"] == "PASS", checks[passing]
    # /host is another mount than the volumes dir: files are copied, and doctor says so.
    assert "copied" in checks["volumes-dir"]["detail"]
    assert checks["docker"]["status"] == "FAIL" and exit_code == 1  # no docker.sock inside

    volume.remove()
    container.stop(timeout=40)  # SIGTERM (STOPSIGNAL)
    assert container.wait(timeout=60)["StatusCode"] == 0
    logs = container.logs().decode(errors="replace")
    assert logs.rstrip().endswith("Successfully terminated"), logs
    # Our socket is gone (a successor's socket would be another inode).
    try:
        st = os.lstat(socket_path)
    except FileNotFoundError:
        return
    assert not (stat.S_ISSOCK(st.st_mode) and st.st_ino == socket_inode)
