"""What the page's event stream carries, as plain JSON-able dicts made from the records; pure.

Readings keep `gpu/status/json`'s values and units (W, MiB, MHz, MB/s, °C, %), under the names
of the history's series, so the page appends a sample to its charts as it comes. Text that comes
from outside (model and process names) is escaped as on every other page; the page itself only
ever sets it as text, never as markup.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nvplugin.core.text import escape_controls
from nvplugin.gpu.records import Gpu, GpuInventory
from nvplugin.web.history import SERIES, row_of

if TYPE_CHECKING:  # only their fields are read: their module loads after the sockets answer
    from nvplugin.gpu.readings import GpuStatus
    from nvplugin.observe.records import ContainerRef, GpuHealth

Containers = Mapping[int, "ContainerRef | None"]  # PID -> its container, from attribution
Starts = Mapping[int, float]  # PID -> when it started (UNIX time)


def event(name: str, data: Any) -> bytes:
    """One server-sent event; compact JSON is a single line, as `data:` needs."""
    body = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"event: {name}\ndata: {body}\n\n".encode()


def card(gpu: Gpu) -> dict[str, Any]:
    """A GPU's static facts, for its card."""
    return {
        "index": gpu.index, "uuid": gpu.uuid, "model": _text(gpu.model), "bus_id": gpu.bus_id,
        "minor": gpu.minor, "path": gpu.path, "family": gpu.family, "arch": gpu.arch,
        "memory_total_mib": gpu.memory_global_mib, "power_limit_w": gpu.power_limit_w,
        "clock_sm_max_mhz": gpu.clock_cores_mhz, "clock_mem_max_mhz": gpu.clock_memory_mhz,
        "pcie_generation": gpu.pcie_generation, "pcie_width": gpu.pcie_width,
        "pcie_bandwidth_mbs": gpu.pcie_bandwidth_mbs, "ecc": gpu.ecc,
        "persistence_mode": gpu.persistence_mode, "mig_mode": gpu.mig_mode,
        "mig_devices": [mig.uuid for mig in gpu.mig_devices],
    }


def inventory(inv: GpuInventory) -> dict[str, Any]:
    return {"driver": inv.versions.driver, "cuda": inv.versions.cuda,
            "gpus": [card(gpu) for gpu in inv.gpus]}


def reading(status: GpuStatus, containers: Containers, starts: Starts) -> dict[str, Any]:
    """One GPU's readings of one tick: the history's series plus what only the latest shows."""
    values = dict(zip(SERIES, row_of(status), strict=True))
    values.pop("t")
    return {
        "index": status.index, "t": status.sampled_at, **values,
        "utilization_encoder": status.utilization_encoder,
        "utilization_decoder": status.utilization_decoder, "bar1_used_mib": status.bar1_used_mib,
        "ecc_l1": status.ecc_l1, "ecc_l2": status.ecc_l2, "ecc_global": status.ecc_global,
        "pcie_sampled_at": status.pcie_sampled_at,
        "processes": [{"pid": p.pid, "name": escape_controls(p.name),
                       "memory_used_mib": p.memory_used_mib, "since": starts.get(p.pid),
                       "container": container(containers.get(p.pid))}
                      for p in status.processes],
    }


def container(ref: ContainerRef | None) -> dict[str, Any] | None:
    if ref is None:
        return None
    return {"id": ref.id, "name": _text(ref.name), "runtime": ref.runtime}


def health(states: Sequence[GpuHealth]) -> list[dict[str, Any]]:
    return [{"index": h.index, "uuid": h.uuid, "state": h.status, "reason": _text(h.reason),
             "since": h.since, "last_xid": h.last_xid} for h in states]


def sample(wall: float, statuses: tuple[GpuStatus, ...] | None, error: str | None, *,
           containers: Containers | None = None, starts: Starts | None = None,
           states: Sequence[GpuHealth] | None = None) -> dict[str, Any]:
    """The `sample` event: every GPU's readings (processes with their containers where
    attribution runs) and health (None without the health watcher), or why there are none."""
    shown_health = None if states is None else health(states)
    if statuses is None:
        return {"t": wall, "error": error, "gpus": [], "health": shown_health}
    t = max((s.sampled_at for s in statuses), default=wall)
    return {"t": t, "error": None, "health": shown_health,
            "gpus": [reading(s, containers or {}, starts or {}) for s in statuses]}


def _text(value: str | None) -> str | None:
    return None if value is None else escape_controls(value)
