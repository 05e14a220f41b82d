"""Time driver discovery against `ldconfig -p` measured in the same run.

    python3 bench/bench_discovery.py                    # the real host: driver root /
    python3 bench/bench_discovery.py --driver-root /run/nvidia/driver
    python3 bench/bench_discovery.py --fake             # a gcc-built fake host (no GPU needed)

Prints median and p90 of: reading + parsing the root's ld.so.cache; full discovery cold (ELF
facts re-read every run) and warm (ELF facts remembered, as on a re-discovery); and the
`ldconfig -p` subprocess as the baseline, with ratios. No asserts: figures only.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nvplugin.core.errors import DiscoveryError
from nvplugin.driver import discovery, elfinfo, ldcache
from nvplugin.driver.hostroot import HostRoot


def measure(fn: Callable[[], object], runs: int, before: Callable[[], None] | None = None,
            ) -> list[float]:
    fn()  # warm the page cache and imports once, so run 1 is not an outlier
    times = []
    for _ in range(runs):
        if before:
            before()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def figures(name: str, times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    median = statistics.median(ordered)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    print(f"  {name:<38} median {median:8.3f} ms   p90 {p90:8.3f} ms   (n={len(times)})")
    return median, p90


def run(driver_root: str, runs: int) -> int:
    root = HostRoot(driver_root)
    cache_file = root.host(discovery.LD_CACHE)
    print(f"driver root {root.root}, ld.so.cache {cache_file}, {runs} runs each")

    def parse() -> list[ldcache.CacheEntry]:
        return ldcache.parse(root.read_bytes(root.resolve(discovery.LD_CACHE)), cache_file)

    try:
        entries = parse()
    except (OSError, DiscoveryError) as err:
        print(f"  cannot read the cache: {err}")
        entries = []
    argv = ["ldconfig", "-p"] if root.root == "/" else ["ldconfig", "-p", "-C", cache_file]
    results: dict[str, float] = {}
    if entries:
        print(f"  {len(entries)} cache entries")
        results["parse"] = figures("our ld.so.cache read+parse", measure(parse, runs))[0]
        data = root.read_bytes(root.resolve(discovery.LD_CACHE))
        results["parse-only"] = figures("our parse (bytes in memory)",
                                        measure(lambda: ldcache.parse(data), runs))[0]
    results["ldconfig"] = figures(f"baseline: {' '.join(argv)} (subprocess)",
                                  measure(lambda: subprocess.run(argv, capture_output=True,
                                                                 check=True), runs))[0]
    try:
        manifest = discovery.discover(root)
    except DiscoveryError as err:
        print(f"  full discovery: {err}")
    else:
        print(f"  driver {manifest.version}: {len(manifest.entries)} files, "
              f"{len(manifest.links)} links, {len(manifest.rejected)} rejected")
        # Cold: a fresh memo each run (discover() makes one when given none).
        results["cold"] = figures("full discovery, cold ELF reads",
                                  measure(lambda: discovery.discover(root), runs))[0]
        memo = elfinfo.ElfMemo()
        discovery.discover(root, memo=memo)
        results["warm"] = figures("full discovery, warm (re-discovery)",
                                  measure(lambda: discovery.discover(root, memo=memo), runs))[0]
    print("ratios (baseline ldconfig -p / ours; >1 means ours is faster):")
    for key in ("parse", "parse-only", "cold", "warm"):
        if key in results:
            print(f"  ldconfig -p / {key:<11} {results['ldconfig'] / results[key]:8.2f}x")
    if "cold" in results:
        print(f"  full discovery cold median {results['cold']:.1f} ms against a 50 ms target")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver-root", default="/", help="root holding the driver (default /)")
    parser.add_argument("--runs", type=int, default=30, help="runs per measurement")
    parser.add_argument("--fake", action="store_true",
                        help="build a fake driver host with gcc and ldconfig and time that")
    args = parser.parse_args(argv)
    if not args.fake:
        return run(args.driver_root, args.runs)
    from tests.fakehost.build import build_fake_host

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        host = build_fake_host(Path(tmp) / "host", stale_version="570.86.15")
        print(f"fake host built in {(time.perf_counter() - start) * 1000:.0f} ms")
        return run(str(host.root), args.runs)


if __name__ == "__main__":
    sys.exit(main())
