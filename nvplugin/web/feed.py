"""One live feed for every open page: a sampler that reads the GPUs once a second while someone
watches, the history it fills, and the server-sent-events stream all pages share.

Each tick reads status through the GPU service's status cache (the same reads `gpu/status`
shares), records it, encodes one `sample` event, and hands those same bytes to every client's
queue; the slow panels (volumes, doctor, driver) are re-read every `PANELS_EVERY` ticks and
sent only when they changed. So 50 open pages cost one NVML read and 50 socket writes a second,
never a read per page or per chart. "Watching" is a connected page, or a request for the page,
its state, the status routes or metrics within the last `WATCH_WINDOW_S`; with nobody watching
no task runs.

A client that falls `CLIENT_QUEUE` messages behind (a stalled tab) is dropped; its EventSource
reconnects by itself and gets a fresh `hello` with the whole history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nvplugin import __version__
from nvplugin.core.errors import NvpluginError
from nvplugin.gpu.readings import GpuStatus
from nvplugin.gpu.service import GpuService
from nvplugin.observe.records import GpuHealth
from nvplugin.observe.service import ObserveService
from nvplugin.web import documents
from nvplugin.web.history import INTERVAL_S, SERIES, History
from nvplugin.web.panels import Panels
from nvplugin.web.processes import start_times

log = logging.getLogger(__name__)

WATCH_WINDOW_S = 60.0
MAX_CLIENTS = 256
CLIENT_QUEUE = 30  # messages; about half a minute of samples
# Volumes, doctor and the inventory change rarely: read every few ticks, not every second, so a
# tick is one status read, one encoding and a write per page.
PANELS_EVERY = 5


class TooManyPages(NvpluginError):
    pass


@dataclass(eq=False, slots=True)
class Client:
    """One page's event stream: the messages waiting for it."""

    queue: asyncio.Queue[bytes | None] = field(
        default_factory=lambda: asyncio.Queue(CLIENT_QUEUE))

    def end(self) -> None:
        """Make the client's stream end after nothing more (its backlog is dropped)."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class LiveFeed:
    def __init__(self, gpus: GpuService, panels: Panels, observe: ObserveService | None = None,
                 *, host_root: Path = Path("/"),
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 interval: float = INTERVAL_S, watch_window: float = WATCH_WINDOW_S,
                 max_clients: int = MAX_CLIENTS) -> None:
        self._gpus = gpus
        self.panels = panels
        self._observe = observe  # health and containers, as gpu/status/json shows them
        self._host_root = host_root
        self._starts: dict[int, float] = {}  # PID -> start time, for the processes shown
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self.interval = interval
        self.watch_window = watch_window
        self.max_clients = max_clients
        self.history = History(interval=interval)
        self._clients: set[Client] = set()
        self._last_touch = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._sample: dict[str, Any] = {}
        self._sample_at = float("-inf")  # `clock` time of the last read, as _panels_at
        self._panels: dict[str, Any] = {}
        self._panels_at = float("-inf")
        self._panels_event: bytes | None = None
        self._closed = False
        self.ticks = 0  # for tests and the benchmark

    # -- watching

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def watched(self) -> bool:
        return bool(self._clients) or self._clock() - self._last_touch < self.watch_window

    @property
    def sampling(self) -> bool:
        return self._task is not None and not self._task.done()

    def touch(self) -> None:
        """Someone looked (the page, its state, status or metrics): sample for a while."""
        self._last_touch = self._clock()
        self._ensure_sampling()

    def _ensure_sampling(self) -> None:
        if not self.sampling and not self._closed:
            self._task = asyncio.create_task(self._run(), name="gpu-page-sampler")

    def subscribe(self) -> Client:
        if len(self._clients) >= self.max_clients:
            raise TooManyPages(f"too many open GPU pages ({self.max_clients}); close some, "
                               "or read /gpu/status/json instead")
        client = Client()
        self._clients.add(client)
        self.touch()
        return client

    def unsubscribe(self, client: Client) -> None:
        self._clients.discard(client)

    # -- what is sent

    async def hello(self) -> dict[str, Any]:
        """Everything a page needs to draw itself: panels, history and the latest sample (read
        now when the sampler has not run lately: nobody watched, so what it kept is old)."""
        if self._clock() - self._panels_at > PANELS_EVERY * self.interval + 1:
            self._panels, self._panels_at = await self._read_panels(), self._clock()
        if self._clock() - self._sample_at > 2 * self.interval:
            self._sample, self._sample_at = await self._read_sample(), self._clock()
        return {"version": __version__, "interval_s": self.interval,
                "length": self.history.length, "series": SERIES,
                "history": self.history.snapshot(), "sample": self._sample, **self._panels}

    async def _read_sample(self) -> dict[str, Any]:
        statuses: tuple[GpuStatus, ...] | None = None
        error = None
        if not self._gpus.available:
            error = self._gpus.reason or "NVML is unavailable on this host"
        else:
            try:
                statuses = await self._gpus.status()
            except NvpluginError as err:
                error = err.message
        if statuses is None:
            return documents.sample(self._wall(), None, error, states=self._health())
        self.history.record(statuses)
        self.history.keep_only(s.index for s in statuses)
        pids = {p.pid for s in statuses for p in s.processes}
        containers = {} if self._observe is None else await self._observe.containers_of(pids)
        return documents.sample(self._wall(), statuses, None, containers=containers,
                                starts=await self._start_times(pids), states=self._health())

    def _health(self) -> tuple[GpuHealth, ...] | None:
        return None if self._observe is None else self._observe.health()

    async def _start_times(self, pids: set[int]) -> dict[int, float]:
        new = pids - self._starts.keys()
        if new:
            self._starts.update(await asyncio.to_thread(start_times, self._host_root, new))
        self._starts = {pid: t for pid, t in self._starts.items() if pid in pids}
        return self._starts

    async def _read_panels(self) -> dict[str, Any]:
        gpus: dict[str, Any] | None = None
        reason = self._gpus.reason
        if self._gpus.available:
            try:
                gpus = documents.inventory(await self._gpus.inventory())
            except NvpluginError as err:
                reason = err.message
        try:
            volumes = await self.panels.volumes()
        except (NvpluginError, OSError) as err:
            volumes = {"error": str(err)}
        return {"available": gpus is not None, "reason": reason, "inventory": gpus,
                "volumes": volumes, "cdi": self.panels.cdi(), "doctor": self.panels.doctor(),
                "attribution": self._observe is not None}

    # -- the sampler

    async def _run(self) -> None:
        while self.watched and not self._closed:
            started = self._clock()
            try:
                await self._tick()
            except Exception:  # a bug must not stop the page for good; the next tick retries
                log.exception("Error: the GPU page's sampler failed")
            await self._sleep(max(0.0, self.interval - (self._clock() - started)))
        log.debug("GPU page sampler idle, stopping")

    async def _tick(self) -> None:
        self._sample, self._sample_at = await self._read_sample(), self._clock()
        self.ticks += 1
        self._broadcast(documents.event("sample", self._sample))
        if self.ticks % PANELS_EVERY != 1:
            return
        self._panels, self._panels_at = await self._read_panels(), self._clock()
        panels_event = documents.event("panels", self._panels)
        if panels_event != self._panels_event:
            self._panels_event = panels_event
            self._broadcast(panels_event)

    def _broadcast(self, message: bytes) -> None:
        for client in list(self._clients):
            try:
                client.queue.put_nowait(message)
            except asyncio.QueueFull:
                log.debug("Dropping a GPU page that fell %d messages behind", CLIENT_QUEUE)
                self._clients.discard(client)
                client.end()

    async def end_streams(self) -> None:
        """Every open stream ends now (the server is shutting down)."""
        self._closed = True
        for client in list(self._clients):
            client.end()
        self._clients.clear()

    async def close(self) -> None:
        await self.end_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.panels.close()
