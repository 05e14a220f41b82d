"""1.0's text pages over the GPU records: gpu/info and gpu/status, byte for byte.

Pure: records in, `str` out. The templates are nvidia-docker 1.0's, aligned by its tabwriter
settings (see tabwriter.py); `N/A` stands for every reading that is `None`. Names that reach a
cell (models, process names) have their control characters escaped, so they cannot add cells
or lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from nvplugin.api.tabwriter import align
from nvplugin.core.text import escape_controls
from nvplugin.gpu.records import P2P_LINK_NAMES, Gpu, GpuInventory

if TYPE_CHECKING:  # only their fields are read: their module loads with the first reading
    from nvplugin.gpu.readings import GpuStatus

NA = "N/A"


def _clean(value: object) -> str:
    """A value for one text cell: control characters escaped so names cannot add cells or lines."""
    return escape_controls(str(value))


def _unit(value: int | None, unit: str) -> str:
    return NA if value is None else f"{value} {unit}"


def _pair(used: int | None, total: int | None, unit: str) -> str:
    # 1.0 printed "used / total" only when both readings exist.
    return NA if used is None or total is None else f"{used} / {total} {unit}"


def _or_na(value: object | None) -> str:
    if value is None:
        return NA
    if isinstance(value, bool):
        return "true" if value else "false"
    return _clean(value)


def one_line(message: str) -> str:
    """A message as a single text line ending in a newline."""
    return " ".join(message.splitlines()).strip() + "\n"


# ---------------------------------------------------------------- gpu/info


def gpu_info_text(inventory: GpuInventory) -> str:
    lines = [
        "",
        f"Driver version:  \t{_clean(inventory.versions.driver)}",
        f"Supported CUDA version:  \t{_or_na(inventory.versions.cuda)}",
    ]
    for gpu in inventory.gpus:
        lines += _gpu_info_lines(gpu)
    lines.append("")
    return align("\n".join(lines) + "\n")


def _gpu_info_lines(gpu: Gpu) -> list[str]:
    lines = [
        "",
        f"Device #{gpu.index}",
        f"  Model:  \t{_or_na(gpu.model)}",
        f"  UUID:  \t{_clean(gpu.uuid)}",
        f"  Path:  \t{_clean(gpu.path)}",
        f"  Family:  \t{_or_na(gpu.family)}",
        f"  Arch:  \t{_or_na(gpu.arch)}",
        f"  Cores:  \t{_or_na(gpu.cores)}",
        f"  Power:  \t{_unit(gpu.power_limit_w, 'W')}",
        "  CPU Affinity:  \t"
        + (NA if gpu.cpu_affinity is None else f"NUMA node{gpu.cpu_affinity}"),
        "  PCI",
        f"    Bus ID:  \t{_clean(gpu.bus_id)}",
        f"    BAR1:  \t{_unit(gpu.bar1_total_mib, 'MiB')}",
        f"    Bandwidth:  \t{_unit(gpu.pcie_bandwidth_mbs, 'MB/s')}",
        "  Memory",
        f"    ECC:  \t{_or_na(gpu.ecc)}",
        f"    Global:  \t{_unit(gpu.memory_global_mib, 'MiB')}",
        f"    Constant:  \t{_unit(gpu.memory_constant_kib, 'KiB')}",
        f"    Shared:  \t{_unit(gpu.memory_shared_kib, 'KiB')}",
        f"    L2 Cache:  \t{_unit(gpu.memory_l2_kib, 'KiB')}",
        f"    Bandwidth:  \t{_unit(gpu.memory_bandwidth_mbs, 'MB/s')}",
        "  Clocks",
        f"    Cores:  \t{_unit(gpu.clock_cores_mhz, 'MHz')}",
        f"    Memory:  \t{_unit(gpu.clock_memory_mhz, 'MHz')}",
    ]
    if not gpu.topology:
        return [*lines, "  P2P Available:  \tNone"]
    return [*lines, "  P2P Available"] + [
        f"    {_clean(peer.bus_id)} - {P2P_LINK_NAMES.get(peer.link, NA)}" for peer in gpu.topology
    ]


# ---------------------------------------------------------------- gpu/status


def gpu_status_text(inventory: GpuInventory, statuses: Sequence[GpuStatus]) -> str:
    """1.0's status page; totals (power limit, memory, BAR1) come from the static inventory."""
    gpus = {gpu.index: gpu for gpu in inventory.gpus}
    lines: list[str] = []
    for status in statuses:
        lines += _gpu_status_lines(status, gpus.get(status.index))
    lines.append("")
    return align("\n".join(lines) + "\n")


def _gpu_status_lines(st: GpuStatus, gpu: Gpu | None) -> list[str]:
    power_limit, memory_total, bar1_total = (
        (None, None, None) if gpu is None
        else (gpu.power_limit_w, gpu.memory_global_mib, gpu.bar1_total_mib)
    )
    lines = [
        "",
        f"Device #{st.index}",
        f"  Power:  \t{_pair(st.power_w, power_limit, 'W')}",
        f"  Temperature:  \t{_unit(st.temperature_c, '°C')}",
        "  Utilization",
        f"    GPU:  \t{_unit(st.utilization_gpu, '%')}",
        f"    Memory:  \t{_unit(st.utilization_memory, '%')}",
        f"    Encoder:  \t{_unit(st.utilization_encoder, '%')}",
        f"    Decoder:  \t{_unit(st.utilization_decoder, '%')}",
        "  Memory",
        f"    Global:  \t{_pair(st.memory_used_mib, memory_total, 'MiB')}",
        "    ECC Errors",
        f"      L1 Cache:  \t{_or_na(st.ecc_l1)}",
        f"      L2 Cache:  \t{_or_na(st.ecc_l2)}",
        f"      Global:  \t{_or_na(st.ecc_global)}",
        "  PCI",
        f"    BAR1:  \t{_pair(st.bar1_used_mib, bar1_total, 'MiB')}",
        "    Throughput",
        f"      RX:  \t{_unit(st.pcie_rx_mbs, 'MB/s')}",
        f"      TX:  \t{_unit(st.pcie_tx_mbs, 'MB/s')}",
        "  Clocks",
        f"    Cores:  \t{_unit(st.clock_cores_mhz, 'MHz')}",
        f"    Memory:  \t{_unit(st.clock_memory_mhz, 'MHz')}",
    ]
    if not st.processes:
        return [*lines, "  Processes:  \tNone"]
    lines.append("  Processes")
    for proc in st.processes:
        lines += [
            f"    - PID:  \t{proc.pid}",
            f"      Name:  \t{_clean(proc.name)}",
            f"      Memory:  \t{_unit(proc.memory_used_mib, 'MiB')}",
        ]
    return lines
