"""A MIG-enabled GPU and its MIG devices through the real pynvml."""

from __future__ import annotations

import ctypes

import pytest

MIB = 1 << 20
MIG_UUIDS = ["MIG-3b0fe9a2-5d2e-5f0c-9d6e-0c1f2a3b4c5d", "MIG-8e7d6c5b-4a39-5281-b7a6-f5e4d3c2b1a0"]


def address(handle) -> int | None:
    return ctypes.cast(handle, ctypes.c_void_p).value


@pytest.fixture
def mig_gpu(fake_nvml, fake_pynvml):
    """GPU 1 of two in MIG mode: a 3g.71gb and a 1g.18gb instance, slot 1 empty."""
    config = fake_nvml.make_config(2)
    config["gpus"][1].update(mig_mode=True, mig_devices=[
        {"uuid": MIG_UUIDS[0], "name": "NVIDIA H200 MIG 3g.71gb", "gpu_instance_id": 2,
         "compute_instance_id": 0, "memory_total": 71 * 1024 * MIB, "memory_used": 13 * MIB},
        None,
        {"uuid": MIG_UUIDS[1], "name": "NVIDIA H200 MIG 1g.18gb", "gpu_instance_id": 9,
         "compute_instance_id": 0, "memory_total": 17920 * MIB, "memory_used": 11 * MIB},
    ])
    fake_nvml.write(config)
    return fake_pynvml.nvmlDeviceGetHandleByIndex(1)


def test_mig_mode_and_devices(fake_pynvml, mig_gpu):
    pynvml = fake_pynvml
    assert pynvml.nvmlDeviceGetMigMode(mig_gpu) == [pynvml.NVML_DEVICE_MIG_ENABLE] * 2
    assert pynvml.nvmlDeviceGetMigMode(pynvml.nvmlDeviceGetHandleByIndex(0)) == [
        pynvml.NVML_DEVICE_MIG_DISABLE] * 2
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(mig_gpu) == 3
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(mig_gpu, 1)  # an empty slot
    migs = [pynvml.nvmlDeviceGetMigDeviceHandleByIndex(mig_gpu, i) for i in (0, 2)]
    assert [pynvml.nvmlDeviceGetUUID(m) for m in migs] == MIG_UUIDS
    assert [pynvml.nvmlDeviceGetName(m) for m in migs] == [
        "NVIDIA H200 MIG 3g.71gb", "NVIDIA H200 MIG 1g.18gb"]
    assert [(pynvml.nvmlDeviceGetGpuInstanceId(m), pynvml.nvmlDeviceGetComputeInstanceId(m))
            for m in migs] == [(2, 0), (9, 0)]
    memory = [pynvml.nvmlDeviceGetMemoryInfo(m) for m in migs]
    assert [(m.total, m.used) for m in memory] == [(71 * 1024 * MIB, 13 * MIB),
                                                   (17920 * MIB, 11 * MIB)]


def test_mig_handles_and_their_parent(fake_pynvml, mig_gpu):
    pynvml = fake_pynvml
    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(mig_gpu, 2)
    assert pynvml.nvmlDeviceIsMigDeviceHandle(mig).value == 1
    assert pynvml.nvmlDeviceIsMigDeviceHandle(mig_gpu).value == 0
    parent = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
    assert address(parent) == address(mig_gpu)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig_gpu)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(mig, 0)  # no MIG devices inside MIG devices


def test_handles_by_uuid(fake_nvml, fake_pynvml, mig_gpu):
    pynvml = fake_pynvml
    config = fake_nvml.config
    for index in (0, 1):
        found = pynvml.nvmlDeviceGetHandleByUUID(config["gpus"][index]["uuid"])
        assert address(found) == address(pynvml.nvmlDeviceGetHandleByIndex(index))
    mig = pynvml.nvmlDeviceGetHandleByUUID(MIG_UUIDS[1])
    assert address(mig) == address(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(mig_gpu, 2))
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")
    fake_nvml.lose_gpu(1)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetHandleByUUID(MIG_UUIDS[0])


def test_mig_readings_follow_the_config(fake_nvml, fake_pynvml, mig_gpu):
    pynvml = fake_pynvml
    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(mig_gpu, 0)
    fake_nvml.update(lambda c: c["gpus"][1]["mig_devices"][0].update(
        memory_used=30 * 1024 * MIB, compute_instance_id="NOT_SUPPORTED"))
    assert pynvml.nvmlDeviceGetMemoryInfo(mig).used == 30 * 1024 * MIB
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetComputeInstanceId(mig)
    fake_nvml.update(lambda c: c["gpus"][1].update(mig_devices="NO_PERMISSION"))
    with pytest.raises(pynvml.NVMLError_NoPermission):
        pynvml.nvmlDeviceGetMaxMigDeviceCount(mig_gpu)
