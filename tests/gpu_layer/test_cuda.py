"""Constant, Shared and L2 Cache from the driver's libcuda, read in a child process.

The fake libcuda (tests/fakenvml/fakecuda.c) reads the fake NVML's config, so both describe the
same GPUs; the real child script (nvplugin/gpu/cuda_child.py) loads it, as the daemon would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nvplugin.core.phases import Phases
from nvplugin.gpu import cuda
from nvplugin.gpu.cuda import CudaProperties
from nvplugin.gpu.cuda_report import CudaMemory, parse_answer
from nvplugin.gpu.service import GpuService
from tests.fakenvml.build import gpu
from tests.fakenvml.cuda import install_fake_cuda

H200 = CudaMemory(constant_kib=64, shared_kib=228, l2_kib=61440)


def child(library: Path | str) -> dict:
    done = subprocess.run([sys.executable, "-I", str(cuda.CHILD), str(library)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_the_child_reads_every_device_with_its_bus_id(fake_nvml, fake_cuda_lib):
    fake_nvml.write(fake_nvml.make_config(2, cuda={"order": [1, 0]}))
    answer = child(fake_cuda_lib)
    # CUDA's order (here GPU 1 first), each device named by its bus id as CUDA prints it
    assert [d["bus_id"] for d in answer["devices"]] == ["0000:28:00.0", "0000:18:00.0"]
    assert answer["devices"][0] == {"bus_id": "0000:28:00.0", "constant": 65536,
                                    "shared": 233472, "l2": 62914560}
    assert answer["init_ms"] >= 0 and all(isinstance(v, int) for v in answer["rss_kib"])


def test_the_child_names_the_failing_call_and_error(fake_nvml, fake_cuda_lib, tmp_path):
    fake_nvml.write(fake_nvml.make_config(1, cuda={"init_error": "CUDA_ERROR_NO_DEVICE"}))
    assert child(fake_cuda_lib) == {"error": "cuInit: CUDA_ERROR_NO_DEVICE (100)"}
    fake_nvml.write(fake_nvml.make_config(gpus=[gpu(0, cuda_attributes={
        "total_constant_memory": 65536, "l2_cache_size": "CUDA_ERROR_NOT_SUPPORTED"})]))
    device = child(fake_cuda_lib)["devices"][0]
    assert device["constant"] == 65536
    assert device["l2"] == {"error": "cuDeviceGetAttribute: CUDA_ERROR_NOT_SUPPORTED (801)"}
    assert device["shared"] == {"error": "cuDeviceGetAttribute: CUDA_ERROR_INVALID_VALUE (1)"}
    missing = child(tmp_path / "libcuda.so.1")["error"]
    assert missing.startswith(f"cannot load {tmp_path / 'libcuda.so.1'}: ")
    not_cuda = tmp_path / "libnotcuda.so"
    shutil.copyfile(fake_nvml.library, not_cuda)
    assert child(not_cuda) == {"error": "libcuda has no cuInit"}


def test_answers_are_matched_by_bus_id_not_index(fake_nvml, fake_cuda_lib, host_root):
    second = gpu(1, cuda_attributes={"total_constant_memory": 65536, "l2_cache_size": 50 << 20,
                                     "max_shared_memory_per_multiprocessor": 100 << 10})
    fake_nvml.write(fake_nvml.make_config(gpus=[gpu(0), second], cuda={"order": [1, 0]}))
    install_fake_cuda(host_root, fake_cuda_lib)
    report = CudaProperties(host_root).read()
    assert report.error is None and report.problems == ()
    assert report.memory == {"0000:18:00.0": H200,
                             "0000:28:00.0": CudaMemory(64, 100, 51200)}


async def test_gpu_info_carries_the_sizes(fake_nvml, fake_cuda_lib, host_root, start_service,
                                          caplog):
    second = gpu(1, cuda_attributes={"total_constant_memory": 65536, "l2_cache_size": 50 << 20,
                                     "max_shared_memory_per_multiprocessor": 100 << 10})
    fake_nvml.write(fake_nvml.make_config(gpus=[gpu(0), second], cuda={"order": [1, 0]}))
    install_fake_cuda(host_root, fake_cuda_lib)
    with caplog.at_level(logging.INFO, logger="nvplugin"):
        service = await start_service(cuda=CudaProperties(host_root))
    gpus = (await service.inventory()).gpus
    assert [(g.memory_constant_kib, g.memory_shared_kib, g.memory_l2_kib) for g in gpus] == [
        (64, 228, 61440), (64, 100, 51200)]
    read = [r.getMessage() for r in caplog.records if "Read CUDA memory sizes" in r.getMessage()]
    assert len(read) == 1 and "of 2 GPU(s)" in read[0] and "in a child process" in read[0]
    assert "its cuInit took" in read[0] and " MiB" in read[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_cuinit_in_the_child_never_in_the_daemon(fake_nvml, fake_cuda_lib, host_root,
                                                       start_service):
    library = install_fake_cuda(host_root, fake_cuda_lib)
    service = await start_service(cuda=CudaProperties(host_root))
    assert (await service.inventory()).gpus[0].memory_l2_kib == 61440
    maps = Path("/proc/self/maps").read_text()
    assert str(library) not in maps and str(fake_cuda_lib) not in maps


async def test_a_failing_cuinit_is_na_and_one_warning(fake_nvml, fake_cuda_lib, host_root,
                                                      start_service, caplog):
    fake_nvml.write(fake_nvml.make_config(2, cuda={"init_error": "CUDA_ERROR_NO_DEVICE"}))
    library = install_fake_cuda(host_root, fake_cuda_lib)
    with caplog.at_level(logging.INFO, logger="nvplugin"):
        service = await start_service(cuda=CudaProperties(host_root))
    gpus = (await service.inventory()).gpus
    assert {(g.memory_constant_kib, g.memory_shared_kib, g.memory_l2_kib) for g in gpus} == {
        (None, None, None)}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"CUDA memory sizes unavailable: {library}: cuInit: "
                        "CUDA_ERROR_NO_DEVICE (100); Constant, Shared and L2 Cache read N/A"]
    assert service.available  # NVML's fields are all there


async def test_unreadable_sizes_are_na_with_one_warning_naming_them(
        fake_nvml, fake_cuda_lib, host_root, start_service, caplog):
    fake_nvml.write(fake_nvml.make_config(gpus=[
        gpu(0, cuda_attributes={"total_constant_memory": 65536}),
        gpu(1, mig_mode=True),  # a GPU in MIG mode is not a CUDA device of its own
        gpu(2)], cuda={"order": [0]}))
    install_fake_cuda(host_root, fake_cuda_lib)
    with caplog.at_level(logging.WARNING, logger="nvplugin"):
        service = await start_service(cuda=CudaProperties(host_root))
    gpus = (await service.inventory()).gpus
    assert [(g.memory_constant_kib, g.memory_l2_kib) for g in gpus] == [
        (64, None), (None, None), (None, None)]
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning == (
        "CUDA could not read 0000:18:00.0 shared memory per multiprocessor: cuDeviceGetAttribute: "
        "CUDA_ERROR_INVALID_VALUE (1); 0000:18:00.0 L2 cache size: cuDeviceGetAttribute: "
        "CUDA_ERROR_INVALID_VALUE (1); CUDA does not list GPU 2 (00000000:38:00.0); "
        "reporting it as N/A")


async def test_asked_once_per_libcuda_file(fake_nvml, fake_cuda_lib, host_root, start_service,
                                           caplog):
    library = install_fake_cuda(host_root, fake_cuda_lib)
    with caplog.at_level(logging.INFO, logger="nvplugin"):
        service = await start_service(cuda=CudaProperties(host_root))
        await service.refresh()  # SIGHUP, driver unchanged: the kept answer
        assert (await service.inventory()).gpus[0].memory_shared_kib == 228
        # A driver upgrade replaces the file: asked again, and the new answer shows.
        fake_nvml.update(lambda c: c["gpus"][0]["cuda_attributes"].update(
            max_shared_memory_per_multiprocessor=100 << 10))
        library.unlink()
        install_fake_cuda(host_root, fake_cuda_lib)
        await service.refresh()
    assert (await service.inventory()).gpus[0].memory_shared_kib == 100
    asked = [r for r in caplog.records if "Read CUDA memory sizes" in r.getMessage()]
    assert len(asked) == 2


def test_cuda_visible_devices_hides_nothing(fake_nvml, fake_cuda_lib, host_root,
                                            monkeypatch):
    fake_nvml.write(fake_nvml.make_config(2))
    install_fake_cuda(host_root, fake_cuda_lib)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    seen: list[dict[str, str]] = []
    real_run = subprocess.run

    def spy(*args, **kwargs):
        seen.append(kwargs["env"])
        return real_run(*args, **kwargs)

    monkeypatch.setattr(cuda.subprocess, "run", spy)
    assert len(CudaProperties(host_root).read().memory) == 2
    assert "CUDA_VISIBLE_DEVICES" not in seen[0] and seen[0]["FAKE_NVML_CONFIG"]


def test_a_hanging_cuinit_is_stopped(fake_nvml, fake_cuda_lib, host_root):
    fake_nvml.write(fake_nvml.make_config(1, cuda={"init_delay_ms": 30000}))
    library = install_fake_cuda(host_root, fake_cuda_lib)
    report = CudaProperties(host_root, timeout_s=0.5).read()
    assert report.error == f"{library}: cuInit did not answer in 0.5 s (the query was stopped)"
    assert report.memory == {}


def test_no_libcuda_is_no_query(host_root):
    report = CudaProperties(host_root).read()
    assert report.error == f"no 64-bit libcuda.so.1 under {host_root}"


@pytest.mark.parametrize(("answer", "problem"), [
    ({"devices": [{"bus_id": "zz", "constant": 1}]}, "unreadable bus id 'zz'"),
    ({"devices": [{"bus_id": "0000:01:00.0", "constant": -5, "shared": True, "l2": "x"}]},
     "0000:01:00.0 constant memory: unexpected value -5"),
    ({"devices": ["nonsense"]}, "nonsense"),
    ({"devices": [{"error": "CUDA device 0: cuDeviceGet: CUDA_ERROR_INVALID_DEVICE (101)"}]},
     "CUDA device 0: cuDeviceGet: CUDA_ERROR_INVALID_DEVICE (101)"),
])
def test_odd_answers_are_problems_never_exceptions(answer, problem):
    report = parse_answer("/lib/libcuda.so.1", answer, 1.0)
    assert report.error is None and problem in "; ".join(report.problems)
    assert all(v is None for m in report.memory.values()
               for v in (m.constant_kib, m.shared_kib, m.l2_kib))


def test_a_child_that_dies_is_an_error_with_its_last_words(host_root, tmp_path, monkeypatch):
    fake = tmp_path / "libcuda.so.1"
    fake.write_bytes(b"")
    monkeypatch.setattr(cuda, "CHILD", tmp_path / "child.py")
    (tmp_path / "child.py").write_text("import sys; sys.exit('Segmentation fault')\n")
    report = CudaProperties(host_root, finder=lambda _root: str(fake)).read()
    assert report.error == f"the query of {fake} failed: Segmentation fault"


async def test_after_begin_the_sizes_are_asked_once_and_only_gpu_info_waits(
        fake_nvml, fake_cuda_lib, host_root, caplog):
    """The daemon's way: `begin` loads NVML without asking CUDA; `read_cuda_sizes` (once ready)
    starts the child on a thread of its own. While the child is slow, status (its PCIe sampler)
    and the inventory without sizes answer at once; the inventory with them waits; a second ask
    for the same load starts no second child."""
    fake_nvml.write(fake_nvml.make_config(1, cuda={"init_delay_ms": 1500}))
    install_fake_cuda(host_root, fake_cuda_lib)
    nvml = host_root / "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"
    shutil.copyfile(fake_nvml.library, nvml)
    phases = Phases()
    with caplog.at_level(logging.INFO, logger="nvplugin"):
        service = GpuService.begin(driver_root=host_root, dev_root=host_root, phases=phases,
                                   cuda=CudaProperties(host_root))
        try:
            await service.ready()
            assert service.available, service.reason
            assert "CUDA sizes (child process)" not in phases.spans  # not asked by begin
            service.read_cuda_sizes(phases)
            service.read_cuda_sizes(phases)  # the same load: nothing more
            started = time.monotonic()
            statuses = await asyncio.wait_for(service.status(), 1.0)
            early = await asyncio.wait_for(service.inventory(cuda_sizes=False), 1.0)
            assert time.monotonic() - started < 1.0 and len(statuses) == 1
            assert early.gpus[0].memory_l2_kib is None
            full = await asyncio.wait_for(service.inventory(), 30)
            assert full.gpus[0].memory_l2_kib == 61440
            assert (await service.inventory(cuda_sizes=False)).gpus[0].memory_l2_kib == 61440
        finally:
            await service.close()
    read = [r for r in caplog.records if "Read CUDA memory sizes" in r.getMessage()]
    assert len(read) == 1


async def test_every_caller_of_ready_waits_for_the_load_begin_started(fake_nvml, host_root):
    """The daemon's start-up and an early docker/cli both wait for NVML: the second caller does
    not return while the first one is still taking the session."""
    fake_nvml.write(fake_nvml.make_config(1, init_delay_ms=500))
    libraries = host_root / "usr/lib/x86_64-linux-gnu"
    libraries.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fake_nvml.library, libraries / "libnvidia-ml.so.1")
    service = GpuService.begin(driver_root=host_root, dev_root=host_root, phases=Phases())
    try:
        async def available_once_ready() -> bool:
            await service.ready()
            return service.available

        first = asyncio.ensure_future(available_once_ready())
        await asyncio.sleep(0.1)  # the first caller is taking the session, NVML still loading
        assert not first.done()
        assert await available_once_ready()
        assert await first
    finally:
        await service.close()
