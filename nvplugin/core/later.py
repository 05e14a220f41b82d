"""A value that arrives after start-up: `Later.set` once, `await get()` waits for it.

The daemon answers on its sockets before it has loaded what only some requests need (the
container attribution behind health, the metrics registry, the GPU page): those requests await
the value instead of finding it missing, and everything else is answered at once.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class Later(Generic[T]):
    def __init__(self, value: T | None = None) -> None:
        self._value = value
        self._set: asyncio.Event | None = None  # made on the loop, by the first waiter

    def set(self, value: T) -> None:
        self._value = value
        if self._set is not None:
            self._set.set()

    def now(self) -> T | None:
        """The value if it has arrived, else None (never waits)."""
        return self._value

    async def get(self) -> T:
        while self._value is None:
            if self._set is None:
                self._set = asyncio.Event()
            await self._set.wait()
        return self._value
