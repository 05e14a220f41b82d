"""The last 15 minutes of each GPU's readings, for the page's charts: a fixed-size ring per GPU.

Each ring is one preallocated `array('d')` per series (time and nine readings) of `LENGTH` slots,
written in place: `SERIES` x `LENGTH` x 8 bytes = 10 x 900 x 8 = 72,000 bytes per GPU (576,000
for 8 GPUs), allocated when the GPU is first seen and never grown, whatever the uptime. Written
here rather than taken from a library: a ring is a dozen lines over the standard `array`, and the
time-series stores on PyPI keep unbounded or disk-backed histories. A missing reading (the GPU
does not report it) is NaN in the ring and `null` in JSON, which the charts draw as a gap.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only their fields are read: their module loads with the first reading
    from nvplugin.gpu.readings import GpuStatus

INTERVAL_S = 1.0
LENGTH = 900  # 15 minutes at one sample a second
# "t" is the sample's UNIX time; the rest are GpuStatus readings in its units.
SERIES = ("t", "util_gpu", "util_memory", "memory_used_mib", "power_w", "temperature_c",
          "clock_sm_mhz", "clock_mem_mhz", "pcie_rx_mbs", "pcie_tx_mbs")
NAN = math.nan

Row = Sequence[float | None]


def row_of(status: GpuStatus) -> tuple[float | None, ...]:
    """One ring row (in `SERIES` order) from a status reading."""
    return (status.sampled_at, status.utilization_gpu, status.utilization_memory,
            status.memory_used_mib, status.power_w, status.temperature_c,
            status.clock_cores_mhz, status.clock_memory_mhz, status.pcie_rx_mbs,
            status.pcie_tx_mbs)


class Ring:
    """`length` rows of `SERIES`, oldest overwritten first."""

    def __init__(self, length: int = LENGTH) -> None:
        self.length = length
        self._columns = [array("d", [NAN]) * length for _ in SERIES]
        self._next = 0  # the slot the next row goes to
        self.count = 0  # rows held, at most `length`

    def append(self, row: Row) -> None:
        for column, value in zip(self._columns, row, strict=True):
            column[self._next] = NAN if value is None else value
        self._next = (self._next + 1) % self.length
        self.count = min(self.count + 1, self.length)

    @property
    def last_time(self) -> float | None:
        return None if self.count == 0 else self._columns[0][self._next - 1]

    @property
    def nbytes(self) -> int:
        return sum(column.itemsize * len(column) for column in self._columns)

    def series(self) -> dict[str, list[float | None]]:
        """Every series, oldest first; missing readings are None."""
        start = (self._next - self.count) % self.length
        out: dict[str, list[float | None]] = {}
        for name, column in zip(SERIES, self._columns, strict=True):
            values = (column[start:] + column[:start]) if start + self.count > self.length \
                else column[start:start + self.count]
            out[name] = [None if math.isnan(v) else v for v in values]
        return out


class History:
    """A ring per GPU index, fed one status reading per GPU per tick."""

    def __init__(self, length: int = LENGTH, interval: float = INTERVAL_S) -> None:
        self.length = length
        self.interval = interval
        self._rings: dict[int, Ring] = {}

    def record(self, statuses: Iterable[GpuStatus]) -> None:
        for status in statuses:
            ring = self._rings.get(status.index)
            if ring is None:
                ring = self._rings[status.index] = Ring(self.length)
            last = ring.last_time
            # Nobody watched for a while: a row of nothing makes the charts break the line
            # there instead of drawing a straight line across the pause.
            if last is not None and status.sampled_at - last > 2.5 * self.interval:
                ring.append((last + self.interval, *(None,) * (len(SERIES) - 1)))
            ring.append(row_of(status))

    def keep_only(self, indices: Iterable[int]) -> None:
        """Forget GPUs the host no longer has (a driver reload changed the set)."""
        keep = set(indices)
        for index in [i for i in self._rings if i not in keep]:
            del self._rings[index]

    def snapshot(self) -> dict[str, dict[str, list[float | None]]]:
        """{GPU index as a string: series}, as the page's `hello` event carries it."""
        return {str(index): ring.series() for index, ring in sorted(self._rings.items())}

    @property
    def nbytes(self) -> int:
        return sum(ring.nbytes for ring in self._rings.values())
