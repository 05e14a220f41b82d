"""Events through the real pynvml: event sets, registration, waits woken by injected lines, and a
GPU that falls off the bus."""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

NO_INSTANCE = 0xFFFFFFFF


def address(handle) -> int | None:
    return ctypes.cast(handle, ctypes.c_void_p).value


def nvml_error(pynvml, call, *args) -> int:
    with pytest.raises(pynvml.NVMLError) as caught:
        call(*args)
    return caught.value.value


@pytest.fixture
def two_gpus(fake_nvml, fake_pynvml):
    config = fake_nvml.make_config(2)
    config["gpus"][1]["event_types"] = ["xid", "double_bit_ecc"]
    fake_nvml.write(config)
    return [fake_pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(2)]


@pytest.fixture
def event_set(fake_pynvml):
    created = fake_pynvml.nvmlEventSetCreate()
    yield created
    with contextlib.suppress(fake_pynvml.NVMLError):  # unless the test freed it
        fake_pynvml.nvmlEventSetFree(created)


def test_supported_event_types_come_from_the_config(fake_nvml, fake_pynvml, two_gpus):
    pynvml = fake_pynvml
    assert pynvml.nvmlDeviceGetSupportedEventTypes(two_gpus[0]) == (
        pynvml.nvmlEventTypeSingleBitEccError | pynvml.nvmlEventTypeDoubleBitEccError
        | pynvml.nvmlEventTypePState | pynvml.nvmlEventTypeXidCriticalError
        | pynvml.nvmlEventTypeClock)
    assert pynvml.nvmlDeviceGetSupportedEventTypes(two_gpus[1]) == (
        pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeDoubleBitEccError)
    fake_nvml.update(lambda c: c["gpus"][0].update(event_types=0x8008))
    assert pynvml.nvmlDeviceGetSupportedEventTypes(two_gpus[0]) == 0x8008
    fake_nvml.update(lambda c: c["gpus"][0].pop("event_types"))
    assert nvml_error(pynvml, pynvml.nvmlDeviceGetSupportedEventTypes,
                      two_gpus[0]) == pynvml.NVML_ERROR_NOT_SUPPORTED


def test_an_injected_xid_is_delivered_once(fake_nvml, fake_pynvml, two_gpus, event_set):
    pynvml = fake_pynvml
    pynvml.nvmlDeviceRegisterEvents(two_gpus[1], pynvml.nvmlEventTypeXidCriticalError, event_set)
    fake_nvml.inject_event(1, "xid", 79)
    data = pynvml.nvmlEventSetWait_v2(event_set, 1000)
    assert address(data.device) == address(two_gpus[1])
    assert data.eventType == pynvml.nvmlEventTypeXidCriticalError
    assert data.eventData == 79
    assert (data.gpuInstanceId, data.computeInstanceId) == (NO_INSTANCE, NO_INSTANCE)
    assert nvml_error(pynvml, pynvml.nvmlEventSetWait_v2, event_set, 0) == (
        pynvml.NVML_ERROR_TIMEOUT)


def test_each_set_gets_only_what_it_registered_after_registering(fake_nvml, fake_pynvml,
                                                                 two_gpus):
    pynvml = fake_pynvml
    xid_0, both_1 = pynvml.nvmlEventSetCreate(), pynvml.nvmlEventSetCreate()
    fake_nvml.inject_event(0, "xid", 13)  # before any registration: nobody's
    pynvml.nvmlDeviceRegisterEvents(two_gpus[0], pynvml.nvmlEventTypeXidCriticalError, xid_0)
    pynvml.nvmlDeviceRegisterEvents(two_gpus[1], pynvml.nvmlEventTypeXidCriticalError, both_1)
    pynvml.nvmlDeviceRegisterEvents(two_gpus[1], pynvml.nvmlEventTypeDoubleBitEccError, both_1)
    fake_nvml.inject_event(0, "single_bit_ecc")  # GPU 0 supports it, xid_0 did not ask
    fake_nvml.inject_event(1, "double_bit_ecc", 2)
    fake_nvml.inject_event(0, pynvml.nvmlEventTypeXidCriticalError, 48)  # a bit works as a type
    fake_nvml.inject_event(1, "xid", 94)

    def drain(event_set) -> list[tuple[int, int, int]]:
        got: list[tuple[int, int, int]] = []
        while True:
            try:
                data = pynvml.nvmlEventSetWait_v2(event_set, 0)
            except pynvml.NVMLError_Timeout:
                return got
            got.append((two_gpus.index(next(h for h in two_gpus
                                            if address(h) == address(data.device))),
                        data.eventType, data.eventData))

    assert drain(xid_0) == [(0, pynvml.nvmlEventTypeXidCriticalError, 48)]
    assert drain(both_1) == [(1, pynvml.nvmlEventTypeDoubleBitEccError, 2),
                             (1, pynvml.nvmlEventTypeXidCriticalError, 94)]
    for event_set in (xid_0, both_1):
        pynvml.nvmlEventSetFree(event_set)


def test_a_wait_blocks_until_an_event_comes(fake_nvml, fake_pynvml, two_gpus, event_set):
    pynvml = fake_pynvml
    pynvml.nvmlDeviceRegisterEvents(two_gpus[0], pynvml.nvmlEventTypeDoubleBitEccError, event_set)
    waiting = threading.Event()

    def wait():
        waiting.set()
        return pynvml.nvmlEventSetWait_v2(event_set, 60_000)

    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(wait)
        waiting.wait()
        time.sleep(0.05)  # most likely inside the wait by now; delivered either way
        assert not answer.done()
        # Other calls go on meanwhile: the wait does not hold the library's lock.
        assert pynvml.nvmlDeviceGetUUID(two_gpus[1]) == fake_nvml.config["gpus"][1]["uuid"]
        fake_nvml.inject_event(0, "double_bit_ecc", 1)
        data = answer.result(timeout=30)
    assert (data.eventType, data.eventData) == (pynvml.nvmlEventTypeDoubleBitEccError, 1)


def test_a_wait_with_nothing_to_deliver_times_out(fake_pynvml, two_gpus, event_set):
    pynvml = fake_pynvml
    pynvml.nvmlDeviceRegisterEvents(two_gpus[0], pynvml.nvmlEventTypeXidCriticalError, event_set)
    started = time.monotonic()
    assert nvml_error(pynvml, pynvml.nvmlEventSetWait_v2, event_set, 100) == (
        pynvml.NVML_ERROR_TIMEOUT)
    assert time.monotonic() - started >= 0.1  # it did wait (no upper bound: no timed asserts)


def test_mig_instance_ids_are_delivered(fake_nvml, fake_pynvml, two_gpus, event_set):
    pynvml = fake_pynvml
    pynvml.nvmlDeviceRegisterEvents(two_gpus[0], pynvml.nvmlEventTypeXidCriticalError, event_set)
    fake_nvml.inject_event(0, "xid", 31, gpu_instance_id=2, compute_instance_id=0)
    data = pynvml.nvmlEventSetWait_v2(event_set, 1000)
    assert (data.eventData, data.gpuInstanceId, data.computeInstanceId) == (31, 2, 0)


def test_a_line_is_read_only_once_written_whole(fake_nvml, fake_pynvml, two_gpus, event_set):
    pynvml = fake_pynvml
    pynvml.nvmlDeviceRegisterEvents(two_gpus[0], pynvml.nvmlEventTypeXidCriticalError, event_set)
    with open(fake_nvml.events_path, "a") as out:
        out.write('{"gpu": 0, "type": "xid", ')
        out.flush()
        assert nvml_error(pynvml, pynvml.nvmlEventSetWait_v2, event_set, 0) == (
            pynvml.NVML_ERROR_TIMEOUT)
        out.write('"data": 43}\n')
    assert pynvml.nvmlEventSetWait_v2(event_set, 1000).eventData == 43


def test_a_line_that_is_no_event_answers_unknown(fake_nvml, fake_pynvml, two_gpus, event_set):
    pynvml = fake_pynvml
    pynvml.nvmlDeviceRegisterEvents(two_gpus[0], pynvml.nvmlEventTypeXidCriticalError, event_set)
    fake_nvml.inject_event(0, "no_such_event")
    assert nvml_error(pynvml, pynvml.nvmlEventSetWait_v2, event_set, 1000) == (
        pynvml.NVML_ERROR_UNKNOWN)
    fake_nvml.inject_event(0, "xid", 45)  # the set reads on past it
    assert pynvml.nvmlEventSetWait_v2(event_set, 1000).eventData == 45


def test_registration_is_refused_for_unsupported_types(fake_nvml, fake_pynvml, two_gpus,
                                                       event_set):
    pynvml = fake_pynvml
    assert nvml_error(pynvml, pynvml.nvmlDeviceRegisterEvents, two_gpus[1],
                      pynvml.nvmlEventTypePState, event_set) == pynvml.NVML_ERROR_NOT_SUPPORTED
    fake_nvml.update(lambda c: c["gpus"][1].update(event_types="NO_PERMISSION"))
    assert nvml_error(pynvml, pynvml.nvmlDeviceRegisterEvents, two_gpus[1],
                      pynvml.nvmlEventTypeXidCriticalError,
                      event_set) == pynvml.NVML_ERROR_NO_PERMISSION


def test_a_freed_set_is_refused(fake_pynvml, two_gpus):
    pynvml = fake_pynvml
    event_set = pynvml.nvmlEventSetCreate()
    pynvml.nvmlEventSetFree(event_set)
    assert nvml_error(pynvml, pynvml.nvmlEventSetWait_v2, event_set, 0) == (
        pynvml.NVML_ERROR_INVALID_ARGUMENT)
    assert nvml_error(pynvml, pynvml.nvmlEventSetFree, event_set) == (
        pynvml.NVML_ERROR_INVALID_ARGUMENT)


def test_the_unversioned_wait_fills_the_pre_mig_struct_only(fake_nvml, fake_pynvml, two_gpus,
                                                            event_set):
    pynvml = fake_pynvml
    pynvml.nvmlDeviceRegisterEvents(two_gpus[0], pynvml.nvmlEventTypeXidCriticalError, event_set)
    fake_nvml.inject_event(0, "xid", 62, gpu_instance_id=1, compute_instance_id=1)
    data = pynvml.c_nvmlEventData_t(gpuInstanceId=7, computeInstanceId=7)
    wait = pynvml._nvmlGetFunctionPointer("nvmlEventSetWait")
    assert wait(event_set, ctypes.byref(data), ctypes.c_uint(1000)) == pynvml.NVML_SUCCESS
    assert (address(data.device), data.eventType, data.eventData) == (
        address(two_gpus[0]), pynvml.nvmlEventTypeXidCriticalError, 62)
    assert (data.gpuInstanceId, data.computeInstanceId) == (7, 7)  # not in its struct


def test_a_lost_gpu(fake_nvml, fake_pynvml, two_gpus, event_set):
    pynvml = fake_pynvml
    config = fake_nvml.config
    config["gpus"][0].update(mig_mode=True, mig_devices=[
        {"uuid": "MIG-5c9a8e5b-45a3-5e2c-8c3e-1b2a6b0a9c11", "gpu_instance_id": 1,
         "compute_instance_id": 0}])
    fake_nvml.write(config)
    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(two_gpus[0], 0)
    pynvml.nvmlDeviceRegisterEvents(two_gpus[0], pynvml.nvmlEventTypeXidCriticalError, event_set)
    fake_nvml.lose_gpu(0)
    lost = pynvml.NVML_ERROR_GPU_IS_LOST
    assert nvml_error(pynvml, pynvml.nvmlEventSetWait_v2, event_set, 1000) == lost
    assert nvml_error(pynvml, pynvml.nvmlDeviceGetUUID, two_gpus[0]) == lost
    assert nvml_error(pynvml, pynvml.nvmlDeviceGetMemoryInfo, two_gpus[0]) == lost
    assert nvml_error(pynvml, pynvml.nvmlDeviceGetUUID, mig) == lost
    assert nvml_error(pynvml, pynvml.nvmlDeviceGetHandleByIndex, 0) == lost
    assert nvml_error(pynvml, pynvml.nvmlDeviceGetTopologyCommonAncestor,
                      two_gpus[1], two_gpus[0]) == lost
    assert pynvml.nvmlDeviceGetCount() == 2  # still enumerated, as nvidia-smi lists it
    assert pynvml.nvmlDeviceGetUUID(two_gpus[1]) == config["gpus"][1]["uuid"]
    fake_nvml.update(lambda c: c["gpus"][0].update(lost=False))  # back after a reset
    assert pynvml.nvmlDeviceGetUUID(two_gpus[0]) == config["gpus"][0]["uuid"]
