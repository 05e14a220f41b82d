"""Compute, graphics and MPS processes with their PIDs, memory and instance ids, and their names."""

from __future__ import annotations

import pytest

MIB = 1 << 20
NO_INSTANCE = 0xFFFFFFFF


def rows(procs) -> list[tuple]:
    return [(p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId) for p in procs]


@pytest.fixture
def busy(fake_nvml, fake_pynvml):
    """GPU 0 runs two CUDA programs and an X server; GPU 1 an MPS client; GPU 2 nothing."""
    gpus = [fake_nvml.gpu(i) for i in range(3)]
    gpus[0].update(
        processes=[{"pid": 4242, "used_memory": 1536 * MIB},
                   {"pid": 4243, "used_memory": None}],  # not available (WDDM-style)
        graphics_processes=[{"pid": 1800, "used_memory": 24 * MIB}])
    gpus[1].update(mps_processes=[{"pid": 5150, "used_memory": 512 * MIB,
                                   "cc_protected_memory": 64 * MIB}],
                   processes=[{"pid": 5100, "used_memory": 32 * MIB}])
    fake_nvml.write(fake_nvml.make_config(
        gpus=gpus, process_names={"4242": "python3", "1800": "Xorg", "5150": "NO_PERMISSION"}))
    return [fake_pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(3)]


@pytest.mark.parametrize("version", ["_v3", "_v2", ""])
def test_compute_and_graphics_processes(fake_pynvml, busy, version):
    pynvml = fake_pynvml
    compute = getattr(pynvml, f"nvmlDeviceGetComputeRunningProcesses{version}")
    graphics = getattr(pynvml, f"nvmlDeviceGetGraphicsRunningProcesses{version}")
    assert rows(compute(busy[0])) == [(4242, 1536 * MIB, NO_INSTANCE, NO_INSTANCE),
                                      (4243, None, NO_INSTANCE, NO_INSTANCE)]
    assert rows(graphics(busy[0])) == [(1800, 24 * MIB, NO_INSTANCE, NO_INSTANCE)]
    assert rows(compute(busy[2])) == rows(graphics(busy[2])) == []


@pytest.mark.parametrize("version", ["_v3", "_v2", ""])
def test_mps_processes(fake_pynvml, busy, version):
    mps = getattr(fake_pynvml, f"nvmlDeviceGetMPSComputeRunningProcesses{version}")
    assert rows(mps(busy[1])) == [(5150, 512 * MIB, NO_INSTANCE, NO_INSTANCE)]
    assert rows(mps(busy[0])) == []


def test_the_process_detail_list(fake_nvml, fake_pynvml, busy):
    pynvml = fake_pynvml
    # pynvml's wrapper cannot take a memory NVML has not available (it assigns None to a ctypes
    # field), so here every process has its figure.
    fake_nvml.update(lambda c: c["gpus"][0]["processes"][1].update(used_memory=2 * MIB))

    def detail(handle, mode):
        return [(p.pid, p.usedGpuMemory, p.usedGpuCcProtectedMemory) for p in
                pynvml.nvmlDeviceGetRunningProcessDetailList(
                    handle, pynvml.nvmlProcessDetailList_v1, mode)]

    assert detail(busy[0], pynvml.NVML_PROCESS_MODE_COMPUTE) == [(4242, 1536 * MIB, 0),
                                                                 (4243, 2 * MIB, 0)]
    assert detail(busy[0], pynvml.NVML_PROCESS_MODE_GRAPHICS) == [(1800, 24 * MIB, 0)]
    assert detail(busy[1], pynvml.NVML_PROCESS_MODE_MPS) == [(5150, 512 * MIB, 64 * MIB)]
    assert detail(busy[2], pynvml.NVML_PROCESS_MODE_COMPUTE) == []
    with pytest.raises(pynvml.NVMLError) as caught:
        pynvml.nvmlDeviceGetRunningProcessDetailList(busy[0], 0x2000018, 0)
    assert caught.value.value == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH


def test_processes_of_mig_instances(fake_nvml, fake_pynvml):
    pynvml = fake_pynvml
    config = fake_nvml.make_config(1)
    config["gpus"][0].update(
        mig_mode=True,
        processes=[{"pid": 77, "used_memory": 8 * MIB, "gpu_instance_id": 1,
                    "compute_instance_id": 0}],
        mig_devices=[{"uuid": "MIG-7a6e1f1c-6f1b-5d0e-9c5e-2f4e8a1b3c5d", "gpu_instance_id": 1,
                      "compute_instance_id": 0,
                      "processes": [{"pid": 77, "used_memory": 8 * MIB}]}])
    fake_nvml.write(config)
    gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    assert rows(pynvml.nvmlDeviceGetComputeRunningProcesses(gpu)) == [(77, 8 * MIB, 1, 0)]
    assert rows(pynvml.nvmlDeviceGetComputeRunningProcesses(mig)) == [
        (77, 8 * MIB, NO_INSTANCE, NO_INSTANCE)]


def test_a_process_list_can_fail(fake_nvml, fake_pynvml, busy):
    pynvml = fake_pynvml
    fake_nvml.update(lambda c: c["gpus"][0].update(graphics_processes="NO_PERMISSION"))
    with pytest.raises(pynvml.NVMLError) as caught:
        pynvml.nvmlDeviceGetGraphicsRunningProcesses(busy[0])
    assert caught.value.value == pynvml.NVML_ERROR_NO_PERMISSION
    assert [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(busy[0])] == [4242, 4243]


def test_process_names(fake_pynvml, busy):
    pynvml = fake_pynvml
    assert pynvml.nvmlSystemGetProcessName(4242) == "python3"
    assert pynvml.nvmlSystemGetProcessName(1800) == "Xorg"
    for pid, error in ((4243, pynvml.NVML_ERROR_NOT_FOUND),
                       (5150, pynvml.NVML_ERROR_NO_PERMISSION)):
        with pytest.raises(pynvml.NVMLError) as caught:
            pynvml.nvmlSystemGetProcessName(pid)
        assert caught.value.value == error
