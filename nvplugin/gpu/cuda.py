"""The memory sizes 1.0 showed (Constant, Shared, L2 Cache), read from the driver's own libcuda.

NVML has no source for them; CUDA's driver API has (cuInit, then cuDeviceGetAttribute: no context
is created). 1.0 linked the CUDA runtime into the daemon; we ask in a short-lived child process
(cuda_child.py, `python -I`), once per libcuda file, and keep the answer, because:

- cuInit cannot be undone: libcuda, its threads and its device state stay in the process that
  called it. The GPU proof measures what that costs in resident memory on the H200 and prints it
  beside the daemon's own (`cuInit in a process`, docs/gpu-proof.md); the child's answer carries
  the figure, and the daemon logs it once per driver change.
- A process holds one libcuda.so.1: after a driver upgrade the new one could not be loaded beside
  the old one. A new child reads the new driver.
- A crash or a hang in libcuda costs the child, never the daemon (killed after `TIMEOUT_S`).

The price is one Python start-up per driver change (at start-up, once docker/cli answers; after
a driver change, while NVML opens again): 42 ms against 0.4 ms in-process with the fake libcuda
on our 2-core CI machine (`bench/bench_cuda.py`, which on the GPU host also prints what the
in-process way keeps in the daemon's memory).
CUDA devices are matched to NVML's GPUs by PCI bus id, never by index: CUDA orders devices fastest
first, NVML by bus id; CUDA_VISIBLE_DEVICES would hide some, so the child does not inherit it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nvplugin.driver import discovery
from nvplugin.gpu.facts import sysfs_bus_id
from nvplugin.gpu.records import Gpu

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("cuda_child.py")
TIMEOUT_S = 60.0  # cuInit on eight GPUs without persistence mode takes seconds, not minutes
HIDDEN_ENV = ("CUDA_VISIBLE_DEVICES",)
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


class CudaProperties:
    """Reads the sizes of every GPU from the driver root's libcuda, in a child process, and
    keeps a successful answer until the libcuda file changes. Blocking: call it in a thread."""

    def __init__(self, driver_root: Path, *, timeout_s: float = TIMEOUT_S,
                 finder: Callable[[Path], str | None] = discovery.find_cuda_library) -> None:
        self.driver_root = driver_root
        self.timeout_s = timeout_s
        self._finder = finder
        self._kept: tuple[tuple[object, ...], CudaReport] | None = None

    def read(self) -> CudaReport:
        library = self._finder(self.driver_root)
        if library is None:
            return CudaReport(None, error=f"no 64-bit libcuda.so.1 under {self.driver_root}")
        try:
            st = os.stat(library)
        except OSError as err:
            return CudaReport(library, error=f"{library}: {err.strerror}")
        identity = (library, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if self._kept is not None and self._kept[0] == identity:
            return replace(self._kept[1], cached=True)
        report = self._query(library)
        if report.error is None:
            self._kept = (identity, report)
        return report

    def _query(self, library: str) -> CudaReport:
        env = {k: v for k, v in os.environ.items() if k not in HIDDEN_ENV}
        started = time.monotonic()
        try:
            done = subprocess.run([sys.executable, "-I", str(CHILD), library], env=env,
                                  capture_output=True, text=True, timeout=self.timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired:
            return CudaReport(library, error=f"{library}: cuInit did not answer in "
                              f"{self.timeout_s:g} s (the query was stopped)")
        except OSError as err:
            return CudaReport(library, error=f"cannot start {sys.executable}: {err.strerror}")
        took_ms = (time.monotonic() - started) * 1000
        try:
            answer = json.loads(done.stdout)
            if not isinstance(answer, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            return CudaReport(library, error=f"the query of {library} failed: {why[:300]}",
                              took_ms=took_ms)
        return parse_answer(library, answer, took_ms)


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
