"""The readings a dcgm-exporter-style collector takes, each from the config and each able to
answer NOT_SUPPORTED (or any NVML error) on its own."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import pytest

MIB = 1 << 20

READINGS: dict[str, Any] = {
    "energy_mj": 123_456_789_012,
    "power_usage_mw": 412_345,
    "power_limit_mw": 650_000,
    "enforced_power_limit_mw": 600_000,
    "default_power_limit_mw": 700_000,
    "power_limit_constraints_mw": [200_000, 700_000],
    "pcie_replay_count": 17,
    "remapped_rows": {"correctable": 3, "uncorrectable": 1, "pending": True, "failure": False},
    "temperature": 44,
    "memory_temperature": 51,
    "temperature_thresholds": {"shutdown": 95, "slowdown": 92, "mem_max": 95, "gpu_max": 87},
    "clock_sm": 1755,
    "clock_mem": 2619,
    "util_encoder": 12,
    "util_decoder": 34,
    "memory_total": 143771 * MIB,
    "memory_used": 20480 * MIB,
    "memory_reserved": 569 * MIB,
    "minor": 5,
    "clocks_event_reasons": 0x4 | 0x20,
    "ecc_errors": {
        "volatile": {"corrected": {"l1_cache": 1, "l2_cache": 2, "device_memory": 40,
                                   "register_file": 0, "sram": 7},
                     "uncorrected": {"device_memory": 2}},
        "aggregate": {"corrected": {"device_memory": 900, "total": 1000},
                      "uncorrected": "NO_PERMISSION"},
    },
    "ecc_l1": 5,  # the older key for uncorrected volatile L1 errors
}


@pytest.fixture
def h(fake_nvml, fake_pynvml):
    config = fake_nvml.make_config(1)
    config["gpus"][0].update(READINGS)
    fake_nvml.write(config)
    return fake_pynvml.nvmlDeviceGetHandleByIndex(0)


def error_of(pynvml, call: Callable[[], Any]) -> int:
    with pytest.raises(pynvml.NVMLError) as caught:
        call()
    return caught.value.value


# (config key, the pynvml call, its answer from READINGS)
GETTERS: list[tuple[str, Callable[[Any, Any], Any], Any]] = [
    ("energy_mj", lambda nv, h: nv.nvmlDeviceGetTotalEnergyConsumption(h), 123_456_789_012),
    ("power_usage_mw", lambda nv, h: nv.nvmlDeviceGetPowerUsage(h), 412_345),
    ("power_limit_mw", lambda nv, h: nv.nvmlDeviceGetPowerManagementLimit(h), 650_000),
    ("enforced_power_limit_mw", lambda nv, h: nv.nvmlDeviceGetEnforcedPowerLimit(h), 600_000),
    ("default_power_limit_mw", lambda nv, h: nv.nvmlDeviceGetPowerManagementDefaultLimit(h),
     700_000),
    ("power_limit_constraints_mw",
     lambda nv, h: nv.nvmlDeviceGetPowerManagementLimitConstraints(h), [200_000, 700_000]),
    ("pcie_replay_count", lambda nv, h: nv.nvmlDeviceGetPcieReplayCounter(h), 17),
    ("remapped_rows", lambda nv, h: nv.nvmlDeviceGetRemappedRows(h), (3, 1, 1, 0)),
    ("temperature", lambda nv, h: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU), 44),
    ("temperature", lambda nv, h: nv.nvmlDeviceGetTemperatureV(h, nv.NVML_TEMPERATURE_GPU), 44),
    ("temperature_thresholds", lambda nv, h: [
        nv.nvmlDeviceGetTemperatureThreshold(h, t) for t in (
            nv.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN, nv.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN,
            nv.NVML_TEMPERATURE_THRESHOLD_MEM_MAX, nv.NVML_TEMPERATURE_THRESHOLD_GPU_MAX)],
     [95, 92, 95, 87]),
    ("clock_sm", lambda nv, h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM), 1755),
    ("clock_mem", lambda nv, h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM), 2619),
    ("util_encoder", lambda nv, h: nv.nvmlDeviceGetEncoderUtilization(h)[0], 12),
    ("util_decoder", lambda nv, h: nv.nvmlDeviceGetDecoderUtilization(h)[0], 34),
    ("minor", lambda nv, h: nv.nvmlDeviceGetMinorNumber(h), 5),
    ("clocks_event_reasons", lambda nv, h: nv.nvmlDeviceGetCurrentClocksEventReasons(h),
     0x4 | 0x20),
    ("clocks_event_reasons", lambda nv, h: nv.nvmlDeviceGetCurrentClocksThrottleReasons(h),
     0x4 | 0x20),
]
IDS = [f"{key}-{i}" for i, (key, _, _) in enumerate(GETTERS)]


@pytest.mark.parametrize(("key", "call", "expected"), GETTERS, ids=IDS)
def test_each_reading_comes_from_its_key(fake_nvml, fake_pynvml, h, key, call, expected):
    assert call(fake_pynvml, h) == expected


@pytest.mark.parametrize(("key", "call", "expected"), GETTERS, ids=IDS)
def test_each_reading_can_be_unsupported_alone(fake_nvml, fake_pynvml, h, key, call, expected):
    pynvml = fake_pynvml
    fake_nvml.update(lambda c: c["gpus"][0].pop(key))
    assert error_of(pynvml, lambda: call(pynvml, h)) == pynvml.NVML_ERROR_NOT_SUPPORTED
    fake_nvml.update(lambda c: c["gpus"][0].update({key: "NO_PERMISSION"}))
    assert error_of(pynvml, lambda: call(pynvml, h)) == pynvml.NVML_ERROR_NO_PERMISSION
    # the others still answer
    others = [(k, c, e) for k, c, e in GETTERS if k != key]
    assert [c(pynvml, h) for _, c, _ in others] == [e for _, _, e in others]


def test_memory_info_v2_leaves_the_reservation_out_of_used(fake_pynvml, h):
    pynvml = fake_pynvml
    v2 = pynvml.nvmlDeviceGetMemoryInfo(h, pynvml.nvmlMemory_v2)
    assert (v2.total, v2.reserved, v2.used) == (143771 * MIB, 569 * MIB, 20480 * MIB)
    assert v2.free == v2.total - v2.reserved - v2.used
    v1 = pynvml.nvmlDeviceGetMemoryInfo(h)
    assert v1.used == (20480 + 569) * MIB
    assert error_of(pynvml, lambda: pynvml.nvmlDeviceGetMemoryInfo(h, 0x01000028)) == (
        pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)


def test_memory_error_counters(fake_nvml, fake_pynvml, h):
    pynvml = fake_pynvml

    def count(kind, counter, location):
        return pynvml.nvmlDeviceGetMemoryErrorCounter(h, kind, counter, location)

    corrected, uncorrected = (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                              pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
    volatile, aggregate = pynvml.NVML_VOLATILE_ECC, pynvml.NVML_AGGREGATE_ECC
    assert count(corrected, volatile, pynvml.NVML_MEMORY_LOCATION_L2_CACHE) == 2
    assert count(corrected, volatile, pynvml.NVML_MEMORY_LOCATION_SRAM) == 7
    assert count(uncorrected, volatile, pynvml.NVML_MEMORY_LOCATION_DEVICE_MEMORY) == 2
    assert count(uncorrected, volatile, pynvml.NVML_MEMORY_LOCATION_L1_CACHE) == 5  # ecc_l1
    assert count(corrected, aggregate, pynvml.NVML_MEMORY_LOCATION_DEVICE_MEMORY) == 900
    assert error_of(pynvml, lambda: count(corrected, volatile,
                                          pynvml.NVML_MEMORY_LOCATION_CBU)) == (
        pynvml.NVML_ERROR_NOT_SUPPORTED)
    assert error_of(pynvml, lambda: count(uncorrected, aggregate,
                                          pynvml.NVML_MEMORY_LOCATION_L1_CACHE)) == (
        pynvml.NVML_ERROR_NO_PERMISSION)
    assert error_of(pynvml, lambda: count(corrected, volatile, 99)) == (
        pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def total(kind, counter):
        return pynvml.nvmlDeviceGetTotalEccErrors(h, kind, counter)

    assert total(corrected, volatile) == 1 + 2 + 40 + 0 + 7  # the locations given
    assert total(uncorrected, volatile) == 2 + 5  # device memory, and L1 from ecc_l1
    assert total(corrected, aggregate) == 1000  # "total" given
    assert error_of(pynvml, lambda: total(uncorrected, aggregate)) == (
        pynvml.NVML_ERROR_NO_PERMISSION)
    fake_nvml.update(lambda c: c["gpus"][0].update(ecc_errors="NOT_SUPPORTED", ecc_l1=None))
    assert error_of(pynvml, lambda: total(corrected, volatile)) == (
        pynvml.NVML_ERROR_NOT_SUPPORTED)
    assert error_of(pynvml, lambda: count(uncorrected, volatile, 0)) == (
        pynvml.NVML_ERROR_NOT_SUPPORTED)


def test_field_values(fake_nvml, fake_pynvml, h):
    pynvml = fake_pynvml
    fields = [pynvml.NVML_FI_DEV_MEMORY_TEMP, pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
              pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER, pynvml.NVML_FI_DEV_POWER_INSTANT, 9999]
    values = pynvml.nvmlDeviceGetFieldValues(h, fields)
    assert [v.fieldId for v in values] == fields
    assert [v.nvmlReturn for v in values] == [pynvml.NVML_SUCCESS] * 3 + [
        pynvml.NVML_ERROR_NOT_SUPPORTED] * 2  # not in the config; an unknown id
    assert (values[0].valueType, values[0].value.uiVal) == (pynvml.NVML_VALUE_TYPE_UNSIGNED_INT,
                                                            51)
    assert (values[1].valueType, values[1].value.ullVal) == (
        pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 123_456_789_012)
    assert values[2].value.uiVal == 17
    assert all(v.timestamp > 0 for v in values)


def test_field_values_from_the_table(fake_nvml, fake_pynvml, h):
    pynvml = fake_pynvml
    fake_nvml.update(lambda c: c["gpus"][0].update(field_values={
        str(pynvml.NVML_FI_DEV_MEMORY_TEMP): {"type": "signed_int", "value": -3},
        str(pynvml.NVML_FI_DEV_POWER_INSTANT): 398_000,
        f"{pynvml.NVML_FI_DEV_NVLINK_SPEED_MBPS_COMMON}:2": 50_000.5,
        str(pynvml.NVML_FI_DEV_NVLINK_SPEED_MBPS_COMMON): 25_000,
        str(pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER): "NO_DATA",
    }))
    values = pynvml.nvmlDeviceGetFieldValues(h, [
        pynvml.NVML_FI_DEV_MEMORY_TEMP, pynvml.NVML_FI_DEV_POWER_INSTANT,
        (pynvml.NVML_FI_DEV_NVLINK_SPEED_MBPS_COMMON, 2),
        (pynvml.NVML_FI_DEV_NVLINK_SPEED_MBPS_COMMON, 0),
        pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER, pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION])
    assert (values[0].valueType, values[0].value.siVal) == (pynvml.NVML_VALUE_TYPE_SIGNED_INT, -3)
    assert (values[1].valueType, values[1].value.ullVal) == (
        pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 398_000)
    assert (values[2].valueType, values[2].value.dVal) == (pynvml.NVML_VALUE_TYPE_DOUBLE, 50_000.5)
    assert values[3].value.ullVal == 25_000  # no entry for scope 0: the field's own
    assert values[4].nvmlReturn == pynvml.NVML_ERROR_NO_DATA
    assert values[5].value.ullVal == 123_456_789_012  # not in the table: energy_mj
    fake_nvml.update(lambda c: c["gpus"][0].update(field_values="NO_PERMISSION"))
    values = pynvml.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_MEMORY_TEMP])
    assert values[0].nvmlReturn == pynvml.NVML_ERROR_NO_PERMISSION


def test_temperature_v_checks_its_struct_version(fake_pynvml, h):
    pynvml = fake_pynvml
    fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetTemperatureV")
    reading = pynvml.c_nvmlTemperature_v1_t(version=0x2000010, sensorType=0)
    assert fn(h, ctypes.byref(reading)) == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
