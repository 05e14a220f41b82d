"""GPU health and containers in the REST API: docker/cli's choice of GPUs, and what
gpu/status/json appends after 1.0's keys (which, like the text page, stay as they were)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable

import pytest
from aiohttp.test_utils import TestClient

from nvplugin.api import rest_app
from nvplugin.core.config import Config
from nvplugin.core.later import Later
from nvplugin.gpu.readings import EVENT_XID, GpuEvent
from nvplugin.observe.health import HealthTracker
from nvplugin.observe.records import ContainerRef, GpuHealth
from tests.rest import records
from tests.rest.fakes import RecordCdi, RecordGpus
from tests.rest.test_app import DOCKER_ALL, MANIFEST

MakeClient = Callable[..., Awaitable[TestClient]]
CID = "c" * 64
UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


class Observed:
    """ObserveService's REST-facing part over a real HealthTracker and fixed containers."""

    def __init__(self) -> None:
        self.tracker = HealthTracker(ignore_xids={13}, recovery_s=300)
        self.tracker.track([(0, UUID0), (1, UUID1)])
        self.containers = {1234: ContainerRef(CID, "docker", "trainer")}

    def healthy(self, uuid: str) -> bool:
        return self.tracker.healthy(uuid)

    def health(self) -> tuple[GpuHealth, ...]:
        return self.tracker.states()

    async def containers_of(self, pids: Iterable[int]) -> dict[int, ContainerRef | None]:
        return {pid: self.containers.get(pid) for pid in pids}

    def xid(self, index: int, xid: int) -> None:
        self.tracker.on_event(GpuEvent(index=index, uuid=(UUID0, UUID1)[index], kind=EVENT_XID,
                                       data=xid))


@pytest.fixture
def observed() -> Observed:
    return Observed()


@pytest.fixture
async def client(aiohttp_client: MakeClient, observed: Observed) -> TestClient:
    inventory, statuses = records.v1_sample_host()
    app = rest_app.make_app(RecordGpus(inventory, statuses), lambda: MANIFEST, Config(),
                            RecordCdi(), observe=observed)
    return await aiohttp_client(app)


@pytest.fixture
async def plain(aiohttp_client: MakeClient) -> TestClient:
    inventory, statuses = records.v1_sample_host()
    return await aiohttp_client(rest_app.make_app(RecordGpus(inventory, statuses),
                                                  lambda: MANIFEST, Config(), RecordCdi()))


@pytest.mark.parametrize("query", ["", "?dev=", "?dev=all", "?dev=*"])
async def test_every_gpu_means_every_healthy_gpu(client, observed, query):
    observed.xid(1, 79)
    response = await client.get("/v1.0/docker/cli" + query)
    assert response.status == 200
    assert await response.text() == DOCKER_ALL.removesuffix(" --device=/dev/nvidia1")


@pytest.mark.parametrize("query", ["?dev=1", "?dev=0+1", f"?dev={UUID1[:12]}"])
async def test_a_gpu_named_is_given_healthy_or_not(client, observed, query):
    observed.xid(1, 79)
    response = await client.get("/v1.0/docker/cli" + query)
    assert response.status == 200
    assert (await response.text()).endswith("--device=/dev/nvidia1")


async def test_docker_cli_does_not_wait_for_health_to_load(aiohttp_client, observed):
    """Health loads after docker/cli is ready: meanwhile no GPU is known unhealthy (as when it
    has just started), and once it is there its verdicts count. Its own routes wait for it."""
    inventory, statuses = records.v1_sample_host()
    later: Later[Observed] = Later()
    client = await aiohttp_client(rest_app.make_app(
        RecordGpus(inventory, statuses), lambda: MANIFEST, Config(), RecordCdi(),
        observe=later))
    response = await asyncio.wait_for(client.get("/v1.0/docker/cli"), 5)
    assert await response.text() == DOCKER_ALL
    status = asyncio.ensure_future(client.get("/v1.0/gpu/status/json"))
    await asyncio.sleep(0.1)
    assert not status.done()
    observed.xid(1, 79)
    later.set(observed)
    assert (await asyncio.wait_for(status, 5)).status == 200
    response = await client.get("/v1.0/docker/cli")
    assert await response.text() == DOCKER_ALL.removesuffix(" --device=/dev/nvidia1")


async def test_an_ignored_xid_leaves_the_gpu_in(client, observed):
    observed.xid(1, 13)
    assert await (await client.get("/docker/cli")).text() == DOCKER_ALL


async def test_no_healthy_gpu_is_a_503_naming_each_reason(client, observed):
    observed.xid(0, 48)
    observed.xid(1, 79)
    response = await client.get("/docker/cli/json")
    assert response.status == 503
    assert await response.text() == (
        f"no healthy GPU: GPU 0 ({UUID0}) is unhealthy: Xid 48: double-bit ECC error; "
        f"GPU 1 ({UUID1}) is unhealthy: Xid 79: GPU has fallen off the bus; name a GPU with "
        "dev= to use it anyway\n")


async def test_status_json_appends_health_and_containers_after_1_0s_keys(client, plain,
                                                                          observed):
    observed.xid(1, 79)
    old = json.loads(await (await plain.get("/v1.0/gpu/status/json")).text())
    new = json.loads(await (await client.get("/v1.0/gpu/status/json")).text())
    for before, after in zip(old["Devices"], new["Devices"], strict=True):
        assert list(after) == [*before, "Health"]  # appended, 1.0's keys first and in order
        assert {k: after[k] for k in before if k != "Processes"} == \
            {k: v for k, v in before.items() if k != "Processes"}
        for p_before, p_after in zip(before["Processes"] or [], after["Processes"] or [],
                                     strict=True):
            assert list(p_after) == [*p_before, "Container"]
            assert {k: p_after[k] for k in p_before} == p_before
    first, second = new["Devices"]
    assert first["Health"]["Status"] == "healthy" and first["Health"]["Reason"] is None
    assert second["Health"] == {"Status": "unhealthy", "LastXid": 79,
                                "Reason": "Xid 79: GPU has fallen off the bus",
                                "Since": second["Health"]["Since"]}
    containers = {p["PID"]: p["Container"] for d in new["Devices"] for p in d["Processes"] or []}
    assert containers == {1234: {"ID": CID, "Name": "trainer", "Runtime": "docker"}}


async def test_a_host_process_has_a_null_container(client, observed):
    observed.containers.clear()
    document = json.loads(await (await client.get("/gpu/status/json")).text())
    assert document["Devices"][1]["Processes"][0]["Container"] is None


async def test_text_pages_do_not_change(client, plain, observed):
    observed.xid(1, 79)
    for route in ("/gpu/status", "/gpu/info", "/gpu/info/json"):
        assert await (await client.get(route)).text() == await (await plain.get(route)).text()
