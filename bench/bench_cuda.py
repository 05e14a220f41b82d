"""What reading Constant, Shared and L2 Cache costs: cuInit in the daemon (1.0's way) against
the child process nvplugin uses, in the same run.

    python3 bench/bench_cuda.py                     # the fake libcuda (tests/fakenvml)
    python3 bench/bench_cuda.py --driver-root /     # the host's libcuda (the GPU host)

Ours first: `CudaProperties.read()` (a child process runs cuInit and the queries), timed, with
this process's resident memory before and after. Then the baseline: the same queries in this
process (`cuda_child.query`), as 1.0's CUDA runtime did in the daemon. Figures only, no asserts.
Target: the daemon's resident memory unchanged by the query; its cost a one-off per driver change.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nvplugin.driver.discovery import find_cuda_library
from nvplugin.gpu import cuda_child
from nvplugin.gpu.cuda import CudaProperties


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def setup_fake(workdir: Path, gpus: int) -> Path:
    from tests.fakenvml.build import build_fake_nvml, make_config, write_config
    from tests.fakenvml.cuda import build_fake_cuda, install_fake_cuda

    build_fake_nvml(workdir / "lib")  # the config's schema comes with it
    install_fake_cuda(workdir / "root", build_fake_cuda(workdir / "lib"))
    os.environ["FAKE_NVML_CONFIG"] = str(write_config(workdir / "fake.json", make_config(gpus)))
    return workdir / "root"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver-root", help="the host's driver root (default: a fake one)")
    parser.add_argument("--gpus", type=int, default=1, help="fake GPUs (default 1, as the H200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cuda-") as tmp:
        root = Path(args.driver_root) if args.driver_root else setup_fake(Path(tmp), args.gpus)
        library = find_cuda_library(root)
        if library is None:
            sys.exit(f"no libcuda.so.1 under {root}")

        before = rss_mib()
        started = time.perf_counter()
        report = CudaProperties(root).read()
        ours_ms = (time.perf_counter() - started) * 1000
        after_ours = rss_mib()
        if report.error is not None:
            sys.exit(f"the query failed: {report.error}")

        started = time.perf_counter()
        answer = cuda_child.query(library)
        base_ms = (time.perf_counter() - started) * 1000
        after_base = rss_mib()

    print(f"libcuda: {library}; {len(report.memory)} GPU(s): "
          + ", ".join(f"{bus} {m.constant_kib}/{m.shared_kib}/{m.l2_kib} KiB"
                      for bus, m in report.memory.items()))
    print(f"ours, child process:     {ours_ms:8.1f} ms   this process {before:6.1f} -> "
          f"{after_ours:6.1f} MiB ({after_ours - before:+.1f} MiB); the child's cuInit "
          f"{report.init_ms} ms, {(report.init_rss_kib or 0) / 1024:+.1f} MiB")
    print(f"1.0 baseline, in-process: {base_ms:8.1f} ms   this process {after_ours:6.1f} -> "
          f"{after_base:6.1f} MiB ({after_base - after_ours:+.1f} MiB, kept for the "
          f"process's life); cuInit {answer.get('init_ms')} ms")
    print(f"time ratio ours/baseline: {ours_ms / max(base_ms, 1e-6):.1f}x (once per driver "
          f"change); memory kept by the daemon: ours {after_ours - before:+.1f} MiB, baseline "
          f"{after_base - after_ours:+.1f} MiB")


if __name__ == "__main__":
    main()
