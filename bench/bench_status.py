"""gpu/status cost: 1.0's sequential NVML reads against GpuService.status(), in the same run.

    python3 bench/bench_status.py                  # fake NVML, PCIe throughput 20 ms per call
    python3 bench/bench_status.py --gpus 8         # eight fake GPUs
    python3 bench/bench_status.py --real           # the host's libnvidia-ml (the GPU host)
    python3 bench/bench_status.py --real --library /usr/lib64/libnvidia-ml.so.1

Baseline: what 1.0 did per request, every status call of every GPU one after another, PCIe
RX/TX included (on an H200 those two cost ~20 ms each). Ours: `GpuService.status()` as the
REST handler awaits it (fast fields read fresh off the loop, PCIe from the background sampler).
Then the process's CPU time while nobody asks: first while the sampler still runs (the
`idle_after` window after the last request), then after it stopped. Figures only, no asserts.
Targets: status p50 < 2 ms on the GPU host (1.0: 49 ms); idle CPU < 1 % of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nvplugin.gpu.nvml import NvmlSession
from nvplugin.gpu.service import GpuService


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, ms: list[float]) -> str:
    return (f"{name:<34} p50 {statistics.median(ms):8.3f} ms   p99 {percentile(ms, 0.99):8.3f} ms"
            f"   ({len(ms)} reads)")


def setup_fake(gpus: int, pcie_delay_ms: float, workdir: Path) -> str:
    from tests.fakenvml.build import build_fake_nvml, make_config, write_config

    library = build_fake_nvml(workdir / "lib")
    config = write_config(workdir / "fakenvml.json",
                          make_config(gpus, pcie_delay_ms=pcie_delay_ms))
    os.environ["FAKE_NVML_CONFIG"] = str(config)
    return str(library)


def baseline(library: str | None, root: Path, reads: int) -> list[float]:
    """1.0's way: every call of every GPU, sequentially, in the caller's thread."""
    session = NvmlSession.open(library, driver_root=root, dev_root=root)
    try:
        session.read_gpus()
        times = []
        for _ in range(reads):
            start = time.perf_counter()
            session.read_status(time.time)
            session.read_pcie()
            times.append((time.perf_counter() - start) * 1000)
        return times
    finally:
        session.close()


async def ours(service: GpuService, reads: int) -> tuple[list[float], list[float]]:
    await service.status()  # the first request waits for the first PCIe sample
    sequential = []
    for _ in range(reads):
        start = time.perf_counter()
        await service.status()
        sequential.append((time.perf_counter() - start) * 1000)
    concurrent = []
    for _ in range(max(1, reads // 10)):
        start = time.perf_counter()
        await asyncio.gather(*(service.status() for _ in range(10)))
        concurrent.append((time.perf_counter() - start) * 1000)
    return sequential, concurrent


async def idle_cpu(seconds: float) -> float:
    """Percent of one core this process used over `seconds` of waiting."""
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    return 100 * (time.process_time() - cpu) / (time.perf_counter() - wall)


async def run(args: argparse.Namespace, library: str | None, root: Path) -> None:
    base = await asyncio.to_thread(baseline, library, root, args.baseline_reads)
    service = await GpuService.start(driver_root=root, dev_root=root, nvml_library=library)
    if not service.available:
        sys.exit(f"NVML unavailable: {service.reason}")
    try:
        gpus = len((await service.inventory()).gpus)
        sequential, concurrent = await ours(service, args.reads)
        cache = service.status_cache
        if cache is None:
            sys.exit("NVML went away during the run")
        sampling_cpu = await idle_cpu(args.idle_seconds)
        deadline = time.monotonic() + cache.idle_after + 2
        while cache.sampling and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stopped = not cache.sampling
        stopped_cpu = await idle_cpu(args.idle_seconds)
    finally:
        await service.close()

    print(f"NVML: {'real' if args.real else f'fake, PCIe {args.pcie_delay_ms} ms per call'}; "
          f"{gpus} GPU(s); library {library or 'found by the loader'}")
    print(summary("1.0 baseline (sequential NVML)", base))
    print(summary("GpuService.status()", sequential))
    print(summary("10 concurrent status() (batch)", concurrent))
    p50_ratio = statistics.median(base) / max(statistics.median(sequential), 1e-9)
    print(f"speed-up p50: {p50_ratio:.1f}x   target p50 < 2 ms: "
          f"{'met' if statistics.median(sequential) < 2 else 'NOT met'}")
    print(f"CPU while nobody asks, sampler still running ({cache.interval:g} s interval): "
          f"{sampling_cpu:.2f} % of a core")
    print(f"CPU while nobody asks, sampler stopped ({'stopped' if stopped else 'still running'}"
          f" after {cache.idle_after:g} s): {stopped_cpu:.3f} % of a core   target < 1 %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="use the host's NVML")
    parser.add_argument("--library", help="libnvidia-ml path (default: the loader's search)")
    parser.add_argument("--gpus", type=int, default=1, help="fake GPUs (default 1, as the H200)")
    parser.add_argument("--pcie-delay-ms", type=float, default=20.0)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--baseline-reads", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp:
        if args.real:
            library, root = args.library, Path("/")
        else:
            library, root = setup_fake(args.gpus, args.pcie_delay_ms, Path(tmp)), Path(tmp)
        asyncio.run(run(args, library, root))


if __name__ == "__main__":
    main()
