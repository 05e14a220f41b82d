"""StatusCache with a fake clock: ages of the slow counters, single flight, idle stop."""

from __future__ import annotations

import asyncio

import pytest

from nvplugin.gpu.readings import GpuStatus
from nvplugin.gpu.status_cache import StatusCache


class FakeClock:
    """Time moves only when the test says so; `sleep` waits for that."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._moved = asyncio.Event()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        until = self.now + seconds
        while self.now < until:
            await self._moved.wait()

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        self._moved.set()
        self._moved = asyncio.Event()
        for _ in range(10):  # let woken tasks run
            await asyncio.sleep(0)


def status(index: int, at: float) -> GpuStatus:
    return GpuStatus(index, 70, 30, 1, 2, 0, 0, 100, 0, 0, 0, 300, 3201, 3, None, None,
                     sampled_at=at)


class Readers:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.fast_calls = 0
        self.slow_calls = 0
        self.gate: asyncio.Event | None = None

    async def fast(self) -> tuple[GpuStatus, ...]:
        self.fast_calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return (status(0, self.clock.now), status(1, self.clock.now))

    async def slow(self) -> dict[int, tuple[int | None, int | None]]:
        self.slow_calls += 1
        return {0: (self.slow_calls, 10 * self.slow_calls), 1: (None, None)}


@pytest.fixture
async def cache():
    clock = FakeClock()
    readers = Readers(clock)
    cache = StatusCache(readers.fast, readers.slow, clock=clock, wall=clock, sleep=clock.sleep,
                        interval=1.0, max_age=1.5, idle_after=10.0)
    yield cache, clock, readers
    await cache.close()


async def test_first_request_waits_for_a_first_sample(cache):
    cache, clock, readers = cache
    first = await cache.get()
    assert (first[0].pcie_rx_mbs, first[0].pcie_tx_mbs) == (1, 10)
    assert first[1].pcie_rx_mbs is None
    assert first[0].sampled_at == first[0].pcie_sampled_at == clock.now
    assert readers.slow_calls == 1 and cache.sampling


async def test_slow_fields_stay_at_most_an_interval_old_while_asked(cache):
    cache, clock, readers = cache
    await cache.get()
    for _ in range(20):
        await clock.advance(0.25)
        answer = await cache.get()
        age = answer[0].sampled_at - answer[0].pcie_sampled_at
        assert 0 <= age <= 1.0
        assert answer[0].sampled_at == clock.now  # fast fields are read for each request
    assert readers.fast_calls == 21
    assert readers.slow_calls == 1 + 5  # one per second of fake time, never per request


async def test_sampler_stops_when_nobody_asks_and_restarts_on_demand(cache):
    cache, clock, readers = cache
    await cache.get()
    for _ in range(12):
        await clock.advance(1.0)
    assert not cache.sampling
    stopped_at = readers.slow_calls
    assert stopped_at == 10  # samples during the 10 s after the last request, then none
    for _ in range(30):
        await clock.advance(1.0)
    assert readers.slow_calls == stopped_at
    answer = await cache.get()  # the old sample is stale: wait for a fresh one
    assert answer[0].pcie_sampled_at == clock.now and cache.sampling
    assert readers.slow_calls == stopped_at + 1


async def test_concurrent_requests_share_one_fast_read(cache):
    cache, _, readers = cache
    await cache.get()
    readers.gate = asyncio.Event()
    waiting = [asyncio.create_task(cache.get()) for _ in range(50)]
    await asyncio.sleep(0)
    readers.gate.set()
    answers = await asyncio.gather(*waiting)
    assert readers.fast_calls == 2
    assert all(answer == answers[0] for answer in answers)


async def test_a_cancelled_request_does_not_cancel_the_shared_read(cache):
    cache, _, readers = cache
    await cache.get()
    readers.gate = asyncio.Event()
    first = asyncio.create_task(cache.get())
    second = asyncio.create_task(cache.get())
    await asyncio.sleep(0)
    first.cancel()
    readers.gate.set()
    assert len(await second) == 2
    assert readers.fast_calls == 2


async def test_sampler_survives_a_failing_sample(cache, caplog):
    cache, clock, readers = cache
    await cache.get()
    good_slow = readers.slow

    async def failing() -> dict:
        raise RuntimeError("GPU is lost")

    cache._read_slow = failing
    await clock.advance(1.0)
    assert "GPU is lost" in caplog.text and cache.sampling
    cache._read_slow = good_slow
    await clock.advance(1.0)
    assert (await cache.get())[0].pcie_rx_mbs == readers.slow_calls
