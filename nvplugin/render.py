"""1.0's REST formats over the GPU and driver records: text pages, JSON, docker and mesos arguments.

Pure: records in, `str` out; no clock, no I/O. Text pages reproduce nvidia-docker 1.0's templates
byte for byte (see tabwriter.py); JSON keeps 1.0's keys and order and only appends new keys after
them, so 1.0 clients keep working.
"""

from __future__ import annotations

import base64
import functools
import json
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, Protocol, TypeVar

from nvplugin.devices import P2P_LINK_NAMES, Gpu, GpuInventory, GpuStatus, P2PLink
from nvplugin.errors import SelectionError
from nvplugin.selection import quote_item
from nvplugin.tabwriter import align

P = ParamSpec("P")
R = TypeVar("R")
NA = "N/A"
VOLUME_DRIVER = "nvidia-docker"
# 1.0's only volume kind: where it is mounted in containers, and how.
VOLUME_KINDS: dict[str, tuple[str, str]] = {"nvidia_driver": ("/usr/local/nvidia", "ro")}


class DeviceNodeLike(Protocol):
    @property
    def host_path(self) -> str: ...
    @property
    def path(self) -> str: ...


# ---------------------------------------------------------------- helpers


def remember_last(fn: Callable[P, R]) -> Callable[P, R]:
    """Keep the last result of a pure function: the static inventory is rendered on every
    request, and comparing equal records (the same objects, mostly) is far cheaper than
    laying out the page again."""
    last: list[Any] = []

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        key = (args, kwargs)
        if last and last[0] == key:
            return last[1]  # type: ignore[no-any-return]
        result = fn(*args, **kwargs)
        last[:] = [key, result]
        return result

    return wrapper


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


def escape_controls(text: str, *, backslash: bool = True) -> str:
    """Backslash-escape control, format and separator characters (and backslash itself, unless
    `text` is already escaped)."""
    out: list[str] = []
    for char in text:
        if char == "\\" and backslash:
            out.append("\\\\")
        elif unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def one_line(message: str) -> str:
    """A message as a single text line ending in a newline."""
    return " ".join(message.splitlines()).strip() + "\n"


# ---------------------------------------------------------------- gpu/info


@remember_last
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


def gpu_info_document(inventory: GpuInventory) -> dict[str, Any]:
    return {
        "Version": {"Driver": inventory.versions.driver, "CUDA": inventory.versions.cuda},
        "Devices": [_gpu_info_object(gpu) for gpu in inventory.gpus],
    }


@remember_last
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


def gpu_status_document(statuses: Sequence[GpuStatus]) -> dict[str, Any]:
    return {"Devices": [_gpu_status_object(st) for st in statuses]}


def gpu_status_json(statuses: Sequence[GpuStatus]) -> str:
    return go_json(gpu_status_document(statuses))


def _gpu_status_object(st: GpuStatus) -> dict[str, Any]:
    processes = [
        {"PID": p.pid, "Name": p.name, "MemoryUsed": p.memory_used_mib} for p in st.processes
    ]
    return {
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


# ---------------------------------------------------------------- docker/cli, mesos/cli


def volume_kinds(spec: str | None) -> tuple[str, ...]:
    """1.0's `vol=` selector: kind names separated by spaces; absent, empty or `*` is all kinds."""
    if spec is None or spec.strip(" ") in ("", "*"):
        return tuple(VOLUME_KINDS)
    wanted = [item for item in spec.split(" ") if item]
    for item in wanted:
        if item not in VOLUME_KINDS:
            raise SelectionError(f"invalid volume: {quote_item(item)}")
    return tuple(kind for kind in VOLUME_KINDS if kind in wanted)


@dataclass(frozen=True, slots=True)
class DockerArgs:
    volume_driver: str
    volumes: tuple[str, ...]  # name:mountpoint:options
    devices: tuple[str, ...]  # path, or host_path:path when devices live under another root


def docker_args(
    driver_version: str,
    kinds: Iterable[str],
    control_nodes: Iterable[DeviceNodeLike],
    gpus: Iterable[Gpu],
    *,
    map_paths: bool,
) -> DockerArgs:
    """What `docker run` needs: volumes per kind, control nodes, then GPUs in index order."""
    volumes = tuple(
        f"{kind}_{driver_version}:{VOLUME_KINDS[kind][0]}:{VOLUME_KINDS[kind][1]}" for kind in kinds
    )
    nodes = [(node.host_path, node.path) for node in control_nodes]
    nodes += [(gpu.host_path, gpu.path) for gpu in sorted(gpus, key=lambda g: g.index)]
    devices = tuple(f"{host}:{path}" if map_paths else path for host, path in nodes)
    return DockerArgs(VOLUME_DRIVER, volumes, devices)


def docker_cli_text(args: DockerArgs) -> str:
    """One line, no trailing newline, ready for `docker run $(curl ...)`."""
    words = [f"--volume-driver={args.volume_driver}"]
    words += [f"--volume={volume}" for volume in args.volumes]
    words += [f"--device={device}" for device in args.devices]
    return " ".join(words)


def docker_cli_json(args: DockerArgs) -> str:
    return go_json(
        {"VolumeDriver": args.volume_driver, "Volumes": list(args.volumes),
         "Devices": list(args.devices)}
    )


@remember_last
def mesos_cli_text(inventory: GpuInventory) -> str:
    """`--attributes=gpus:<zlib+base64url of gpu/info/json> --resources=gpus:{uuid,...}`."""
    packed = zlib.compress(gpu_info_json(inventory).encode())
    attribute = base64.urlsafe_b64encode(packed).rstrip(b"=").decode("ascii")
    uuids = ",".join(gpu.uuid for gpu in inventory.gpus)
    return f"--attributes=gpus:{attribute} --resources=gpus:{{{uuids}}}"
