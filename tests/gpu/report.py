"""Pure parts of the GPU proof: parsing nvidia-smi and ldd output, comparing, and the report.

Kept free of I/O so the CI (which has no GPU) tests them.
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SMI_FIELDS = ("index", "uuid", "name", "pci.bus_id", "memory.total", "driver_version")


@dataclass
class Step:
    name: str
    ok: bool
    detail: str = ""
    seconds: float | None = None


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    timings: dict[str, str] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, ok: bool, detail: str = "", seconds: float | None = None) -> Step:
        step = Step(name, ok, detail, seconds)
        self.steps.append(step)
        print(format_step(step), flush=True)
        return step

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)


def format_step(step: Step) -> str:
    took = f" ({step.seconds:.2f} s)" if step.seconds is not None else ""
    head = f"[{'PASS' if step.ok else 'FAIL'}] {step.name}{took}"
    if not step.detail:
        return head
    body = "\n".join("       " + line for line in step.detail.rstrip().splitlines())
    return f"{head}\n{body}"


def format_summary(report: Report) -> str:
    width = max((len(s.name) for s in report.steps), default=4)
    lines = ["", "Summary", "-------", f"{'step':<{width}}  result"]
    lines += [f"{s.name:<{width}}  {'PASS' if s.ok else 'FAIL'}" for s in report.steps]
    passed = sum(s.ok for s in report.steps)
    lines.append(f"{passed} passed, {len(report.steps) - passed} failed")
    if report.timings:
        key_width = max(len(k) for k in report.timings)
        lines += ["", "Timings", "-------"]
        lines += [f"{k:<{key_width}}  {v}" for k, v in report.timings.items()]
    return "\n".join(lines)


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
