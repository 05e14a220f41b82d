"""GPU records for the renderer tests: 1.0's documented samples and modern 1- and 2-GPU hosts."""

from __future__ import annotations

import dataclasses
from typing import Any

from nvplugin.gpu.readings import GpuStatus, Process
from nvplugin.gpu.records import DriverVersions, Gpu, GpuInventory, MigDevice, P2PLink

# 2026-11-29T07:16:44.250Z and 2026-11-29T07:16:43.000Z
SAMPLED_AT = 1795936604.25
PCIE_SAMPLED_AT = 1795936603.0


def gpu(index: int, **fields: Any) -> Gpu:
    """A fully supported modern GPU, with `fields` overriding its facts."""
    base = Gpu(
        index=index,
        uuid=f"GPU-{index:08x}-1111-2222-3333-444444444444",
        minor=index,
        path=f"/dev/nvidia{index}",
        host_path=f"/dev/nvidia{index}",
        model="NVIDIA H200",
        bus_id=f"00000000:{0x18 + index:02X}:00.0",
        power_limit_w=700,
        cpu_affinity=0,
        bar1_total_mib=262144,
        pcie_generation=5,
        pcie_width=16,
        pcie_bandwidth_mbs=63008,
        clock_cores_mhz=1980,
        clock_memory_mhz=3201,
        arch="9.0",
        family="Hopper",
        cores=16896,
        multiprocessors=132,
        ecc=True,
        memory_global_mib=143771,
        memory_shared_kib=228,
        memory_constant_kib=64,
        memory_l2_kib=51200,
        memory_bandwidth_mbs=4915200,
        persistence_mode=True,
        mig_mode=False,
    )
    return dataclasses.replace(base, **fields)


def status(index: int, **fields: Any) -> GpuStatus:
    base = GpuStatus(
        index=index,
        power_w=74,
        temperature_c=31,
        utilization_gpu=0,
        utilization_memory=0,
        utilization_encoder=0,
        utilization_decoder=0,
        memory_used_mib=0,
        ecc_l1=0,
        ecc_l2=0,
        ecc_global=0,
        clock_cores_mhz=345,
        clock_memory_mhz=3201,
        bar1_used_mib=1,
        pcie_rx_mbs=0,
        pcie_tx_mbs=0,
        sampled_at=SAMPLED_AT,
        pcie_sampled_at=PCIE_SAMPLED_AT,
    )
    return dataclasses.replace(base, **fields)


UNSUPPORTED_GPU_FIELDS = dict(
    model=None, power_limit_w=None, cpu_affinity=None, bar1_total_mib=None, pcie_generation=None,
    pcie_width=None, pcie_bandwidth_mbs=None, clock_cores_mhz=None, clock_memory_mhz=None,
    arch=None, family=None, cores=None, multiprocessors=None, ecc=None, memory_global_mib=None,
    memory_shared_kib=None, memory_constant_kib=None, memory_l2_kib=None,
    memory_bandwidth_mbs=None, persistence_mode=None, mig_mode=None,
)
UNSUPPORTED_STATUS_FIELDS = dict(
    power_w=None, temperature_c=None, utilization_gpu=None, utilization_memory=None,
    utilization_encoder=None, utilization_decoder=None, memory_used_mib=None, ecc_l1=None,
    ecc_l2=None, ecc_global=None, clock_cores_mhz=None, clock_memory_mhz=None,
    bar1_used_mib=None, pcie_rx_mbs=None, pcie_tx_mbs=None, pcie_sampled_at=None,
)

MODERN_VERSIONS = DriverVersions(driver="580.159.04", cuda="13.0")


def one_gpu_host() -> tuple[GpuInventory, tuple[GpuStatus, ...]]:
    return GpuInventory(MODERN_VERSIONS, (gpu(0),)), (status(0),)


def two_gpu_host() -> tuple[GpuInventory, tuple[GpuStatus, ...]]:
    """GPU 0 in MIG mode with an NVLink peer; GPU 1 reports nothing optional."""
    gpu0 = gpu(
        0,
        mig_mode=True,
        mig_devices=(MigDevice(0, "MIG-0a0b0c0d-0000-1111-2222-333333333333", ()),),
        topology=(P2PLink("00000000:19:00.0", 6, nvlinks=18),),
    )
    gpu1 = gpu(1, minor=3, path="/dev/nvidia3", host_path="/dev/nvidia3",
               **UNSUPPORTED_GPU_FIELDS)
    processes = (Process(4242, "python3", 40960), Process(77, "tab\there\nnewline", None))
    statuses = (status(0, processes=processes), status(1, **UNSUPPORTED_STATUS_FIELDS))
    return GpuInventory(DriverVersions("580.159.04", None), (gpu0, gpu1)), statuses


def v1_sample_host() -> tuple[GpuInventory, tuple[GpuStatus, ...]]:
    """The synthetic host behind nvidia-docker-v1.md §3.2 and §3.3 (driver 375.26, CUDA 8.0)."""
    p100 = gpu(
        0, uuid="GPU-11111111-2222-3333-4444-555555555555", model="Tesla P100-SXM2-16GB",
        bus_id="0000:06:00.0", power_limit_w=300, cpu_affinity=0, bar1_total_mib=16384,
        pcie_bandwidth_mbs=15760, clock_cores_mhz=1480, clock_memory_mhz=715, arch="6.0",
        family="Pascal", cores=3584, ecc=True, memory_global_mib=16276, memory_shared_kib=64,
        memory_constant_kib=64, memory_l2_kib=4096, memory_bandwidth_mbs=732,
        topology=(P2PLink("0000:07:00.0", 6),),
    )
    gtx = gpu(
        1, uuid="GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", model="GeForce GTX 1080",
        bus_id="0000:07:00.0", power_limit_w=None, cpu_affinity=1, bar1_total_mib=None,
        pcie_bandwidth_mbs=None, clock_cores_mhz=None, clock_memory_mhz=None, arch="6.1",
        family=None, cores=None, ecc=False, memory_global_mib=8113, memory_shared_kib=64 + 32,
        memory_constant_kib=64, memory_l2_kib=2048, memory_bandwidth_mbs=320,
    )
    # Shared is listed before Constant in 1.0's JSON but after it in the text; values differ
    # on the GTX 1080 (Constant 64, Shared 96) so a swapped row would show.
    s0 = status(0, power_w=35, temperature_c=33, memory_used_mib=0, clock_cores_mhz=405,
                clock_memory_mhz=715, bar1_used_mib=2)
    s1 = status(1, power_w=None, temperature_c=45, utilization_gpu=12, utilization_memory=3,
                utilization_encoder=None, utilization_decoder=None, memory_used_mib=150,
                ecc_l1=None, ecc_l2=None, ecc_global=None, bar1_used_mib=None, pcie_rx_mbs=4,
                pcie_tx_mbs=1, clock_cores_mhz=1733, clock_memory_mhz=5005,
                processes=(Process(1234, "python", 147),))
    return GpuInventory(DriverVersions("375.26", "8.0"), (p100, gtx)), (s0, s1)


HOSTS = {"one_gpu": one_gpu_host, "two_gpu": two_gpu_host, "v1_sample": v1_sample_host}
