"""The Dockerfile, proven end to end: a local base image (debootstrap + docker import, no
registry), an offline `docker build`, the daemon in a container on a fake GPU host, a volume
created through it and mounted by another container, doctor inside it, a clean SIGTERM stop, and
its docker/cli answers used by the host's Docker (plain `docker run $(curl ...)`, the JSON form,
and `nvidia-docker run`).

The plugin container is started as the README says: the host's real `/` at `/host` (read-only,
rslave) and the image's own NVP_HOST_ROOT. Only the driver and dev roots point further in, at the
fake host `<root>` (`/host<root>`), since this host has no NVIDIA driver of its own. So the nodes
the daemon reads at `/host<root>/dev/nvidia0` exist on the Docker host only at `<root>/dev/nvidia0`:
an answer naming the container's path, or a missing NVP_HOST_ROOT, makes `docker run` fail.

Slow the first time (debootstrap, ~1-2 min); the rootfs and wheels are cached afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.dockerenv import E2E_LOCK, PLUGIN_SOCKET_DIR, free_port
from tests.packaging import image
from tests.requirements import need, need_root
from tests.unixhttp import unix_post

pytestmark = [pytest.mark.docker, pytest.mark.root]

IMAGE_TAG = "nvplugin-ci/plugin:test"
# The image adds the venv (nvplugin and its dependencies) to the base: keep that layer small.
MAX_ADDED_BYTES = 40 * 1000 * 1000
N_GPUS = 2
GPU_LABELS = {"com.nvidia.volumes.needed": "nvidia_driver"}


@pytest.fixture(scope="module")
def plugin_image(docker_engine, tmp_path_factory) -> str:
    need_root()
    debootstrap = shutil.which("debootstrap") or shutil.which("/usr/sbin/debootstrap")
    need(image.image_exists(image.BASE_TAG) or debootstrap is not None,
         "debootstrap (apt-get install debootstrap) to make the base image")
    base = image.ensure_base_image(debootstrap)
    context = image.build_context(tmp_path_factory.mktemp("context"), image.python_of(base))
    return image.build_image(context, base, IMAGE_TAG)


def root_mount_mode() -> str:
    """The README's `ro,rslave` for `-v /:/host`; Docker refuses rslave when the host's / is a
    private mount (a CI machine that is itself a container), and then plain `ro` does here: the
    fake host exists before the container starts, so no later mount needs to propagate."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ")[0].split()
        if fields[4] == "/":
            shared = any(f.startswith(("shared:", "master:")) for f in fields[6:])
            return "ro,rslave" if shared else "ro"
    return "ro"


@pytest.fixture
def plugin_container(plugin_image, docker_engine, gpu_host_factory, tmp_path,
                     ) -> Iterator[docker.models.containers.Container]:
    # The plugin name and socket are host-wide: hold the lock every daemon-starting test takes.
    with open(E2E_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        host = gpu_host_factory(n_gpus=N_GPUS)
        root = host.root.resolve()
        for node in (root / "dev").glob("nvidia*"):
            node.chmod(0o666)
        volumes_dir = tmp_path / "volumes"
        volumes_dir.mkdir()
        PLUGIN_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        port = free_port()
        container = docker_engine.client.containers.run(
            # --net host as in the README: the REST API is the host's 127.0.0.1:<port>.
            plugin_image, detach=True, network_mode="host", name=f"nvplugin-image-{os.getpid()}",
            volumes={
                "/": {"bind": "/host", "mode": root_mount_mode()},
                str(PLUGIN_SOCKET_DIR): {"bind": str(PLUGIN_SOCKET_DIR), "mode": "rw"},
                str(volumes_dir): {"bind": str(volumes_dir), "mode": "rw"},
            },
            # As on a real host: NVML opens the nodes, so the device cgroup must allow them.
            devices=[f"{n}:/dev/{n.name}:rwm" for n in (root / "dev").glob("nvidia*")],
            # NVP_HOST_ROOT is the image's (/host): this test fails if the Dockerfile drops it.
            environment={"NVP_DRIVER_ROOT": f"/host{root}", "NVP_DEV_ROOT": f"/host{root}",
                         "NVP_LISTEN": f"127.0.0.1:{port}",
                         "NVP_VOLUMES_DIR": str(volumes_dir),
                         "FAKE_NVML_CONFIG": f"/host{host.nvml_config.resolve()}"},
        )
        container.host = host  # type: ignore[attr-defined]
        container.root = root  # type: ignore[attr-defined]
        container.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
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
        if "Serving plugin API" in logs and unix_post(
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


def rest_get(url: str, timeout: float = 60.0) -> str:
    """The body of a 200 answer; retried while the daemon is still starting its REST API."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError) as err:
            if isinstance(err, urllib.error.HTTPError) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# busybox `ls -l` of a character device: `crw-rw-rw-  1 root  root  195,   1 Jan  1 00:00 /dev/x`
LS_NODE = re.compile(r"^c\S*\s+\d+\s+\S+\s+\S+\s+(\d+),\s*(\d+)\s.*\s(/dev/\S+)$", re.MULTILINE)
SHOW = "ls -l /dev/nvidia*; echo ---; ls /usr/local/nvidia/lib64"


def seen_inside(output: str) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """(container path -> (major, minor) of every /dev/nvidia* node, the driver libraries)."""
    nodes, _, libs = output.partition("---")
    found = {path: (int(major), int(minor)) for major, minor, path in LS_NODE.findall(nodes)}
    return found, libs.split()


def test_docker_cli_of_the_containerised_daemon_works_on_the_hosts_docker(
        plugin_container, docker_engine, make_image):
    container, root = plugin_container, plugin_container.root
    version = container.host.version
    wait_until_serving(container)
    dev = f"{root}/dev"
    # Docker opens --device paths on its host: the fake host's nodes are at <root>/dev there,
    # while the daemon reads them at /host<root>/dev.
    cli = rest_get(container.url + "/v1.0/docker/cli?dev=1")
    expected = {"/dev/nvidiactl": (195, 255), "/dev/nvidia-uvm": (238, 0),
                "/dev/nvidia-uvm-tools": (238, 1)}

    # docker run $(curl -s localhost:3476/v1.0/docker/cli?dev=1) IMAGE ..., word-split as the
    # shell does, on the host's docker CLI.
    busybox = make_image()
    done = subprocess.run(["docker", "run", "--rm", "--net=none", *cli.split(), busybox,
                           "sh", "-c", SHOW], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"docker run {cli} ...:\n{done.stderr}"
    assert cli == (
        f"--volume-driver=nvidia-docker --volume=nvidia_driver_{version}:/usr/local/nvidia:ro "
        f"--device={dev}/nvidiactl:/dev/nvidiactl --device={dev}/nvidia-uvm:/dev/nvidia-uvm "
        f"--device={dev}/nvidia-uvm-tools:/dev/nvidia-uvm-tools "
        f"--device={dev}/nvidia1:/dev/nvidia1"
    )
    nodes, libs = seen_inside(done.stdout)
    assert nodes == {**expected, "/dev/nvidia1": (195, 1)}, done.stdout
    assert f"libnvidia-ml.so.{version}" in libs and "libcuda.so.1" in libs

    # The JSON form, used as 1.0's nvidia-docker did: Devices as HostConfig devices.
    document = json.loads(rest_get(container.url + "/v1.0/docker/cli/json?dev=0"))
    assert document["Devices"][-1] == f"{dev}/nvidia0:/dev/nvidia0"
    output = docker_engine.client.containers.run(
        busybox, ["sh", "-c", SHOW], devices=document["Devices"],
        volume_driver=document["VolumeDriver"], volumes=document["Volumes"],
        network_mode="none", remove=True).decode()
    nodes, libs = seen_inside(output)
    assert nodes == {**expected, "/dev/nvidia0": (195, 0)}, output
    assert f"libnvidia-ml.so.{version}" in libs

    # nvidia-docker run on the host, against the containerised daemon's REST API.
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("NV_", "DOCKER_"))}
    environ.update(PYTHONPATH=str(image.REPO), NV_HOST=container.url, NV_GPU="0,1")
    done = subprocess.run(
        [sys.executable, "-m", "nvplugin.wrapper", "run", "--rm", "--net=none",
         make_image(labels=GPU_LABELS), "sh", "-c", SHOW],
        env=environ, capture_output=True, text=True, timeout=120, cwd=image.REPO)
    assert done.returncode == 0, done.stderr
    nodes, libs = seen_inside(done.stdout)
    assert nodes == {**expected, "/dev/nvidia0": (195, 0), "/dev/nvidia1": (195, 1)}, done.stdout
    assert "libcuda.so.1" in libs
