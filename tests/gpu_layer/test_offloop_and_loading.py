"""NVML never runs on the event loop, and the library pynvml uses is the one we chose."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pynvml

from nvplugin.gpus import GpuService


async def test_service_calls_never_block_the_loop(fake_nvml, host_root, caplog):
    # 8 x 2 x 20 ms per PCIe sample, and ~70 ms per fast status read (0.5 ms per NVML call):
    # either on the loop exceeds the threshold below, which stays above what debug mode's own
    # bookkeeping and GIL hand-overs with the NVML threads (5 ms switch interval) can cost.
    config = fake_nvml.make_config(8, pcie_delay_ms=20, call_delay_ms=0.5)
    fake_nvml.write(config)
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        service = await GpuService.start(driver_root=host_root, dev_root=host_root,
                                         nvml_library=str(fake_nvml.library))
        try:
            for _ in range(5):
                await service.inventory()
                await asyncio.gather(*(service.status() for _ in range(10)))
                await service.control_nodes()
            await service.refresh()
        finally:
            await service.close()
    slow = [r.getMessage() for r in caplog.records if "Executing" in r.getMessage()]
    assert slow == []
    assert fake_nvml.pcie_calls() >= 16  # the slow reads did happen, in the sampler's thread


async def test_the_blocking_detector_sees_nvml_on_the_loop(fake_nvml, host_root, caplog):
    """The check above is real: the same reads made on the loop are reported."""
    fake_nvml.write(fake_nvml.make_config(8, call_delay_ms=0.5))
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05
    service = await GpuService.start(driver_root=host_root, dev_root=host_root,
                                     nvml_library=str(fake_nvml.library))
    try:
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            done = loop.create_future()
            loop.call_soon(lambda: done.set_result(service._require().read_status(time.time)))
            await done
    finally:
        await service.close()
    assert any("Executing" in r.getMessage() for r in caplog.records)


async def test_status_is_served_without_waiting_for_pcie(fake_nvml, start_service):
    fake_nvml.update(lambda c: c.update(pcie_delay_ms=200))
    service = await start_service()
    await service.status()  # the first request waits for the first sample
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(5):
        await service.status()
    assert loop.time() - started < 0.2 * 2 * 5  # well below one PCIe read per request
    assert service.status_cache is not None and service.status_cache.slow_reads <= 2


async def test_the_chosen_library_file_is_the_one_used(fake_nvml, start_service, tmp_path):
    copies = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        copies.append(Path(shutil.copy(fake_nvml.library, tmp_path / name)))
    for chosen in (copies[1], copies[0], copies[1]):
        service = await start_service(str(chosen))
        assert service.available
        pynvml.nvmlLib.fakeNvmlLibraryPath.restype = ctypes.c_char_p
        assert pynvml.nvmlLib.fakeNvmlLibraryPath().decode() == str(chosen)
        await service.close()


def test_no_path_means_the_loaders_search(fake_nvml, tmp_path):
    """`nvml_library=None`: the dynamic loader finds libnvidia-ml.so.1 (here via LD_LIBRARY_PATH,
    which the loader reads only at process start, hence the subprocess)."""
    script = textwrap.dedent("""
        import asyncio, ctypes
        from pathlib import Path
        import pynvml
        from nvplugin.gpus import GpuService
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
