"""Fixtures for the page's tests: a GpuService on the fake NVML (the GPU layer's own fixtures),
a volume store, and the page's feed over them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nvplugin.core.errors import DriverNotFound
from nvplugin.driver.manifest import Manifest
from nvplugin.gpu.service import GpuService
from nvplugin.volumes.store import VolumeStore
from nvplugin.web.feed import LiveFeed
from nvplugin.web.panels import Panels
from tests.gpu_layer.conftest import host_root, start_service  # noqa: F401 - fixtures

DRIVER = "580.159.04"


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    detail: str
    fix: str = ""


def no_manifest() -> Manifest:
    raise DriverNotFound("no driver files in this test")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[VolumeStore]:
    volumes = VolumeStore(tmp_path / "volumes", no_manifest)
    await volumes.start()
    yield volumes
    await volumes.close()


@pytest.fixture
async def make_feed(start_service: Callable[..., Awaitable[GpuService]],  # noqa: F811
                    store: VolumeStore, fake_nvml: Any,
                    ) -> AsyncIterator[Callable[..., Awaitable[LiveFeed]]]:
    feeds: list[LiveFeed] = []

    async def make(n_gpus: int = 2, *, doctor: Any = None, **options: Any) -> LiveFeed:
        fake_nvml.write(fake_nvml.make_config(n_gpus))
        service = await start_service()
        feed = LiveFeed(service, Panels(store, lambda: DRIVER, doctor), **options)
        feeds.append(feed)
        return feed

    yield make
    for feed in feeds:
        await feed.close()
