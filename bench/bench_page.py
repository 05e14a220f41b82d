"""The GPU page's cost in the daemon: CPU with 0, 1 and 50 open pages (event-stream clients),
REST latency meanwhile, and the first render in headless Chromium, all measured in one run.

    python3 bench/bench_page.py [--seconds 10] [--pages 50] [--requests 3000] [--rate 300]

Builds the 2-GPU fake host of bench_rest.py (needs root for mknod) and starts, as child
processes each with its own asyncio loop like the daemon, the REST app with the GPU page mounted
as `cli/serve` mounts it, and aiohttp's "hello" (the framework's floor). Pages are aiohttp
clients reading `/page/events` in another child process. CPU is the server's run time (all its
threads) over a window, as a share of one core. Prints figures and ratios; asserts nothing
(targets from issue 17: 50 pages under 5 % of a core; REST latency within bench_rest's
targets, status p50 < 2 ms and docker/cli p99 < 5 ms; first render under 500 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
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

from bench_rest import Result, build_host, line, open_loop, rss_mib, serve_hello, wait_ready  # noqa: E402

ROUTES = {"gpu/status/json": "/v1.0/gpu/status/json", "docker/cli": "/v1.0/docker/cli?dev=0"}


def serve_page(port: int, root: Path, volumes: Path) -> None:
    from nvplugin.api import rest_app
    from nvplugin.core.config import Config
    from nvplugin.core.later import Later
    from nvplugin.driver import discovery
    from nvplugin.gpu.service import GpuService
    from nvplugin.volumes.store import VolumeStore
    from nvplugin.web import routes
    from nvplugin.web.feed import LiveFeed
    from nvplugin.web.page import load_page
    from nvplugin.web.panels import Panels

    async def make() -> web.Application:
        gpus = await GpuService.start(driver_root=root, dev_root=root,
                                      nvml_library=discovery.find_nvml_library(root))
        manifest = await asyncio.to_thread(discovery.discover, root,
                                           await gpus.driver_version())
        store = VolumeStore(volumes, lambda: manifest)
        await store.start()
        app = rest_app.make_app(gpus, lambda: manifest, Config(driver_root=root, dev_root=root))
        feed = LiveFeed(gpus, Panels(store, lambda: manifest.version, None))
        routes.mount(app, Later(await asyncio.to_thread(load_page, feed)))
        return app

    web.run_app(make(), host="127.0.0.1", port=port, access_log=None, print=None)


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of `pid` (the loop, NVML's, the workers), in nanosecond
    resolution from schedstat; /proc/PID/stat counts 10 ms ticks, too coarse for a quiet daemon."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):  # a worker thread that just ended
            continue
    return total / 1e9


async def cpu_share(pid: int, seconds: float) -> float:
    """The process's CPU over the next `seconds`, as a percentage of one core."""
    before, began = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / (time.monotonic() - began)


def hold_pages(url: str, count: int) -> None:
    """A child process: `count` open pages (event-stream clients that read all they are sent)
    until SIGTERM, then one line: events and bytes received, seconds held. Kept out of the
    process that times REST requests, so reading 50 streams never delays those timings."""
    received = {"events": 0, "bytes": 0}

    async def read(session: aiohttp.ClientSession, ready: asyncio.Event) -> None:
        async with session.get(url) as response:
            async for chunk in response.content.iter_any():
                ready.set()
                received["bytes"] += len(chunk)
                received["events"] += chunk.count(b"\n\n")

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
        async with aiohttp.ClientSession(timeout=timeout,
                                         connector=aiohttp.TCPConnector(limit=0)) as session:
            ready = [asyncio.Event() for _ in range(count)]
            tasks = [asyncio.create_task(read(session, event)) for event in ready]
            await asyncio.gather(*(event.wait() for event in ready))
            began = time.monotonic()
            print("ready", flush=True)
            await stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        print(f"{received['events']} {received['bytes']} {time.monotonic() - began:.3f}",
              flush=True)

    asyncio.run(run())


class Pages:
    """`count` open pages, held by a child process (see `hold_pages`)."""

    def __init__(self, url: str, count: int) -> None:
        self.url, self.count = url, count
        self.events = self.bytes = 0
        self.seconds = 0.0
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Pages:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--hold-pages", str(self.count), "--url", self.url,
            stdout=asyncio.subprocess.PIPE, cwd=REPO)
        if self._proc.stdout is None or await self._proc.stdout.readline() != b"ready\n":
            raise RuntimeError(f"{self.count} pages could not open {self.url}")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._proc is None or self._proc.stdout is None:
            return
        self._proc.terminate()
        events, size, seconds = (await self._proc.stdout.read()).split()
        await self._proc.wait()
        self.events, self.bytes, self.seconds = int(events), int(size), float(seconds)

    @property
    def rate(self) -> float:
        """Bytes a second each page received."""
        return self.bytes / self.seconds / self.count if self.seconds else 0.0


def first_render_ms(url: str, runs: int) -> list[float] | str:
    """Milliseconds from navigation start to the page drawn from its first event (cards,
    charts with their history, live numbers), by the page's own `nvp-drawn` mark, in headless
    Chromium."""
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "skipped: playwright is not installed"
    if chromium is None:
        return "skipped: chromium is not installed"
    from tests.web.browser import CHROMIUM_FLAGS

    times = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=list(CHROMIUM_FLAGS))
        for _ in range(runs):
            page = browser.new_context().new_page()
            page.goto(url)
            page.wait_for_selector('[data-gpu="1"] [data-field="temperature_c"] .v')
            times.append(page.evaluate(
                "() => performance.getEntriesByName('nvp-drawn')[0].startTime"))
            page.context.close()
        browser.close()
    return times


async def latencies(base: str, hello: str, opts: argparse.Namespace) -> dict[str, Result]:
    results = {"hello (floor)": await open_loop(hello, opts.requests, 10, opts.rate)}
    for name, route in ROUTES.items():
        results[name] = await open_loop(base + route, opts.requests, 10, opts.rate)
    return results


async def bench(opts: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="nvplugin-bench-page-"))
    root = build_host(base)
    port, hello_port = 39486, 39487
    servers = {
        "page": subprocess.Popen([sys.executable, __file__, "--serve-page", str(port), "--root",
                                  str(root), "--volumes", str(base / "volumes")], cwd=REPO),
        "hello": subprocess.Popen([sys.executable, __file__, "--serve-hello", str(hello_port)],
                                  cwd=REPO),
    }
    pid = servers["page"].pid
    url = f"http://127.0.0.1:{port}"
    hello = f"http://127.0.0.1:{hello_port}/hello"
    try:
        await wait_ready(url + "/v1.0/gpu/info")
        await wait_ready(hello)
        print(f"fake host with 2 GPUs; CPU over {opts.seconds:g} s windows, "
              f"open-loop REST latency at {opts.rate:g} req/s, {opts.requests} requests\n")
        idle = await cpu_share(pid, opts.seconds)
        quiet = await latencies(url, hello, opts)
        async with Pages(url + "/page/events", 1) as one:
            await asyncio.sleep(2)
            single = await cpu_share(pid, opts.seconds)
        async with Pages(url + "/page/events", opts.pages) as many:
            await asyncio.sleep(2)
            crowd = await cpu_share(pid, opts.seconds)
            busy = await latencies(url, hello, opts)
            rss = rss_mib(pid)
        print("daemon CPU (% of one core)")
        print(f"  nobody watching       {idle:6.2f} %")
        print(f"  1 page open           {single:6.2f} %  ({one.events} events received)")
        print(f"  {opts.pages} pages open         {crowd:6.2f} %  x{crowd / max(single, 0.01):.1f} "
              f"of one page; {many.rate:.0f} B/s per page; target < 5 %")
        print(f"  RSS with {opts.pages} pages open: {rss:.1f} MiB\n")
        for title, results in (("REST latency, no page open", quiet),
                               (f"REST latency, {opts.pages} pages open", busy)):
            print(title)
            floor = results["hello (floor)"]
            for name, result in results.items():
                print(line(name, result, None if result is floor else floor))
        print("\n  with pages / without: " + ", ".join(
            f"{name} p50 x{busy[name].pct(0.5) / quiet[name].pct(0.5):.2f} "
            f"p99 x{busy[name].pct(0.99) / quiet[name].pct(0.99):.2f}" for name in ROUTES))
        render = await asyncio.to_thread(first_render_ms, url + "/", 5)
        if isinstance(render, str):
            print(f"\nfirst render: {render}")
        else:
            ordered = sorted(render)
            print(f"\nfirst render in headless Chromium (navigation start to drawn): "
                  f"median {ordered[len(ordered) // 2]:.0f} ms, max {ordered[-1]:.0f} ms "
                  f"over {len(ordered)}; target < 500 ms")
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per CPU window")
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--serve-page", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-hello", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--volumes", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--hold-pages", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.hold_pages:
        hold_pages(opts.url, opts.hold_pages)
    elif opts.serve_page:
        serve_page(opts.serve_page, opts.root, opts.volumes)
    elif opts.serve_hello:
        serve_hello(opts.serve_hello)
    else:
        asyncio.run(bench(opts))


if __name__ == "__main__":
    main()
