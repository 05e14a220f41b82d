"""What the REST API answers while the daemon's first discovery runs: routes wait for it (never a
503 for a start not finished), except docker/cli naming a volume that is built already."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient

from nvplugin.api import rest_app
from nvplugin.core.config import Config
from tests.rest import records
from tests.rest.fakes import RecordCdi, RecordGpus
from tests.rest.test_app import DOCKER_ALL, MANIFEST

MakeClient = Callable[..., Awaitable[TestClient]]
BUILT = "375.26"  # the volume left by the last run (the manifest's version, as NVML's is)


class Start:
    """The daemon's two start-up answers: `ready` (NVML and the first discovery) and the
    version of a volume built already, with what each was asked."""

    def __init__(self, built: str | None) -> None:
        self.settled = asyncio.Event()
        self.built = built
        self.asked: list[str] = []

    async def ready(self) -> None:
        self.asked.append("ready")
        await self.settled.wait()

    async def built_version(self) -> str | None:
        self.asked.append("built_version")
        return self.built


async def _client(aiohttp_client: MakeClient, start: Start, **gpus: object) -> TestClient:
    inventory, statuses = records.v1_sample_host()
    return await aiohttp_client(rest_app.make_app(
        RecordGpus(inventory, statuses, **gpus), lambda: MANIFEST, Config(), RecordCdi(),
        ready=start.ready, built_version=start.built_version))


async def test_docker_cli_names_a_built_volume_before_the_first_discovery(aiohttp_client):
    start = Start(built=BUILT)
    client = await _client(aiohttp_client, start)
    response = await asyncio.wait_for(client.get("/v1.0/docker/cli"), 5)
    assert response.status == 200
    assert await response.text() == DOCKER_ALL
    assert "ready" not in start.asked
    # The routes that read the driver's files or the GPUs still wait for the start to finish.
    for route in ("/v1.0/driver/files", "/v1.0/gpu/info"):
        waiting = asyncio.ensure_future(client.get(route))
        await asyncio.sleep(0.1)
        assert not waiting.done(), route
        start.settled.set()
        assert (await asyncio.wait_for(waiting, 5)).status == 200, route
        start.settled.clear()


async def test_docker_cli_waits_for_the_discovery_without_a_built_volume(aiohttp_client):
    start = Start(built=None)
    client = await _client(aiohttp_client, start)
    waiting = asyncio.ensure_future(client.get("/v1.0/docker/cli/json"))
    await asyncio.sleep(0.1)
    assert not waiting.done()  # waits: it does not fail because the start has not finished
    start.settled.set()
    response = await asyncio.wait_for(waiting, 5)
    assert response.status == 200
    assert "nvidia_driver_375.26:/usr/local/nvidia:ro" in (await response.json())["Volumes"]


@pytest.mark.parametrize("built", [BUILT, None])
async def test_without_nvml_docker_cli_still_says_so(aiohttp_client, built):
    """A daemon without NVML answers 503 with NVML's reason, whichever way docker/cli went."""
    start = Start(built=built)
    start.settled.set()
    client = await _client(aiohttp_client, start, available=False,
                           reason="NVML is unavailable: driver not loaded")
    response = await client.get("/v1.0/docker/cli")
    assert response.status == 503
    assert await response.text() == "NVML is unavailable: driver not loaded\n"
