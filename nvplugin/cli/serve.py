"""`nvidia-docker-plugin serve`: wires the services together and runs both APIs in one asyncio
process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from functools import partial

from aiohttp import web

from nvplugin.api.plugin import make_app as make_plugin_app
from nvplugin.api.plugin_socket import start_plugin_site
from nvplugin.api.rest_app import make_app as make_rest_app
from nvplugin.cdi.writer import SpecKeeper
from nvplugin.cli.doctor_checks import Check
from nvplugin.core.config import Config
from nvplugin.core.errors import DockerError, NvpluginError
from nvplugin.driver.state import DriverState
from nvplugin.gpu import devnodes
from nvplugin.gpu.cuda import CudaProperties
from nvplugin.gpu.service import GpuService
from nvplugin.observe.exposition import Metrics, make_metrics_app, node_name
from nvplugin.observe.records import HealthChange
from nvplugin.observe.service import ContainerLister, ObserveService, docker_lister
from nvplugin.volumes.store import BuildReport, VolumeStore
from nvplugin.web import routes as page_routes
from nvplugin.web.feed import LiveFeed
from nvplugin.web.panels import Panels

log = logging.getLogger("nvplugin")

DRIVER_WATCH_INTERVAL_S = 5.0
SHUTDOWN_TIMEOUT_S = 30.0


class Daemon:
    """One running plugin: the services, both APIs, and their orderly shutdown."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stopping = asyncio.Event()
        self._cleanups: list[Callable[[], Awaitable[None]]] = []
        self._rediscoveries: set[asyncio.Task[None]] = set()  # held so they are not collected

    async def run(self) -> int:
        try:
            await self._start()
        except Exception as err:  # one line, every resource released, exit 1
            if isinstance(err, NvpluginError):
                log.error("Error: %s", err)
            else:  # a bug: the traceback says where
                log.exception("Error: start-up failed: %s: %s", type(err).__name__, err)
            await self._shutdown()
            return 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        await self.stopping.wait()
        await self._shutdown()
        log.info("Successfully terminated")
        return 0

    async def _start(self) -> None:
        cfg = self.config
        # 1.0's start-up lines, in 1.0's order. Unlike 1.0, a missing nvidia-modprobe or driver
        # does not stop the daemon: it serves what it can and says why the rest answers 503.
        log.info("Loading NVIDIA unified memory")
        await asyncio.to_thread(devnodes.load_uvm, cfg.dev_root, cfg.driver_root)
        log.info("Loading NVIDIA management library")
        # NVML is found under the driver root again on each reload (SIGHUP, driver upgrade).
        self.gpus = await GpuService.start(driver_root=cfg.driver_root, dev_root=cfg.dev_root,
                                           cuda=CudaProperties(cfg.driver_root))
        self._cleanups.append(self.gpus.close)
        log.info("Discovering GPU devices")
        if self.gpus.available:
            inventory = await self.gpus.inventory()
            log.info("Found %d GPU(s), driver %s", len(inventory.gpus), inventory.versions.driver)
        else:
            log.warning(
                "NVIDIA driver not found: %s; GPU endpoints will answer 503", self.gpus.reason
            )

        self.observe = ObserveService(
            self.gpus, host_root=cfg.host_root, ignore_xids=cfg.health_ignore_xids,
            recovery_s=cfg.health_recovery_s, list_containers=_container_lister(cfg))
        await self.observe.start()
        self._cleanups.append(self.observe.close)
        self.metrics = Metrics(self.observe, hostname=node_name(os.environ),
                               mounts=lambda: self.store.mounts.counts(),
                               cdi_spec_age=lambda: self.cdi.age())

        log.info("Provisioning volumes at %s", cfg.volumes_dir)
        self.driver = DriverState(cfg.driver_root, self._nvml_driver_version,
                                  devices=partial(devnodes.gpu_set_fingerprint, cfg.driver_root,
                                                  cfg.dev_root))
        await self.driver.refresh()
        if self.driver.error is not None and self.gpus.available:
            # Without a driver at all, the line above already said so.
            log.warning("Driver volume unavailable: %s", self.driver.error)
        self._cleanups.append(self.driver.close)
        self.store = VolumeStore(cfg.volumes_dir, self.driver.manifest,
                                 keep_old=cfg.keep_old_volumes,
                                 on_build=self._record_build)
        await self.store.start()
        self._cleanups.append(self.store.close)
        await self._collect_old_volumes()  # a driver upgraded while the daemon was down
        # Kept at a clean stop: see cdi/writer.py.
        self.cdi = SpecKeeper(path=cfg.cdi_path, kind=cfg.cdi_kind, host_root=cfg.host_root,
                              gpus=self.gpus, manifest=self.driver.manifest,
                              healthy=self.observe.healthy)
        await self.cdi.refresh("start-up")
        self.observe.add_health_listener(self._health_changed)
        self.driver.start_watching(DRIVER_WATCH_INTERVAL_S, self.rediscover)

        plugin_app = make_plugin_app(self.store, middlewares=[
            self.metrics.middleware(self.metrics.plugin_seconds, with_method=False)])
        plugin_runner = web.AppRunner(plugin_app, access_log=None,
                                      shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await plugin_runner.setup()
        self._cleanups.append(plugin_runner.cleanup)

        address = cfg.listen_host_port
        # The GPU page lives on the REST listener; a scrape of the metrics-only one counts as
        # watching it too.
        page = self._page_feed() if address is not None else None
        await self._serve_metrics_alone(page)
        if address is None or page is None:
            await self._serve_plugin(plugin_runner)
            log.info("Remote API disabled (empty listen address)")
            await self.plugin_site.publish_spec(cfg)
            return
        rest_app = make_rest_app(
            self.gpus, self.driver.manifest, cfg, self.cdi, observe=self.observe,
            metrics=self.metrics.handle,
            middlewares=[self.metrics.middleware(self.metrics.rest_seconds, with_method=True)])
        page_routes.mount(rest_app, page, await asyncio.to_thread(page_routes.load_assets))
        rest_runner = web.AppRunner(rest_app, access_log=None,
                                    shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await rest_runner.setup()
        self._cleanups.append(rest_runner.cleanup)
        host, port = address
        try:
            await web.TCPSite(rest_runner, _loopback_v4(host), port).start()
        except OSError as err:
            raise NvpluginError(
                f"cannot serve the remote API at {cfg.listen}: {err.strerror or err}; "
                "choose another address with -l, or -l '' to disable it"
            ) from err
        if host == "localhost":
            # Also ::1 where the host has IPv6; hosts and containers without it are common, so
            # only the IPv4 loopback is required.
            with contextlib.suppress(OSError):
                await web.TCPSite(rest_runner, "::1", port).start()
        # Docker (and anyone waiting for the daemon) takes an answering plugin socket for a
        # daemon that is up: it is published only once the port is bound, so a taken port
        # never shows a socket for a daemon about to exit. The log keeps 1.0's line order.
        await self._serve_plugin(plugin_runner)
        log.info("Serving remote API at %s", cfg.listen)
        await self.plugin_site.publish_spec(cfg)

    async def _serve_plugin(self, runner: web.AppRunner) -> None:
        self.plugin_site = await start_plugin_site(runner, self.config)
        self._cleanups.append(self.plugin_site.close)
        log.info("Serving plugin API at %s", self.config.socket_dir)

    def _page_feed(self) -> LiveFeed:
        """The live GPU page's feed, with doctor's findings handed in."""
        cfg = self.config

        async def findings() -> list[Check]:
            from nvplugin.cli import doctor  # its probes load only once someone opens the page

            return await asyncio.to_thread(doctor.collect, cfg)

        panels = Panels(self.store, lambda: self.driver.version, findings, self.cdi)
        feed = LiveFeed(self.gpus, panels, self.observe, host_root=cfg.host_root)
        self._cleanups.append(feed.close)  # after the REST runner's cleanup ended its streams
        return feed

    def _record_build(self, report: BuildReport) -> None:
        self.metrics.record_build(report.seconds, report.size, report.ok)

    async def _serve_metrics_alone(self, page: LiveFeed | None) -> None:
        """`--metrics-listen`: /metrics alone, for a Prometheus that must not see the API."""
        cfg = self.config
        address = cfg.metrics_host_port
        if address is None:
            return
        app = make_metrics_app(self.metrics)
        if page is not None:
            app.middlewares.append(page_routes.watching(page))
        runner = web.AppRunner(app, access_log=None,
                               shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        self._cleanups.append(runner.cleanup)
        host, port = address
        try:
            await web.TCPSite(runner, _loopback_v4(host), port).start()
        except OSError as err:
            raise NvpluginError(
                f"cannot serve metrics at {cfg.metrics_listen}: {err.strerror or err}; choose "
                "another address with --metrics-listen, or '' to serve them only with the API"
            ) from err
        log.info("Serving metrics at %s", cfg.metrics_listen)

    async def _nvml_driver_version(self) -> str | None:
        if not self.gpus.available:
            return None
        return await self.gpus.driver_version()

    def _health_changed(self, change: HealthChange) -> None:
        """The CDI spec's `all` holds the healthy GPUs only: rewrite it on each transition."""
        state = "healthy" if change.healthy else "unhealthy"
        task = asyncio.create_task(self.cdi.refresh(f"GPU {change.index} {state}"))
        self._rediscoveries.add(task)
        task.add_done_callback(self._rediscoveries.discard)

    def _on_sighup(self) -> None:
        task = asyncio.create_task(self.rediscover("SIGHUP"))
        self._rediscoveries.add(task)
        task.add_done_callback(self._rediscoveries.discard)

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
            await self._collect_old_volumes()
        elif changed:
            log.info("Driver files changed (version %s)", after)
        else:
            log.info("Driver unchanged (version %s)", after)
        await self.cdi.refresh(reason)

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


def _container_lister(cfg: Config) -> ContainerLister | None:
    try:
        return docker_lister(cfg.host_root, os.environ)
    except DockerError as err:  # a broken docker context: attribution still gives IDs
        log.warning("Container names unavailable: %s", err)
        return None


def _loopback_v4(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host
