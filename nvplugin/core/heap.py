"""Give the C heap's free memory back to the kernel once start-up has settled: glibc's
`malloc_trim(0)` through ctypes (no standard module calls it).

NVML's init mallocs and frees a few MiB of its own, and glibc keeps freed memory in its arenas
for reuse rather than unmapping it. On the H200 (driver 580), a Python + aiohttp + pynvml
process held 64.3 MiB after `nvmlInit` and a few queries, and 60.4 MiB after one `malloc_trim(0)`
(-3.8 MiB; -2.7 MiB when NVML initialises on a thread, as in the daemon); on our CI machine,
whose fake NVML allocates little, the call saves 0.4 MiB. It walks the arenas once (well under a
millisecond here) and is called off the event loop. Python's own object arenas are not glibc's
and are left alone. Elsewhere (musl has no `malloc_trim`) nothing is called.
"""

from __future__ import annotations

import ctypes


def release_free_heap() -> bool:
    """`malloc_trim(0)`: True when memory went back to the kernel, False when none did or the
    C library has no such call."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))
