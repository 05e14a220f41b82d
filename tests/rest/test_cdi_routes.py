"""cdi/spec and cdi/cli over HTTP with record-backed GPUs and a fixed spec: the spec's bytes,
docker/cli's selector grammar and errors, `all` or UUIDs, and docker/cli's healthy-GPU rule."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient

from nvplugin.api import rest_app
from nvplugin.cdi.spec import Device, Edits, Node, Spec
from nvplugin.core.config import Config
from tests.rest import records
from tests.rest.fakes import RecordCdi, RecordGpus
from tests.rest.test_app import MANIFEST
from tests.rest.test_health_routes import Observed

MakeClient = Callable[..., Awaitable[TestClient]]
SPEC = Spec("nvidia.com/gpu", (Device("0", Edits(nodes=(Node("/dev/nvidia0", "/dev/nvidia0"),))),),
            Edits(nodes=(Node("/dev/nvidiactl", "/dev/nvidiactl"),)))


@pytest.fixture
def observed() -> Observed:
    return Observed()


async def client_for(aiohttp_client: MakeClient, cdi: RecordCdi,
                     observed: Observed | None = None) -> TestClient:
    inventory, statuses = records.v1_sample_host()
    return await aiohttp_client(rest_app.make_app(RecordGpus(inventory, statuses),
                                                  lambda: MANIFEST, Config(), cdi,
                                                  observe=observed))


def uuids() -> list[str]:
    inventory, _ = records.v1_sample_host()
    return [gpu.uuid for gpu in inventory.gpus]


@pytest.mark.parametrize("prefix", ["/v1.0", ""])
async def test_the_spec_is_the_files_bytes(aiohttp_client, prefix):
    client = await client_for(aiohttp_client, RecordCdi(SPEC))
    response = await client.get(prefix + "/cdi/spec")
    assert response.status == 200 and response.content_type == "application/json"
    assert await response.read() == SPEC.render()


@pytest.mark.parametrize(("query", "expected"), [
    ("", ["nvidia.com/gpu=all"]), ("?dev=", ["nvidia.com/gpu=all"]),
    ("?dev=*", ["nvidia.com/gpu=all"]), ("?dev=0+all", ["nvidia.com/gpu=all"]),
    ("?dev=1", ["nvidia.com/gpu={1}"]), ("?dev=0+1", ["nvidia.com/gpu={0}", "nvidia.com/gpu={1}"]),
    ("?dev=1,0,1", ["nvidia.com/gpu={0}", "nvidia.com/gpu={1}"]),
], ids=["absent", "empty", "star", "all", "one", "two", "order"])
async def test_cli_names_gpus_by_uuid_or_all(aiohttp_client, query, expected):
    client = await client_for(aiohttp_client, RecordCdi(SPEC))
    names = [e.format(*uuids()) for e in expected]
    text = await (await client.get("/v1.0/cdi/cli" + query)).text()
    assert text == " ".join(f"--device={name}" for name in names)
    json_answer = await (await client.get("/v1.0/cdi/cli/json" + query)).json()
    assert json_answer == {"Devices": names}


async def test_cli_takes_the_daemons_kind(aiohttp_client):
    client = await client_for(aiohttp_client, RecordCdi(SPEC, kind="example.com/gpu"))
    assert await (await client.get("/cdi/cli")).text() == "--device=example.com/gpu=all"


@pytest.mark.parametrize(("query", "line"), [
    ("?dev=7", "invalid device: 7\n"), ("?dev=%24(reboot)%0A", "invalid device: $(reboot)\n"),
])
async def test_cli_refuses_what_docker_cli_refuses(aiohttp_client, query, line):
    client = await client_for(aiohttp_client, RecordCdi(SPEC))
    for route in ("/cdi/cli", "/docker/cli"):
        response = await client.get(route + query)
        assert (response.status, await response.text()) == (400, line), route


async def test_without_a_spec_both_routes_say_why(aiohttp_client):
    client = await client_for(aiohttp_client, RecordCdi(None))
    for route in ("/cdi/spec", "/cdi/cli", "/cdi/cli/json?dev=0"):
        response = await client.get(route)
        assert response.status == 503, route
        assert await response.text() == "NVML is unavailable: no CDI spec in this test\n"


async def test_every_gpu_means_every_healthy_gpu_as_for_docker_cli(aiohttp_client, observed):
    client = await client_for(aiohttp_client, RecordCdi(SPEC), observed)
    first, second = uuids()
    observed.xid(1, 79)
    assert await (await client.get("/cdi/cli")).text() == f"--device=nvidia.com/gpu={first}"
    assert await (await client.get("/cdi/cli?dev=1")).text() == f"--device=nvidia.com/gpu={second}"
    observed.xid(0, 48)
    response = await client.get("/cdi/cli")
    assert response.status == 503 and (await response.text()).startswith("no healthy GPU: ")
