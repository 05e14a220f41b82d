"""Helpers for the GPU layer tests: a host root under tmp_path and a GpuService on the fake NVML."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from nvplugin.gpu.service import GpuService
from tests.fakenvml.fixtures import FakeNvml


@pytest.fixture
def host_root(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    (root / "dev").mkdir(parents=True)
    (root / "proc/driver/nvidia").mkdir(parents=True)
    return root


@pytest.fixture
async def start_service(
    fake_nvml: FakeNvml, host_root: Path
) -> AsyncIterator[Callable[..., Awaitable[GpuService]]]:
    started: list[GpuService] = []

    async def start(library: str | None = None, **options: Any) -> GpuService:
        service = await GpuService.start(driver_root=host_root, dev_root=host_root,
                                         nvml_library=library or str(fake_nvml.library), **options)
        started.append(service)
        return service

    yield start
    for service in started:
        await service.close()
