"""1.0's documented use of the REST API, end to end: `docker run $(curl .../docker/cli) ...` with
the real daemon on a fake GPU host and the real Docker Engine."""

from __future__ import annotations

import json
import shlex
import subprocess
import urllib.request
from collections.abc import Callable

from tests.dockerenv import DockerEngine, ImageFactory, PluginDaemon
from tests.requirements import need_tool

StartPlugin = Callable[..., PluginDaemon]


def devices_in(listing: str) -> set[str]:
    return {name for name in listing.split() if name.startswith("nvidia")}


def test_docker_run_with_docker_cli_arguments(running_plugin: StartPlugin,
                                              make_image: ImageFactory) -> None:
    curl = need_tool("curl")
    plugin = running_plugin(n_gpus=2)
    image = make_image()
    url = shlex.quote(f"{plugin.url}/v1.0/docker/cli?dev=1")
    inside = "ls /dev; echo ---; ls /usr/local/nvidia/lib64; echo ---; cat /proc/self/mounts"
    # As 1.0's README: the answer is spliced unquoted into docker's command line.
    script = f"docker run --rm --net=none $({curl} -s {url}) {image} sh -c '{inside}'"
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    dev, libs, mounts = done.stdout.split("---")
    assert devices_in(dev) - {"nvidia-modeset"} == {"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools",
                                                    "nvidia1"}
    assert "libcuda.so.1" in libs.split() and "libnvidia-ml.so.1" in libs.split()
    mount = next(line for line in mounts.splitlines() if " /usr/local/nvidia " in line)
    assert mount.split()[3].split(",")[0] == "ro"


def test_docker_cli_json_drives_the_sdk(running_plugin: StartPlugin, make_image: ImageFactory,
                                        docker_engine: DockerEngine) -> None:
    plugin = running_plugin(n_gpus=2)
    with urllib.request.urlopen(f"{plugin.url}/docker/cli/json?dev=0", timeout=30) as response:
        args = json.loads(response.read())
    assert args["VolumeDriver"] == "nvidia-docker"
    (volume,) = args["Volumes"]
    name, target, mode = volume.split(":")
    docker_engine.api.create_volume(name, driver=args["VolumeDriver"])
    output = docker_engine.client.containers.run(
        make_image(), ["sh", "-c", "ls /dev; ls /usr/local/nvidia/lib64"],
        devices=[f"{d}:rwm" for d in args["Devices"]], volumes={name: {"bind": target,
                                                                       "mode": mode}},
        network_mode="none", remove=True,
    ).decode()
    assert "nvidia0" in devices_in(output) and "nvidia1" not in devices_in(output)
    assert "libcuda.so.1" in output.split()


def test_a_mig_device_reaches_the_container_with_its_access_nodes_only(
        running_plugin: StartPlugin, make_image: ImageFactory) -> None:
    curl = need_tool("curl")
    plugin = running_plugin(n_gpus=2, mig={(1, 0): (12, 13), (2, 0): (21, 22)})
    url = shlex.quote(f"{plugin.url}/v1.0/docker/cli?dev=0:1")
    script = (f"docker run --rm --net=none $({curl} -s {url}) {make_image()} "
              "sh -c 'ls /dev; echo ---; ls /dev/nvidia-caps'")
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    dev, caps = done.stdout.split("---")
    # The parent GPU's node and the second MIG device's GPU and compute instance access nodes:
    # not GPU 1, not the first MIG device's.
    assert devices_in(dev) - {"nvidia-modeset"} == {"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools",
                                                    "nvidia0", "nvidia-caps"}
    assert caps.split() == ["nvidia-cap21", "nvidia-cap22"]

