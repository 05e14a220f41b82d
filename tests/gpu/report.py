"""Pure parts of the GPU proof: parsing nvidia-smi and ldd output, comparing, and the report.

Kept free of I/O so the CI (which has no GPU) tests them.
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
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
