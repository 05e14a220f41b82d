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
class Process:
    """A process using a GPU, as NVML lists it."""

    pid: int
    name: str
    memory_used_mib: int | None


@dataclass(frozen=True, slots=True)
class GpuStatus:
    """Live readings of one GPU (gpu/status). `sampled_at` are wall-clock UNIX times."""

    index: int
    power_w: int | None
    temperature_c: int | None
    utilization_gpu: int | None
    utilization_memory: int | None
    utilization_encoder: int | None
    utilization_decoder: int | None
    memory_used_mib: int | None
    ecc_l1: int | None
    ecc_l2: int | None
    ecc_global: int | None
    clock_cores_mhz: int | None
    clock_memory_mhz: int | None
    bar1_used_mib: int | None
    pcie_rx_mbs: int | None
    pcie_tx_mbs: int | None
    processes: tuple[Process, ...] = ()
    sampled_at: float = 0.0  # when the fast fields were read
    pcie_sampled_at: float | None = None  # when the slow PCIe throughput counters were read


@dataclass(frozen=True, slots=True)
class RemappedRows:
    """nvmlDeviceGetRemappedRows: rows remapped for each error kind, and the remapper's state."""

    correctable: int
    uncorrectable: int
    pending: bool  # a remap waits for the next GPU reset
    failed: bool  # a remap failed: the GPU cannot hide this memory fault


@dataclass(frozen=True, slots=True)
class GpuTelemetry:
    """The readings `/metrics` adds to gpu/status's (dcgm-exporter's fields), read on demand.

    Units are final; `None` is a field the GPU or driver does not support. `fault` is set when
    NVML answered that the GPU itself is gone or broken (GPU_IS_LOST, RESET_REQUIRED, ...): the
    health tracker's "NVML reads it fine" is `fault is None`.
    """

    index: int
    power_mw: int | None = None  # gpu/status shows whole watts; dcgm-exporter gives W with mW
    energy_mj: int | None = None  # since the driver loaded
    memory_used_mib: int | None = None  # as nvidia-smi: the driver's reservation apart
    memory_free_mib: int | None = None
    memory_reserved_mib: int | None = None
    memory_temperature_c: int | None = None
    pcie_replays: int | None = None
    remapped_rows: RemappedRows | None = None
    ecc_sbe_volatile: int | None = None  # corrected (single-bit) errors since the driver loaded
    ecc_dbe_volatile: int | None = None  # uncorrected (double-bit)
    ecc_sbe_aggregate: int | None = None  # over the GPU's lifetime
    ecc_dbe_aggregate: int | None = None
    graphics_processes: tuple[Process, ...] = ()  # compute ones are in GpuStatus.processes
    fault: str | None = None
    sampled_at: float = 0.0


EVENT_XID = "xid"
EVENT_DOUBLE_BIT_ECC = "double-bit-ecc"
EVENT_LOST = "gpu-lost"


@dataclass(frozen=True, slots=True)
class GpuEvent:
    """A critical NVML event on a GPU, as the event thread saw it."""

    index: int
    uuid: str
    kind: str  # EVENT_XID, EVENT_DOUBLE_BIT_ECC or EVENT_LOST
    data: int = 0  # the Xid for EVENT_XID
    at: float = 0.0  # UNIX time it was received


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

