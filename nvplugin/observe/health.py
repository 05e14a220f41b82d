"""GPU health as a state machine over NVML's critical events and reads. Pure: the caller feeds
events and read results with the time, and logs the transitions it gets back.

A GPU is healthy until a critical event: an Xid not in the ignore list (by default the
application errors 13, 31, 43, 45, 68 and 109, as the Kubernetes device plugin ignores them),
a double-bit ECC error, or NVML saying the GPU is lost (an event, or a read answering
GPU_IS_LOST/RESET_REQUIRED). Unlike the device plugin, which keeps such a GPU unhealthy until
it is restarted, a GPU recovers: once NVML reads it fine and no critical event or failed read
came for `recovery_s`, it is healthy again. Each GPU is tracked by UUID (indices can change when
the driver is reloaded).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nvplugin.gpu.readings import EVENT_DOUBLE_BIT_ECC, EVENT_LOST, EVENT_XID, GpuEvent
from nvplugin.observe.records import GpuHealth, HealthChange
from nvplugin.observe.xids import xid_text


@dataclass(slots=True)
class _State:
    """One GPU's health as the tracker holds it."""

    index: int
    since: float
    healthy: bool = True
    reason: str | None = None
    last_bad: float = field(default=float("-inf"))  # monotonic time of the last bad news
    last_xid: int | None = None


def event_reason(event: GpuEvent) -> str:
    if event.kind == EVENT_XID:
        return f"Xid {event.data}: {xid_text(event.data)}"
    if event.kind == EVENT_DOUBLE_BIT_ECC:
        return "double-bit ECC error"
    if event.kind == EVENT_LOST:
        return "GPU is lost: NVML no longer reaches it"
    return event.kind


class HealthTracker:
    def __init__(self, *, ignore_xids: Iterable[int], recovery_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.ignore_xids = frozenset(ignore_xids)
        self.recovery_s = recovery_s
        self._clock = clock
        self._wall = wall
        self._states: dict[str, _State] = {}

    def track(self, gpus: Iterable[tuple[int, str]]) -> None:
        """The GPUs (index, UUID) NVML shows now: new ones start healthy, gone ones are
        forgotten, indices follow a reload."""
        seen = set()
        for index, uuid in gpus:
            seen.add(uuid)
            state = self._states.get(uuid)
            if state is None:
                self._states[uuid] = _State(index=index, since=self._wall())
            else:
                state.index = index
        for uuid in set(self._states) - seen:
            del self._states[uuid]

    def is_critical(self, event: GpuEvent) -> bool:
        return not (event.kind == EVENT_XID and event.data in self.ignore_xids)

    def on_event(self, event: GpuEvent) -> HealthChange | None:
        """A critical NVML event; ignored Xids only update `last_xid`."""
        state = self._states.get(event.uuid)
        if state is None:
            return None
        if event.kind == EVENT_XID:
            state.last_xid = event.data
        if not self.is_critical(event):
            return None
        return self._bad(event.uuid, state, event_reason(event))

    def on_read(self, uuid: str, fault: str | None) -> HealthChange | None:
        """A read of the GPU: `fault` is what NVML answered instead of reading it (None: fine).
        A fine read recovers an unhealthy GPU once `recovery_s` passed without bad news."""
        state = self._states.get(uuid)
        if state is None:
            return None
        if fault is not None:
            return self._bad(uuid, state, fault)
        if state.healthy or self._clock() - state.last_bad < self.recovery_s:
            return None
        state.healthy, state.reason, state.since = True, None, self._wall()
        return HealthChange(state.index, uuid, True,
                            f"no critical event and NVML reads it fine for "
                            f"{self.recovery_s:g} s")

    def _bad(self, uuid: str, state: _State, reason: str) -> HealthChange | None:
        state.last_bad = self._clock()
        state.reason = reason  # the newest bad news is the one shown
        if not state.healthy:
            return None
        state.healthy, state.since = False, self._wall()
        return HealthChange(state.index, uuid, False, reason)

    def unhealthy(self) -> list[tuple[int, str]]:
        """(index, UUID) of every unhealthy GPU: those to read until they recover."""
        return [(s.index, uuid) for uuid, s in self._states.items() if not s.healthy]

    def get(self, uuid: str) -> GpuHealth | None:
        state = self._states.get(uuid)
        return None if state is None else _record(uuid, state)

    def healthy(self, uuid: str) -> bool:
        """False only for a tracked GPU that is unhealthy (an unknown UUID is not condemned)."""
        state = self._states.get(uuid)
        return state is None or state.healthy

    def states(self) -> tuple[GpuHealth, ...]:
        return tuple(sorted((_record(uuid, s) for uuid, s in self._states.items()),
                            key=lambda h: h.index))


def _record(uuid: str, state: _State) -> GpuHealth:
    return GpuHealth(index=state.index, uuid=uuid, healthy=state.healthy, reason=state.reason,
                     since=state.since, last_xid=state.last_xid)
