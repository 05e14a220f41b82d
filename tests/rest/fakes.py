"""A GpuService stand-in over fixed records (with the real selection grammar), for tests of the
HTTP layer alone.

The integration tests (test_live.py) use the real GpuService on the fake NVML instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nvplugin.cdi.spec import Spec
from nvplugin.cdi.writer import DriverGone
from nvplugin.core.errors import NvmlError
from nvplugin.gpu import selection
from nvplugin.gpu.readings import GpuStatus
from nvplugin.gpu.records import GpuInventory


@dataclass(frozen=True, slots=True)
class Node:
    host_path: str
    path: str


CONTROL_NODES = (Node("/dev/nvidiactl", "/dev/nvidiactl"),
                 Node("/dev/nvidia-uvm", "/dev/nvidia-uvm"))


@dataclass
class RecordGpus:
    inventory_: GpuInventory
    statuses: tuple[GpuStatus, ...]
    available: bool = True
    reason: str | None = None
    fail_with: BaseException | None = None  # raised by every call, to test error mapping
    nodes: tuple[Node, ...] = CONTROL_NODES
    calls: list[str] = field(default_factory=list)

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.fail_with is not None:
            raise self.fail_with
        if not self.available:
            raise NvmlError(self.reason or "unavailable")

    async def inventory(self, *, cuda_sizes: bool = True) -> GpuInventory:
        self._check("inventory")
        return self.inventory_

    async def status(self) -> tuple[GpuStatus, ...]:
        self._check("status")
        return self.statuses

    def select(self, spec: str | None) -> selection.Selection:
        self._check("select")
        return selection.select(self.inventory_.gpus, spec)

    async def control_nodes(self) -> tuple[Node, ...]:
        self._check("control_nodes")
        return self.nodes

    async def driver_version(self) -> str:
        self._check("driver_version")
        return self.inventory_.versions.driver


@dataclass
class RecordCdi:
    """A CdiSource over a fixed spec; without one it answers as a daemon with no driver does."""

    spec: Spec | None = None
    kind: str = "nvidia.com/gpu"

    def current(self) -> Spec:
        if self.spec is None:
            raise DriverGone("NVML is unavailable: no CDI spec in this test")
        return self.spec
