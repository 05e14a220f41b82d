"""What CUDA's child process answered (cuda.py), as records, and the GPUs with its sizes filled in.

Pure logic, apart from cuda.py's process handling because nothing needs it before the daemon
answers: the child starts once docker/cli can, and these records load with its answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from nvplugin.gpu.facts import sysfs_bus_id
from nvplugin.gpu.records import Gpu

KIB = 1024


@dataclass(frozen=True, slots=True)
class CudaMemory:
    """One GPU's sizes in KiB, as 1.0 printed them; None where CUDA could not say."""

    constant_kib: int | None = None
    shared_kib: int | None = None  # per multiprocessor
    l2_kib: int | None = None


@dataclass(frozen=True, slots=True)
class CudaReport:
    """What one query found: sizes per GPU (by sysfs-style bus id), or why there are none."""

    library: str | None
    memory: Mapping[str, CudaMemory] = field(default_factory=dict)
    error: str | None = None  # nothing could be read
    problems: tuple[str, ...] = ()  # single devices or sizes that could not be read
    took_ms: float = 0.0  # the child, start to answer
    init_ms: float | None = None  # cuInit alone, in the child
    init_rss_kib: int | None = None  # resident memory cuInit added to the child
    cached: bool = False  # an earlier answer for the same libcuda file


def parse_answer(library: str, answer: Mapping[str, Any], took_ms: float) -> CudaReport:
    """The child's JSON as a report; anything malformed is a problem, never an exception."""
    if isinstance(answer.get("error"), str):
        return CudaReport(library, error=f"{library}: {answer['error']}", took_ms=took_ms)
    devices = answer.get("devices")
    if not isinstance(devices, list):
        return CudaReport(library, error=f"{library}: the query answered no device list",
                          took_ms=took_ms)
    memory: dict[str, CudaMemory] = {}
    problems: list[str] = []
    for device in devices:
        if not isinstance(device, dict) or isinstance(device.get("error"), str):
            problems.append(str(device.get("error") if isinstance(device, dict) else device))
            continue
        try:
            bus = sysfs_bus_id(str(device.get("bus_id")))
        except ValueError:
            problems.append(f"CUDA device with an unreadable bus id {device.get('bus_id')!r}")
            continue
        sizes = [_kib(device.get(key), f"{bus} {what}", problems)
                 for key, what in (("constant", "constant memory"),
                                   ("shared", "shared memory per multiprocessor"),
                                   ("l2", "L2 cache size"))]
        memory[bus] = CudaMemory(*sizes)
    rss = answer.get("rss_kib")
    grown = (rss[1] - rss[0] if isinstance(rss, list) and len(rss) == 2
             and all(isinstance(v, int) for v in rss) else None)
    init_ms = answer.get("init_ms")
    return CudaReport(library, memory, problems=tuple(problems), took_ms=took_ms,
                      init_ms=float(init_ms) if isinstance(init_ms, (int, float)) else None,
                      init_rss_kib=grown)


def _kib(value: object, what: str, problems: list[str]) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value // KIB
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        problems.append(f"{what}: {value['error']}")
    else:
        problems.append(f"{what}: unexpected value {value!r}")
    return None


def with_memory(gpus: tuple[Gpu, ...], report: CudaReport) -> tuple[tuple[Gpu, ...], list[str]]:
    """The GPUs with CUDA's sizes filled in by bus id; and the GPUs CUDA did not list (a GPU in
    MIG mode is listed only through its MIG devices: expected, so not reported)."""
    out, missing = [], []
    for gpu in gpus:
        found = report.memory.get(sysfs_bus_id(gpu.bus_id))
        if found is None:
            if not gpu.mig_mode and report.error is None:
                missing.append(f"CUDA does not list GPU {gpu.index} ({gpu.bus_id})")
            out.append(gpu)
            continue
        out.append(replace(gpu, memory_constant_kib=found.constant_kib,
                           memory_shared_kib=found.shared_kib, memory_l2_kib=found.l2_kib))
    return tuple(out), missing
