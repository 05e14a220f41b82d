"""Idle I/O priority for one thread's work: Linux `ioprio_set`/`ioprio_get` through ctypes.

Neither `os` nor any other standard module has them (`ionice(1)` works on whole processes and
psutil's `ionice` would be a compiled dependency for two system calls), so the syscall numbers
of each machine are spelled here; elsewhere the work simply runs at its usual priority.

The priority belongs to a thread, not the process: `IdleIo.running()` lowers the calling
thread's for the length of a block and restores it after, because the thread is one of
asyncio's shared workers; `hurry()` gives it back early, from any thread, once someone waits
for that work.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

IOPRIO_WHO_PROCESS = 1  # with a thread id: that thread only
IOPRIO_CLASS_SHIFT = 13
IOPRIO_CLASS_IDLE = 3
IDLE = IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT
# (ioprio_set, ioprio_get) by `uname -m`: the kernel's syscall tables
_SYSCALLS = {
    "x86_64": (251, 252),
    "aarch64": (30, 31),
    "riscv64": (30, 31),
    "ppc64le": (273, 274),
    "ppc64": (273, 274),
    "s390x": (282, 283),
    "i386": (289, 290),
    "i686": (289, 290),
    "armv7l": (314, 315),
}


def _syscall() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None


_NUMBERS = _SYSCALLS.get(platform.machine())
_CALL = _syscall() if _NUMBERS is not None else None


def get(tid: int = 0) -> int | None:
    """Thread `tid`'s I/O priority (0: the calling thread), or None where it cannot be read."""
    if _CALL is None or _NUMBERS is None:
        return None
    value = int(_CALL(_NUMBERS[1], IOPRIO_WHO_PROCESS, tid))
    return None if value < 0 else value


def set_priority(value: int, tid: int = 0) -> bool:
    """Set thread `tid`'s I/O priority (0: the calling thread); False where it cannot be."""
    if _CALL is None or _NUMBERS is None:
        return False
    if int(_CALL(_NUMBERS[0], IOPRIO_WHO_PROCESS, tid, value)) == 0:
        return True
    log.debug("ioprio_set(%#x) failed: %s", value, os.strerror(ctypes.get_errno()))
    return False


class IdleIo:
    """One piece of background work at idle I/O priority, until someone `hurry()`s it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # `running` and `hurry` meet on two threads
        self._lowered: tuple[int, int] | None = None  # (thread id, its earlier priority)
        self.hurried = False

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Run the block on the calling thread at idle I/O priority (unless already hurried, or
        where the OS does not allow it), and restore the thread's priority after."""
        with self._lock:
            before = get()
            if not self.hurried and before is not None and set_priority(IDLE):
                self._lowered = (threading.get_native_id(), before)
        try:
            yield
        finally:
            with self._lock:
                if self._lowered is not None:
                    set_priority(self._lowered[1])
                    self._lowered = None

    def hurry(self) -> None:
        """Someone waits for the work: its usual priority from now on (before it runs, too)."""
        with self._lock:
            self.hurried = True
            if self._lowered is not None:
                tid, before = self._lowered
                set_priority(before, tid)
                self._lowered = None

    @property
    def idle(self) -> bool:
        """Whether the work runs at idle priority now."""
        return self._lowered is not None
