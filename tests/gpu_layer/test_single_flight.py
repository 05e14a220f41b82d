"""SingleFlight and Recent: one shared read, values at most max_age old, errors shared."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from nvplugin.core.single_flight import Recent, SingleFlight


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_recent_reads_once_per_max_age() -> None:
    clock, reads = Clock(), []
    gate = asyncio.Event()

    async def read() -> str:
        reads.append(clock.now)
        await gate.wait()
        return f"value {len(reads)}"

    recent = Recent(read, 1.0, clock)
    waiting = [asyncio.ensure_future(recent.get()) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    assert set(await asyncio.gather(*waiting)) == {"value 1"} and reads == [100.0]
    clock.now += 0.9
    assert await recent.get() == "value 1"
    clock.now += 0.2
    assert await recent.get() == "value 2" and len(reads) == 2


async def test_recent_failure_reaches_waiters_and_is_retried() -> None:
    calls = []

    async def read() -> tuple[str, ...]:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("stat failed")
        return ()

    recent = Recent(read, 1.0, Clock())
    with pytest.raises(OSError, match="stat failed"):
        await recent.get()
    assert await recent.get() == () and len(calls) == 2


async def test_forget_drops_the_value_and_the_read_in_progress() -> None:
    gate, values = asyncio.Event(), iter(["old", "new"])

    async def read() -> str:
        value = next(values)
        if value == "old":
            await gate.wait()
        return value

    recent = Recent(read, 60.0, Clock())
    early = asyncio.ensure_future(recent.get())
    await asyncio.sleep(0)
    recent.forget()
    assert await recent.get() == "new"  # a new read, not the one in progress
    gate.set()
    assert await early == "old"  # its own caller still gets it ...
    assert await recent.get() == "new"  # ... but it is not kept


async def test_a_cancelled_caller_does_not_cancel_the_shared_read() -> None:
    gate, reads = asyncio.Event(), []

    async def read() -> int:
        reads.append(1)
        await gate.wait()
        return len(reads)

    flight = SingleFlight(read)
    first, second = asyncio.ensure_future(flight.get()), asyncio.ensure_future(flight.get())
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == 1 and reads == [1]
    assert await flight.get() == 2  # the read finished: the next caller starts another


async def test_a_read_failing_after_every_waiter_left_is_not_logged_as_unretrieved(caplog):
    """A shutdown cancels the waiters; the read then fails with nobody to tell. Its error was
    each waiter's to report: no 'exception was never retrieved' traceback when it is collected
    (Python 3.11 parses source to draw that traceback, inside whatever was running)."""

    started = asyncio.Event()

    async def read() -> int:
        started.set()
        await asyncio.sleep(0.01)
        raise RuntimeError("NVML was shut down")

    flight = SingleFlight(read)
    waiter = asyncio.ensure_future(flight.get())
    await started.wait()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0.05)  # the read fails now, unwaited
    flight.detach()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
        await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
