"""The command-line answers: 1.0's docker/cli (and its JSON) and mesos/cli, and cdi/cli's
`--device` values for engines that read CDI specs.

Pure: the volumes per kind, control nodes and selected GPUs in, arguments out.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from nvplugin.api.json_docs import go_json, gpu_info_json
from nvplugin.core.errors import SelectionError
from nvplugin.core.hostpath import docker_host_path
from nvplugin.core.names import PLUGIN_NAME, VOLUME_KINDS
from nvplugin.gpu.records import GpuInventory
from nvplugin.gpu.selection import quote_item


class DeviceNodeLike(Protocol):
    @property
    def host_path(self) -> str: ...
    @property
    def path(self) -> str: ...


def volume_kinds(spec: str | None) -> tuple[str, ...]:
    """1.0's `vol=` selector: kind names separated by spaces; absent, empty or `*` is all kinds."""
    if spec is None or spec.strip(" ") in ("", "*"):
        return tuple(VOLUME_KINDS)
    wanted = [item for item in spec.split(" ") if item]
    for item in wanted:
        if item not in VOLUME_KINDS:
            raise SelectionError(f"invalid volume: {quote_item(item)}")
    return tuple(kind for kind in VOLUME_KINDS if kind in wanted)


@dataclass(frozen=True, slots=True)
class DockerArgs:
    """The docker run arguments that give a container its GPUs and the driver volume."""

    volume_driver: str
    volumes: tuple[str, ...]  # name:mountpoint:options
    devices: tuple[str, ...]  # path, or host path:path when the Docker host has it elsewhere


def docker_device(host_path: str, path: str, host_root: str) -> str:
    """One `--device` value: `/dev/nvidia0` as 1.0 printed it when the Docker host has the node
    at the container's path, `<path on the Docker host>:/dev/nvidia0` otherwise."""
    host = docker_host_path(host_path, host_root)
    return path if host == path else f"{host}:{path}"


def docker_args(
    driver_version: str,
    kinds: Iterable[str],
    nodes: Iterable[DeviceNodeLike],
    *,
    host_root: str,
) -> DockerArgs:
    """What `docker run` needs: volumes per kind, then the nodes in the order given (control
    nodes, then a selection's: `devnodes.selection_nodes`).

    Docker opens device nodes on its own host: `host_root` is where that host's `/` appears to
    this daemon (`--host-root`), and every node path is given as the Docker host sees it.
    """
    volumes = tuple(
        f"{kind}_{driver_version}:{VOLUME_KINDS[kind][0]}:{VOLUME_KINDS[kind][1]}" for kind in kinds
    )
    devices = tuple(docker_device(node.host_path, node.path, host_root) for node in nodes)
    return DockerArgs(PLUGIN_NAME, volumes, devices)


def docker_cli_text(args: DockerArgs) -> str:
    """One line, no trailing newline, ready for `docker run $(curl ...)`."""
    words = [f"--volume-driver={args.volume_driver}"]
    words += [f"--volume={volume}" for volume in args.volumes]
    words += [f"--device={device}" for device in args.devices]
    return " ".join(words)


def docker_cli_json(args: DockerArgs) -> str:
    return go_json(
        {"VolumeDriver": args.volume_driver, "Volumes": list(args.volumes),
         "Devices": list(args.devices)}
    )


def cdi_cli_text(devices: Iterable[str]) -> str:
    """`--device=nvidia.com/gpu=<name> ...` on one line, for `podman run $(curl ...)` and any
    engine that reads CDI specs."""
    return " ".join(f"--device={device}" for device in devices)


def cdi_cli_json(devices: Iterable[str]) -> str:
    return go_json({"Devices": list(devices)})


def mesos_cli_text(inventory: GpuInventory) -> str:
    """`--attributes=gpus:<zlib+base64url of gpu/info/json> --resources=gpus:{uuid,...}`."""
    packed = zlib.compress(gpu_info_json(inventory).encode())
    attribute = base64.urlsafe_b64encode(packed).rstrip(b"=").decode("ascii")
    uuids = ",".join(gpu.uuid for gpu in inventory.gpus)
    return f"--attributes=gpus:{attribute} --resources=gpus:{{{uuids}}}"
