"""/metrics's cost: scrape latency against aiohttp's floor, the server's memory, and its CPU
idle and while scraped, on fake hosts of 1, 2 and 8 GPUs, all measured in one run.

    python3 bench/bench_metrics.py [--requests 2000] [--rate 200] [--seconds 10]

For each host size a fake driver host (gcc ELF files, ld.so.cache, device nodes; needs root for
mknod) with the fake NVML as its libnvidia-ml.so.1, whose PCIe throughput reads sleep 20 ms each
(as real ones sample the bus) and whose GPUs each run two processes (real PIDs, so their
cgroups are read). A child process serves the REST app wired as `cli/serve` wires it (GPU
health, containers, `/metrics`, request timing); another serves aiohttp's "hello" (the floor).

* latency: closed loop on one connection (service time plus loopback) and open loop at
  `--rate` over 4 connections (from the scheduled time), for hello and /metrics in turn;
* memory: the server's RSS before its first scrape, after the latency runs, and after
  `--more` further scrapes (growth), beside a REST-only server (bench_rest's) on the same host;
* CPU: the server's run time (every thread, from schedstat) over `--seconds`, idle once its
  observer stopped, and scraped once a second.

Prints figures and ratios; asserts nothing (targets, issue 16: a scrape within 2x of hello,
RSS growth under 10 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_page import cpu_share  # noqa: E402
from bench_rest import (  # noqa: E402
    Result,
    closed_loop,
    line,
    open_loop,
    rss_mib,
    serve_hello,
    serve_rest,
    wait_ready,
)

SIZES = (1, 2, 8)
PCIE_DELAY_MS = 20
IDLE_AFTER_S = 10.0  # ObserveService's: the observer stops this long after the last scrape


def serve_metrics(port: int, root: Path) -> None:
    """The REST app with health, containers and /metrics, wired as cli/serve wires them."""
    from nvplugin.api import rest_app
    from nvplugin.core.config import Config
    from nvplugin.driver import discovery
    from nvplugin.gpu.service import GpuService
    from nvplugin.observe.exposition import Metrics
    from nvplugin.observe.service import ObserveService

    async def make() -> web.Application:
        gpus = await GpuService.start(driver_root=root, dev_root=root,
                                      nvml_library=discovery.find_nvml_library(root))
        manifest = await asyncio.to_thread(discovery.discover, root,
                                           await gpus.driver_version())
        config = Config(driver_root=root, dev_root=root)
        observe = ObserveService(gpus, host_root=Path("/"), ignore_xids=config.health_ignore_xids,
                                 recovery_s=config.health_recovery_s)
        await observe.start()
        metrics = Metrics(observe, hostname="bench")
        return rest_app.make_app(
            gpus, lambda: manifest, config, observe=observe, metrics=metrics.handle,
            middlewares=[metrics.middleware(metrics.rest_seconds, with_method=True)])

    web.run_app(make(), host="127.0.0.1", port=port, access_log=None, print=None)


def build_host(base: Path, n_gpus: int, pids: list[int]) -> tuple[Path, Path]:
    """A fake host of `n_gpus` H200s, each running two of `pids`; (root, NVML config)."""
    from tests.fakehost.build import build_fake_host, make_dev_nodes
    from tests.fakenvml.build import make_config, write_config

    host = build_fake_host(base / "host")
    make_dev_nodes(host.root, list(range(n_gpus)))
    config = make_config(n_gpus, pcie_delay_ms=PCIE_DELAY_MS,
                         process_names={str(pid): "python3" for pid in pids})
    for gpu in config["gpus"]:
        gpu["processes"] = [{"pid": pid, "used_memory": 512 << 20} for pid in pids[:2]]
        gpu.update(energy_mj=123456789, memory_temperature=40, pcie_replay_count=0)
    return host.root, write_config(base / "fakenvml.json", config)


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args], cwd=REPO,
                            env={**os.environ, **(env or {})})


async def page_bytes(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return len(await response.read())


async def scrape_every(url: str, interval: float, seconds: float) -> int:
    """Scrape every `interval` for `seconds`, as Prometheus would; the scrapes made."""
    done = 0
    async with aiohttp.ClientSession() as session:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            async with session.get(url) as response:
                await response.read()
            done += 1
            await asyncio.sleep(interval)
    return done


async def one_size(n_gpus: int, hello: str, opts: argparse.Namespace, base: Path) -> None:
    root, nvml_config = build_host(base / f"gpus{n_gpus}", n_gpus,
                                   [os.getpid(), os.getppid()])
    env = {"FAKE_NVML_CONFIG": str(nvml_config)}
    port, rest_port = 39480 + n_gpus, 39490 + n_gpus
    servers = {"metrics": start(["--serve-metrics", str(port), "--root", str(root)], env),
               "rest": start(["--serve-rest", str(rest_port), "--root", str(root)], env)}
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        await wait_ready(f"http://127.0.0.1:{port}/v1.0/gpu/info")
        await wait_ready(f"http://127.0.0.1:{rest_port}/v1.0/gpu/info")
        pid = servers["metrics"].pid
        rss_before = rss_mib(pid)
        size = await page_bytes(url)
        await closed_loop(url, 200, 1)  # warm-up
        print(f"{n_gpus} GPU(s): /metrics is {size} bytes; PCIe reads {PCIE_DELAY_MS} ms each "
              "in the fake NVML")
        for title, run in (
                ("closed loop, 1 connection", lambda u: closed_loop(u, opts.requests, 1)),
                (f"open loop, {opts.rate:.0f} req/s over 4 connections",
                 lambda u: open_loop(u, opts.requests, 4, opts.rate))):
            floor: Result = await run(hello)
            scrape: Result = await run(url)
            print(f"  {title}")
            print(line("hello (floor)", floor, None))
            print(line("/metrics", scrape, floor))
        rss_after = rss_mib(pid)
        await closed_loop(url, opts.more, 4)
        rss_more = rss_mib(pid)
        print(f"  RSS: {rss_before:.1f} MiB before the first scrape, {rss_after:.1f} MiB after "
              f"the runs, {rss_more:.1f} MiB after {opts.more} more scrapes (growth "
              f"{rss_more - rss_before:+.1f} MiB); the same host's REST-only server "
              f"{rss_mib(servers['rest'].pid):.1f} MiB")
        await asyncio.sleep(IDLE_AFTER_S + 1)  # the observer stops after its idle time
        idle, rest_idle = await asyncio.gather(cpu_share(pid, opts.seconds),
                                               cpu_share(servers["rest"].pid, opts.seconds))
        scraped_cpu = asyncio.create_task(cpu_share(pid, opts.seconds))
        scrapes = await scrape_every(url, 1.0, opts.seconds)
        busy = await scraped_cpu
        print(f"  CPU: {idle:.2f} % of a core idle (nobody scraping; the REST-only server "
              f"{rest_idle:.2f} %: the difference is the fake NVML's event wait, which polls its "
              f"events file every 10 ms), {busy:.2f} % scraped once a second ({scrapes} "
              f"scrapes, {10 * busy / max(scrapes, 1):.2f} ms each)\n")
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(10)


async def bench(opts: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="nvplugin-bench-metrics-"))
    hello_port = 39479
    hello_server = start(["--serve-hello", str(hello_port)])
    try:
        hello = f"http://127.0.0.1:{hello_port}/hello"
        await wait_ready(hello)
        await closed_loop(hello, 500, 4)
        for n_gpus in SIZES:
            await one_size(n_gpus, hello, opts, base)
    finally:
        hello_server.terminate()
        hello_server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--more", type=int, default=5000, help="scrapes for the RSS growth")
    parser.add_argument("--seconds", type=float, default=10.0, help="per CPU window")
    parser.add_argument("--serve-hello", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-metrics", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-rest", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve_hello:
        serve_hello(opts.serve_hello)
    elif opts.serve_metrics:
        serve_metrics(opts.serve_metrics, opts.root)
    elif opts.serve_rest:
        serve_rest(opts.serve_rest, opts.root)
    else:
        asyncio.run(bench(opts))


if __name__ == "__main__":
    main()
