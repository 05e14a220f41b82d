"""core/heap: malloc_trim gives a fragmented C heap's free memory back, in a process of its own."""

from __future__ import annotations

import subprocess
import sys

from nvplugin.core import heap

# 40,000 small C blocks (40 MiB), all freed but the last: the free memory sits below a block in
# use, so glibc cannot shrink its heap by itself, and only a trim unmaps it.
FRAGMENTED = """
import ctypes, re
from nvplugin.core import heap
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(1000) for _ in range(40_000)]
for block in blocks:
    ctypes.memset(block, 1, 1000)
for block in blocks[:-1]:
    libc.free(block)
before = rss()
released = heap.release_free_heap()
print(released, before - rss())
"""


def test_free_c_heap_goes_back_to_the_kernel():
    out = subprocess.run([sys.executable, "-c", FRAGMENTED], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) > 20_000, f"RSS fell by {out[1]} KiB only"


def test_a_c_library_without_malloc_trim_is_left_alone(monkeypatch):
    class Musl:  # no malloc_trim symbol: ctypes raises AttributeError
        def __getattr__(self, name: str) -> object:
            raise AttributeError(name)

    monkeypatch.setattr(heap.ctypes, "CDLL", lambda _name: Musl())
    assert heap.release_free_heap() is False
