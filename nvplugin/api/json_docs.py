"""1.0's JSON over the GPU records: gpu/info/json and gpu/status/json, as Go's encoder wrote it.

Pure: records in, `str` out. 1.0's keys come first in 1.0's order; keys new in nvplugin are only
appended after them, so 1.0 clients keep working.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from nvplugin.gpu.records import Gpu, GpuInventory, P2PLink

if TYPE_CHECKING:  # only their fields are read: their module loads after the sockets answer
    from nvplugin.gpu.readings import GpuStatus
    from nvplugin.observe.records import ContainerRef, GpuHealth


def go_json(value: Any) -> str:
    """JSON as Go's encoding/json.Encoder wrote it: compact, HTML-safe, newline-terminated."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    # These characters only occur inside strings, so replacing them in the document is safe.
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text + "\n"


def rfc3339(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- gpu/info


def gpu_info_document(inventory: GpuInventory) -> dict[str, Any]:
    return {
        "Version": {"Driver": inventory.versions.driver, "CUDA": inventory.versions.cuda},
        "Devices": [_gpu_info_object(gpu) for gpu in inventory.gpus],
    }


def gpu_info_json(inventory: GpuInventory) -> str:
    return go_json(gpu_info_document(inventory))


def _peer(peer: P2PLink) -> dict[str, Any]:
    return {"BusID": peer.bus_id, "Link": peer.link, "NVLinks": peer.nvlinks}


def _gpu_info_object(gpu: Gpu) -> dict[str, Any]:
    # 1.0's keys in 1.0's order first; everything after "Memory" is new in nvplugin.
    return {
        "UUID": gpu.uuid,
        "Path": gpu.path,
        "Model": gpu.model,
        "Power": gpu.power_limit_w,
        "CPUAffinity": gpu.cpu_affinity,
        "PCI": {
            "BusID": gpu.bus_id,
            "BAR1": gpu.bar1_total_mib,
            "Bandwidth": gpu.pcie_bandwidth_mbs,
            "Generation": gpu.pcie_generation,
            "Width": gpu.pcie_width,
        },
        "Clocks": {"Cores": gpu.clock_cores_mhz, "Memory": gpu.clock_memory_mhz},
        "Topology": [_peer(peer) for peer in gpu.topology] or None,
        "Family": gpu.family,
        "Arch": gpu.arch,
        "Cores": gpu.cores,
        "Memory": {
            "ECC": gpu.ecc,
            "Global": gpu.memory_global_mib,
            "Shared": gpu.memory_shared_kib,
            "Constant": gpu.memory_constant_kib,
            "L2Cache": gpu.memory_l2_kib,
            "Bandwidth": gpu.memory_bandwidth_mbs,
        },
        "Index": gpu.index,
        "Minor": gpu.minor,
        "Multiprocessors": gpu.multiprocessors,
        "PersistenceMode": gpu.persistence_mode,
        "MIG": {
            "Enabled": gpu.mig_mode,
            "Devices": [{"Index": mig.index, "UUID": mig.uuid} for mig in gpu.mig_devices],
        },
    }


# ---------------------------------------------------------------- gpu/status


def gpu_status_document(statuses: Sequence[GpuStatus],
                        health: Mapping[int, GpuHealth] | None = None,
                        containers: Mapping[int, ContainerRef | None] | None = None,
                        ) -> dict[str, Any]:
    """1.0's document; with `health` (by GPU index) each device gets a `Health` object, with
    `containers` (by PID) each process a `Container` (null for a host process), both appended."""
    return {"Devices": [_gpu_status_object(st, health, containers) for st in statuses]}


def gpu_status_json(statuses: Sequence[GpuStatus],
                    health: Mapping[int, GpuHealth] | None = None,
                    containers: Mapping[int, ContainerRef | None] | None = None) -> str:
    return go_json(gpu_status_document(statuses, health, containers))


def _container(ref: ContainerRef | None) -> dict[str, Any] | None:
    if ref is None:
        return None
    return {"ID": ref.id, "Name": ref.name, "Runtime": ref.runtime}


def _health(h: GpuHealth) -> dict[str, Any]:
    return {"Status": h.status, "Reason": h.reason, "Since": rfc3339(h.since),
            "LastXid": h.last_xid}


def _gpu_status_object(st: GpuStatus, health: Mapping[int, GpuHealth] | None = None,
                       containers: Mapping[int, ContainerRef | None] | None = None,
                       ) -> dict[str, Any]:
    processes = []
    for p in st.processes:
        process: dict[str, Any] = {"PID": p.pid, "Name": p.name, "MemoryUsed": p.memory_used_mib}
        if containers is not None:
            process["Container"] = _container(containers.get(p.pid))
        processes.append(process)
    document = {
        "Power": st.power_w,
        "Temperature": st.temperature_c,
        "Utilization": {
            "GPU": st.utilization_gpu,
            "Memory": st.utilization_memory,
            "Encoder": st.utilization_encoder,
            "Decoder": st.utilization_decoder,
        },
        "Memory": {
            "GlobalUsed": st.memory_used_mib,
            "ECCErrors": {"L1Cache": st.ecc_l1, "L2Cache": st.ecc_l2, "Global": st.ecc_global},
        },
        "Clocks": {"Cores": st.clock_cores_mhz, "Memory": st.clock_memory_mhz},
        "PCI": {
            "BAR1Used": st.bar1_used_mib,
            "Throughput": {
                "RX": st.pcie_rx_mbs,
                "TX": st.pcie_tx_mbs,
                "SampledAt": rfc3339(st.pcie_sampled_at),
            },
        },
        "Processes": processes or None,
        "Index": st.index,
        "SampledAt": rfc3339(st.sampled_at),
    }
    if health is not None:
        found = health.get(st.index)
        document["Health"] = None if found is None else _health(found)
    return document
