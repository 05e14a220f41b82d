"""Device paths as the Docker host sees them: `devices.docker_host_path` and the `--device` values
built from it (`launch_args.docker_device`, `launch_args.docker_args`)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from nvplugin.api import launch_args
from nvplugin.core.errors import ConfigError
from nvplugin.core.hostpath import docker_host_path
from nvplugin.gpu.devnodes import selection_nodes
from nvplugin.gpu.records import DeviceNode, Gpu
from nvplugin.gpu.selection import Selection
from tests.rest import records


@pytest.mark.parametrize(("path", "host_root", "expected"), [
    # The daemon on the host: every path is already the host's, including a driver container's.
    ("/dev/nvidia0", "/", "/dev/nvidia0"),
    ("/run/nvidia/driver/dev/nvidia0", "/", "/run/nvidia/driver/dev/nvidia0"),
    # Our image: the host's / at /host.
    ("/host/dev/nvidia0", "/host", "/dev/nvidia0"),
    ("/host/dev/nvidia-caps/nvidia-cap12", "/host", "/dev/nvidia-caps/nvidia-cap12"),
    ("/host/run/nvidia/driver/dev/nvidiactl", "/host", "/run/nvidia/driver/dev/nvidiactl"),
    ("/mnt/host root/dev/nvidia1", "/mnt/host root", "/dev/nvidia1"),
    # Spelling: trailing and doubled slashes, `.` and harmless `..`, a leading `//`.
    ("/host/dev/nvidia0", "/host/", "/dev/nvidia0"),
    ("//host//dev/./nvidia0", "//host", "/dev/nvidia0"),
    ("/host/run/../dev/nvidia0", "/host", "/dev/nvidia0"),
    ("/host", "/host", "/"),
], ids=["on-host", "driver-container", "image", "mig-cap", "image+driver-container", "spaces",
        "trailing-slash", "untidy", "dotdot-inside", "the-root-itself"])
def test_paths_under_the_host_root_are_made_the_hosts(path, host_root, expected):
    assert docker_host_path(path, host_root) == expected


@pytest.mark.parametrize(("path", "host_root"), [
    ("/dev/nvidia0", "/host"),             # the plugin container's own /dev: not the host's
    ("/hostile/dev/nvidia0", "/host"),     # a prefix of the name is not a parent directory
    ("/host/../dev/nvidia0", "/host"),     # `..` cannot climb out
    ("/run/nvidia/driver/dev/nvidia0", "/host"),
])
def test_paths_outside_the_host_root_are_refused_and_named(path, host_root):
    with pytest.raises(ConfigError) as caught:
        docker_host_path(path, host_root)
    assert f"is not under --host-root {host_root}" in caught.value.message
    assert "cannot see it" in caught.value.message


def test_relative_paths_are_refused():
    with pytest.raises(ConfigError, match=r"device path 'host/dev/nvidia0' is relative"):
        docker_host_path("host/dev/nvidia0", "/")


@pytest.mark.parametrize(("host_path", "host_root", "expected"), [
    ("/dev/nvidia0", "/", "/dev/nvidia0"),                      # 1.0's form: no `:container`
    ("/host/dev/nvidia0", "/host", "/dev/nvidia0"),              # same on the host: 1.0's form
    ("/run/drv/dev/nvidia0", "/", "/run/drv/dev/nvidia0:/dev/nvidia0"),
    ("/host/run/drv/dev/nvidia0", "/host", "/run/drv/dev/nvidia0:/dev/nvidia0"),
])
def test_device_values(host_path, host_root, expected):
    assert launch_args.docker_device(host_path, "/dev/nvidia0", host_root) == expected


def _host_nodes(root: str) -> tuple[list[DeviceNode], list]:
    control = [DeviceNode(f"{root}/dev/{name}", f"/dev/{name}")
               for name in ("nvidiactl", "nvidia-uvm")]
    gpus = [records.gpu(i, minor=i + 2, path=f"/dev/nvidia{i + 2}",
                        host_path=f"{root}/dev/nvidia{i + 2}") for i in (1, 0)]
    return control, gpus


def test_the_images_nodes_are_given_as_the_hosts_own():
    # The README's container: --dev-root /host, --host-root /host. The bug was handing Docker
    # `/host/dev/...`, which exists only inside the plugin container.
    control, gpus = _host_nodes("/host")
    args = launch_args.docker_args("580.159.04", ["nvidia_driver"], [*control, *gpu_nodes(gpus)],
                                   host_root="/host")
    assert args.devices == ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia2", "/dev/nvidia3")
    assert launch_args.docker_cli_text(args) == (
        "--volume-driver=nvidia-docker --volume=nvidia_driver_580.159.04:/usr/local/nvidia:ro "
        "--device=/dev/nvidiactl --device=/dev/nvidia-uvm --device=/dev/nvidia2 "
        "--device=/dev/nvidia3"
    )
    assert '"Devices":["/dev/nvidiactl","/dev/nvidia-uvm","/dev/nvidia2","/dev/nvidia3"]' in (
        launch_args.docker_cli_json(args))


def test_a_driver_container_seen_from_the_image_keeps_its_host_path():
    control, gpus = _host_nodes("/host/run/nvidia/driver")
    args = launch_args.docker_args("580.159.04", [], [*control, *gpu_nodes(gpus)],
                                   host_root="/host")
    assert args.devices == tuple(
        f"/run/nvidia/driver/dev/{n}:/dev/{n}"
        for n in ("nvidiactl", "nvidia-uvm", "nvidia2", "nvidia3"))


def test_a_node_outside_the_host_root_fails_the_whole_answer():
    control, gpus = _host_nodes("/host")
    control.append(DeviceNode("/dev/nvidia-modeset", "/dev/nvidia-modeset"))
    with pytest.raises(ConfigError, match="/dev/nvidia-modeset is not under --host-root /host"):
        launch_args.docker_args("580.159.04", [], [*control, *gpu_nodes(gpus)],
                                   host_root="/host")


def gpu_nodes(gpus: Iterable[Gpu]) -> tuple[DeviceNode, ...]:
    """The nodes of whole GPUs, as the REST API gets them."""
    return selection_nodes(Selection(gpus=tuple(gpus)))
