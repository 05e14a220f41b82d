"""When each start-up step began and ended, for the daemon's one start-up line (debug) and
bench/bench_startup.py.

Steps overlap: NVML loads on its own thread while the web stack is imported, so each step is a
span (start and end, in seconds after the origin) rather than a duration in a sequence.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(slots=True)
class Phases:
    """Named spans of start-up, in seconds after `origin`."""

    origin: float = field(default_factory=time.monotonic)
    clock: Callable[[], float] = time.monotonic
    # name -> (start, end), seconds after `origin`; written by one thread per name
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        """Record the time spent in the block as `name` (also when it raises)."""
        start = self.clock()
        try:
            yield
        finally:
            self.spans[name] = (start - self.origin, self.clock() - self.origin)

    def since_origin(self) -> float:
        return self.clock() - self.origin

    def summary(self) -> str:
        """`name start-end` in ms after the origin, in the order the steps began."""
        ordered = sorted(self.spans.items(), key=lambda item: item[1])
        return ", ".join(f"{name} {a * 1000:.0f}-{b * 1000:.0f}" for name, (a, b) in ordered)
