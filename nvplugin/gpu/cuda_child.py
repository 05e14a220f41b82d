"""The child process of gpu/cuda.py: `python -I cuda_child.py LIBCUDA` prints one JSON object.

It loads the driver's own libcuda, calls cuInit(0) (no context is created), and for every CUDA
device reads its PCI bus id and the attributes 1.0 read through the CUDA runtime:

    {"init_ms": 412.5, "rss_kib": [9120, 47744],
     "devices": [{"bus_id": "0000:00:06.0", "constant": 65536, "shared": 233472, "l2": 62914560}]}

`rss_kib` is this process's resident set before and after cuInit: what cuInit would have cost
the daemon. A failure is {"error": "..."} (cuInit, counting) or, per device or attribute,
{"error": "..."} in its place. Standard library only, so it runs isolated (-I) under any Python.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from typing import Any

# CU_DEVICE_ATTRIBUTE_* (cuda.h), and the cudaDeviceProp fields 1.0 printed from them.
ATTRIBUTES = {
    "constant": 9,  # TOTAL_CONSTANT_MEMORY: totalConstMem
    "l2": 38,  # L2_CACHE_SIZE: l2CacheSize
    "shared": 81,  # MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: sharedMemPerMultiprocessor
}
BUS_ID_LEN = 32  # "0000:00:06.0" and then some


class CudaCallError(Exception):
    pass


def _rss_kib() -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class Driver:
    """libcuda's few entry points, each failure a CudaCallError naming the call and the error."""

    def __init__(self, library: str) -> None:
        try:
            self.lib = ctypes.CDLL(library)
        except OSError as err:
            raise CudaCallError(f"cannot load {library}: {err}") from err

    def _fn(self, name: str) -> Any:
        try:
            fn = getattr(self.lib, name)
        except AttributeError:
            raise CudaCallError(f"libcuda has no {name}") from None
        fn.restype = ctypes.c_int
        return fn

    def error_name(self, code: int) -> str:
        name = ctypes.c_char_p()
        try:
            found = self._fn("cuGetErrorName")(code, ctypes.byref(name)) == 0 and name.value
        except CudaCallError:
            found = None
        return f"{found.decode(errors='replace')} ({code})" if found else f"CUDA error {code}"

    def call(self, name: str, *args: Any) -> None:
        code = self._fn(name)(*args)
        if code != 0:
            raise CudaCallError(f"{name}: {self.error_name(code)}")


def _device(driver: Driver, ordinal: int) -> dict[str, Any]:
    device = ctypes.c_int()
    driver.call("cuDeviceGet", ctypes.byref(device), ordinal)
    bus_id = ctypes.create_string_buffer(BUS_ID_LEN)
    driver.call("cuDeviceGetPCIBusId", bus_id, BUS_ID_LEN, device)
    facts: dict[str, Any] = {"bus_id": bus_id.value.decode(errors="replace")}
    for key, attribute in ATTRIBUTES.items():
        value = ctypes.c_int()
        try:
            driver.call("cuDeviceGetAttribute", ctypes.byref(value), attribute, device)
            facts[key] = value.value
        except CudaCallError as err:
            facts[key] = {"error": str(err)}
    return facts


def query(library: str) -> dict[str, Any]:
    answer: dict[str, Any] = {}
    try:
        driver = Driver(library)
        before, started = _rss_kib(), time.monotonic()
        driver.call("cuInit", 0)
        answer["init_ms"] = round((time.monotonic() - started) * 1000, 1)
        answer["rss_kib"] = [before, _rss_kib()]
        count = ctypes.c_int()
        driver.call("cuDeviceGetCount", ctypes.byref(count))
    except CudaCallError as err:
        answer["error"] = str(err)
        return answer
    devices: list[dict[str, Any]] = []
    for ordinal in range(count.value):
        try:
            devices.append(_device(driver, ordinal))
        except CudaCallError as err:
            devices.append({"error": f"CUDA device {ordinal}: {err}"})
    answer["devices"] = devices
    return answer


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(json.dumps({"error": "usage: cuda_child.py LIBCUDA"}))
        return 2
    print(json.dumps(query(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
