"""GPU records, as the NVML layer reads them and the renderers print them.

Units are final here (W, MiB, MHz, MB/s, °C, %); `None` means NVML does not support the field on
this GPU or driver (JSON `null`, text `N/A`). Nothing in this module does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# 1.0's integer P2P link codes (gpu/info/json `Topology[].Link`) and their text names.
P2P_LINK_NAMES: dict[int, str] = {
    0: "N/A",
    1: "Cross CPU socket",
    2: "Same CPU socket",
    3: "Host PCI bridge",
    4: "Multiple PCI switches",
    5: "Single PCI switch",
    6: "Same board",
}


@dataclass(frozen=True, slots=True)
class P2PLink:
    """How this GPU reaches a peer GPU."""

    bus_id: str
    link: int  # 1.0's code, see P2P_LINK_NAMES
    nvlinks: int | None = None  # active NVLink lanes to that peer; None when NVML has no NVLink


@dataclass(frozen=True, slots=True)
class DeviceNode:
    """A character device to pass to a container."""

    host_path: str  # the node under --dev-root on this host
    path: str  # where the container sees it: /dev/<name>


@dataclass(frozen=True, slots=True)
class MigDevice:
    """A MIG instance of a GPU in MIG mode."""

    index: int  # MIG device index within its parent GPU
    uuid: str  # MIG-<uuid>
    gpu_instance: int | None = None  # NVML's GPU instance id (`gi<G>` in the driver's files)
    compute_instance: int | None = None  # NVML's compute instance id (`ci<C>`)
    # The GPU and compute instance access nodes (/dev/nvidia-caps/nvidia-cap<N>) a container
    # needs besides the parent's /dev/nvidia<minor>; empty when they were not found, and then
    # `access_problem` says why (the device cannot be handed out).
    caps: tuple[DeviceNode, ...] = ()
    access_problem: str | None = None


@dataclass(frozen=True, slots=True)
class Gpu:
    """Static facts of one GPU, read once at start-up (gpu/info)."""

    index: int  # NVML index (PCI bus order, as nvidia-smi)
    uuid: str
    minor: int
    path: str  # /dev/nvidia<minor>, the path inside containers
    host_path: str  # the node under --dev-root on this host
    model: str | None
    bus_id: str  # as NVML reports it: 8-hex-digit domain, e.g. 00000000:06:00.0
    power_limit_w: int | None
    cpu_affinity: int | None  # NUMA node
    bar1_total_mib: int | None
    pcie_generation: int | None
    pcie_width: int | None
    pcie_bandwidth_mbs: int | None  # max gen x max width, 1.0's per-lane table extended
    clock_cores_mhz: int | None  # max SM clock
    clock_memory_mhz: int | None  # max memory clock
    arch: str | None  # compute capability "major.minor"
    family: str | None  # Pascal, Volta, ..., Blackwell
    cores: int | None  # CUDA cores
    multiprocessors: int | None
    ecc: bool | None
    memory_global_mib: int | None
    memory_shared_kib: int | None  # per multiprocessor
    memory_constant_kib: int | None
    memory_l2_kib: int | None
    memory_bandwidth_mbs: int | None
    persistence_mode: bool | None
    mig_mode: bool | None
    topology: tuple[P2PLink, ...] = ()
    mig_devices: tuple[MigDevice, ...] = ()


@dataclass(frozen=True, slots=True)
class DriverVersions:
    """The running driver's version and the CUDA version it supports."""

    driver: str  # e.g. 580.159.04
    cuda: str | None  # e.g. 13.0, from nvmlSystemGetCudaDriverVersion_v2


@dataclass(frozen=True, slots=True)
class GpuInventory:
    """Everything gpu/info needs."""

    versions: DriverVersions
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)

