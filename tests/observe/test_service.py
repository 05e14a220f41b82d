"""ObserveService over the fake NVML: health from injected events and reads (within a second,
ignored Xids, recovery, lost GPUs), observations that never wait for PCIe, and processes
attributed to containers through /proc/<pid>/cgroup files and the engine's names."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from nvplugin.gpu.service import GpuService
from nvplugin.observe.records import ContainerRef
from nvplugin.observe.service import ObserveService
from tests.fakenvml.fixtures import FakeNvml

MIB = 1 << 20
CID = "4f1c2b7d9e0a8f3c6b5d4e2a1f0c9b8a7d6e5f4c3b2a1908f7e6d5c4b3a29180"
PODMAN = "b" * 64
RECOVERY_S = 0.5


async def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait for `condition` (polling every 5 ms); the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def two_gpus(fake_nvml: FakeNvml) -> dict[str, Any]:
    config = fake_nvml.make_config(2)
    first = config["gpus"][0]
    first.update(energy_mj=987654321, memory_temperature=41, pcie_replay_count=3,
                 memory_reserved=500 * MIB, memory_used=2048 * MIB,
                 remapped_rows={"correctable": 2, "uncorrectable": 1, "pending": False,
                                "failure": False},
                 ecc_errors={"volatile": {"corrected": {"device_memory": 5},
                                          "uncorrected": {"device_memory": 0}},
                             "aggregate": {"corrected": {"device_memory": 7},
                                           "uncorrected": {"device_memory": 1}}},
                 processes=[{"pid": 4242, "used_memory": 300 * MIB},
                            {"pid": 4343, "used_memory": 100 * MIB}],
                 graphics_processes=[{"pid": 4242, "used_memory": 300 * MIB},
                                     {"pid": 4444, "used_memory": 20 * MIB}])
    config["process_names"] = {"4242": "python3", "4343": "python3", "4444": "Xorg"}
    config["pcie_delay_ms"] = 20
    return config


@pytest.fixture
def host_root(tmp_path: Path) -> Path:
    """/proc/<pid>/cgroup of a Docker container's two processes, a Podman one's, a host's."""
    root = tmp_path / "host"
    for pid, text in ((4242, f"0::/system.slice/docker-{CID}.scope\n"),
                      (4343, f"0::/system.slice/docker-{CID}.scope\n"),
                      (4444, f"0::/machine.slice/libpod-{PODMAN}.scope/container\n"),
                      (5555, "0::/user.slice/user-0.slice/session-1.scope\n")):
        (root / "proc" / str(pid)).mkdir(parents=True)
        (root / "proc" / str(pid) / "cgroup").write_text(text)
    (root / "dev").mkdir()
    return root


@pytest.fixture
async def gpus(fake_nvml: FakeNvml, host_root: Path) -> AsyncIterator[GpuService]:
    fake_nvml.write(two_gpus(fake_nvml))
    service = await GpuService.start(driver_root=host_root, dev_root=host_root,
                                     nvml_library=str(fake_nvml.library))
    assert service.available, service.reason
    yield service
    await service.close()


@pytest.fixture
async def observe(gpus: GpuService, host_root: Path) -> AsyncIterator[ObserveService]:
    listed: list[dict[str, Any]] = [{"Id": CID, "Names": ["/trainer"]}]
    service = ObserveService(gpus, host_root=host_root, ignore_xids={13, 31, 43, 45, 68, 109},
                             recovery_s=RECOVERY_S, list_containers=lambda: listed)
    service.listed = listed  # type: ignore[attr-defined]
    await service.start()
    yield service
    await service.close()


async def events_flowing(observe: ObserveService, fake_nvml: FakeNvml) -> None:
    """Inject ignored Xids until one arrives: the event set is registered from then on."""
    uuid = observe.gpus.gpus[1].uuid

    def seen() -> bool:
        health = observe.tracker.get(uuid)
        return health is not None and health.last_xid == 13

    deadline = time.monotonic() + 30
    while not seen():
        assert time.monotonic() < deadline, "no event reached the tracker"
        fake_nvml.inject_event(1, "xid", 13)
        await asyncio.sleep(0.05)


def health_of(observe: ObserveService, index: int):
    return next(h for h in observe.health() if h.index == index)


async def test_a_critical_xid_makes_the_gpu_unhealthy_within_a_second(observe, fake_nvml, caplog):
    await events_flowing(observe, fake_nvml)
    changes = []
    observe.add_health_listener(changes.append)
    with caplog.at_level(logging.INFO, logger="nvplugin.observe.service"):
        fake_nvml.inject_event(1, "xid", 79)
        await until(lambda: not health_of(observe, 1).healthy, 1.0, "GPU 1 unhealthy")
    health = health_of(observe, 1)
    assert health.reason == "Xid 79: GPU has fallen off the bus" and health.last_xid == 79
    assert health_of(observe, 0).healthy
    assert not observe.healthy(health.uuid)
    assert [(c.index, c.healthy) for c in changes] == [(1, False)]
    lines = [r.getMessage() for r in caplog.records if "unhealthy" in r.getMessage()]
    assert lines == [f"GPU 1 ({health.uuid}) is unhealthy: Xid 79: GPU has fallen off the bus"]


async def test_an_ignored_xid_is_logged_and_leaves_the_gpu_healthy(observe, fake_nvml, caplog):
    with caplog.at_level(logging.INFO, logger="nvplugin.observe.service"):
        await events_flowing(observe, fake_nvml)
        fake_nvml.inject_event(1, "xid", 31)
        uuid = observe.gpus.gpus[1].uuid
        await until(lambda: observe.tracker.get(uuid).last_xid == 31, 5, "Xid 31 delivered")
    assert all(h.healthy for h in observe.health())
    assert f"GPU 1 ({uuid}): Xid 31 ignored (an application error; see --health-ignore-xids)" \
        in [r.getMessage() for r in caplog.records]


async def test_a_double_bit_ecc_error_is_critical(observe, fake_nvml):
    await events_flowing(observe, fake_nvml)
    fake_nvml.inject_event(0, "double_bit_ecc", 1)
    await until(lambda: not health_of(observe, 0).healthy, 1.0, "GPU 0 unhealthy")
    assert health_of(observe, 0).reason == "double-bit ECC error"


async def test_it_recovers_after_the_recovery_time(observe, fake_nvml, caplog):
    await events_flowing(observe, fake_nvml)
    fake_nvml.inject_event(1, "xid", 48)
    await until(lambda: not health_of(observe, 1).healthy, 1.0, "GPU 1 unhealthy")
    went_bad = health_of(observe, 1).since
    with caplog.at_level(logging.INFO, logger="nvplugin.observe.service"):
        await until(lambda: health_of(observe, 1).healthy, 10, "GPU 1 healthy again")
    recovered = health_of(observe, 1)
    assert recovered.since - went_bad >= RECOVERY_S
    assert recovered.reason is None and recovered.last_xid == 48
    assert any("is healthy again: no critical event and NVML reads it fine for 0.5 s"
               in r.getMessage() for r in caplog.records)


async def test_a_lost_gpu_stays_unhealthy_until_nvml_reads_it_again(observe, fake_nvml):
    await events_flowing(observe, fake_nvml)
    fake_nvml.lose_gpu(1)
    await until(lambda: not health_of(observe, 1).healthy, 1.0, "GPU 1 lost")
    assert health_of(observe, 1).reason in ("GPU is lost: NVML no longer reaches it",
                                            "NVML: GPU is lost")
    await asyncio.sleep(3 * RECOVERY_S)  # probes keep failing: no recovery while lost
    assert not health_of(observe, 1).healthy and health_of(observe, 0).healthy
    fake_nvml.update(lambda c: c["gpus"][1].update(lost=False))
    await until(lambda: health_of(observe, 1).healthy, 10, "GPU 1 back")


async def test_an_observation_reads_telemetry_and_never_samples_pcie(observe, fake_nvml):
    before = fake_nvml.pcie_calls()
    obs = await observe.observation()
    assert obs is not None and fake_nvml.pcie_calls() == before
    first = obs.telemetry[0]
    assert (first.energy_mj, first.memory_temperature_c, first.pcie_replays) == (
        987654321, 41, 3)
    assert (first.memory_used_mib, first.memory_reserved_mib) == (2048, 500)
    assert first.remapped_rows is not None and first.remapped_rows.correctable == 2
    assert (first.ecc_sbe_volatile, first.ecc_dbe_volatile, first.ecc_sbe_aggregate,
            first.ecc_dbe_aggregate) == (5, 0, 7, 1)
    assert first.fault is None and obs.telemetry[1].fault is None
    assert obs.driver_version == "580.159.04" and [g.index for g in obs.gpus] == [0, 1]
    assert obs.statuses[0].pcie_rx_mbs is None  # no PCIe sample was waited for


async def test_processes_are_attributed_to_their_containers(observe):
    obs = await observe.observation()
    kinds = {p.pid: (p.kind, p.container) for p in obs.processes}
    assert kinds[4242] == ("C+G", ContainerRef(CID, "docker"))  # the name comes later
    assert kinds[4444] == ("G", ContainerRef(PODMAN, "podman"))
    await until(lambda: observe._names.get(CID) == "trainer", 5, "names refreshed")
    observe._latest = None  # the next look reads again
    obs = await observe.observation()
    named = {p.pid: p.container for p in obs.processes}
    assert named[4242] == ContainerRef(CID, "docker", "trainer")
    uses = {(u.container.id, u.gpu_index): u for u in obs.containers}
    assert uses[CID, 0].processes == 2 and uses[CID, 0].memory_used_mib == 400
    assert uses[CID, 0].container.name == "trainer"
    assert uses[PODMAN, 0].processes == 1 and uses[PODMAN, 0].container.name is None


async def test_an_unknown_id_is_asked_about_once_then_after_a_while(observe):
    calls = []
    observe._list_containers = lambda: calls.append(1) or []
    refs = await observe.containers_of([4242, 5555, 9999])
    assert refs[5555] is None and refs[9999] is None  # a host process, a PID gone
    await until(lambda: observe._namer is not None and observe._namer.done(), 5, "refresh")
    await observe.containers_of([4242, 4343])
    await asyncio.sleep(0.05)
    assert len(calls) == 1  # remembered as unknown for NAME_RETRY_S


async def test_a_hung_nvml_costs_a_scrape_its_fresh_readings_not_its_answer(observe, fake_nvml):
    first = await observe.observation()
    assert first is not None
    observe.scrape_wait = 0.2
    observe.max_age = 0.0  # every look wants a fresh read
    fake_nvml.update(lambda c: c.update(call_delay_ms=2000))
    try:
        started = time.monotonic()
        again = await observe.observation()
        waited = time.monotonic() - started
    finally:
        fake_nvml.update(lambda c: c.update(call_delay_ms=0))
    assert again is first  # the last observation, served rather than waited for
    assert waited < 2.0  # it did not wait for the slow read (which takes 2 s per call)
