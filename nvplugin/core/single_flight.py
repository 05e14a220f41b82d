"""Shared reads for the daemon's services: one read in flight, and a value at most N seconds old.

`SingleFlight`: callers arriving while a read runs wait for that read, and share its result or
its error. `Recent`: the last value while it is younger than `max_age`, else one shared read.
A caller that gives up (its client went away) never cancels a read that others wait on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self, read: Callable[[], Awaitable[T]]) -> None:
        self._read = read
        self._flight: asyncio.Future[T] | None = None

    async def get(self) -> T:
        if self._flight is None or self._flight.done():
            self._flight = asyncio.ensure_future(self._read())
            # Every waiter may have left (a shutdown cancels them) before the read fails: its
            # error is each waiter's to report, so an unwaited one is not "never retrieved"
            # news, whose traceback would otherwise be printed when the future is collected.
            self._flight.add_done_callback(_retrieved)
        # Shielded: one caller's cancellation must not cancel the read the others wait for.
        return await asyncio.shield(self._flight)

    def detach(self) -> None:
        """Later callers start a new read; those waiting on the current one still get it."""
        self._flight = None


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Recent(Generic[T]):
    """A value read at most `max_age` seconds ago (by `clock`), through one read at a time."""

    def __init__(self, read: Callable[[], Awaitable[T]], max_age: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._max_age = max_age
        self._clock = clock
        self._value: tuple[float, T] | None = None
        self._generation = 0  # bumped by forget(): a read begun before it is not kept
        self._flight = SingleFlight(self._refresh)

    async def get(self) -> T:
        if self._value is not None and self._clock() - self._value[0] < self._max_age:
            return self._value[1]
        return await self._flight.get()

    def forget(self) -> None:
        """Drop the value and any read in progress: the next `get` reads afresh."""
        self._generation += 1
        self._value = None
        self._flight.detach()

    def _refresh(self) -> Awaitable[T]:
        # The generation is the one current when the read is started, not when it first runs.
        return self._read_and_keep(self._generation)

    async def _read_and_keep(self, generation: int) -> T:
        value = await self._read()
        if generation == self._generation:
            self._value = (self._clock(), value)
        return value
