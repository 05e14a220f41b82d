"""Live readings of GPUs, as the NVML layer reads them and the renderers print them: gpu/status,
the telemetry `/metrics` adds, and critical events.

Apart from `records` (what a GPU is) because nothing reads a GPU before the daemon answers: these
five records are an eighth of what our modules cost to import (Python 3.12 compiles each
dataclass's methods on its own, about 0.5 ms a record), so they load with the first reading.
Units are final here (W, MiB, MHz, MB/s, °C, %); `None` means NVML does not support the field on
this GPU or driver (JSON `null`, text `N/A`). Nothing in this module does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


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
