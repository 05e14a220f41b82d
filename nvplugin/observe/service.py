"""`ObserveService`: GPU health, processes attributed to containers, and observations, for the
REST API, `/metrics`, doctor and the live page. The one object they read:

    health() -> tuple[GpuHealth, ...]       every GPU's health now (plain records)
    healthy(uuid) -> bool                   False only for a GPU known to be unhealthy
    add_health_listener(fn)                 fn(HealthChange) on the event loop, per transition
    await observation() -> Observation|None  GPUs, readings, processes with their containers,
                                            containers' use, health; at most `max_age` old
    await containers_of(pids) -> {pid: ContainerRef|None}

Health: `GpuService` delivers critical NVML events (its own thread waits for them); the pure
`HealthTracker` decides; while a GPU is unhealthy it is read every `probe_interval` (off the
loop, on the NVML thread) until it has been fine for `--health-recovery`; observations count as
reads too. Every transition logs one line.

Observations: fast NVML reads only (status without PCIe, telemetry), never the ~20 ms-per-GPU
PCIe sampling, and a caller waits at most `scrape_wait` for one: a hung NVML costs a scrape
its GPU samples, never its answer. While someone asks within `idle_after`, a poller keeps one
at most `interval` old so back-to-back scrapes are served from memory; with nobody asking no
task runs. A Prometheus scraping every 15 s gets a fresh read each time, at the cost of one.

Containers: a process's `/proc/<pid>/cgroup` under `--host-root` (read in a thread) names its
container (cgroups.py); Docker's containers get their names from the Docker Engine API, cached
and refreshed in the background when an unknown ID shows up, never on a caller's path. A daemon
in a container needs the host's PID namespace (`--pid host`) for NVML's PIDs to mean anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nvplugin.core.errors import NvpluginError
from nvplugin.core.single_flight import SingleFlight
from nvplugin.driver.hostroot import HostRoot
from nvplugin.engine.client import Engine
from nvplugin.engine.endpoint import DEFAULT_HOST, NoOptions, resolve_endpoint
from nvplugin.gpu.readings import GpuEvent, GpuStatus, GpuTelemetry, Process
from nvplugin.gpu.service import GpuService
from nvplugin.observe.cgroups import container_of
from nvplugin.observe.health import HealthTracker
from nvplugin.observe.records import (
    ContainerRef,
    ContainerUse,
    GpuHealth,
    HealthChange,
    Observation,
    ProcessUse,
)

log = logging.getLogger(__name__)

OBSERVE_INTERVAL_S = 1.0
IDLE_AFTER_S = 10.0
SCRAPE_WAIT_S = 1.0
STALE_LIMIT_S = 60.0  # an older observation is not served when a fresh one is late
NAME_RETRY_S = 30.0  # an ID the engine did not know is asked about again after this
ENGINE_TIMEOUT_S = 5.0
CGROUP_FILE_LIMIT = 64 << 10  # v1 lists a dozen hierarchies; a real file is under 2 KiB

ContainerLister = Callable[[], Sequence[Mapping[str, Any]]]
HealthListener = Callable[[HealthChange], None]


class ObserveService:
    def __init__(self, gpus: GpuService, *, host_root: Path, ignore_xids: Iterable[int],
                 recovery_s: float, list_containers: ContainerLister | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 interval: float = OBSERVE_INTERVAL_S, idle_after: float = IDLE_AFTER_S,
                 scrape_wait: float = SCRAPE_WAIT_S) -> None:
        self.gpus = gpus
        self.host_root = host_root
        self.tracker = HealthTracker(ignore_xids=ignore_xids, recovery_s=recovery_s,
                                     clock=clock, wall=wall)
        self.probe_interval = min(1.0, max(0.05, recovery_s / 10))
        self.interval = interval
        self.max_age = interval
        self.idle_after = idle_after
        self.scrape_wait = scrape_wait
        self._list_containers = list_containers
        self._clock = clock
        self._wall = wall
        self._listeners: list[HealthListener] = []
        self._latest: tuple[float, Observation] | None = None
        self._observe = SingleFlight(self._take)
        self._last_asked = float("-inf")
        self._poller: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._names: dict[str, str] = {}
        self._missing: dict[str, float] = {}
        self._wanted: set[str] = set()
        self._namer: asyncio.Task[None] | None = None
        self._engine_failing = False
        self._late = False
        self.observations = 0  # taken so far, for tests and the benchmark

    async def start(self) -> None:
        self._track()
        self.gpus.add_event_listener(self._on_event)

    async def close(self) -> None:
        for task in (self._poller, self._prober, self._namer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._poller = self._prober = self._namer = None

    # -- health

    def health(self) -> tuple[GpuHealth, ...]:
        self._track()
        return self.tracker.states()

    def healthy(self, uuid: str) -> bool:
        self._track()
        return self.tracker.healthy(uuid)

    def add_health_listener(self, listener: HealthListener) -> None:
        self._listeners.append(listener)

    def _track(self) -> None:
        self.tracker.track((gpu.index, gpu.uuid) for gpu in self.gpus.gpus)

    def _on_event(self, event: GpuEvent) -> None:
        self._track()
        if not self.tracker.is_critical(event):
            log.info("GPU %d (%s): Xid %d ignored (an application error; see "
                     "--health-ignore-xids)", event.index, event.uuid, event.data)
        change = self.tracker.on_event(event)
        if change is not None:
            self._changed(change)

    def _on_read(self, uuid: str, fault: str | None) -> None:
        change = self.tracker.on_read(uuid, fault)
        if change is not None:
            self._changed(change)

    def _changed(self, change: HealthChange) -> None:
        if change.healthy:
            log.info("GPU %d (%s) is healthy again: %s", change.index, change.uuid, change.reason)
        else:
            log.warning("GPU %d (%s) is unhealthy: %s", change.index, change.uuid, change.reason)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # one listener's bug must not silence the others
                log.exception("Error: a GPU health listener failed on %s", change)
        if self.tracker.unhealthy() and (self._prober is None or self._prober.done()):
            self._prober = asyncio.create_task(self._probe_unhealthy(), name="gpu-health-probe")

    async def _probe_unhealthy(self) -> None:
        """Read the unhealthy GPUs until each has recovered (or is gone)."""
        while unhealthy := self.tracker.unhealthy():
            await asyncio.sleep(self.probe_interval)
            try:
                faults = await self.gpus.probe([index for index, _uuid in unhealthy])
            except NvpluginError as err:  # NVML is being reloaded or is gone: try again
                log.debug("Cannot probe unhealthy GPUs: %s", err)
                continue
            self._track()
            for index, uuid in unhealthy:
                if index in faults:
                    self._on_read(uuid, faults[index])

    # -- observations

    async def observation(self) -> Observation | None:
        """The GPUs as they are (at most `max_age` old), or None when NVML is unavailable or
        has not answered within `scrape_wait` and nothing recent is at hand."""
        self._last_asked = self._clock()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="gpu-observer")
        latest = self._latest
        if latest is not None and self._clock() - latest[0] <= self.max_age:
            return latest[1]
        try:
            return await asyncio.wait_for(self._observe.get(), self.scrape_wait)
        except TimeoutError:
            if not self._late:
                log.warning("NVML did not answer within %g s; serving the last observation",
                            self.scrape_wait)
            self._late = True
        except NvpluginError:
            return None  # NVML unavailable: GpuService.reason says why, the REST API too
        if latest is not None and self._clock() - latest[0] <= STALE_LIMIT_S:
            return latest[1]
        return None

    async def _poll(self) -> None:
        while self._clock() - self._last_asked < self.idle_after:
            started = self._clock()
            with contextlib.suppress(NvpluginError):  # callers see None; nothing to add here
                await self._observe.get()
            await asyncio.sleep(max(0.0, self.interval - (self._clock() - started)))

    async def _take(self) -> Observation:
        inventory = await self.gpus.inventory(cuda_sizes=False)  # observations need none
        statuses = await self.gpus.status(with_pcie=False)
        telemetry = await self.gpus.telemetry()
        self._late = False
        self._track()
        gpus = inventory.gpus
        uuids = {gpu.index: gpu.uuid for gpu in gpus}
        for tele in telemetry:
            if tele.index in uuids:
                self._on_read(uuids[tele.index], tele.fault)
        processes = await self._processes(uuids, statuses, telemetry)
        observation = Observation(
            taken_at=self._wall(), driver_version=inventory.versions.driver, gpus=gpus,
            statuses=statuses, telemetry=telemetry, processes=processes,
            containers=_containers(processes), health=self.tracker.states())
        self._latest = (self._clock(), observation)
        self.observations += 1
        return observation

    async def _processes(self, uuids: Mapping[int, str], statuses: Sequence[GpuStatus],
                         telemetry: Sequence[GpuTelemetry]) -> tuple[ProcessUse, ...]:
        graphics = {t.index: t.graphics_processes for t in telemetry}
        merged = [(status.index, pid, proc, kind)
                  for status in statuses
                  for pid, (proc, kind) in _merge(status.processes,
                                                  graphics.get(status.index, ())).items()]
        refs = await self.containers_of({pid for _i, pid, _p, _k in merged})
        return tuple(ProcessUse(gpu_index=index, gpu_uuid=uuids.get(index, ""), pid=pid,
                                name=proc.name, memory_used_mib=proc.memory_used_mib, kind=kind,
                                container=refs.get(pid))
                     for index, pid, proc, kind in merged)

    # -- containers

    async def containers_of(self, pids: Iterable[int]) -> dict[int, ContainerRef | None]:
        """The container of each PID (None: a host process, or gone), with Docker's name where
        the cache has it; an unknown Docker ID starts a background refresh of the names."""
        wanted = sorted(set(pids))
        if not wanted:
            return {}
        found = await asyncio.to_thread(self._read_cgroups, wanted)
        return {pid: None if ref is None else self._named(ref) for pid, ref in found.items()}

    def _read_cgroups(self, pids: Sequence[int]) -> dict[int, ContainerRef | None]:
        root = HostRoot(self.host_root)  # a bounded read of a regular file inside the root
        found: dict[int, ContainerRef | None] = {}
        for pid in pids:
            try:
                text = root.read_bytes(f"/proc/{pid}/cgroup", CGROUP_FILE_LIMIT)
            except (OSError, NvpluginError):  # exited, or another PID namespace
                found[pid] = None
                continue
            found[pid] = container_of(text.decode(errors="replace"))
        return found

    def _named(self, ref: ContainerRef) -> ContainerRef:
        if ref.runtime != "docker":
            return ref
        name = self._names.get(ref.id)
        if name is None:
            self._want_name(ref.id)
            return ref
        return dataclasses.replace(ref, name=name)

    def _want_name(self, container_id: str) -> None:
        if self._list_containers is None:
            return
        missed = self._missing.get(container_id)
        if missed is not None and self._clock() - missed < NAME_RETRY_S:
            return
        self._wanted.add(container_id)
        if self._namer is None or self._namer.done():
            self._namer = asyncio.create_task(self._refresh_names(), name="container-names")

    async def _refresh_names(self) -> None:
        lister = self._list_containers
        while self._wanted and lister is not None:
            asked, self._wanted = self._wanted, set()
            try:
                listed = await asyncio.to_thread(lister)
            except NvpluginError as err:
                if not self._engine_failing:
                    log.warning("Cannot read container names from the Docker Engine: %s", err)
                self._engine_failing = True
                listed = []
            else:
                self._engine_failing = False
                self._names = _names(listed)  # replaced whole: gone containers leave with it
            now = self._clock()
            self._missing = {cid: t for cid, t in self._missing.items()
                             if now - t < NAME_RETRY_S}
            for cid in asked - set(self._names):
                self._missing[cid] = now


def docker_lister(host_root: Path, environ: Mapping[str, str]) -> ContainerLister:
    """Lists the Docker Engine's running containers (blocking): the engine DOCKER_HOST or the
    docker context names, else the host's default socket under `--host-root` (the daemon in
    its image sees the host's `/var/run/docker.sock` at `/host/var/run/docker.sock`)."""
    endpoint = resolve_endpoint(NoOptions(), environ)
    if endpoint.host == DEFAULT_HOST and host_root != Path("/"):
        socket = host_root / DEFAULT_HOST.removeprefix("unix:///")
        endpoint = dataclasses.replace(endpoint, host=f"unix://{socket}")

    def listing() -> Sequence[Mapping[str, Any]]:
        engine = Engine(endpoint, timeout=ENGINE_TIMEOUT_S)
        try:
            return engine.containers()
        finally:
            engine.close()

    return listing


def _names(listed: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """ID -> name from `GET /containers/json` (`Names: ["/name"]`)."""
    names: dict[str, str] = {}
    for container in listed:
        cid, shown = container.get("Id"), container.get("Names")
        if isinstance(cid, str) and isinstance(shown, list) and shown and \
                isinstance(shown[0], str):
            names[cid] = shown[0].lstrip("/")
    return names


def _merge(compute: Sequence[Process], graphics: Sequence[Process],
           ) -> dict[int, tuple[Process, str]]:
    """PID -> (process, "C"/"G"/"C+G"), as nvidia-smi lists a process once per GPU."""
    merged: dict[int, tuple[Process, str]] = {p.pid: (p, "C") for p in compute}
    for proc in graphics:
        if proc.pid in merged:
            first = merged[proc.pid][0]
            if first.memory_used_mib is None:
                first = proc
            merged[proc.pid] = (first, "C+G")
        else:
            merged[proc.pid] = (proc, "G")
    return merged


def _containers(processes: Sequence[ProcessUse]) -> tuple[ContainerUse, ...]:
    grouped: dict[tuple[str, int], tuple[ContainerRef, list[ProcessUse]]] = {}
    for proc in processes:
        if proc.container is not None:
            key = (proc.container.id, proc.gpu_index)
            grouped.setdefault(key, (proc.container, []))[1].append(proc)
    uses = []
    for ref, procs in grouped.values():
        known = [p.memory_used_mib for p in procs if p.memory_used_mib is not None]
        uses.append(ContainerUse(container=ref, gpu_index=procs[0].gpu_index,
                                 gpu_uuid=procs[0].gpu_uuid, processes=len(procs),
                                 memory_used_mib=sum(known) if known else None))
    return tuple(sorted(uses, key=lambda u: (u.gpu_index, u.container.id)))
