"""The renderers over records: 1.0's text pages byte for byte, JSON key order, docker/mesos args."""

from __future__ import annotations

import base64
import json
import os
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from nvplugin.api import json_docs, launch_args, text_pages
from nvplugin.core.errors import SelectionError
from nvplugin.gpu import selection
from nvplugin.gpu.devnodes import selection_nodes
from nvplugin.gpu.readings import GpuStatus
from nvplugin.gpu.records import DeviceNode, Gpu, GpuInventory
from tests.rest import records

GOLDEN = Path(__file__).parent / "golden"
# NVP_UPDATE_GOLDENS=1 rewrites the modern-host goldens; the v1 samples are copied from the 1.0 doc
# and are never rewritten.
UPDATE = os.environ.get("NVP_UPDATE_GOLDENS") == "1"

Host = Callable[[], tuple[GpuInventory, tuple[GpuStatus, ...]]]


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if UPDATE and not name.startswith("v1_sample"):
        path.write_text(actual, encoding="utf-8")
    assert actual == path.read_text(encoding="utf-8"), f"differs from golden {name}"


@pytest.mark.parametrize("host", sorted(records.HOSTS))
def test_gpu_info_text_matches_golden(host: str) -> None:
    inventory, _ = records.HOSTS[host]()
    check_golden(f"{host}_info.txt", text_pages.gpu_info_text(inventory))


@pytest.mark.parametrize("host", sorted(records.HOSTS))
def test_gpu_status_text_matches_golden(host: str) -> None:
    inventory, statuses = records.HOSTS[host]()
    check_golden(f"{host}_status.txt", text_pages.gpu_status_text(inventory, statuses))


@pytest.mark.parametrize("host", ["one_gpu", "two_gpu"])
def test_json_matches_golden(host: str) -> None:
    inventory, statuses = records.HOSTS[host]()
    check_golden(f"{host}_info.json", json_docs.gpu_info_json(inventory))
    check_golden(f"{host}_status.json", json_docs.gpu_status_json(statuses))


V1_INFO_KEYS = ["UUID", "Path", "Model", "Power", "CPUAffinity", "PCI", "Clocks", "Topology",
                "Family", "Arch", "Cores", "Memory"]
V1_STATUS_KEYS = ["Power", "Temperature", "Utilization", "Memory", "Clocks", "PCI", "Processes"]
# §3.2's device 0 as 1.0 printed it (the doc elides the UUID).
V1_DEVICE0 = (
    '{"UUID":"GPU-11111111-2222-3333-4444-555555555555","Path":"/dev/nvidia0",'
    '"Model":"Tesla P100-SXM2-16GB","Power":300,"CPUAffinity":0,'
    '"PCI":{"BusID":"0000:06:00.0","BAR1":16384,"Bandwidth":15760},'
    '"Clocks":{"Cores":1480,"Memory":715},"Topology":[{"BusID":"0000:07:00.0","Link":6}],'
    '"Family":"Pascal","Arch":"6.0","Cores":3584,"Memory":{"ECC":true,"Global":16276,'
    '"Shared":64,"Constant":64,"L2Cache":4096,"Bandwidth":732}}'
)
V1_STATUS0 = (
    '{"Power":35,"Temperature":33,"Utilization":{"GPU":0,"Memory":0,"Encoder":0,"Decoder":0},'
    '"Memory":{"GlobalUsed":0,"ECCErrors":{"L1Cache":0,"L2Cache":0,"Global":0}},'
    '"Clocks":{"Cores":405,"Memory":715},"PCI":{"BAR1Used":2,"Throughput":{"RX":0,"TX":0}},'
    '"Processes":null}'
)


def restrict(value: object, like: object) -> object:
    """`value` cut down to the keys `like` has, recursively, in `value`'s own order."""
    if isinstance(value, dict) and isinstance(like, dict):
        return {k: restrict(v, like[k]) for k, v in value.items() if k in like}
    if isinstance(value, list) and isinstance(like, list) and like:
        return [restrict(v, like[0]) for v in value]
    return value


def test_info_json_keeps_v1_keys_values_and_order() -> None:
    inventory, _ = records.v1_sample_host()
    body = json_docs.gpu_info_json(inventory)
    assert body.endswith("}\n") and body.count("\n") == 1
    document = json.loads(body)
    assert list(document) == ["Version", "Devices"]
    assert document["Version"] == {"Driver": "375.26", "CUDA": "8.0"}
    device0 = document["Devices"][0]
    assert list(device0)[: len(V1_INFO_KEYS)] == V1_INFO_KEYS
    v1 = json.loads(V1_DEVICE0)
    assert json.dumps(restrict(device0, v1), separators=(",", ":")) == V1_DEVICE0
    # The GTX 1080 row: unsupported fields are null, empty topology is null.
    device1 = document["Devices"][1]
    assert device1["Topology"] is None and device1["Family"] is None
    assert device1["PCI"]["BAR1"] is None and device1["Clocks"] == {"Cores": None, "Memory": None}


def test_status_json_keeps_v1_keys_and_adds_sample_times() -> None:
    _, statuses = records.v1_sample_host()
    document = json.loads(json_docs.gpu_status_json(statuses))
    status0 = document["Devices"][0]
    assert list(status0)[: len(V1_STATUS_KEYS)] == V1_STATUS_KEYS
    v1 = json.loads(V1_STATUS0)
    assert json.dumps(restrict(status0, v1), separators=(",", ":")) == V1_STATUS0
    assert status0["SampledAt"] == "2026-11-29T07:16:44.250Z"
    assert status0["PCI"]["Throughput"]["SampledAt"] == "2026-11-29T07:16:43.000Z"
    assert document["Devices"][1]["Processes"] == [
        {"PID": 1234, "Name": "python", "MemoryUsed": 147}
    ]


def test_json_escapes_html_like_go() -> None:
    inventory, _ = records.one_gpu_host()
    gpu = records.gpu(0, model="<b>&\u2028")
    body = json_docs.gpu_info_json(GpuInventory(inventory.versions, (gpu,)))
    assert '"Model":"\\u003cb\\u003e\\u0026\\u2028"' in body
    assert json.loads(body)["Devices"][0]["Model"] == "<b>&\u2028"


def test_text_escapes_control_characters_in_names() -> None:
    inventory, statuses = records.two_gpu_host()
    text = text_pages.gpu_status_text(inventory, statuses)
    assert "      Name:    tab\\x09here\\x0anewline\n" in text
    assert "Memory:  N/A" in text  # a process whose memory NVML could not read


def test_status_pairs_need_both_readings() -> None:
    inventory, _ = records.one_gpu_host()
    full = text_pages.gpu_status_text(inventory, (records.status(0),))
    assert "  Power:        74 / 700 W\n" in full
    assert "    Global:  0 / 143771 MiB\n" in full
    no_total = text_pages.gpu_status_text(GpuInventory(inventory.versions, ()),
                                           (records.status(0),))
    assert "  Power:        N/A\n" in no_total and "    BAR1:  N/A\n" in no_total


def test_zero_prints_as_zero_not_na() -> None:
    inventory = GpuInventory(records.MODERN_VERSIONS, (records.gpu(0, cpu_affinity=0, cores=0),))
    text = text_pages.gpu_info_text(inventory)
    assert "  CPU Affinity:  NUMA node0\n" in text and "  Cores:         0\n" in text


def test_no_gpus() -> None:
    inventory = GpuInventory(records.MODERN_VERSIONS, ())
    assert text_pages.gpu_info_text(inventory) == (
        "\nDriver version:          580.159.04\nSupported CUDA version:  13.0\n\n"
    )
    assert text_pages.gpu_status_text(inventory, ()) == "\n"
    assert json_docs.gpu_info_json(inventory) == (
        '{"Version":{"Driver":"580.159.04","CUDA":"13.0"},"Devices":[]}\n'
    )
    assert json_docs.gpu_status_json(()) == '{"Devices":[]}\n'


class Node:
    def __init__(self, host_path: str, path: str) -> None:
        self.host_path, self.path = host_path, path


CONTROL = [Node("/dev/nvidiactl", "/dev/nvidiactl"), Node("/dev/nvidia-uvm", "/dev/nvidia-uvm"),
           Node("/dev/nvidia-uvm-tools", "/dev/nvidia-uvm-tools")]


def test_docker_cli_text_is_v1_line() -> None:
    inventory, _ = records.v1_sample_host()
    args = launch_args.docker_args("375.26", ["nvidia_driver"],
                                   [*CONTROL, *gpu_nodes(reversed(inventory.gpus))], host_root="/")
    assert launch_args.docker_cli_text(args) == (
        "--volume-driver=nvidia-docker --volume=nvidia_driver_375.26:/usr/local/nvidia:ro "
        "--device=/dev/nvidiactl --device=/dev/nvidia-uvm --device=/dev/nvidia-uvm-tools "
        "--device=/dev/nvidia0 --device=/dev/nvidia1"
    )
    assert launch_args.docker_cli_json(args) == (
        '{"VolumeDriver":"nvidia-docker","Volumes":["nvidia_driver_375.26:/usr/local/nvidia:ro"],'
        '"Devices":["/dev/nvidiactl","/dev/nvidia-uvm","/dev/nvidia-uvm-tools","/dev/nvidia0",'
        '"/dev/nvidia1"]}\n'
    )


def test_docker_args_map_host_paths_under_another_dev_root() -> None:
    gpu = records.gpu(0, minor=2, path="/dev/nvidia2", host_path="/run/drv/dev/nvidia2")
    nodes = [Node("/run/drv/dev/nvidiactl", "/dev/nvidiactl")]
    args = launch_args.docker_args("580.159.04", [], [*nodes, *gpu_nodes([gpu])], host_root="/")
    assert args.devices == ("/run/drv/dev/nvidiactl:/dev/nvidiactl",
                            "/run/drv/dev/nvidia2:/dev/nvidia2")
    assert launch_args.docker_cli_text(args) == (
        "--volume-driver=nvidia-docker --device=/run/drv/dev/nvidiactl:/dev/nvidiactl "
        "--device=/run/drv/dev/nvidia2:/dev/nvidia2"
    )


@pytest.mark.parametrize(
    "spec", [None, "", "*", " ", "nvidia_driver", "nvidia_driver nvidia_driver"]
)
def test_volume_selector_accepts(spec: str | None) -> None:
    assert launch_args.volume_kinds(spec) == ("nvidia_driver",)


@pytest.mark.parametrize(
    ("spec", "item"),
    [("nvidia_driver_375.26", "nvidia_driver_375.26"), ("nvidia_driver,x", "nvidia_driver,x"),
     ("nvidia_driver cuda", "cuda"), ("* nvidia_driver", "*"), ("$(id)", "$(id)")],
    ids=["versioned-name", "comma", "second-item", "star-among-items", "shell"],
)
def test_volume_selector_rejects(spec: str, item: str) -> None:
    with pytest.raises(SelectionError) as caught:
        launch_args.volume_kinds(spec)
    assert str(caught.value) == f"invalid volume: {item}"


def test_quote_item_cuts_and_escapes() -> None:
    assert selection.quote_item("a\nb\x1b[31m\u202e\\") == "a\\x0ab\\x1b[31m\\u202e\\\\"
    long = "x" * 10_000
    assert selection.quote_item(long) == "x" * 64 + "..."
    assert selection.quote_item("é" * 70) == "é" * 64 + "..."


def test_mesos_cli_packs_the_exact_info_json() -> None:
    inventory, _ = records.v1_sample_host()
    line = launch_args.mesos_cli_text(inventory)
    attributes, resources = line.split(" ")
    assert resources == (
        "--resources=gpus:{GPU-11111111-2222-3333-4444-555555555555,"
        "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee}"
    )
    encoded = attributes.removeprefix("--attributes=gpus:")
    assert "=" not in encoded and "+" not in encoded and "/" not in encoded
    packed = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    assert zlib.decompress(packed).decode() == json_docs.gpu_info_json(inventory)


def gpu_nodes(gpus: Iterable[Gpu]) -> tuple[DeviceNode, ...]:
    """The nodes of whole GPUs, as the REST API gets them."""
    return selection_nodes(selection.Selection(gpus=tuple(gpus)))
