"""Used memory as nvidia-smi shows it: without the driver's reservation (NVML's v2 call)."""

from __future__ import annotations

import pynvml

from nvplugin.gpu import nvml

MIB = 1 << 20


def _reserve(fake_nvml) -> None:
    fake_nvml.update(lambda c: c["gpus"][0].update(memory_used=100 * MIB,
                                                   memory_reserved=515 * MIB))


async def test_used_memory_leaves_out_the_driver_reservation(fake_nvml, start_service):
    _reserve(fake_nvml)
    service = await start_service()
    (status,) = await service.status()
    assert status.memory_used_mib == 100


async def test_a_driver_without_the_v2_call_reports_v1s_figure(fake_nvml, start_service,
                                                                fake_nvml_lib_variant):
    _reserve(fake_nvml)
    library = fake_nvml_lib_variant(omit=["nvmlDeviceGetMemoryInfo_v2"])
    service = await start_service(library=str(library))
    (status,) = await service.status()
    assert status.memory_used_mib == 615


def test_the_v2_struct_version_is_nvmls():
    if hasattr(pynvml, "nvmlMemory_v2"):
        assert pynvml.nvmlMemory_v2 == nvml.NVML_MEMORY_V2
    assert nvml.NVML_MEMORY_V2 == 0x02000028
