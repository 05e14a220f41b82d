"""Pure parts of the GPU proof: parsing nvidia-smi and ldd output, comparing, and the report.

Kept free of I/O so the CI (which has no GPU) tests them.
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SMI_FIELDS = ("index", "uuid", "name", "pci.bus_id", "memory.total", "driver_version")


PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class Step:
    name: str
    state: str  # PASS, FAIL, or SKIP: not run on this host, so neither proven nor disproven
    detail: str = ""
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.state == PASS


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    timings: dict[str, str] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, ok: bool, detail: str = "", seconds: float | None = None) -> Step:
        return self._record(Step(name, PASS if ok else FAIL, detail, seconds))

    def skip(self, name: str, reason: str) -> Step:
        return self._record(Step(name, SKIP, reason))

    def _record(self, step: Step) -> Step:
        self.steps.append(step)
        print(format_step(step), flush=True)
        return step

    @property
    def ok(self) -> bool:
        """Every step that ran passed (skips count neither way), and at least one ran."""
        ran = [step for step in self.steps if step.state != SKIP]
        return bool(ran) and all(step.ok for step in ran)


def format_step(step: Step) -> str:
    if step.state == SKIP:
        return f"[SKIP] {step.name} ({step.detail})"
    took = f" ({step.seconds:.2f} s)" if step.seconds is not None else ""
    head = f"[{step.state}] {step.name}{took}"
    if not step.detail:
        return head
    body = "\n".join("       " + line for line in step.detail.rstrip().splitlines())
    return f"{head}\n{body}"


def format_summary(report: Report) -> str:
    width = max((len(s.name) for s in report.steps), default=4)
    lines = ["", "Summary", "-------", f"{'step':<{width}}  result"]
    lines += [f"{s.name:<{width}}  SKIP ({s.detail})" if s.state == SKIP
              else f"{s.name:<{width}}  {s.state}" for s in report.steps]
    counts = {state: sum(s.state == state for s in report.steps) for state in (PASS, FAIL, SKIP)}
    reasons = sorted({s.detail for s in report.steps if s.state == SKIP})
    why = f" ({'; '.join(reasons)}: not run on this host)" if reasons else ""
    lines.append(f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped{why}")
    if report.timings:
        key_width = max(len(k) for k in report.timings)
        lines += ["", "Timings", "-------"]
        lines += [f"{k:<{key_width}}  {v}" for k, v in report.timings.items()]
    return "\n".join(lines)


def skip_reason(needs_gpus: int, gpu_count: int) -> str | None:
    """Why a step that needs `needs_gpus` GPUs cannot run on a host with `gpu_count`, or None."""
    return None if gpu_count >= needs_gpus else f"needs {needs_gpus}+ GPUs"


def count_gpus(smi_index_csv: str) -> int:
    """GPUs in `nvidia-smi --query-gpu=index --format=csv,noheader` (0 when it printed none)."""
    return sum(1 for line in smi_index_csv.splitlines() if line.strip().isdigit())


def parse_smi_csv(text: str) -> list[dict[str, str]]:
    """`nvidia-smi --query-gpu=<SMI_FIELDS> --format=csv` into one dict per GPU."""
    rows = list(csv.reader(io.StringIO(text.strip())))
    if not rows:
        return []
    header = [re.sub(r"\s*\[.*\]$", "", h.strip()) for h in rows[0]]
    return [dict(zip(header, (cell.strip() for cell in row), strict=False))
            for row in rows[1:] if row]


def _mib(value: str) -> int | None:
    match = re.match(r"(\d+)\s*MiB", value)
    return int(match.group(1)) if match else None


def compare_info(smi_rows: Sequence[Mapping[str, str]], info: Mapping[str, Any]) -> list[str]:
    """Differences between nvidia-smi and our gpu/info/json; empty when they agree."""
    problems: list[str] = []
    devices = info.get("Devices") or []
    if len(devices) != len(smi_rows):
        problems.append(f"GPU count: nvidia-smi {len(smi_rows)}, ours {len(devices)}")
    driver = (info.get("Version") or {}).get("Driver")
    for position, (row, dev) in enumerate(zip(smi_rows, devices, strict=False)):
        pci = dev.get("PCI") or {}
        pairs = {
            "index": (int(row["index"]), position),
            "uuid": (row["uuid"], dev.get("UUID")),
            "name": (row["name"], dev.get("Model")),
            "pci.bus_id": (row["pci.bus_id"].lower(), str(pci.get("BusID")).lower()),
            "memory.total": (_mib(row["memory.total"]), (dev.get("Memory") or {}).get("Global")),
            "driver_version": (row["driver_version"], driver),
        }
        for name, (theirs, ours) in pairs.items():
            if theirs != ours:
                problems.append(f"GPU {position} {name}: nvidia-smi {theirs!r}, ours {ours!r}")
    return problems


def ldd_paths(ldd_output: str) -> list[str]:
    """The files `ldd` says a program loads, the dynamic loader included."""
    paths = []
    for line in ldd_output.splitlines():
        match = re.search(r"=>\s+(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(0x", line)
        if match:
            paths.append(match.group(1))
    return paths


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median_ms(values: Sequence[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms" if values else "n/a"


def missing_files(listing: Mapping[str, Any], version: str, wanted_libs: Sequence[str],
                  wanted_bins: Sequence[str]) -> list[str]:
    """What `nvidia-docker-plugin list --json` lacks of the libraries and binaries we need."""
    files = listing.get("Files") or []
    problems = []
    for lib in wanted_libs:
        hits = [f for f in files if f.get("kind") == "lib"
                and str(f.get("dest", "")).split("/")[-1].startswith(lib + ".so")]
        if not hits:
            problems.append(f"{lib}: not selected")
        elif not any(str(f["dest"]).endswith(f".so.{version}") for f in hits):
            problems.append(f"{lib}: not at version {version}: {[f['dest'] for f in hits]}")
    for binary in wanted_bins:
        if not any(f.get("kind") == "bin" and str(f.get("dest")) == f"bin/{binary}" for f in files):
            problems.append(f"{binary}: not selected")
    return problems


# nvidia-smi fields and where the same value sits in our JSON; the tolerance allows for live
# readings that move between the two reads (absolute, or a fraction of nvidia-smi's value).
SMI_STATIC = {
    "power.limit": (("Power",), 0.01),
    "clocks.max.sm": (("Clocks", "Cores"), 0),
    "clocks.max.memory": (("Clocks", "Memory"), 0),
    "pcie.link.gen.max": (("PCI", "Generation"), 0),
    "pcie.link.width.max": (("PCI", "Width"), 0),
    "compute_cap": (("Arch",), 0),
}
SMI_LIVE = {
    "temperature.gpu": (("Temperature",), 3),
    "power.draw": (("Power",), 0.25),
    "memory.used": (("Memory", "GlobalUsed"), 0.02),
    "clocks.sm": (("Clocks", "Cores"), 0.25),
    "clocks.mem": (("Clocks", "Memory"), 0.05),
    "utilization.gpu": (("Utilization", "GPU"), 15),
}


def _dig(document: Mapping[str, Any], path: Sequence[str]) -> Any:
    value: Any = document
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


FieldMap = Mapping[str, tuple[tuple[str, ...], float]]


def compare_fields(smi_row: Mapping[str, str], ours: Mapping[str, Any],
                   fields: FieldMap) -> tuple[list[str], list[str]]:
    """(lines showing each pair, problems) for one GPU; N/A on both sides agrees."""
    lines, problems = [], []
    for name, (path, tolerance) in fields.items():
        theirs_text, value = smi_row.get(name, ""), _dig(ours, path)
        theirs = _number(theirs_text)
        lines.append(f"{name}: nvidia-smi {theirs_text}, ours {value}")
        if theirs is None or value is None:
            if (theirs is None) != (value is None):
                problems.append(f"{name}: nvidia-smi {theirs_text!r}, ours {value!r}")
            continue
        ours_number = float(value)
        allowed = tolerance * abs(theirs) if 0 < tolerance < 1 else tolerance
        # Integer conversions (mW to W, rounding of MHz) may differ by one unit.
        if abs(ours_number - theirs) > max(allowed, 1.0):
            problems.append(f"{name}: nvidia-smi {theirs_text}, ours {value}")
    return lines, problems


def ldconfig_driver_libraries(ldconfig_p: str, realpath: Callable[[str], str],
                              version: str) -> set[str]:
    """File names of the driver's libraries (`*.so.<version>`) that `ldconfig -p` reaches."""
    names = set()
    for line in ldconfig_p.splitlines():
        match = re.search(r"=>\s+(/\S+)$", line.strip())
        if match:
            real = realpath(match.group(1))
            name = real.rsplit("/", 1)[-1]
            if name.endswith(f".so.{version}"):
                names.add(name)
    return names


# ---------------------------------------------------------------- several GPUs

# `nvidia-smi topo -m` PCIe relations and 1.0's `Topology[].Link` codes for them (NVML's
# common-ancestor levels SYSTEM..SINGLE). SOC is the older drivers' name for SYS.
TOPO_LINK_CODES = {"SYS": 1, "SOC": 1, "NODE": 2, "PHB": 3, "PXB": 4, "PIX": 5}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GPU_LABEL = re.compile(r"GPU(\d+)$")


def _cells(line: str) -> list[str]:
    line = line.strip()
    return [cell.strip() for cell in line.split("\t")] if "\t" in line else line.split()


def parse_topo_matrix(text: str) -> dict[int, dict[int, str]]:
    """GPU-to-GPU cells of `nvidia-smi topo -m` (or `-mp`, `-p2p r`): matrix[row][column].

    NIC rows and columns, the affinity columns and the legends are left out. The header is the
    first line naming a GPU; rows are the lines after it whose first cell is a GPU label.
    """
    header: list[tuple[int, int]] | None = None  # (position after the row label, GPU index)
    matrix: dict[int, dict[int, str]] = {}
    for line in _ANSI.sub("", text).splitlines():
        cells = _cells(line)
        if header is None:
            gpus = [(k, _GPU_LABEL.match(c)) for k, c in enumerate(cells)]
            if any(m for _, m in gpus):
                header = [(k, int(m.group(1))) for k, m in gpus if m]
            continue
        label = _GPU_LABEL.match(cells[0]) if cells else None
        if label is None:
            continue
        values = cells[1:]
        matrix[int(label.group(1))] = {gpu: values[k] for k, gpu in header if k < len(values)}
    return matrix


def topo_matrix_text(text: str) -> str:
    """`nvidia-smi topo -m` for a report: its matrix without escapes or legends."""
    return _ANSI.sub("", text).strip("\n").split("\n\n", 1)[0]


def nvlink_count(cell: str) -> int | None:
    """# of an `NV#` cell (a bonded set of # NVLinks), None for a PCIe relation."""
    match = re.fullmatch(r"NV(\d+)", cell.strip())
    return int(match.group(1)) if match else None


def compare_topology(info: Mapping[str, Any], smi_bus_ids: Sequence[str],
                     matrix: Mapping[int, Mapping[int, str]],
                     pci_matrix: Mapping[int, Mapping[int, str]] | None = None,
                     p2p: Mapping[int, Mapping[int, str]] | None = None,
                     ) -> tuple[list[str], list[str]]:
    """(one line per GPU pair, problems): gpu/info/json `Topology` against `nvidia-smi topo`.

    `matrix` is `topo -m`: an `NV#` cell must be our `NVLinks` == #, a PCIe cell our `Link` code
    with `NVLinks` 0 or null. Where NVLink hides the PCIe relation in `-m`, our `Link` (NVML's
    common ancestor, which is the PCIe path whatever NVLinks there are) is checked against
    `pci_matrix` (`topo -mp`, PCIe only) when given. nvplugin, like 1.0, lists only the peers whose
    P2P read status is OK: with `p2p` (`topo -p2p r`) an absent peer is right where it is not OK.
    """
    lines: list[str] = []
    problems: list[str] = []
    devices = info.get("Devices") or []
    if sorted(matrix) != list(range(len(smi_bus_ids))):
        problems.append(f"topo -m rows GPU{sorted(matrix)}, nvidia-smi lists {len(smi_bus_ids)}")
    for i, dev in enumerate(devices):
        ours = {str(peer.get("BusID")).lower(): peer for peer in dev.get("Topology") or []}
        for j, cell in sorted((matrix.get(i) or {}).items()):
            if j == i or j >= len(smi_bus_ids):
                continue
            pair = f"GPU{i} -> GPU{j}"
            peer = ours.pop(smi_bus_ids[j].lower(), None)
            readable = (p2p or {}).get(i, {}).get(j)
            nvlinks = nvlink_count(cell)
            pcie = (pci_matrix or {}).get(i, {}).get(j) or (cell if nvlinks is None else None)
            seen = f"nvidia-smi {cell}" + (f" (PCIe {pcie})" if nvlinks is not None and pcie
                                           else "") + (f", P2P read {readable}" if readable
                                                       else "")
            if peer is None:
                if readable not in (None, "OK"):
                    lines.append(f"{pair}: {seen}; absent from ours, as 1.0 for a peer P2P "
                                 "cannot read")
                else:
                    problems.append(f"{pair}: {seen}; absent from our Topology")
                continue
            link, ours_nv = peer.get("Link"), peer.get("NVLinks")
            lines.append(f"{pair}: {seen}; ours Link {link}, NVLinks {ours_nv}")
            if readable not in (None, "OK"):
                problems.append(f"{pair}: listed by us, but nvidia-smi P2P read is {readable}")
            if pcie is not None:
                want = TOPO_LINK_CODES.get(pcie)
                if want is None:
                    problems.append(f"{pair}: nvidia-smi relation {pcie!r} has no 1.0 link code")
                elif link != want:
                    problems.append(f"{pair}: nvidia-smi {pcie} is Link {want}, ours {link}")
            if nvlinks is not None and ours_nv != nvlinks:
                problems.append(f"{pair}: nvidia-smi {cell}, our NVLinks {ours_nv}")
            if nvlinks is None and ours_nv not in (None, 0):
                problems.append(f"{pair}: nvidia-smi {cell} (no NVLink), our NVLinks {ours_nv}")
        problems += [f"GPU{i}: our Topology has {bus}, which nvidia-smi topo -m does not show"
                     for bus in ours]
    return lines, problems


def proc_bus_dir(bus_id: str) -> str:
    """/proc/driver/nvidia/gpus/ directory name of an NVML/nvidia-smi bus id (4-digit domain)."""
    domain, rest = bus_id.lower().split(":", 1)
    return f"{int(domain, 16):04x}:{rest}"


def proc_device_minor(information: str) -> int | None:
    """The `Device Minor:` of /proc/driver/nvidia/gpus/<bus id>/information."""
    match = re.search(r"^Device Minor:\s*(\d+)\s*$", information, re.MULTILINE)
    return int(match.group(1)) if match else None


def compare_identity(smi_rows: Sequence[Mapping[str, str]], minors: Sequence[int | None],
                     info: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(one line per GPU, problems): order, UUID, bus id, minor and node path of every GPU."""
    lines: list[str] = []
    problems: list[str] = []
    devices = info.get("Devices") or []
    if len(devices) != len(smi_rows):
        problems.append(f"GPU count: nvidia-smi {len(smi_rows)}, ours {len(devices)}")
    for position, (row, dev) in enumerate(zip(smi_rows, devices, strict=False)):
        minor = minors[position] if position < len(minors) else None
        bus = str((dev.get("PCI") or {}).get("BusID"))
        lines.append(f"GPU {row.get('index')}: {row.get('uuid')} {row.get('pci.bus_id')} minor "
                     f"{minor}; ours Index {dev.get('Index')} {dev.get('UUID')} {bus} Minor "
                     f"{dev.get('Minor')} {dev.get('Path')}")
        if minor is None:
            problems.append(f"GPU {position}: no 'Device Minor:' in /proc/driver/nvidia/gpus")
        pairs = {
            "index": (row.get("index"), str(position)),
            "Index": (position, dev.get("Index")),
            "uuid": (row.get("uuid"), dev.get("UUID")),
            "pci.bus_id": (str(row.get("pci.bus_id")).lower(), bus.lower()),
            "minor": (minor, dev.get("Minor")),
            "path": (f"/dev/nvidia{minor}", dev.get("Path")),
        }
        problems += [f"GPU {position} {name}: nvidia-smi {theirs!r}, ours {ours!r}"
                     for name, (theirs, ours) in pairs.items() if theirs != ours]
    return lines, problems


def smi_list_uuids(smi_l: str) -> list[str]:
    """UUIDs of the `GPU n: ... (UUID: ...)` lines of `nvidia-smi -L` (MIG lines left out)."""
    return re.findall(r"^GPU \d+: .*\(UUID: (GPU-[0-9a-fA-F-]+)\)\s*$", smi_l, re.MULTILINE)


def short_bus(bus_id: str) -> str:
    """`bus:device.0` as vecadd prints a CUDA device's PCI location (no domain, function 0)."""
    _, bus, device_function = bus_id.lower().rsplit(":", 2)
    return f"{bus[-2:]}:{device_function.split('.')[0][-2:]}.0"


def vecadd_devices(output: str) -> tuple[int | None, list[str]]:
    """(the `Devices: N` count, each `Device d: name (bb:dd.0)` location) vecadd printed."""
    count = re.search(r"^Devices: (\d+)$", output, re.MULTILINE)
    buses = re.findall(r"^Device \d+: .*\(([0-9a-f]{2}:[0-9a-f]{2}\.0)\)$", output, re.MULTILINE)
    return (int(count.group(1)) if count else None), buses


def compare_visible(smi_l: str, vecadd: str, uuids: Sequence[str],
                    bus_ids: Sequence[str]) -> list[str]:
    """Problems unless the container saw exactly the GPUs `uuids` (at `bus_ids`), no others."""
    problems = []
    seen = smi_list_uuids(smi_l)
    if seen != list(uuids):
        problems.append(f"nvidia-smi -L shows {seen}, selected {list(uuids)}")
    count, buses = vecadd_devices(vecadd)
    if count != len(uuids):
        problems.append(f"vecadd: Devices: {count}, selected {len(uuids)}")
    # CUDA orders devices fastest first, not by bus: compare the sets.
    wanted = sorted(short_bus(b) for b in bus_ids)
    if sorted(buses) != wanted:
        problems.append(f"vecadd sees PCI {sorted(buses)}, selected {wanted}")
    if not re.search(r"^Vector add of \d+ elements: PASS$", vecadd, re.MULTILINE):
        problems.append("vecadd did not print 'Vector add ... PASS'")
    return problems


@dataclass(frozen=True, slots=True)
class ComputeApp:
    pid: int
    gpu_uuid: str
    name: str


def parse_compute_apps(text: str) -> list[ComputeApp]:
    """`nvidia-smi --query-compute-apps=pid,gpu_uuid,process_name --format=csv,noheader`."""
    apps = []
    for row in csv.reader(io.StringIO(text.strip())):
        cells = [cell.strip() for cell in row]
        if len(cells) >= 3 and cells[0].isdigit():
            apps.append(ComputeApp(int(cells[0]), cells[1], ",".join(cells[2:])))
    return apps


def compare_placement(apps: Sequence[ComputeApp], uuids: Sequence[str],
                      program: str = "vecadd") -> list[str]:
    """Problems unless each GPU in `uuids` runs exactly one `program` and no other GPU runs it."""
    ours = [app for app in apps if app.name.rsplit("/", 1)[-1] == program]
    problems = []
    for uuid in uuids:
        pids = [app.pid for app in ours if app.gpu_uuid == uuid]
        if len(pids) != 1:
            problems.append(f"{uuid}: {len(pids)} {program} processes {pids}, expected 1")
    problems += [f"{app.gpu_uuid}: {program} pid {app.pid} on a GPU not selected"
                 for app in ours if app.gpu_uuid not in uuids]
    return problems


# ---------------------------------------------------------------- CUDA sizes, CPU affinity


def parse_cuda_props(text: str) -> dict[str, tuple[int, int, int]]:
    """cudaprops.cu's lines: bus id (as /proc names it) -> (constant, shared per SM, L2) bytes."""
    props = {}
    for line in text.splitlines():
        cells = line.split()
        if len(cells) == 4 and all(cell.isdigit() for cell in cells[1:]):
            props[proc_bus_dir(cells[0])] = (int(cells[1]), int(cells[2]), int(cells[3]))
    return props


def compare_cuda_memory(info: Mapping[str, Any], props: Mapping[str, tuple[int, int, int]],
                        ) -> tuple[list[str], list[str]]:
    """(one line per GPU, problems): gpu/info/json Memory.Constant/Shared/L2Cache (KiB) against
    the CUDA runtime's byte counts, GPU by bus id."""
    lines: list[str] = []
    problems: list[str] = []
    for position, dev in enumerate(info.get("Devices") or []):
        bus = proc_bus_dir(str((dev.get("PCI") or {}).get("BusID")))
        memory = dev.get("Memory") or {}
        ours = (memory.get("Constant"), memory.get("Shared"), memory.get("L2Cache"))
        theirs = props.get(bus)
        if theirs is None:
            problems.append(f"GPU {position} ({bus}): the CUDA runtime lists no such device")
            continue
        want = tuple(value // 1024 for value in theirs)
        lines.append(f"GPU {position} ({bus}): CUDA runtime {theirs[0]} B, {theirs[1]} B, "
                     f"{theirs[2]} B = {want[0]}, {want[1]}, {want[2]} KiB; ours Constant "
                     f"{ours[0]}, Shared {ours[1]}, L2Cache {ours[2]} KiB")
        problems += [f"GPU {position} {name}: CUDA runtime {w} KiB, ours {o!r}"
                     for name, w, o in zip(("Constant", "Shared", "L2Cache"), want, ours,
                                           strict=True) if w != o]
    return lines, problems


def expected_affinity(numa_node: str | None, nodes: Sequence[str]) -> int | None:
    """What CPU Affinity must say, from sysfs: the device's `numa_node` when it is a node; for
    -1 (the firmware named none) the only node of a one-node machine (`nodes`: the `node<N>`
    entries of /sys/devices/system/node), else nothing (N/A)."""
    try:
        node = int((numa_node or "").strip())
    except ValueError:
        return None
    if node >= 0:
        return node
    numbers = [int(name[4:]) for name in nodes if re.fullmatch(r"node\d+", name)]
    return numbers[0] if len(numbers) == 1 else None


def compare_affinity(info: Mapping[str, Any], numa_nodes: Mapping[str, str | None],
                     local_cpus: Mapping[str, str | None], nodes: Mapping[str, str],
                     ) -> tuple[list[str], list[str]]:
    """(one line per GPU, problems): gpu/info/json CPUAffinity against sysfs. `numa_nodes` and
    `local_cpus` are each GPU's `numa_node` and `local_cpulist` by bus id, `nodes` the machine's
    NUMA nodes with their `cpulist`."""
    lines: list[str] = []
    problems: list[str] = []
    listed = ", ".join(f"{name} (CPUs {cpus})" for name, cpus in sorted(nodes.items()))
    for position, dev in enumerate(info.get("Devices") or []):
        bus = proc_bus_dir(str((dev.get("PCI") or {}).get("BusID")))
        raw, cpus = numa_nodes.get(bus), local_cpus.get(bus)
        want = expected_affinity(raw, list(nodes))
        why = ("its own node" if raw is not None and raw.strip().lstrip("-").isdigit()
               and int(raw) >= 0 else "the only node: every CPU is its" if want is not None
               else "unknown: several nodes and no word from the firmware")
        lines.append(f"GPU {position} ({bus}): numa_node {raw!r}, local_cpulist {cpus!r}; "
                     f"system nodes: {listed or 'none'}; expected {want} ({why}); ours "
                     f"{dev.get('CPUAffinity')!r}")
        if dev.get("CPUAffinity") != want:
            problems.append(f"GPU {position} CPUAffinity: sysfs says {want!r}, ours "
                            f"{dev.get('CPUAffinity')!r}")
        if want is not None and raw is not None and int(raw) < 0 and cpus is not None \
                and nodes.get(f"node{want}") not in (None, cpus):
            problems.append(f"GPU {position}: local_cpulist {cpus} is not node{want}'s "
                            f"{nodes[f'node{want}']}: the one-node rule does not hold here")
    return lines, problems


def vm_rss_kib(status: str) -> int | None:
    """VmRSS of a /proc/<pid>/status text, in KiB."""
    match = re.search(r"^VmRSS:\s*(\d+) kB$", status, re.MULTILINE)
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------- the GPU page


def parse_events(text: str) -> list[tuple[str, Any]]:
    """Server-sent events as (event name, JSON data), in order; a cut-off last one is dropped."""
    events = []
    for block in text.split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "event" in fields and "data" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def page_assets(html: str) -> list[str]:
    """The assets the page loads (`page/assets/<name>`), in order."""
    return re.findall(r'(?:src|href)="page/assets/([^"]+)"', html)


def compare_page(hello: Mapping[str, Any], samples: Sequence[Mapping[str, Any]],
                 status: Mapping[str, Any], smi_uuids: Sequence[str], driver: str,
                 container: str) -> list[str]:
    """What the page's stream showed against gpu/status/json and nvidia-smi: every GPU by UUID
    and the driver in `hello`, samples a second apart with readings close to gpu/status/json's,
    every GPU healthy, and the container `container` on a GPU with memory."""
    problems = []
    inventory = hello.get("inventory") or {}
    uuids = [g.get("uuid") for g in inventory.get("gpus", [])]
    if uuids != list(smi_uuids):
        problems.append(f"page GPUs {uuids}, nvidia-smi {list(smi_uuids)}")
    if inventory.get("driver") != driver:
        problems.append(f"page driver {inventory.get('driver')}, nvidia-smi {driver}")
    times = [s.get("t") for s in samples]
    if len(samples) < 2 or times != sorted(set(times)):
        problems.append(f"expected 2+ samples, each later than the last; got times {times}")
    if not samples:
        return problems
    last = {g["index"]: g for g in samples[-1].get("gpus", [])}
    for device in status.get("Devices", []):
        page = last.get(device["Index"], {})
        for key, ours, limit in (("temperature_c", device["Temperature"], 3),
                                 ("memory_used_mib", device["Memory"]["GlobalUsed"], 256)):
            if ours is None or page.get(key) is None or abs(page[key] - ours) > limit:
                problems.append(f"GPU {device['Index']} {key}: page {page.get(key)}, "
                                f"gpu/status/json {ours} (allowed difference {limit})")
    unhealthy = [h for h in samples[-1].get("health") or [] if h.get("state") != "healthy"]
    if samples[-1].get("health") is None or unhealthy:
        problems.append(f"health: {samples[-1].get('health')}")
    seen = [(g["index"], p) for s in samples for g in s.get("gpus", [])
            for p in g.get("processes", []) if (p.get("container") or {}).get("name") == container]
    if not seen:
        problems.append(f"no process of container {container} in {len(samples)} samples")
    elif not any((p.get("memory_used_mib") or 0) > 0 for _index, p in seen):
        problems.append(f"{container}'s processes show no GPU memory: {seen[-1]}")
    return problems


# ---------------------------------------------------------------- CDI through Podman

CDI_KIND = "nvidia.com/gpu"
CDI_VERSION = "0.5.0"  # what Debian 12's Podman 4.3 reads, and what the fields need
# What a daemon's volumes directory holds before any volume is made: its lock and mount table.
DAEMON_OWN_FILES = frozenset({".lock", "state.json"})


def check_cdi_spec(body: Mapping[str, Any], uuids: Sequence[str], mode: int | None) -> list[str]:
    """Problems with the daemon's CDI spec on a host whose GPUs are `uuids` (nvidia-smi order)."""
    problems = []
    if body.get("cdiVersion") != CDI_VERSION:
        problems.append(f"cdiVersion {body.get('cdiVersion')!r}, expected {CDI_VERSION}")
    if body.get("kind") != CDI_KIND:
        problems.append(f"kind {body.get('kind')!r}, expected {CDI_KIND}")
    names = [d.get("name") for d in body.get("devices") or []]
    wanted = [*(str(i) for i in range(len(uuids))), *uuids, "all"]
    problems += [f"no device {name!r}" for name in wanted if name not in names]
    if mode != 0o644:
        problems.append(f"mode {mode if mode is None else oct(mode)}, expected 0o644")
    return problems


def parse_mountinfo(text: str) -> dict[str, tuple[str, list[str]]]:
    """/proc/self/mountinfo as mount point -> (root within its filesystem, mount options)."""
    mounts = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6:
            mounts[fields[4]] = (fields[3], fields[5].split(","))
    return mounts


def within_filesystem(path: str, mountinfo: str) -> str:
    """`path` (a real path on the host) as mountinfo's root column shows a bind mount of it:
    relative to the filesystem it lives on (the longest mount point holding it, the last one
    mounted there), under that mount's own root."""
    point, root = "/", "/"
    for mount_point, (mount_root, _options) in parse_mountinfo(mountinfo).items():
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(point):
            point, root = mount_point, mount_root
    rest = path[len(point):].lstrip("/")
    return root.rstrip("/") + "/" + rest if rest else root


def check_bind_mounts(mountinfo: str, expected: Mapping[str, str]) -> list[str]:
    """Each container path in `expected` must be a read-only, nosuid, nodev mount of the host file
    named (its root), not a file of the image or a copy."""
    mounts = parse_mountinfo(mountinfo)
    problems = []
    for target, source in expected.items():
        if target not in mounts:
            problems.append(f"{target} is not a mount")
            continue
        root, options = mounts[target]
        if root != source:
            problems.append(f"{target} mounts {root}, expected {source}")
        missing = [o for o in ("ro", "nosuid", "nodev") if o not in options]
        if missing:
            problems.append(f"{target} lacks {','.join(missing)} ({','.join(options)})")
    return problems


def volume_leftovers(files: Iterable[str]) -> list[str]:
    """Files (paths relative to a volumes directory) other than the daemon's own: a copy of the
    driver would show here."""
    return sorted(f for f in files if f not in DAEMON_OWN_FILES)


# ---------------------------------------------------------------- /metrics (issue 16)

# nvidia-smi --query-gpu field -> (dcgm-exporter's metric, tolerance as compare_fields takes it).
# Each field is asked alone: a field an older nvidia-smi lacks fails only itself.
SMI_METRICS: dict[str, tuple[tuple[str, ...], float]] = {
    "temperature.gpu": (("DCGM_FI_DEV_GPU_TEMP",), 3),
    "temperature.memory": (("DCGM_FI_DEV_MEMORY_TEMP",), 3),
    "power.draw": (("DCGM_FI_DEV_POWER_USAGE",), 0.25),
    "clocks.sm": (("DCGM_FI_DEV_SM_CLOCK",), 0.25),
    "clocks.mem": (("DCGM_FI_DEV_MEM_CLOCK",), 0.05),
    "utilization.gpu": (("DCGM_FI_DEV_GPU_UTIL",), 15),
    "utilization.memory": (("DCGM_FI_DEV_MEM_COPY_UTIL",), 15),
    "memory.used": (("DCGM_FI_DEV_FB_USED",), 0.02),
    "memory.free": (("DCGM_FI_DEV_FB_FREE",), 0.02),
    "memory.reserved": (("DCGM_FI_DEV_FB_RESERVED",), 0.01),
    "ecc.errors.corrected.volatile.total": (("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",), 0),
    "ecc.errors.uncorrected.volatile.total": (("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",), 0),
    "ecc.errors.corrected.aggregate.total": (("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",), 0),
    "ecc.errors.uncorrected.aggregate.total": (("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",), 0),
    "remapped_rows.correctable": (("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",), 0),
    "remapped_rows.uncorrectable": (("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",), 0),
}
_SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_prometheus(text: str) -> list[Sample]:
    """The samples of a Prometheus text page (comments skipped; label escapes undone)."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if line.startswith("#") or match is None:
            continue
        labels = {k: re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), v)
                  for k, v in _LABEL.findall(match.group(2) or "")}
        samples.append(Sample(match.group(1), labels, float(match.group(3))))
    return samples


def metrics_by_gpu(samples: Iterable[Sample]) -> dict[str, dict[str, float]]:
    """GPU index -> {DCGM metric: value}, from the samples that carry a `gpu` label."""
    found: dict[str, dict[str, float]] = {}
    for sample in samples:
        if sample.name.startswith("DCGM_FI_") and "gpu" in sample.labels:
            found.setdefault(sample.labels["gpu"], {})[sample.name] = sample.value
    return found


def compare_metric_labels(samples: Iterable[Sample], smi_rows: Sequence[Mapping[str, str]],
                          ) -> list[str]:
    """Problems unless every DCGM sample carries dcgm-exporter's labels with nvidia-smi's
    values (`smi_rows`: index, uuid, name, pci.bus_id, driver_version per GPU)."""
    by_index = {row["index"]: row for row in smi_rows}
    problems: list[str] = []
    for sample in samples:
        if not sample.name.startswith("DCGM_FI_"):
            continue
        row = by_index.get(sample.labels.get("gpu", ""))
        if row is None:
            problems.append(f"{sample.name}: gpu={sample.labels.get('gpu')!r} is no GPU of "
                            "nvidia-smi's")
            continue
        wanted = {"UUID": row["uuid"], "pci_bus_id": row["pci.bus_id"],
                  "device": f"nvidia{row['index']}", "modelName": row["name"],
                  "DCGM_FI_DRIVER_VERSION": row["driver_version"]}
        wrong = {k: sample.labels.get(k) for k, v in wanted.items() if sample.labels.get(k) != v}
        if wrong or not sample.labels.get("Hostname"):
            problems.append(f"{sample.name} gpu={row['index']}: {wrong or 'no Hostname'} "
                            f"(nvidia-smi: {wanted})")
    return sorted(set(problems))


def container_samples(samples: Iterable[Sample], name: str) -> dict[str, float]:
    """nvplugin_container_* values of the container `name` (summed over its GPUs)."""
    found: dict[str, float] = {}
    for sample in samples:
        if sample.name.startswith("nvplugin_container_") and \
                sample.labels.get("container_name") == name:
            found[sample.name] = found.get(sample.name, 0.0) + sample.value
    return found


@dataclass(frozen=True, slots=True)
class Mapped:
    """A file a process has mapped, from /proc/<pid>/maps."""

    inode: int
    path: str
    deleted: bool  # the mapping's file was deleted (or replaced) since it was mapped


def mapped_files(maps: str, fragment: str) -> list[Mapped]:
    """The distinct files whose path contains `fragment` in a /proc/<pid>/maps text."""
    found: dict[tuple[int, str], Mapped] = {}
    for line in maps.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or fragment not in fields[5]:
            continue
        path = fields[5]
        deleted = path.endswith(" (deleted)")
        path = path.removesuffix(" (deleted)")
        found.setdefault((int(fields[4]), path), Mapped(int(fields[4]), path, deleted))
    return list(found.values())


def compare_reload(before: Sequence[Mapped], after: Sequence[Mapped], old_inode: int,
                   new_inode: int, library: str) -> list[str]:
    """What is wrong with the daemon's mapped NVML after the library file was replaced: it must
    map exactly the new file at `library`, and nothing of the old one (deleted or not)."""
    problems = []
    if [(m.inode, m.path) for m in before] != [(old_inode, library)]:
        problems.append(f"before: mapped {before}, expected only inode {old_inode} ({library})")
    if (new_inode, library, False) not in [(m.inode, m.path, m.deleted) for m in after]:
        problems.append(f"after: mapped {after}, not the new inode {new_inode} ({library}): "
                        "NVML was not reloaded from the new file")
    if any(m.inode != new_inode for m in after):
        problems.append(f"after: mapped {after}: the old library stays mapped beside the new "
                        "one (it could not be unloaded)")
    return problems
# Issue 18's targets, checked on the benches' SUMMARY lines.
START_UP_MARGIN_MS = 50.0  # ready within this of the Python + aiohttp floor ...
V1_FACTOR = 1.2  # ... or within this many times 1.0.1's ready, whichever is larger
RSS_MARGIN_MIB = 10.0  # RSS within this of the Python + aiohttp + pynvml floor
FLAT_MIB = 1.0  # RSS growth over 10,000 requests of every route that still counts as flat
FIRST_RUN_MARGIN = (50.0, 0.2)  # first run within max(50 ms, 20 % of the later runs) of them


def bench_summary(output: str) -> dict[str, float] | None:
    """The figures a bench prints on its last `SUMMARY {json}` line, or None without one."""
    lines = [line for line in output.splitlines() if line.startswith("SUMMARY ")]
    if not lines:
        return None
    try:
        figures = json.loads(lines[-1].removeprefix("SUMMARY "))
    except ValueError:
        return None
    return {k: float(v) for k, v in figures.items()} if isinstance(figures, dict) else None


def start_up_problems(figures: Mapping[str, float]) -> list[str]:
    """bench_startup's figures against issue 18's targets; [] when every one is met."""
    problems = []
    # Each start against the floor of its own round where the bench gives it (the host's pace
    # drifts between rounds), else the medians'.
    over = figures.get("ready_over_floor_ms",
                       figures["ready_ms"] - figures["floor_imports_ms"])
    v1_target = V1_FACTOR * figures["v1_ready_ms"]
    if over > START_UP_MARGIN_MS and figures["ready_ms"] > v1_target:
        problems.append(f"ready in {figures['ready_ms']:.0f} ms, {over:.0f} ms over the floor "
                        f"(target: floor + {START_UP_MARGIN_MS:.0f} ms, or {V1_FACTOR} x 1.0.1's "
                        f"{figures['v1_ready_ms']:.0f} ms = {v1_target:.0f} ms)")
    if "rss_mib" in figures:
        over = figures["rss_mib"] - figures["floor_rss_mib"]
        if over > RSS_MARGIN_MIB:
            problems.append(f"RSS {figures['rss_mib']:.1f} MiB is {over:.1f} MiB over the "
                            f"floor's {figures['floor_rss_mib']:.1f} (target +{RSS_MARGIN_MIB:g})")
        if figures["growth_mib"] > FLAT_MIB:
            problems.append(f"RSS grew {figures['growth_mib']:.1f} MiB over "
                            f"{figures['requests_per_route']:.0f} requests of every route")
    return problems


def first_run_problems(figures: Mapping[str, float]) -> list[str]:
    """bench_first_run's figures: the first run after a start (the prebuild done) against the
    later ones; [] when it costs no more than they do (within the margin)."""
    first, later = figures["prebuild_first_ms"], figures["prebuild_later_ms"]
    margin = max(FIRST_RUN_MARGIN[0], FIRST_RUN_MARGIN[1] * later)
    if first - later > margin:
        return [f"the first run after a start took {first:.0f} ms against {later:.0f} ms for "
                f"later ones (+{first - later:.0f} ms, allowed +{margin:.0f})"]
    return []
