"""NVML never runs on the event loop, and the library pynvml uses is the one we chose."""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pynvml

from nvplugin.gpu.service import GpuService

# The fake NVML counts the calls made on a watched thread: here the event loop's. That is exact
# where a slow-callback threshold is a guess about the scheduler (a loaded 2-core machine has
# stalled a callback for over a second with no NVML call in it).


async def test_service_calls_never_block_the_loop(fake_nvml, host_root):
    fake_nvml.write(fake_nvml.make_config(8))
    fake_nvml.watch_thread(threading.get_native_id())
    service = await GpuService.start(driver_root=host_root, dev_root=host_root,
                                     nvml_library=str(fake_nvml.library))
    try:
        assert service.available
        for _ in range(5):
            await service.inventory()
            await asyncio.gather(*(service.status() for _ in range(10)))
            await service.control_nodes()
            await service.driver_version()
        service.status_cache.max_age = -1.0  # the next status waits for a fresh PCIe sample
        await service.status()
        await service.refresh()
        await service.status()
    finally:
        await service.close()
    assert fake_nvml.watched_thread_calls() == 0
    assert fake_nvml.pcie_calls() >= 16  # the slow reads did happen, in the sampler's thread


async def test_the_on_loop_detector_sees_nvml_on_the_loop(fake_nvml, host_root):
    """The check above is real: one status read made on the loop is counted, call by call."""
    fake_nvml.write(fake_nvml.make_config(8))
    service = await GpuService.start(driver_root=host_root, dev_root=host_root,
                                     nvml_library=str(fake_nvml.library))
    try:
        fake_nvml.watch_thread(threading.get_native_id())
        service._require().versions()  # driver and CUDA versions: two NVML calls, on the loop
        assert fake_nvml.watched_thread_calls() == 2
        service._require().read_status(time.time)
        assert fake_nvml.watched_thread_calls() > 8 * 10
    finally:
        await service.close()


async def test_status_is_served_without_waiting_for_pcie(fake_nvml, start_service):
    service = await start_service()
    await service.status()  # the first request waits for the first sample
    cache = service.status_cache
    assert cache is not None and cache.slow_reads == 1
    # That sample stays fresh whatever the scheduler does (no timing here), and from now on a
    # PCIe read takes 2 x 3 s: a request that waited for one would miss the generous bound below,
    # which is ~1000 times what serving five requests from the sample takes.
    cache.max_age = 3600.0
    fake_nvml.update(lambda c: c.update(pcie_delay_ms=3000))

    async def five() -> list:
        return [await service.status() for _ in range(5)]

    answers = await asyncio.wait_for(five(), timeout=2.5)
    assert [s[0].pcie_rx_mbs for s in answers] == [2] * 5  # 2345 kB/s, from the sample
    assert cache.slow_reads <= 2  # at most the sampler's own next read


async def test_the_chosen_library_file_is_the_one_used(fake_nvml, start_service, tmp_path):
    copies = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        copies.append(Path(shutil.copy(fake_nvml.library, tmp_path / name)))
    for chosen in (copies[1], copies[0], copies[1]):
        service = await start_service(str(chosen))
        assert service.available
        pynvml.nvmlLib.fakeNvmlLibraryPath.restype = ctypes.c_char_p
        # Loaded from the file held open (/proc/self/fd/<n>), which is the chosen one.
        loaded_as = pynvml.nvmlLib.fakeNvmlLibraryPath().decode()
        assert loaded_as.startswith("/proc/self/fd/")
        assert os.path.realpath(loaded_as) == str(chosen)
        await service.close()


def test_no_path_means_the_loaders_search(fake_nvml, tmp_path):
    """`nvml_library=None`: the dynamic loader finds libnvidia-ml.so.1 (here via LD_LIBRARY_PATH,
    which the loader reads only at process start, hence the subprocess)."""
    script = textwrap.dedent("""
        import asyncio, ctypes
        from pathlib import Path
        import pynvml
        from nvplugin.gpu.service import GpuService
        async def main():
            s = await GpuService.start(driver_root=Path("/nonexistent"),
                                       dev_root=Path("/nonexistent"), nvml_library=None)
            print(s.available, s.reason, (await s.driver_version()) if s.available else "")
            pynvml.nvmlLib.fakeNvmlLibraryPath.restype = ctypes.c_char_p
            print(pynvml.nvmlLib.fakeNvmlLibraryPath().decode())
            await s.close()
        asyncio.run(main())
    """)
    env = dict(os.environ, LD_LIBRARY_PATH=str(fake_nvml.library.parent))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2]).stdout.splitlines()
    assert out[0] == "True None 580.159.04"
    assert Path(out[1]).resolve() == fake_nvml.library.resolve()


async def test_shutdown_waits_for_the_pcie_sampler_and_never_blocks_the_loop(
        fake_nvml, host_root, caplog):
    """Seen on the H200 at stop: `NVML cannot read PCIe TX: Uninitialized`, the sampler's thread
    still reading after nvmlShutdown (cancelling its task does not stop the thread)."""
    fake_nvml.write(fake_nvml.make_config(2, pcie_delay_ms=250))  # one sample: 4 calls, 1 s
    service = await GpuService.start(driver_root=host_root, dev_root=host_root,
                                     nvml_library=str(fake_nvml.library))
    await service.status()
    cache = service.status_cache
    assert cache is not None
    before = fake_nvml.pcie_calls()
    cache.max_age = -1.0  # the next status waits for a fresh sample
    request = asyncio.create_task(service.status())
    while fake_nvml.pcie_calls() == before:  # the sampler's thread is reading now
        await asyncio.sleep(0.01)
    fake_nvml.watch_thread(threading.get_native_id())
    await service.close()
    assert fake_nvml.pcie_calls() - before in (4, 8)  # whole samples: none cut by the shutdown
    assert "Uninitialized" not in caplog.text and "NVML cannot read" not in caplog.text
    assert fake_nvml.watched_thread_calls() == 0  # nothing of the shutdown ran on the loop
    await asyncio.gather(request, return_exceptions=True)  # answered or refused, never hung
