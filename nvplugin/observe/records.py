"""The records `ObserveService` hands out: GPU health, processes and containers, observations.

Plain frozen data, no I/O: the REST API, `/metrics`, doctor and the live page read these.
Times named `since`/`taken_at` are UNIX times (wall clock).
"""

from __future__ import annotations

from dataclasses import dataclass

from nvplugin.gpu.readings import GpuStatus, GpuTelemetry
from nvplugin.gpu.records import Gpu

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """The container a process runs in, as its cgroup names it."""

    id: str  # the full ID (64 hex digits)
    runtime: str  # docker, podman, containerd, cri-o or kubernetes (a CRI we cannot tell)
    name: str | None = None  # from the Docker Engine for Docker's containers; None if unknown


@dataclass(frozen=True, slots=True)
class GpuHealth:
    """One GPU's health as the API and the page show it."""

    index: int
    uuid: str
    healthy: bool
    reason: str | None  # why unhealthy (the last critical event); None while healthy
    since: float  # when it became what it is (or when tracking began)
    last_xid: int | None = None  # the last Xid seen on it, critical or ignored

    @property
    def status(self) -> str:
        return HEALTHY if self.healthy else UNHEALTHY


@dataclass(frozen=True, slots=True)
class HealthChange:
    """A transition, logged as one line and passed to health listeners."""

    index: int
    uuid: str
    healthy: bool
    reason: str  # why it became unhealthy, or how it recovered


@dataclass(frozen=True, slots=True)
class ProcessUse:
    """One process using a GPU (NVML's compute and graphics lists, merged by PID)."""

    gpu_index: int
    gpu_uuid: str
    pid: int
    name: str
    memory_used_mib: int | None
    kind: str  # "C", "G" or "C+G", as nvidia-smi shows it
    container: ContainerRef | None


@dataclass(frozen=True, slots=True)
class ContainerUse:
    """What one container uses of one GPU."""

    container: ContainerRef
    gpu_index: int
    gpu_uuid: str
    processes: int
    memory_used_mib: int | None  # None when NVML could not tell any of its processes' memory


@dataclass(frozen=True, slots=True)
class Observation:
    """One look at every GPU: what `/metrics` and the live page show."""

    taken_at: float
    driver_version: str
    gpus: tuple[Gpu, ...]
    statuses: tuple[GpuStatus, ...]
    telemetry: tuple[GpuTelemetry, ...]
    processes: tuple[ProcessUse, ...]
    containers: tuple[ContainerUse, ...]
    health: tuple[GpuHealth, ...]
