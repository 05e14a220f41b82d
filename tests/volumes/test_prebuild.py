"""The background build of the running driver's volume (`VolumeStore.prebuild`): idle I/O
priority on its own worker thread only, joined (and hurried) by requests, waited for at close."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from nvplugin.core import ioprio
from nvplugin.core.errors import DriverNotFound
from nvplugin.volumes.clone import Cloner, Method
from nvplugin.volumes.store import VolumeStore
from tests.requirements import need
from tests.volumes.conftest import VERSION, Driver

NAME = f"nvidia_driver_{VERSION}"



def need_ioprio() -> None:
    need(ioprio.get() is not None, "ioprio_get/ioprio_set (Linux on a known machine)")


class GatedCloner(Cloner):
    """Clones as usual, but the first file waits at a gate: a build as slow as a test needs.
    Records the building thread's I/O priority before and after the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = threading.Event()
        self.priorities: list[int | None] = []
        self.threads: set[int] = set()

    def clone(self, src: str, dst: str, dst_dev: int | None = None) -> Method:
        self.threads.add(threading.get_native_id())
        if not self.waiting.is_set():
            self.priorities.append(ioprio.get())
            self.waiting.set()
            if not self.gate.wait(30):
                raise TimeoutError("the test never opened the gate")
            self.priorities.append(ioprio.get())
        return super().clone(src, dst, dst_dev)


async def _until(predicate, what: str) -> None:
    for _ in range(1000):  # 10 s: far beyond a few loop turns and thread hops
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


@pytest.fixture
async def gated(tmp_path: Path, driver: Driver):
    cloner = GatedCloner()
    store = VolumeStore(tmp_path / "volumes", driver, cloner=cloner)
    await store.start()
    yield store, cloner
    cloner.gate.set()
    await store.close()


async def test_create_during_a_slow_prebuild_joins_it_and_hurries_it(gated, caplog):
    need_ioprio()
    store, cloner = gated
    caplog.set_level(logging.INFO, logger="nvplugin.volumes.store")
    prebuild = asyncio.create_task(store.prebuild())
    await _until(cloner.waiting.is_set, "the prebuild reached its first file")
    # The build's worker thread runs at idle I/O priority; the event loop's thread does not.
    assert cloner.priorities == [ioprio.IDLE]
    assert ioprio.get() != ioprio.IDLE
    create = asyncio.create_task(store.create(NAME))
    mount = asyncio.create_task(store.mount(NAME, "a" * 64))
    await _until(lambda: store._locks[VERSION].users == 3, "both requests wait for the build")
    assert not create.done() and not mount.done()
    cloner.gate.set()
    await asyncio.gather(prebuild, create, mount)
    assert store.builds == 1  # one build, shared by the prebuild and both requests
    # Hurried once a request waited: the rest of the build ran at the thread's usual priority.
    assert cloner.priorities[1] != ioprio.IDLE
    assert (store.path_of(VERSION) / "lib64" / f"libcuda.so.{VERSION}").is_file()
    built = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Built volume")]
    assert len(built) == 1 and built[0].endswith("in the background, hurried by a request")


async def test_the_worker_thread_gets_its_priority_back(gated):
    need_ioprio()
    store, cloner = gated
    cloner.gate.set()
    await store.prebuild()
    assert store.builds == 1 and cloner.priorities == [ioprio.IDLE, ioprio.IDLE]
    (thread,) = cloner.threads
    # The same pooled thread serves other work next, at its usual priority again.
    assert ioprio.get(thread) != ioprio.IDLE


async def test_an_existing_volume_is_not_built_again(gated):
    store, cloner = gated
    cloner.gate.set()
    await store.create(NAME)
    await store.prebuild()
    assert store.builds == 1


async def test_no_driver_means_no_prebuild_and_no_error(gated, driver: Driver, caplog):
    store, _cloner = gated
    driver.error = DriverNotFound("no NVIDIA driver found under /nope")
    caplog.set_level(logging.DEBUG, logger="nvplugin.volumes.store")
    await store.prebuild()
    assert store.builds == 0 and not store.path_of(VERSION).exists()
    assert "No volume to prebuild: no NVIDIA driver found under /nope" in caplog.text


async def test_a_failed_prebuild_is_one_warning(tmp_path: Path, driver: Driver, caplog):
    store = VolumeStore(tmp_path / "volumes", driver)
    await store.start()
    (tmp_path / "driver" / VERSION / "bin" / "nvidia-smi").unlink()  # a source file vanished
    try:
        await store.prebuild()
    finally:
        await store.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith(f"Could not prebuild volume {NAME}: cannot build")
    assert store.builds == 0 and not store.path_of(VERSION).exists()


async def test_close_waits_for_a_cancelled_prebuild_to_finish(gated):
    """Shutdown cancels the prebuild task; its thread cannot be stopped, so the volume's lock
    stays held until the build ends, and close() waits for it: no half-built tree is left."""
    store, cloner = gated
    prebuild = asyncio.create_task(store.prebuild())
    await _until(cloner.waiting.is_set, "the prebuild reached its first file")
    prebuild.cancel()
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0.2)
    assert not closing.done()
    cloner.gate.set()
    await closing
    with pytest.raises(asyncio.CancelledError):
        await prebuild
    kind_dir = store.path_of(VERSION).parent
    assert [p.name for p in kind_dir.iterdir()] == [VERSION]  # complete, and no leftovers


async def test_requests_wait_for_ready_before_reading_the_manifest(tmp_path: Path,
                                                                   driver: Driver):
    """The daemon answers before its first discovery: a Create then waits rather than being
    told there is no driver."""
    started = asyncio.Event()
    driver.error = DriverNotFound("NVIDIA driver not discovered yet")

    async def ready() -> None:
        await started.wait()

    store = VolumeStore(tmp_path / "volumes", driver, ready=ready)
    await store.start()
    try:
        create = asyncio.create_task(store.create(NAME))
        assert [v.name for v in await store.list()] == []  # List needs no driver: answered
        await asyncio.sleep(0.1)
        assert not create.done() and driver.calls == 0
        driver.error = None  # discovery done
        started.set()
        await create
    finally:
        await store.close()
    assert store.builds == 1
