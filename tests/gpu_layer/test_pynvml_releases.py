"""Older nvidia-ml-py releases: a pynvml wrapper nvml.py uses may be absent, and that costs the
fields it reads, never the answer (hard errors only where there is no answer without it).

The wrappers are found in nvml.py's own source, so a call added there is covered here unasked;
each one is deleted from the imported module in turn and the whole inventory and status are read
over the fake NVML.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import logging
import time
from pathlib import Path

import pynvml
import pytest

from nvplugin.gpu import nvml
from nvplugin.gpu.service import GpuService

SOURCE = Path(nvml.__file__).read_text()

# Without these there is no inventory at all: the service reports itself unavailable, with why.
HARD = {"nvmlInitWithFlags", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
        "nvmlSystemGetDriverVersion", "nvmlDeviceGetUUID", "nvmlDeviceGetMinorNumber",
        "nvmlDeviceGetPciInfo"}
# Read at shut-down only (of NVML, and of the event set a refresh or shutdown frees).
SHUTDOWN = {"nvmlShutdown", "nvmlEventSetFree"}
# The event thread's calls: reached once an event set is open.
EVENTS = {"nvmlEventSetCreate", "nvmlDeviceGetSupportedEventTypes", "nvmlDeviceRegisterEvents",
          "nvmlEventSetWait_v2"}
# The only names nvml.py may read from pynvml directly: every release has them.
DIRECT_OK = {"NVMLError", "nvmlLib"}


def _wrappers() -> set[str]:
    return {node.args[0].value for node in ast.walk(ast.parse(SOURCE))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "_w" and isinstance(node.args[0], ast.Constant)}


def _direct() -> set[str]:
    return {node.attr for node in ast.walk(ast.parse(SOURCE))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "pynvml"}


WRAPPERS = sorted(_wrappers())
OPTIONAL = sorted(set(WRAPPERS) - HARD - SHUTDOWN)


def test_nvml_reads_pynvml_only_through_the_guarded_lookup():
    assert _direct() <= DIRECT_OK, "look pynvml functions up with _w(), constants: nvml.py's own"
    assert set(WRAPPERS) >= HARD | SHUTDOWN
    assert len(OPTIONAL) >= 30  # the scan found the calls


def test_nvml_constants_match_pynvml_where_it_has_them():
    names = [n for n in vars(nvml) if n.startswith("NVML_") and n != "NVML_NVLINK_MAX_LINKS"]
    assert len(names) >= 15
    for name in names:
        if hasattr(pynvml, name):
            assert getattr(nvml, name) == getattr(pynvml, name), name
    assert getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 0) <= nvml.NVML_NVLINK_MAX_LINKS


# Called only when the driver lacks the newer call: fallback -> the call it stands in for.
FALLBACK_FOR = {
    "nvmlSystemGetCudaDriverVersion": "nvmlSystemGetCudaDriverVersion_v2",
    "nvmlDeviceGetComputeRunningProcesses_v2": "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses_v2": "nvmlDeviceGetGraphicsRunningProcesses_v3",
}


def _full_config(fake_nvml, *, old_driver: bool = False):
    """Two GPUs that reach every call: MIG, NVLinks, a process. An old driver lacks the newer
    CUDA-version and process calls, so the fallbacks run instead."""
    config = fake_nvml.make_config(
        2, missing_functions=sorted(FALLBACK_FOR.values()) if old_driver else [])
    first, second = config["gpus"]
    first.update(
        numa_node=0, multiprocessors=132, mig_mode=True,
        nvlinks=[second["bus_id"], second["bus_id"]] + [None] * 16,
        mig_devices=[{"uuid": "MIG-aaaa1111-0000-0000-0000-000000000000",
                      "gpu_instance_id": 1, "compute_instance_id": 0}],
        processes=[{"pid": 4242, "used_memory": 300 << 20}],
        graphics_processes=[{"pid": 4343, "used_memory": 20 << 20}])
    config["process_names"] = {"4242": "python3", "4343": "Xorg"}
    return config


def _values(records) -> list[object]:
    out: list[object] = []
    for record in records:
        for field in dataclasses.fields(record):
            value = getattr(record, field.name)
            out.extend(_values(value) if isinstance(value, tuple) and value
                       and dataclasses.is_dataclass(value[0]) else [value])
    return out


async def _exercise_events(service: GpuService, fake_nvml) -> None:
    """Run the event thread until an injected Xid arrives, or until it reported an event
    wrapper missing (then nothing arrives): every event call it makes has been made."""
    delivered: list[object] = []
    service.add_event_listener(delivered.append)
    deadline = time.monotonic() + 30
    while not delivered and not (EVENTS & nvml._reported_missing):
        assert time.monotonic() < deadline, "no event delivered and no wrapper reported"
        fake_nvml.inject_event(0, "xid", 79)  # again: the set may not be registered yet
        await asyncio.sleep(0.05)


async def _read_everything(service: GpuService, fake_nvml) -> list[object]:
    inventory = await service.inventory()
    statuses = await service.status()
    service.status_cache.max_age = -1.0  # a second status waits for a PCIe sample
    statuses = await service.status()
    telemetry = await service.telemetry()
    probed = await service.probe([0, 1])
    await _exercise_events(service, fake_nvml)
    return [inventory.versions.driver, inventory.versions.cuda,
            *_values(inventory.gpus), *_values(statuses), *_values(telemetry),
            *probed.values()]


async def test_the_full_config_reaches_every_wrapper(fake_nvml, start_service, monkeypatch):
    """With nothing deleted every wrapper is called (so each deletion below is exercised)."""
    fake_nvml.write(_full_config(fake_nvml))
    called: set[str] = set()
    real = nvml._w

    def spy(name):
        called.add(name)
        return real(name)

    monkeypatch.setattr(nvml, "_w", spy)
    service = await start_service()
    values = await _read_everything(service, fake_nvml)
    assert values[1] == "13.0" and "python3" in values and "MIG-aaaa1111" in str(values)
    assert "Xorg" in values
    assert called == set(WRAPPERS) - set(FALLBACK_FOR) - SHUTDOWN
    fake_nvml.write(_full_config(fake_nvml, old_driver=True))
    await service.refresh()  # shuts the first session and its event set down
    await _read_everything(service, fake_nvml)
    assert called == set(WRAPPERS)


@pytest.mark.parametrize("name", OPTIONAL)
async def test_a_missing_optional_wrapper_costs_its_fields_only(
    name, fake_nvml, start_service, monkeypatch, caplog
):
    fake_nvml.write(_full_config(fake_nvml, old_driver=name in FALLBACK_FOR))
    monkeypatch.setattr(nvml, "_reported_missing", set())
    monkeypatch.delattr(pynvml, name, raising=False)
    with caplog.at_level(logging.WARNING, logger="nvplugin.gpu.nvml"):
        service = await start_service()
        assert service.available, service.reason
        values = await _read_everything(service, fake_nvml)
        await service.refresh()  # frees the event set and opens another
        await _read_everything(service, fake_nvml)
    assert values[0] == "580.159.04"
    assert all(v is None or isinstance(v, (int, float, str, bool, tuple)) for v in values)
    said = [r.getMessage() for r in caplog.records if f"pynvml.{name}" in r.getMessage()]
    assert len(said) == 1, said  # reached, and said once however often it is read
    assert "has no pynvml." in said[0] and "N/A" in said[0]


@pytest.mark.parametrize("name", sorted(HARD))
async def test_a_missing_required_wrapper_makes_nvml_unavailable(
    name, fake_nvml, start_service, monkeypatch
):
    fake_nvml.write(_full_config(fake_nvml))
    monkeypatch.delattr(pynvml, name, raising=False)
    service = await start_service()
    if name == "nvmlSystemGetDriverVersion":  # read per request, not at start-up
        assert service.available
        with pytest.raises(nvml.NvmlError, match=f"has no pynvml.{name}"):
            await service.inventory()
        return
    assert not service.available
    assert f"has no pynvml.{name}" in (service.reason or "")


async def test_a_missing_shutdown_wrapper_is_a_warning(fake_nvml, start_service, monkeypatch,
                                                       caplog):
    service = await start_service()
    monkeypatch.delattr(pynvml, "nvmlShutdown")
    with caplog.at_level(logging.WARNING, logger="nvplugin.gpu.nvml"):
        await service.refresh()
    assert service.available
    assert any("nvmlShutdown failed" in r.getMessage() for r in caplog.records)


async def test_every_optional_wrapper_missing_at_once(fake_nvml, start_service, monkeypatch):
    """The oldest imaginable nvidia-ml-py: identity only, every other field N/A."""
    fake_nvml.write(_full_config(fake_nvml))
    monkeypatch.setattr(nvml, "_reported_missing", set())
    for name in OPTIONAL:
        monkeypatch.delattr(pynvml, name, raising=False)
    service = await start_service()
    inventory = await service.inventory()
    gpu = inventory.gpus[0]
    assert (gpu.uuid, gpu.minor, gpu.bus_id) == (
        "GPU-00000000-67d9-9e02-1f7a-53d331412b6f", 0, "00000000:18:00.0")
    assert inventory.versions.cuda is None
    assert gpu.model is None and gpu.cores is None and gpu.mig_mode is None
    assert gpu.cpu_affinity is None and gpu.mig_devices == ()
    status = (await service.status())[0]
    assert status.temperature_c is None and status.processes == ()
