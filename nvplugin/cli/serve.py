"""`nvidia-docker-plugin serve`: wires the services together and runs both APIs in one asyncio
process.

Start-up answers on both sockets as soon as they are bound. NVML (started before this module is
imported: cli/main.py) and the first driver discovery finish in the background, and a request
that needs their results waits for them (`Daemon.ready`) instead of answering from half a
start: Docker's Activate, List and the Get of an existing volume answer at once, a docker/cli
request when the GPUs and the driver's files are known, or as soon as the GPUs are when their
driver's volume is built already (a restart: the plugin serves a built volume as it is,
`_built_version`). What only some requests use loads after
that (CUDA's sizes, GPU health, the CDI spec's keeper, and in `_load_extras` the metrics
registry and the GPU page); those requests wait for it (`Later`). Then the running driver's
volume is built in the background (`VolumeStore.prebuild`), so the first container does not
wait.
tests/e2e/test_startup.py keeps the imports before the sockets answer to the serving path.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web

from nvplugin.api.plugin import make_app as make_plugin_app
from nvplugin.api.plugin_socket import start_plugin_site
from nvplugin.api.rest_app import METRICS_PATH, CdiSource, ObserveSource
from nvplugin.api.rest_app import make_app as make_rest_app
from nvplugin.core.config import Config
from nvplugin.core.errors import DockerError, NvpluginError
from nvplugin.core.later import Later
from nvplugin.core.phases import Phases
from nvplugin.driver.state import DriverState
from nvplugin.gpu import devnodes
from nvplugin.gpu.service import GpuService
from nvplugin.observe.timing import timed
from nvplugin.volumes.store import VolumeStore
from nvplugin.web import routes as page_routes

if TYPE_CHECKING:
    from nvplugin.cdi.writer import SpecKeeper
    from nvplugin.cli.doctor_checks import Check
    from nvplugin.observe.exposition import Metrics
    from nvplugin.observe.records import HealthChange
    from nvplugin.observe.service import ContainerLister, ObserveService
    from nvplugin.volumes.reports import BuildReport
    from nvplugin.web.feed import LiveFeed
    from nvplugin.web.page import Page
    from nvplugin.web.panels import Panels

log = logging.getLogger("nvplugin")

DRIVER_WATCH_INTERVAL_S = 5.0
SHUTDOWN_TIMEOUT_S = 30.0
# Worker threads for blocking file work (stat, state.json, builds, discovery). asyncio's default
# is min(32, CPUs + 4): 20 on a 16-core GPU host, each with its own stack and glibc malloc arena
# kept after a burst. Nothing waits on another worker, and one build at a time is the longest job.
IO_THREADS = 4
EARLY_RECORDS = 10_000  # metrics kept while the registry loads (a burst at boot, bounded)


class Daemon:
    """One running plugin: the services, both APIs, and their orderly shutdown."""

    def __init__(self, config: Config, gpus: GpuService, phases: Phases) -> None:
        """`gpus` is already loading NVML (`GpuService.begin`)."""
        self.config = config
        self.gpus = gpus
        self.phases = phases
        self.stopping = asyncio.Event()
        self.failed = False  # start-up's background half failed: exit 1 once stopped
        self._cleanups: list[Callable[[], Awaitable[None]]] = [gpus.close]
        self._tasks: set[asyncio.Task[None]] = set()  # held so they are not collected
        self._settled: asyncio.Future[None] | None = None
        # The spec file that points Docker at the plugin socket is written (or not needed).
        self._published = asyncio.Event()
        self.observe: Later[ObserveSource] = Later()  # what the REST API reads of health
        self._health: ObserveService | None = None  # the same object, to close
        self.cdi: Later[CdiSource] = Later()  # what the REST API reads of the CDI spec
        self._cdi: SpecKeeper | None = None  # the same object, to refresh
        self.metrics: Later[Metrics] = Later()
        self.page: Later[Page] = Later()
        self._early: list[Callable[[Metrics], None]] = []  # replayed once the registry loads

    async def run(self) -> int:
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(IO_THREADS, thread_name_prefix="nvplugin-io"))
        try:
            await self._start()
        except Exception as err:  # one line, every resource released, exit 1
            _log_start_failure(err)
            await self._shutdown()
            return 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        await self.stopping.wait()
        await self._shutdown()
        if self.failed:
            return 1
        log.info("Successfully terminated")
        return 0

    async def ready(self) -> None:
        """Wait for start-up's background half: NVML loaded (or known to be missing) and the
        driver's files discovered once. Returns at once after that."""
        if self._settled is not None:
            await asyncio.shield(self._settled)

    async def _built_version(self) -> str | None:
        """For docker/cli while the first discovery runs: NVML's driver version when its volume
        is built already (the plugin serves a built volume as it is, so naming it needs no
        discovery), once the spec file is written; None when docker/cli should wait for
        `ready()`: the discovery is done, NVML is missing, or the volume is yet to be built."""
        if self._settled is None or self._settled.done():
            return None
        await self.gpus.ready()
        if not self.gpus.available:
            return None
        await self._published.wait()
        version = (await self.gpus.inventory(cuda_sizes=False)).versions.driver
        return version if await self.store.built(version) else None

    async def _start(self) -> None:
        cfg = self.config
        self._settled = asyncio.get_running_loop().create_future()
        # 1.0's start-up lines continue in 1.0's order (the first three are in cli/main.py).
        # Unlike 1.0, a missing nvidia-modprobe or driver does not stop the daemon: it serves
        # what it can and says why the rest answers 503.
        log.info("Provisioning volumes at %s", cfg.volumes_dir)
        self.driver = DriverState(cfg.driver_root, self._nvml_driver_version,
                                  devices=partial(devnodes.gpu_set_fingerprint, cfg.driver_root,
                                                  cfg.dev_root))
        self._cleanups.append(self.driver.close)
        with self.phases.span("volume store"):
            self.store = VolumeStore(cfg.volumes_dir, self.driver.manifest,
                                     keep_old=cfg.keep_old_volumes,
                                     on_build=self._record_build, ready=self.ready)
            await self.store.start()
        self._cleanups.append(self.store.close)
        # Registered before the listeners: their cleanup (which ends the page's streams and
        # drains requests) runs first, then what start-up's background half made.
        self._cleanups.append(self._close_background)
        await self._listen()
        # The rest after the sockets answer: what it imports and reads waits its turn. It starts
        # before the spec file is written (a socket outside Docker's directory), whose write and
        # fsync then overlap the first discovery; docker/cli still answers only once the file is
        # there, so Docker finds the plugin that answer names.
        self._spawn(self._settle(self._settled, self._published))
        await self.plugin_site.publish_spec(cfg)  # last: see its docstring
        self._published.set()

    async def _listen(self) -> None:
        cfg = self.config
        plugin_app = make_plugin_app(self.store, middlewares=[self._timed("plugin")])
        plugin_runner = web.AppRunner(plugin_app, access_log=None,
                                      shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await plugin_runner.setup()
        self._cleanups.append(plugin_runner.cleanup)

        address = cfg.listen_host_port
        await self._serve_metrics_alone(watched=address is not None)
        if address is None:
            await self._serve_plugin(plugin_runner)
            log.info("Remote API disabled (empty listen address)")
            return
        with self.phases.span("REST socket"):
            rest_app = make_rest_app(
                self.gpus, self.driver.manifest, cfg, self.cdi, observe=self.observe,
                metrics=self._metrics_page, middlewares=[self._timed("rest")],
                ready=self.ready, built_version=self._built_version)
            # The GPU page lives on the REST listener; its feed loads after the sockets answer.
            page_routes.mount(rest_app, self.page)
            rest_runner = await self._serve_tcp(
                rest_app, address, f"the remote API at {cfg.listen}",
                "choose another address with -l, or -l '' to disable it")
            host, port = address
            if host == "localhost":
                # Also ::1 where the host has IPv6; hosts and containers without it are common,
                # so only the IPv4 loopback is required.
                with contextlib.suppress(OSError):
                    await web.TCPSite(rest_runner, "::1", port).start()
        # Docker (and anyone waiting for the daemon) takes an answering plugin socket for a
        # daemon that is up: it is published only once the port is bound, so a taken port
        # never shows a socket for a daemon about to exit. The log keeps 1.0's line order.
        await self._serve_plugin(plugin_runner)
        log.info("Serving remote API at %s", cfg.listen)

    async def _serve_plugin(self, runner: web.AppRunner) -> None:
        with self.phases.span("plugin socket"):
            self.plugin_site = await start_plugin_site(runner, self.config)
        self._cleanups.append(self.plugin_site.close)
        log.info("Serving plugin API at %s", self.config.socket_dir)

    async def _settle(self, settled: asyncio.Future[None], published: asyncio.Event) -> None:
        """Start-up's background half: NVML's result and the first discovery, then (with the
        spec file `published`) `settled`: docker/cli answers. Then CUDA's sizes, GPU health,
        what only some requests use, the watcher and the prebuild. A bug anywhere here stops
        the daemon with exit status 1, as one in `_start` does."""
        try:
            await self.gpus.ready()
            if self.gpus.available:
                log.info("Found %d GPU(s), driver %s", len(self.gpus.gpus),
                         await self.gpus.driver_version())
            else:
                log.warning("NVIDIA driver not found: %s; GPU endpoints will answer 503",
                            self.gpus.reason)
            with self.phases.span("driver discovery"):
                await self.driver.refresh()
            if self.driver.error is not None and self.gpus.available:
                # Without a driver at all, the line above already said so.
                log.warning("Driver volume unavailable: %s", self.driver.error)
            await published.wait()  # a start that fails there cancels this task
        except Exception as err:
            self._start_failed(err)
            return
        finally:
            settled.set_result(None)
            self.phases.spans["ready"] = (0.0, self.phases.since_origin())
            # The main thread's CPU time so far, interpreter start-up included: unlike the
            # times, it hardly moves with the host's load (bench/bench_startup.py).
            ready_cpu = time.thread_time()
            # cli/main turned collection off for start-up; its garbage (~2,000 objects of the
            # imports) goes with the first full collection.
            gc.enable()
        try:
            await self._after_ready()
        except Exception as err:
            self._start_failed(err)
            return
        # The last line of start-up: everything it does is done (the prebuild aside).
        log.debug("Start-up took %.0f ms (ms after the program started: %s; main thread CPU "
                  "%.0f ms until ready)", self.phases.since_origin() * 1000,
                  self.phases.summary(), ready_cpu * 1000)

    async def _after_ready(self) -> None:
        """What start-up does once docker/cli answers, in this order."""
        if self.gpus.available:
            # Only gpu/info waits for CUDA's sizes. The child process would have shared the
            # host with start-up's imports (~0.3 s of a CPU and the kernel's time on the H200).
            self.gpus.read_cuda_sizes(self.phases)
            self._spawn(self._merge_cuda_sizes())
        # GPU health is not on docker/cli's path: until it watches, no GPU is known unhealthy,
        # which is also all it knows once it starts (it learns from NVML's events and reads).
        with self.phases.span("GPU health"):
            observe = await self._watch_health()
        await self._collect_old_volumes()  # a driver upgraded while the daemon was down
        with self.phases.span("CDI spec"):
            await self._keep_cdi_spec(observe)
        self.driver.start_watching(DRIVER_WATCH_INTERVAL_S, self.rediscover)
        self._prebuild()
        with self.phases.span("metrics and GPU page"):
            await self._load_extras(observe)
        # What NVML's init and start-up freed goes back to the kernel (core/heap.py).
        await asyncio.to_thread(_release_free_heap)

    async def _watch_health(self) -> ObserveService:
        """GPU health (and the Engine client behind container names), imported off the loop;
        the health and attribution routes wait for it meanwhile."""
        service_class, lister = await asyncio.to_thread(_observe_parts, self.config)
        observe = service_class(
            self.gpus, host_root=self.config.host_root,
            ignore_xids=self.config.health_ignore_xids,
            recovery_s=self.config.health_recovery_s, list_containers=lister)
        await observe.start()
        self._health = observe
        self.observe.set(observe)
        return observe

    def _start_failed(self, err: Exception) -> None:
        _log_start_failure(err)
        self.failed = True
        self.stopping.set()

    async def _keep_cdi_spec(self, observe: ObserveService) -> None:
        """The CDI spec written for the engines that read it (cdi/writer.py), kept true from now
        on; the cdi routes wait for it meanwhile."""
        keeper_class = await asyncio.to_thread(_spec_keeper)
        cfg = self.config
        keeper = keeper_class(path=cfg.cdi_path, kind=cfg.cdi_kind, host_root=cfg.host_root,
                              gpus=self.gpus, manifest=self.driver.manifest,
                              healthy=observe.healthy)
        await keeper.refresh("start-up")  # kept at a clean stop: see cdi/writer.py
        self._cdi = keeper
        self.cdi.set(keeper)
        observe.add_health_listener(self._health_changed)

    def _health_changed(self, change: HealthChange) -> None:
        """The CDI spec's `all` holds the healthy GPUs only: rewrite it on each transition."""
        if self._cdi is not None:
            state = "healthy" if change.healthy else "unhealthy"
            self._spawn(self._cdi.refresh(f"GPU {change.index} {state}"))

    async def _load_extras(self, observe: ObserveService) -> None:
        """The metrics registry (prometheus_client: ~40 ms and 1 MB to import) and the GPU page,
        after the sockets answer; their requests wait for them meanwhile."""
        metrics_class, node_name, feed_class, panels_class = await asyncio.to_thread(_extras)
        keeper = self._cdi
        metrics = metrics_class(observe, hostname=node_name(os.environ),
                                mounts=lambda: self.store.mounts.counts(),
                                cdi_spec_age=keeper.age if keeper is not None else None)
        self.metrics.set(metrics)
        for record in self._early:
            record(metrics)
        self._early.clear()
        if self.config.listen_host_port is not None:
            panels = panels_class(self.store, lambda: self.driver.version, self._findings,
                                  keeper)
            feed = feed_class(self.gpus, panels, observe, host_root=self.config.host_root)
            self.page.set(await asyncio.to_thread(_page, feed))

    def _record(self, record: Callable[[Metrics], None]) -> None:
        """Into the metrics registry; before it has loaded, kept (bounded) and replayed."""
        metrics = self.metrics.now()
        if metrics is not None:
            record(metrics)
        elif len(self._early) < EARLY_RECORDS:
            self._early.append(record)

    def _timed(self, listener: str) -> Any:
        def record(labels: tuple[str, ...], seconds: float) -> None:
            self._record(lambda m: m.record_request(listener, labels, seconds))

        return timed(record, with_method=listener == "rest")

    async def _metrics_page(self, request: web.Request) -> web.Response:
        return await (await self.metrics.get()).handle(request)

    async def _findings(self) -> list[Check]:
        from nvplugin.cli import doctor  # its probes load only once someone opens the page

        return await asyncio.to_thread(doctor.collect, self.config)

    def _record_build(self, report: BuildReport) -> None:
        self._record(lambda m: m.record_build(report.seconds, report.size, report.ok))

    async def _serve_metrics_alone(self, *, watched: bool) -> None:
        """`--metrics-listen`: /metrics alone, for a Prometheus that must not see the API."""
        cfg = self.config
        address = cfg.metrics_host_port
        if address is None:
            return
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._metrics_page)
        if watched:  # a scrape of the metrics-only listener counts as watching the page too
            app.middlewares.append(page_routes.watching(self.page))
        await self._serve_tcp(
            app, address, f"metrics at {cfg.metrics_listen}",
            "choose another address with --metrics-listen, or '' to serve them only with the API")
        log.info("Serving metrics at %s", cfg.metrics_listen)

    async def _serve_tcp(self, app: web.Application, address: tuple[str, int], what: str,
                         fix: str) -> web.AppRunner:
        """`app` on `address` (localhost as 127.0.0.1), cleaned up at shutdown; a port that
        cannot be bound is a start-up error naming `what` and the `fix`."""
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        self._cleanups.append(runner.cleanup)
        host, port = address
        try:
            await web.TCPSite(runner, _loopback_v4(host), port).start()
        except OSError as err:
            raise NvpluginError(f"cannot serve {what}: {err.strerror or err}; {fix}") from err
        return runner

    async def _merge_cuda_sizes(self) -> None:
        with contextlib.suppress(NvpluginError):  # NVML went away meanwhile: the next load
            await self.gpus.inventory()

    def _prebuild(self) -> None:
        if self.config.prebuild and self.driver.error is None:
            self._spawn(self.store.prebuild())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_background(self) -> None:
        """Cancel start-up, re-discoveries and prebuilds (a build in progress finishes first:
        the store holds its volume's lock until the build's thread ends), then close the page's
        feed and GPU health."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if (page := self.page.now()) is not None:
            await page.feed.close()
        if self._health is not None:
            await self._health.close()

    async def _nvml_driver_version(self) -> str | None:
        if not self.gpus.available:
            return None
        return await self.gpus.driver_version()

    def _on_sighup(self) -> None:
        self._spawn(self.rediscover("SIGHUP"))

    async def rediscover(self, reason: str) -> None:
        """SIGHUP, or the driver changed on disk: read GPUs and driver files again."""
        log.info("Discovering NVIDIA driver again: %s", reason)
        seen = await self.driver.snapshot()  # before NVML reloads: later changes stay changes
        await asyncio.to_thread(devnodes.load_uvm, self.config.dev_root, self.config.driver_root)
        await self.gpus.refresh()
        before = self.driver.version
        changed = await self.driver.refresh(seen)
        after = self.driver.version
        if self.driver.error is not None:
            log.warning("Driver volume unavailable: %s", self.driver.error)
        elif before is not None and before != after:
            log.info("NVIDIA driver changed from %s to %s", before, after)
            self._prebuild()
            await self._collect_old_volumes()
        elif changed:
            log.info("Driver files changed (version %s)", after)
            self._prebuild()
        else:
            log.info("Driver unchanged (version %s)", after)
        if self._cdi is not None:  # none yet: start-up's own refresh is still to come
            await self._cdi.refresh(reason)

    async def _collect_old_volumes(self) -> None:
        """Old drivers' volumes that no container mounts go (one line each), unless kept."""
        if self.config.keep_old_volumes or self.driver.version is None:
            return
        try:
            await self.store.collect_old()
        except NvpluginError as err:
            log.warning("Cannot remove old volumes: %s", err)

    async def _shutdown(self) -> None:
        # Reverse order: stop accepting requests first, then release what they used.
        for cleanup in reversed(self._cleanups):
            try:
                await cleanup()
            except Exception:  # shutdown must run every step, whatever one of them does
                log.exception("Error during shutdown")
        self._cleanups.clear()


def _observe_parts(cfg: Config) -> tuple[type[ObserveService], ContainerLister | None]:
    """GPU health's module (and the Engine client behind container names), imported off the
    event loop, and the container lister (reads Docker's config)."""
    from nvplugin.observe.service import ObserveService, docker_lister

    try:
        lister: ContainerLister | None = docker_lister(cfg.host_root, os.environ)
    except DockerError as err:  # a broken docker context: attribution still gives IDs
        log.warning("Container names unavailable: %s", err)
        lister = None
    return ObserveService, lister


def _spec_keeper() -> type[SpecKeeper]:
    """The CDI spec's keeper (its build and validation), imported off the event loop."""
    from nvplugin.cdi.writer import SpecKeeper

    return SpecKeeper


def _extras() -> tuple[type[Metrics], Callable[[Mapping[str, str]], str], type[LiveFeed],
                       type[Panels]]:
    """What only /metrics and the GPU page use, imported off the event loop."""
    from nvplugin.observe.exposition import Metrics, node_name
    from nvplugin.web.feed import LiveFeed
    from nvplugin.web.panels import Panels

    return Metrics, node_name, LiveFeed, Panels


def _page(feed: LiveFeed) -> Page:
    """The GPU page with its files read, imported and read off the event loop."""
    from nvplugin.web.page import load_page

    return load_page(feed)


def _log_start_failure(err: Exception) -> None:
    """One line for an error the daemon names (NvpluginError); a bug gets its traceback."""
    if isinstance(err, NvpluginError):
        log.error("Error: %s", err)
    else:  # a bug: the traceback says where
        log.exception("Error: start-up failed: %s: %s", type(err).__name__, err)


def _release_free_heap() -> None:
    """core/heap.py, loaded after start-up (nothing before the sockets answer needs it)."""
    from nvplugin.core import heap

    heap.release_free_heap()


def _loopback_v4(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host

