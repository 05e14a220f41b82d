"""The daemon's answer to docker/cli before its first discovery (cli/serve `_built_version`):
NVML's driver version when that version's volume is built already, else None (wait for it)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nvplugin.cli.serve import Daemon
from nvplugin.core.config import Config
from nvplugin.core.phases import Phases
from nvplugin.volumes.store import VolumeStore
from tests.rest import records
from tests.rest.fakes import RecordGpus
from tests.rest.test_app import MANIFEST

VERSION = records.v1_sample_host()[0].versions.driver


class LoadingGpus(RecordGpus):
    """RecordGpus whose NVML load ends when the test says so."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loaded = asyncio.Event()

    async def ready(self) -> None:
        await self.loaded.wait()

    async def close(self) -> None:
        return None


def _daemon(tmp_path: Path, *, built: bool, available: bool = True) -> tuple[Daemon, LoadingGpus]:
    gpus = LoadingGpus(*records.v1_sample_host(), available=available)
    daemon = Daemon(Config(), gpus, Phases())  # type: ignore[arg-type]
    daemon.store = VolumeStore(tmp_path, lambda: MANIFEST)
    if built:
        (tmp_path / "nvidia_driver" / VERSION).mkdir(parents=True)
    daemon._settled = asyncio.get_running_loop().create_future()  # discovery runs
    return daemon, gpus


async def test_a_built_volume_is_named_once_nvml_has_loaded_and_the_spec_is_written(tmp_path):
    daemon, gpus = _daemon(tmp_path, built=True)
    asked = asyncio.ensure_future(daemon._built_version())
    await asyncio.sleep(0.05)
    assert not asked.done()  # NVML is still loading
    gpus.loaded.set()
    await asyncio.sleep(0.05)
    assert not asked.done()  # Docker could not find the plugin the answer names yet
    daemon._published.set()
    assert await asyncio.wait_for(asked, 5) == VERSION


async def test_without_the_volume_docker_cli_waits_for_the_discovery(tmp_path):
    daemon, gpus = _daemon(tmp_path, built=False)
    gpus.loaded.set()
    daemon._published.set()
    assert await daemon._built_version() is None


async def test_without_nvml_or_once_discovered_it_is_the_usual_path(tmp_path):
    daemon, gpus = _daemon(tmp_path, built=True, available=False)
    gpus.loaded.set()
    daemon._published.set()
    assert await daemon._built_version() is None  # NVML's reason answers, after ready
    daemon, gpus = _daemon(tmp_path / "other", built=True)
    assert daemon._settled is not None
    daemon._settled.set_result(None)
    assert await daemon._built_version() is None  # the manifest names the volume now
