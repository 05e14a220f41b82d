"""The REST app on a real port, on a fake driver host with the fake NVML, served from a thread.

Used by the live tests and the schemathesis run, whose HTTP clients are synchronous: the server
gets its own event loop in a background thread, as the daemon's loop would be its own process.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from nvplugin.api import rest_app
from nvplugin.cdi.writer import SpecKeeper
from nvplugin.core.config import Config
from nvplugin.core.errors import NvpluginError
from nvplugin.core.later import Later
from nvplugin.driver import discovery
from nvplugin.driver.manifest import Manifest
from nvplugin.gpu.service import GpuService
from nvplugin.observe.exposition import Metrics
from nvplugin.observe.service import ObserveService
from nvplugin.observe.timing import timed
from nvplugin.volumes.store import VolumeStore
from nvplugin.web import routes as page_routes
from nvplugin.web.feed import LiveFeed
from nvplugin.web.page import load_page
from nvplugin.web.panels import Panels

T = TypeVar("T")


@dataclass
class LiveRest:
    driver_root: Path
    dev_root: Path
    nvml_library: str | None
    port: int = 0
    host_root: Path = Path("/")  # where the Docker host's / appears, as --host-root
    gpus: GpuService | None = None
    observe: ObserveService | None = None
    metrics: Metrics | None = None
    hostname: str = "gpu-host-1"  # the Hostname label of /metrics
    manifest: Manifest | None = None
    manifest_error: NvpluginError | None = None
    cdi: SpecKeeper | None = None
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _page: LiveFeed | None = None
    _store: VolumeStore | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run `coro` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> LiveRest:
        self._thread = threading.Thread(target=self._loop.run_forever, name="live-rest",
                                        daemon=True)
        self._thread.start()
        self.run(self._start())
        return self

    def provide_manifest(self) -> Manifest:
        if self.manifest is None:
            raise self.manifest_error or NvpluginError("no manifest")
        return self.manifest

    async def _start(self) -> None:
        self.gpus = await GpuService.start(driver_root=self.driver_root, dev_root=self.dev_root,
                                           nvml_library=self.nvml_library)
        try:
            version = await self.gpus.driver_version() if self.gpus.available else None
            self.manifest = await asyncio.to_thread(discovery.discover, self.driver_root, version)
        except NvpluginError as err:
            self.manifest_error = err
        config = Config(driver_root=self.driver_root, dev_root=self.dev_root,
                        host_root=self.host_root, listen=f"127.0.0.1:{self.port}")
        self.observe = ObserveService(self.gpus, host_root=self.host_root,
                                      ignore_xids=config.health_ignore_xids,
                                      recovery_s=config.health_recovery_s)
        await self.observe.start()
        self.metrics = Metrics(self.observe, hostname=self.hostname)
        # As the daemon keeps it, without a file (the writer has its own tests).
        self.cdi = SpecKeeper(path=None, kind=config.cdi_kind, host_root=self.host_root,
                              gpus=self.gpus, manifest=self.provide_manifest)
        await self.cdi.refresh("start-up")
        app = rest_app.make_app(
            self.gpus, self.provide_manifest, config, Later(self.cdi),
            observe=Later(self.observe), metrics=self.metrics.handle,
            middlewares=[timed(lambda labels, seconds: self.metrics.record_request(
                "rest", labels, seconds), with_method=True)])
        # The GPU page, as the daemon mounts it (volumes in a directory of their own).
        self._store = VolumeStore(Path(tempfile.mkdtemp(prefix="live-rest-volumes-")),
                                  self.provide_manifest)
        await self._store.start()
        self._page = LiveFeed(self.gpus, Panels(self._store, lambda: None, None), self.observe,
                              host_root=self.host_root)
        page_routes.mount(app, Later(await asyncio.to_thread(load_page, self._page)))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the port chosen for port 0

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._page is not None:
            await self._page.close()
        if self._store is not None:
            await self._store.close()
            shutil.rmtree(self._store.volumes_dir, ignore_errors=True)
        if self.observe is not None:
            await self.observe.close()
        if self.gpus is not None:
            await self.gpus.close()

    def stop(self) -> None:
        if self._thread is None:
            return
        self.run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._thread = None

