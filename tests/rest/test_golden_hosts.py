"""Text pages of 1-GPU and 2-GPU fake hosts, with and without unsupported fields, byte for byte.

Through the real path: the fake NVML (C, loaded by the real pynvml) answers the real GpuService,
whose records the real REST app serves over HTTP. Live values are frozen in the fake's config, so
every page is reproducible; gpu/status/json carries sampling times and is left to test_live.py.
`NVP_UPDATE_GOLDENS=1` rewrites the goldens (tests/rest/golden/fakehost_*); review the diff.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from nvplugin.api import rest_app
from nvplugin.core.config import Config
from nvplugin.driver.manifest import Manifest
from nvplugin.gpu.cuda import CudaProperties
from nvplugin.gpu.service import GpuService
from tests.fakenvml.build import gpu, make_config
from tests.fakenvml.cuda import install_fake_cuda
from tests.rest.fakes import RecordCdi

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("NVP_UPDATE_GOLDENS") == "1"
MakeClient = Callable[..., Awaitable[TestClient]]

# Route -> (golden suffix, content type).
PAGES = {
    "/v1.0/gpu/info": ("info.txt", "text/plain"),
    "/v1.0/gpu/info/json": ("info.json", "application/json"),
    "/v1.0/gpu/status": ("status.txt", "text/plain"),
    "/v1.0/docker/cli": ("docker_cli.txt", "text/plain"),
    "/v1.0/docker/cli/json": ("docker_cli.json", "application/json"),
}

# Everything NVML may not support; identity (name aside) is required, so it stays.
OPTIONAL = ["name", "memory_total", "memory_used", "bar1_total", "bar1_used", "power_limit_mw",
            "power_usage_mw", "max_clock_graphics", "max_clock_sm", "max_clock_mem",
            "max_clock_video", "clock_graphics", "clock_sm", "clock_mem", "clock_video",
            "max_pcie_gen", "max_pcie_width", "pcie_rx_kbs", "pcie_tx_kbs", "util_gpu",
            "util_memory", "util_encoder", "util_decoder", "temperature", "compute_capability",
            "cores", "multiprocessors", "memory_bus_width", "numa_node", "ecc", "persistence",
            "mig_mode", "ecc_l1", "ecc_l2", "ecc_device_memory", "topology", "p2p", "nvlinks",
            "processes", "cuda_attributes"]


def _unsupported(entry: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    # Both spellings the fake accepts: null, and NVML's error named.
    for i, key in enumerate(keys):
        entry[key] = None if i % 2 else "NOT_SUPPORTED"
    return entry


def _busy(entry: dict[str, Any], **live: Any) -> dict[str, Any]:
    entry.update(power_usage_mw=412345, temperature=57, util_gpu=93, util_memory=41,
                 util_encoder=3, util_decoder=1, memory_used=81234 << 20, bar1_used=17 << 20,
                 clock_sm=1830, clock_graphics=1830, pcie_rx_kbs=9876543, pcie_tx_kbs=123456,
                 ecc_l2=2)
    entry.update(live)
    return entry


def one_gpu() -> dict[str, Any]:
    return make_config(gpus=[_busy(gpu(0), processes=[{"pid": 4242, "used_memory": 80000 << 20}])],
                       process_names={"4242": "python3"})


def one_gpu_unsupported() -> dict[str, Any]:
    return make_config(gpus=[_unsupported(gpu(0), OPTIONAL)], cuda_version="NOT_SUPPORTED",
                       cuda={"init_error": "CUDA_ERROR_NO_DEVICE"})


def two_gpus() -> dict[str, Any]:
    first = _busy(gpu(0), numa_node=0, processes=[{"pid": 4242, "used_memory": 80000 << 20},
                                                  {"pid": 5151, "used_memory": None}])
    second = gpu(1, numa_node=1, temperature=33, multiprocessors=132)
    # 4 direct NVLinks between the two, 2 to an NVSwitch
    first["nvlinks"] = [second["bus_id"]] * 4 + ["00000000:C0:00.0"] * 2 + [None] * 12
    second["nvlinks"] = [first["bus_id"]] * 4 + ["00000000:C0:00.0"] * 2 + [None] * 12
    # CUDA lists the second GPU first: the sizes must still land on the right GPU.
    second["cuda_attributes"] = {"total_constant_memory": 64 << 10, "l2_cache_size": 50 << 20,
                                 "max_shared_memory_per_multiprocessor": 164 << 10}
    return make_config(gpus=[first, second], process_names={"4242": "python3"},
                       cuda={"order": [1, 0]})


def two_gpus_unsupported() -> dict[str, Any]:
    # GPU 0 reports nothing optional; GPU 1 only its live readings are unsupported.
    first = _unsupported(gpu(0), OPTIONAL)
    second = _unsupported(gpu(1), ["power_usage_mw", "temperature", "util_encoder",
                                   "util_decoder", "ecc_l1", "ecc_l2", "ecc_device_memory",
                                   "pcie_rx_kbs", "pcie_tx_kbs", "clock_sm", "processes"])
    return make_config(gpus=[first, second])


HOSTS: dict[str, Callable[[], dict[str, Any]]] = {
    "1gpu": one_gpu,
    "1gpu_unsupported": one_gpu_unsupported,
    "2gpu": two_gpus,
    "2gpu_unsupported": two_gpus_unsupported,
}


@pytest.fixture
def host_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "host"
    (root / "dev").mkdir(parents=True)
    (root / "proc/driver/nvidia").mkdir(parents=True)
    # The control nodes are looked for by existence; the GPU nodes come from NVML's minors.
    for name in ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia0", "nvidia1"):
        (root / "dev" / name).touch()
    # A process NVML cannot name is named from the host's /proc.
    (root / "proc/5151").mkdir()
    (root / "proc/5151/comm").write_text("worker\n")
    yield root


async def _pages(fake_nvml, fake_cuda_lib: Path, host_root: Path, aiohttp_client: MakeClient,
                 config: dict) -> dict[str, tuple[bytes, str]]:
    fake_nvml.write(config)
    install_fake_cuda(host_root, fake_cuda_lib)  # Constant, Shared, L2 Cache come from libcuda
    for entry in config["gpus"]:
        if isinstance(entry.get("numa_node"), int):
            # sysfs agrees with NVML, so an nvidia-ml-py without the NUMA wrapper reads the same
            sysfs = host_root / "sys/bus/pci/devices" / entry["bus_id"][4:].lower()
            sysfs.mkdir(parents=True)
            (sysfs / "numa_node").write_text(f"{entry['numa_node']}\n")
    service = await GpuService.start(driver_root=host_root, dev_root=host_root,
                                     nvml_library=str(fake_nvml.library),
                                     cuda=CudaProperties(host_root))
    try:
        assert service.available, service.reason
        manifest = Manifest(version=await service.driver_version())
        # --host-root is the fake host's root, so its /dev/nvidia0 is the Docker host's.
        app = rest_app.make_app(service, lambda: manifest,
                                Config(driver_root=host_root, dev_root=host_root,
                                       host_root=host_root), RecordCdi())
        client = await aiohttp_client(app)
        pages = {}
        for route in PAGES:
            response = await client.get(route)
            assert response.status == 200, (route, await response.text())
            pages[route] = (await response.read(), response.content_type)
        return pages
    finally:
        await service.close()


def check_golden(name: str, actual: bytes) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_bytes(actual)
    assert path.is_file(), f"no golden {name}: run with NVP_UPDATE_GOLDENS=1 and review it"
    assert actual == path.read_bytes(), f"differs from golden {name}"


@pytest.mark.parametrize("host", sorted(HOSTS))
async def test_pages_match_goldens(host: str, fake_nvml, fake_cuda_lib: Path, host_root: Path,
                                   aiohttp_client: MakeClient) -> None:
    pages = await _pages(fake_nvml, fake_cuda_lib, host_root, aiohttp_client, HOSTS[host]())
    for route, (suffix, content_type) in PAGES.items():
        body, served_as = pages[route]
        assert served_as == content_type, route
        check_golden(f"fakehost_{host}_{suffix}", body)


def test_the_goldens_show_what_the_hosts_differ_in() -> None:
    """The goldens are not vacuous: unsupported fields read N/A, supported ones their values."""
    full = (GOLDEN / "fakehost_2gpu_status.txt").read_text()
    bare = (GOLDEN / "fakehost_2gpu_unsupported_status.txt").read_text()
    assert "57 °C" in full and "9876 MB/s" in full and "python3" in full and "worker" in full
    assert full.count("N/A") == 1  # the memory of the process NVML gave none for
    assert bare.count("N/A") > 20 and "3201 MHz" in bare
    info = (GOLDEN / "fakehost_1gpu_unsupported_info.txt").read_text()
    assert "N/A" in info and "GPU-00000000-67d9-9e02-1f7a-53d331412b6f" in info
    assert "    L2 Cache:   N/A\n" in info  # cuInit failed
    # 1.0's H200 figures from the fake libcuda; GPU 1's own, though CUDA lists it first
    two = (GOLDEN / "fakehost_2gpu_info.txt").read_text()
    assert two.count("    Constant:   64 KiB\n") == 2
    assert "    Shared:     228 KiB\n    L2 Cache:   61440 KiB\n" in two.split("Device #1")[0]
    assert "    Shared:     164 KiB\n    L2 Cache:   51200 KiB\n" in two.split("Device #1")[1]
    cli = (GOLDEN / "fakehost_2gpu_docker_cli.txt").read_text()
    assert cli == ("--volume-driver=nvidia-docker "
                   "--volume=nvidia_driver_580.159.04:/usr/local/nvidia:ro "
                   "--device=/dev/nvidiactl --device=/dev/nvidia-uvm "
                   "--device=/dev/nvidia-uvm-tools --device=/dev/nvidia0 --device=/dev/nvidia1")
