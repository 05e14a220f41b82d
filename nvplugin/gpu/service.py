"""The GPU service the daemon and the REST API use: NVML off the event loop.

All NVML calls run on one dedicated thread (NVML handles belong to the process; one thread keeps
the calls ordered), except the slow ones, which have threads of their own so that they never
delay a status request: PCIe throughput sampling (~20 ms per GPU, the side thread) and CUDA's
memory sizes (a child process, cuda.py, waited for on a thread that ends with it). The
inventory's driver/CUDA versions and the control nodes change only when a driver (un)loads, yet
reading them takes a thread hop (NVML, stat calls) that would be most of a docker/cli or gpu/info
request's cost: they are served up to `RECENT_MAX_AGE_S` old, and a refresh forgets them.

The daemon starts the first load with `begin` before its event loop (and its web stack) exists:
NVML's init is C code that runs while Python imports, and on a big host it is the slowest step
of start-up. `ready()` takes its result. CUDA's sizes come later than the GPUs: the daemon asks
for them (`read_cuda_sizes`) once docker/cli can answer, since the child process is ~0.3 s of
a CPU and the kernel's time on an H200 that start-up's imports were sharing. The child is waited
for on a thread of its own, and only `inventory()` waits for its answer (gpu/info);
`inventory(cuda_sizes=False)`, status, docker/cli and the CDI spec never do.

`nvml_library=None` (the daemon's case) finds libnvidia-ml under the driver root on every
(re)load, so a refresh after a driver upgrade shuts the old NVML down, unloads it and loads the
new file (nvml.LoadedNvml); a path pins that file (tools, tests).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from nvplugin.core.errors import NvmlError
from nvplugin.core.phases import Phases
from nvplugin.core.single_flight import Recent
from nvplugin.driver import discovery
from nvplugin.gpu import devnodes, selection
from nvplugin.gpu.cuda import CudaProperties
from nvplugin.gpu.nvml import EventsUnavailable, NvmlSession
from nvplugin.gpu.records import DeviceNode, Gpu, GpuInventory

if TYPE_CHECKING:  # readings (and their cache) load with the first one: gpu/readings.py
    from nvplugin.gpu.cuda_report import CudaReport
    from nvplugin.gpu.readings import GpuEvent, GpuStatus, GpuTelemetry
    from nvplugin.gpu.status_cache import StatusCache

log = logging.getLogger(__name__)
T = TypeVar("T")

RECENT_MAX_AGE_S = 1.0  # how stale control nodes and driver/CUDA versions may be
# How long one event wait blocks: the most a refresh or shutdown waits for the event thread.
EVENT_WAIT_MS = 500

EventListener = Callable[["GpuEvent"], None]


class GpuService:
    def __init__(self, *, driver_root: Path, dev_root: Path, nvml_library: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 cuda: CudaProperties | None = None) -> None:
        self.driver_root = driver_root
        self.dev_root = dev_root
        self.nvml_library = nvml_library
        self._cuda = cuda  # None: Constant, Shared and L2 Cache stay N/A (one-shot commands)
        self.reason: str | None = "NVML has not been loaded yet"
        self._nvml_thread = ThreadPoolExecutor(1, thread_name_prefix="nvml")
        self._side_thread = ThreadPoolExecutor(1, thread_name_prefix="nvml-side")
        self._session: NvmlSession | None = None
        self._gpus: tuple[Gpu, ...] = ()
        self._cache: StatusCache | None = None
        self._lock = asyncio.Lock()
        self._inventory = Recent(self._read_inventory, RECENT_MAX_AGE_S, clock)
        self._control_nodes = Recent(self._read_control_nodes, RECENT_MAX_AGE_S, clock)
        self._opening: Future[tuple[NvmlSession, tuple[Gpu, ...]]] | None = None
        self._sizes: Future[CudaReport] | None = None  # CUDA's answer, not yet in `_gpus`
        self._sizes_asked = False  # for this load (reset when NVML is stopped)
        self._listeners: list[EventListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: tuple[threading.Thread, threading.Event] | None = None

    @classmethod
    async def start(cls, *, driver_root: Path, dev_root: Path, nvml_library: str | None = None,
                    clock: Callable[[], float] = time.monotonic,
                    cuda: CudaProperties | None = None) -> GpuService:
        """Never raises for a missing or broken driver: `available` is False, `reason` says why."""
        service = cls(driver_root=driver_root, dev_root=dev_root, nvml_library=nvml_library,
                      clock=clock, cuda=cuda)
        await service.refresh()
        return service

    @classmethod
    def begin(cls, *, driver_root: Path, dev_root: Path, phases: Phases,
              cuda: CudaProperties | None = None) -> GpuService:
        """Start loading NVML on the NVML thread now, without an event loop, in 1.0's order:
        nvidia-uvm (the control nodes), the library (found under the driver root), the GPUs.
        `available` and `reason` mean nothing until `await ready()`; CUDA's sizes wait for
        `read_cuda_sizes`."""
        service = cls(driver_root=driver_root, dev_root=dev_root, nvml_library=None, cuda=cuda)
        service._opening = service._nvml_thread.submit(service._first_open, phases)
        return service

    def _first_open(self, phases: Phases) -> tuple[NvmlSession, tuple[Gpu, ...]]:
        with phases.span("nvidia-uvm"):
            devnodes.load_uvm(self.dev_root, self.driver_root)
        return self._open(phases)

    def read_cuda_sizes(self, phases: Phases) -> None:
        """Start CUDA's child process for this load, once (a second call before the next load
        does nothing); the inventory waits for its answer. It is waited for on a thread of its
        own that ends with it, not on the side thread, where the PCIe sampler would queue
        behind it (seconds on a big host)."""
        if self._cuda is None or self._sizes_asked:
            return
        self._sizes_asked = True
        cuda = self._cuda

        def read() -> CudaReport:
            with phases.span("CUDA sizes (child process)"):
                return cuda.read()

        waiter = ThreadPoolExecutor(1, thread_name_prefix="cuda-sizes")
        self._sizes = waiter.submit(read)
        waiter.shutdown(wait=False)  # its one thread ends once the child has answered

    async def ready(self) -> None:
        """Wait for the load `begin` started; at once when there is none (any more). A caller
        cancelled meanwhile (a start-up that fails) does not drop the session the NVML thread
        opened: it is still adopted, and `close()` shuts it down."""
        if self._opening is None:
            return
        await asyncio.shield(self._adopt_under_lock())

    async def _adopt_under_lock(self) -> None:
        async with self._lock:
            await self._adopt_opening()

    async def _adopt_opening(self) -> None:
        """Under the lock: take the result of `begin`'s load, if no caller has yet. It is
        forgotten only once adopted: a `ready()` meanwhile waits for the lock, instead of
        returning before the session is there."""
        opening = self._opening
        if opening is not None:
            try:
                await self._adopt(asyncio.wrap_future(opening))
            finally:
                self._opening = None

    @property
    def available(self) -> bool:
        return self._session is not None

    async def _call(self, fn: Callable[..., T], *args: object,
                    executor: ThreadPoolExecutor | None = None) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor or self._nvml_thread,
                                          functools.partial(fn, *args))

    def _require(self) -> NvmlSession:
        if self._session is None:
            raise NvmlError(self.reason or "NVML is not available")
        return self._session

    # -- lifecycle

    async def refresh(self) -> None:
        """(Re)load NVML and re-read the static inventory, CUDA's sizes included (`start`,
        SIGHUP, driver change)."""
        async with self._lock:
            await self._adopt_opening()  # a SIGHUP during start-up: close that session too
            await self._stop()
            phases = Phases()
            self.read_cuda_sizes(phases)  # CUDA's child process runs while NVML opens
            await self._adopt(self._call(self._open, phases))
        # Complete before returning (only start-up, through `begin`, serves without them).
        # Without NVML there is no GPU to give them to: this only waits for the child.
        await self._sizes_merged()

    async def _adopt(self, opened: Awaitable[tuple[NvmlSession, tuple[Gpu, ...]]]) -> None:
        try:
            session, gpus = await opened
        except NvmlError as err:
            self.reason = err.message
            return
        self._session, self._gpus, self.reason = session, gpus, None
        if self._listeners:
            self._start_events(session)

    def _open(self, phases: Phases) -> tuple[NvmlSession, tuple[Gpu, ...]]:
        # Found again on every (re)load: after a driver upgrade the file named at start-up is
        # gone, and loading it (or keeping it) is 1.0's "nvidia_driver_<old> missing".
        with phases.span("NVML library lookup"):
            library = self.nvml_library or discovery.find_nvml_library(self.driver_root)
        with phases.span("NVML load and init"):
            session = NvmlSession.open(library, driver_root=self.driver_root,
                                       dev_root=self.dev_root)
        log.debug("NVML loaded from %s", session.path)
        try:
            with phases.span("GPU inventory"):
                gpus = session.read_gpus()
        except NvmlError:
            session.close()
            raise
        return session, devnodes.with_mig_access(gpus, self.driver_root, self.dev_root)

    async def _sizes_merged(self) -> None:
        """CUDA's sizes in `_gpus`, once per load (the first caller merges, others wait)."""
        pending = self._sizes
        if pending is None:
            return
        async with self._lock:
            if self._sizes is not pending:
                return  # merged by another caller, or a refresh started anew
            report = await asyncio.wrap_future(pending)
            self._sizes = None
            if self._session is not None:
                self._gpus = _with_cuda(self._gpus, report)
                self._inventory.forget()

    async def _stop(self) -> None:
        """Stop every NVML user, then shut NVML down: the sampler task first, then the session,
        whose close waits for a reading still running on the sampler's thread (cancelling the
        task does not stop the thread) and refuses readings queued behind it."""
        self._inventory.forget()
        self._sizes_asked = False  # the next load asks CUDA again (a new driver, maybe)
        await self._stop_events()  # before nvmlShutdown, which the wait must not outlive
        cache, self._cache = self._cache, None
        session, self._session = self._session, None
        if session is not None:
            self.reason = "NVML was shut down"
        if cache is not None:
            await cache.close()
        if session is not None:
            await self._call(session.close)

    async def close(self) -> None:
        async with self._lock:
            await self._adopt_opening()
            await self._stop()
        # Both threads are idle now; joining them still must not block the event loop.
        for executor in (self._side_thread, self._nvml_thread):
            await asyncio.to_thread(executor.shutdown, True)

    # -- queries

    async def inventory(self, *, cuda_sizes: bool = True) -> GpuInventory:
        """The GPUs read at the last refresh and driver and CUDA versions at most 1 s old, with
        CUDA's memory sizes: waited for, or with `cuda_sizes=False` as far as they are known
        (Constant, Shared and L2 Cache are None until CUDA's child has answered)."""
        self._require()
        pending = self._sizes
        if cuda_sizes or (pending is not None and pending.done()):
            await self._sizes_merged()
        return await self._inventory.get()


    async def _read_inventory(self) -> GpuInventory:
        session = self._require()
        versions = await self._call(session.versions)
        return GpuInventory(versions=versions, gpus=self._gpus)

    async def driver_version(self) -> str:
        """Read now: the daemon asks when it re-discovers the driver's files."""
        session = self._require()
        return (await self._call(session.versions)).driver

    async def status(self, *, with_pcie: bool = True) -> tuple[GpuStatus, ...]:
        """Live readings; `with_pcie=False` never waits for the slow PCIe sampler (/metrics)."""
        return await self._status_cache().get(with_pcie=with_pcie)

    async def telemetry(self) -> tuple[GpuTelemetry, ...]:
        """The readings /metrics adds to status's, and whether NVML still reads each GPU."""
        session = self._require()
        return await self._call(session.read_telemetry, time.time)

    async def probe(self, indices: Sequence[int]) -> dict[int, str | None]:
        """Whether NVML still reads each of these GPUs (None) or what it answers instead."""
        session = self._require()
        return await self._call(session.probe, tuple(indices))

    @property
    def gpus(self) -> tuple[Gpu, ...]:
        """The GPUs read at the last refresh (none while NVML is unavailable)."""
        return self._gpus if self._session is not None else ()

    # -- critical events (health)

    def add_event_listener(self, listener: EventListener) -> None:
        """Call `listener` on this event loop for every critical NVML event (Xid, double-bit ECC,
        GPU lost), from now on and across refreshes. The events are waited for in a thread of
        their own, so a wait never delays a status read."""
        self._loop = asyncio.get_running_loop()
        self._listeners.append(listener)
        if self._session is not None and self._events is None:
            self._start_events(self._session)

    def _start_events(self, session: NvmlSession) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=self._watch_events, args=(session, self._gpus, stop),
                                  name="nvml-events", daemon=True)
        self._events = (thread, stop)
        thread.start()

    async def _stop_events(self) -> None:
        if self._events is not None:
            thread, stop = self._events
            self._events = None
            stop.set()
            await asyncio.to_thread(thread.join)

    def _watch_events(self, session: NvmlSession, gpus: tuple[Gpu, ...],
                      stop: threading.Event) -> None:
        from nvplugin.gpu.readings import EVENT_LOST

        try:
            events = session.open_events([gpu.uuid for gpu in gpus])
        except NvmlError as err:
            log.warning("%s; GPU health follows NVML reads only", err)
            return
        for index, why in events.unwatched:
            log.warning("GPU %d reports no NVML events (%s); its health follows NVML reads only",
                        index, why)
        failing = False
        try:
            while not stop.is_set():
                try:
                    found = events.wait(EVENT_WAIT_MS, time.time)
                except EventsUnavailable as err:
                    log.warning("%s; GPU health follows NVML reads only", err)
                    return
                except NvmlError as err:
                    if not failing:  # one line, not one a second
                        log.warning("%s; retrying every second", err)
                    failing = True
                    stop.wait(1.0)
                    continue
                failing = False
                for event in found:
                    self._deliver(event)
                if any(event.kind == EVENT_LOST for event in found):
                    # A lost GPU may wake every following wait at once: do not spin.
                    stop.wait(EVENT_WAIT_MS / 1000)
        finally:
            events.close()

    def _deliver(self, event: GpuEvent) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._notify, event)

    def _notify(self, event: GpuEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # one listener's bug must not silence the others
                log.exception("Error: a GPU event listener failed on %s", event)

    def select(self, spec: str | None) -> selection.Selection:
        """The GPUs and MIG devices `spec` names (NV_GPU / dev= grammar, see selection.py);
        `devnodes.selection_nodes` gives their device nodes."""
        self._require()
        return selection.select(self._gpus, spec)

    async def control_nodes(self) -> tuple[DeviceNode, ...]:
        """The control nodes that exist, looked for at most 1 s ago."""
        return await self._control_nodes.get()

    async def _read_control_nodes(self) -> tuple[DeviceNode, ...]:
        return await asyncio.to_thread(devnodes.control_nodes, self.dev_root)

    @property
    def status_cache(self) -> StatusCache | None:
        """This load's status cache (made here if no reading made it yet), or None without
        NVML."""
        return self._status_cache() if self._session is not None else None

    def _status_cache(self) -> StatusCache:
        """The status cache of this load, made at its first reading: nothing reads a GPU before
        the daemon answers, and its records are a part of start-up's imports."""
        session = self._require()
        if self._cache is None:
            from nvplugin.gpu.status_cache import StatusCache

            self._cache = StatusCache(
                functools.partial(self._call, session.read_status, time.time),
                functools.partial(self._call, session.read_pcie, executor=self._side_thread),
            )
        return self._cache


def _with_cuda(gpus: tuple[Gpu, ...], report: CudaReport) -> tuple[Gpu, ...]:
    """CUDA's sizes filled in, with one line for what was read and one for what was not."""
    from nvplugin.gpu.cuda_report import with_memory

    gpus, missing = with_memory(gpus, report)
    if report.error is not None:
        log.warning("CUDA memory sizes unavailable: %s; Constant, Shared and L2 Cache read N/A",
                    report.error)
        return gpus
    if not report.cached:
        grown = "" if report.init_rss_kib is None else f", {report.init_rss_kib / 1024:+.1f} MiB"
        init = "" if report.init_ms is None else f"; its cuInit took {report.init_ms:.0f} ms{grown}"
        log.info("Read CUDA memory sizes of %d GPU(s) from %s in a child process in %.0f ms%s",
                 len(report.memory), report.library, report.took_ms, init)
    problems = [*report.problems, *missing]
    if problems:
        log.warning("CUDA could not read %s; reporting it as N/A", "; ".join(problems))
    return gpus
