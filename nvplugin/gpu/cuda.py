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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from nvplugin.driver import discovery

if TYPE_CHECKING:  # the report loads with the first answer, after the daemon answers
    from nvplugin.gpu.cuda_report import CudaReport

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("cuda_child.py")
TIMEOUT_S = 60.0  # cuInit on eight GPUs without persistence mode takes seconds, not minutes
HIDDEN_ENV = ("CUDA_VISIBLE_DEVICES",)


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
        from nvplugin.gpu.cuda_report import CudaReport

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
        from nvplugin.gpu.cuda_report import CudaReport, parse_answer

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
