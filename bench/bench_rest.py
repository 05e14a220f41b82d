"""REST API latency, throughput and memory against aiohttp's own floor, measured in one run.

    python3 bench/bench_rest.py [--requests 10000] [--connections 50] [--rate 2000]

Builds a fake driver host (gcc ELF files, ld.so.cache, device nodes; needs root for mknod) with
the fake NVML as its libnvidia-ml.so.1, then starts two server processes, each one asyncio loop
like the daemon: the REST app on that host, and a minimal aiohttp app answering "hello" (the
framework's floor). Load comes from other processes, in two shapes:

* closed loop: every connection sends its next request as soon as the last one is answered, so
  latency includes queueing behind the other connections; this gives throughput. `wrk` drives
  it when installed (its C client costs the servers' CPUs little), else an aiohttp client;
* open loop: requests are sent on a fixed schedule (`--rate` per second over all connections,
  aiohttp client in this process) and latency is measured from the scheduled time, so queueing
  is counted but not provoked: this is the latency a caller sees on an unsaturated daemon.

Prints figures and ratios; asserts nothing (targets are in the brief: docker/cli p50 < 1 ms and
p99 < 5 ms, status p50 < 2 ms, within 2x of hello, RSS < 60 MB and flat).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ROUTES = {"docker/cli": "/v1.0/docker/cli?dev=0", "gpu/status/json": "/v1.0/gpu/status/json",
          "gpu/info": "/v1.0/gpu/info"}


# ---------------------------------------------------------------- servers (child processes)


def serve_hello(port: int) -> None:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/hello", hello)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_rest(port: int, root: Path) -> None:
    from nvplugin.api import rest_app
    from nvplugin.cdi.writer import SpecKeeper
    from nvplugin.core.config import Config
    from nvplugin.driver import discovery
    from nvplugin.gpu.service import GpuService

    async def make() -> web.Application:
        gpus = await GpuService.start(driver_root=root, dev_root=root,
                                      nvml_library=discovery.find_nvml_library(root))
        manifest = await asyncio.to_thread(discovery.discover, root,
                                           await gpus.driver_version())
        config = Config(driver_root=root, dev_root=root)
        cdi = SpecKeeper(path=None, kind=config.cdi_kind, host_root=config.host_root, gpus=gpus,
                         manifest=lambda: manifest)
        await cdi.refresh("start-up")
        return rest_app.make_app(gpus, lambda: manifest, config, cdi)

    web.run_app(make(), host="127.0.0.1", port=port, access_log=None, print=None)


# ---------------------------------------------------------------- load (this process)


@dataclass
class Result:
    latencies: list[float]
    seconds: float
    errors: int
    requests: int = 0  # when latencies is a summary rather than every request
    quantiles: dict[float, float] | None = None  # wrk's own percentiles, seconds

    def pct(self, q: float) -> float:
        if self.quantiles is not None:
            return self.quantiles[q] * 1000
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def count(self) -> int:
        return self.requests or len(self.latencies)

    @property
    def rps(self) -> float:
        return self.count / self.seconds


async def closed_loop(url: str, total: int, connections: int) -> Result:
    latencies: list[float] = []
    errors = 0
    per_worker = total // connections

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for _ in range(per_worker):
            start = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
                errors += response.status != 200
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        return Result(latencies, time.perf_counter() - began, errors)


async def open_loop(url: str, total: int, connections: int, rate: float) -> Result:
    latencies: list[float] = []
    errors = 0
    per_worker = total // connections
    interval = connections / rate  # each worker's share of the schedule

    async def worker(session: aiohttp.ClientSession, offset: float, began: float) -> None:
        nonlocal errors
        for i in range(per_worker):
            due = began + offset + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            async with session.get(url) as response:
                await response.read()
                errors += response.status != 200
            latencies.append(time.perf_counter() - due)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter() + 0.05
        await asyncio.gather(*(worker(session, k * interval / connections, began)
                               for k in range(connections)))
        return Result(latencies, time.perf_counter() - began, errors)


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def wrk(url: str, seconds: float, connections: int) -> Result:
    """Closed loop with wrk; its percentiles (50, 75, 90, 99) stand in for the full sample."""
    out = subprocess.run(
        ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds:g}s", "--latency",
         url],
        capture_output=True, text=True, check=True,
    ).stdout
    pcts = {float(q) / 100: float(v) * UNITS[u]
            for q, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s)", out)
    if total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    count, took = int(total.group(1)), float(total.group(2)) * UNITS[total.group(3)]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Result([], took, int(non_2xx.group(1)) if non_2xx else 0, requests=count,
                  quantiles=pcts)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_host(base: Path) -> Path:
    from tests.fakehost.build import build_fake_host, make_dev_nodes
    from tests.fakenvml.build import make_config, write_config

    host = build_fake_host(base / "host")
    make_dev_nodes(host.root, [0, 1])
    os.environ["FAKE_NVML_CONFIG"] = str(write_config(base / "fakenvml.json", make_config(2)))
    return host.root


def start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args], cwd=REPO)


async def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def line(name: str, result: Result, floor: Result | None) -> str:
    ratio = "" if floor is None else (
        f"  p50 x{result.pct(0.5) / floor.pct(0.5):.2f}  rps x{result.rps / floor.rps:.2f}")
    return (f"  {name:<18} p50 {result.pct(0.5):6.2f} ms  p99 {result.pct(0.99):6.2f} ms  "
            f"{result.count:7d} req  {result.rps:8.0f} req/s"
            f"  errors {result.errors}{ratio}")


async def bench(opts: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="nvplugin-bench-"))
    root = build_host(base)
    rest_port, hello_port = 39476, 39477
    servers = {"rest": start(["--serve-rest", str(rest_port), "--root", str(root)]),
               "hello": start(["--serve-hello", str(hello_port)])}
    try:
        rest = f"http://127.0.0.1:{rest_port}"
        hello = f"http://127.0.0.1:{hello_port}/hello"
        await wait_ready(rest + "/v1.0/gpu/info")
        await wait_ready(hello)
        n, conns = opts.requests, opts.connections
        use_wrk = shutil.which("wrk") is not None and not opts.no_wrk
        for url in (hello, *(rest + r for r in ROUTES.values())):  # warm-up
            await closed_loop(url, 500, conns)
        rss_start = rss_mib(servers["rest"].pid)
        print(f"{conns} connections, fake host with 2 GPUs; closed loop by "
              f"{'wrk, ' + str(opts.seconds) + ' s per target' if use_wrk else 'aiohttp'}, "
              f"open loop {n} requests per target\n")
        shapes = {"closed": f"closed loop, {conns} connections (saturating)",
                  "open": f"open loop at {opts.rate:.0f} req/s over {conns} connections"}
        if use_wrk:
            shapes["single"] = "closed loop, 1 connection (service time plus loopback)"
        for shape, title in shapes.items():
            print(title)

            async def run(url: str, shape: str = shape) -> Result:
                if shape == "open":
                    return await open_loop(url, n, conns, opts.rate)
                if use_wrk:
                    width = 1 if shape == "single" else conns
                    return await asyncio.to_thread(wrk, url, opts.seconds, width)
                return await closed_loop(url, n, conns)

            floor = await run(hello)
            print(line("hello (floor)", floor, None))
            for name, route in ROUTES.items():
                print(line(name, await run(rest + route), floor))
            print()
        rss_after = rss_mib(servers["rest"].pid)
        await closed_loop(rest + ROUTES["docker/cli"], 10_000, conns)
        rss_more = rss_mib(servers["rest"].pid)
        print(f"REST server RSS: {rss_start:.1f} MiB after warm-up, {rss_after:.1f} MiB after "
              f"the runs above, {rss_more:.1f} MiB after 10000 more docker/cli requests "
              f"(growth {rss_more - rss_after:+.1f} MiB); hello server "
              f"{rss_mib(servers['hello'].pid):.1f} MiB")
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--no-wrk", action="store_true", help="closed loop with aiohttp only")
    parser.add_argument("--serve-hello", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-rest", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve_hello:
        serve_hello(opts.serve_hello)
    elif opts.serve_rest:
        serve_rest(opts.serve_rest, opts.root)
    else:
        asyncio.run(bench(opts))


if __name__ == "__main__":
    main()
