"""Live GPU status with the slow counters sampled in the background.

On real hardware nvmlDeviceGetPcieThroughput samples the bus for ~20 ms per call, so 1.0 spent
~49 ms per gpu/status request. Here the fast fields are read fresh for each request (concurrent
requests share one read), while PCIe RX/TX come from a sampler that runs every `interval`
seconds, only while someone asked within the last `idle_after` seconds. With nobody asking, no
task is scheduled at all, so the daemon's idle CPU stays at zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nvplugin.core.single_flight import SingleFlight
from nvplugin.gpu.readings import GpuStatus

log = logging.getLogger(__name__)

FastReader = Callable[[], Awaitable[tuple[GpuStatus, ...]]]
# GPU index -> (RX MB/s, TX MB/s)
SlowReader = Callable[[], Awaitable[dict[int, tuple[int | None, int | None]]]]


@dataclass(frozen=True, slots=True)
class _Sample:
    """One PCIe throughput reading of every GPU."""

    taken: float  # `clock` time when the read finished
    wall: float  # the same moment as a UNIX time, for GpuStatus.pcie_sampled_at
    values: dict[int, tuple[int | None, int | None]]


class StatusCache:
    def __init__(
        self,
        read_fast: FastReader,
        read_slow: SlowReader,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        interval: float = 1.0,
        max_age: float = 1.5,
        idle_after: float = 10.0,
    ) -> None:
        self._read_fast = read_fast
        self._read_slow = read_slow
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self.interval = interval
        self.max_age = max_age  # older slow samples make a request wait for a fresh one
        self.idle_after = idle_after
        self._last_asked = float("-inf")
        self._sample: _Sample | None = None
        self._fast = SingleFlight(read_fast)  # concurrent requests share one read
        self._slow = SingleFlight(self._take_sample)
        self._sampler: asyncio.Task[None] | None = None
        self.slow_reads = 0  # for tests and the benchmark

    @property
    def sampling(self) -> bool:
        return self._sampler is not None and not self._sampler.done()

    async def get(self, *, with_pcie: bool = True) -> tuple[GpuStatus, ...]:
        """Fresh fast fields. With `with_pcie`, PCIe throughput at most `max_age` old (waiting
        for a sample when there is none that fresh); without, whatever fresh sample there is
        (else None), never waiting and never starting the sampler: what /metrics reads."""
        if not with_pcie:
            fast = await self._fast.get()
            sample = self._sample
            if sample is not None and self._clock() - sample.taken <= self.max_age:
                return tuple(_merge(status, sample) for status in fast)
            return fast
        self._last_asked = self._clock()
        if not self.sampling:
            self._sampler = asyncio.create_task(self._run_sampler(), name="gpu-status-sampler")
        fast = await self._fast.get()
        sample = self._sample
        if sample is None or self._clock() - sample.taken > self.max_age:
            sample = await self._slow.get()
        return tuple(_merge(status, sample) for status in fast)

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

    async def _take_sample(self) -> _Sample:
        values = await self._read_slow()
        self.slow_reads += 1
        self._sample = _Sample(taken=self._clock(), wall=self._wall(), values=values)
        return self._sample

    async def _run_sampler(self) -> None:
        while self._clock() - self._last_asked < self.idle_after:
            started = self._clock()
            try:
                await self._slow.get()
            except Exception as err:  # keep sampling; the next request reports its own error
                log.warning("Sampling PCIe throughput failed: %s", err)
            await self._sleep(max(0.0, self.interval - (self._clock() - started)))
        log.debug("GPU status sampler idle, stopping")


def _merge(status: GpuStatus, sample: _Sample) -> GpuStatus:
    rx, tx = sample.values.get(status.index, (None, None))
    return dataclasses.replace(status, pcie_rx_mbs=rx, pcie_tx_mbs=tx, pcie_sampled_at=sample.wall)
