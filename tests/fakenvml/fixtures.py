"""Pytest fixtures for the fake NVML (registered as a plugin by tests/conftest.py).

    fake_nvml_lib           session: Path of the built libnvidia-ml.so.1
    fake_cuda_lib           session: Path of the built fake libcuda.so.1 (fakecuda.c), which
                            reads the same config (install_fake_cuda puts it under a root)
    fake_nvml_lib_variant   session: callable(omit=[...], version=None) -> Path of a build
                            without those symbols (with `version`: libnvidia-ml.so.<version>)
    nvml_config_factory     the `make_config(n_gpus, gpus=..., **top)` helper from build.py
    fake_nvml               function: FakeNvml, one H200 by default, $FAKE_NVML_CONFIG set
    fake_pynvml             function: the real pynvml bound to fake_nvml's library, initialised

    def test_two(fake_nvml):
        fake_nvml.write(fake_nvml.make_config(2))
        service = await GpuService.start(driver_root=..., dev_root=...,
                                         nvml_library=str(fake_nvml.library))

    def test_xid(fake_nvml, fake_pynvml):
        handle = fake_pynvml.nvmlDeviceGetHandleByIndex(0)
        events = fake_pynvml.nvmlEventSetCreate()
        fake_pynvml.nvmlDeviceRegisterEvents(handle, fake_pynvml.nvmlEventTypeXidCriticalError,
                                             events)
        fake_nvml.inject_event(0, "xid", 79)
        assert fake_pynvml.nvmlEventSetWait_v2(events, 1000).eventData == 79
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.fakenvml.build import (
    EVENTS_FILE,
    append_event,
    build_fake_nvml,
    gpu,
    make_config,
    write_config,
)
from tests.fakenvml.cuda import build_fake_cuda
from tests.requirements import need_tool


@dataclass
class FakeNvml:
    library: Path
    config_path: Path
    watching: bool = False

    make_config = staticmethod(make_config)
    gpu = staticmethod(gpu)

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.config_path.read_text())

    @property
    def events_path(self) -> Path:
        """The JSON-lines file the fake reads events from (the config's "events_file")."""
        return self.config_path.with_name(EVENTS_FILE)

    def write(self, config: dict[str, Any]) -> None:
        """Replace the config; one without "events_file" gets `events_path` (null: no events)."""
        config = {**config}
        config.setdefault("events_file", str(self.events_path))
        write_config(self.config_path, config)

    def inject_event(self, gpu: int, type: str | int, data: int = 0, *,
                     gpu_instance_id: int | None = None,
                     compute_instance_id: int | None = None) -> None:
        """Append one event for NVML index `gpu`; `type` is an event name from build.py's schema
        ("xid", "double_bit_ecc", ...), an NVML event bit, or "gpu_lost". A waiting
        nvmlEventSetWait returns it within ~10 ms; each event set that registered `gpu` for
        `type` gets it once."""
        event: dict[str, Any] = {"gpu": gpu, "type": type, "data": data}
        if gpu_instance_id is not None:
            event["gpu_instance_id"] = gpu_instance_id
        if compute_instance_id is not None:
            event["compute_instance_id"] = compute_instance_id
        config = self.config
        if "events_file" not in config:  # written around `write`: name the file now
            self.write(config)
            config = self.config
        if not config["events_file"]:
            raise ValueError(f"{self.config_path} has \"events_file\": null (events are off)")
        append_event(Path(config["events_file"]), event)

    def lose_gpu(self, gpu: int) -> None:
        """GPU `gpu` falls off the bus: calls on it answer GPU_IS_LOST from now on, and event sets
        registered on it are woken with GPU_IS_LOST (the config changes before the event)."""
        self.update(lambda c: c["gpus"][gpu].update(lost=True))
        self.inject_event(gpu, "gpu_lost")

    def update(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Edit the current config in place, e.g. `update(lambda c: c["gpus"][0].update(...))`."""
        config = self.config
        change(config)
        self.write(config)

    def watch_thread(self, native_id: int) -> None:
        """Count NVML calls made on the thread `native_id` (threading.get_native_id()) from now."""
        lib = ctypes.CDLL(str(self.library))
        lib.fakeNvmlWatchThread.argtypes = [ctypes.c_long]
        lib.fakeNvmlWatchThread(native_id)
        self.watching = native_id != 0

    def watched_thread_calls(self) -> int:
        """NVML calls made on the watched thread since `watch_thread`."""
        lib = ctypes.CDLL(str(self.library))
        lib.fakeNvmlWatchedThreadCalls.restype = ctypes.c_ulonglong
        return int(lib.fakeNvmlWatchedThreadCalls())

    def pcie_calls(self) -> int:
        """nvmlDeviceGetPcieThroughput calls so far in this process (same loaded library)."""
        lib = ctypes.CDLL(str(self.library))
        lib.fakeNvmlPcieCalls.restype = ctypes.c_ulonglong
        return int(lib.fakeNvmlPcieCalls())


@pytest.fixture(scope="session")
def fake_nvml_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = need_tool("gcc")
    return build_fake_nvml(tmp_path_factory.mktemp("fakenvml"), gcc=gcc)


@pytest.fixture(scope="session")
def fake_nvml_lib_variant(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., Path]:
    gcc = need_tool("gcc")
    built: dict[tuple[tuple[str, ...], str | None], Path] = {}

    def build(omit: Iterable[str] = (), version: str | None = None) -> Path:
        key = (tuple(sorted(set(omit))), version)
        if key not in built:
            built[key] = build_fake_nvml(
                tmp_path_factory.mktemp("fakenvml-variant"), omit=key[0], version=version, gcc=gcc
            )
        return built[key]

    return build


@pytest.fixture(scope="session")
def fake_cuda_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_cuda(tmp_path_factory.mktemp("fakecuda"), gcc=need_tool("gcc"))


@pytest.fixture
def nvml_config_factory() -> Callable[..., dict[str, Any]]:
    return make_config


@pytest.fixture
def fake_nvml(
    fake_nvml_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeNvml]:
    config_path = tmp_path / "fakenvml.json"
    fake = FakeNvml(library=fake_nvml_lib, config_path=config_path)
    fake.write(make_config(1))
    monkeypatch.setenv("FAKE_NVML_CONFIG", str(config_path))
    yield fake
    if fake.watching:  # the library outlives the test: a later one must not be counted
        fake.watch_thread(0)


@pytest.fixture
def fake_pynvml(fake_nvml: FakeNvml) -> Iterator[ModuleType]:
    """The real pynvml on the fake library, nvmlInit done (and nvmlShutdown after the test)."""
    import pynvml

    pynvml.nvmlLib = ctypes.CDLL(str(fake_nvml.library))
    pynvml._nvmlGetFunctionPointer_cache.clear()  # symbols of whichever library came before
    pynvml.nvmlInit()
    yield pynvml
    pynvml.nvmlShutdown()
