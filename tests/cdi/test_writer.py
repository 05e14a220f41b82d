"""The spec on disk, kept by a SpecKeeper over the real GpuService (fake NVML) and the real
DriverState on a fake GPU host: written atomically and only when it changes, refused when it
would name a missing file, removed when the driver goes."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from nvplugin.cdi.spec import Spec
from nvplugin.cdi.writer import SpecKeeper, check_host_files, read_spec
from nvplugin.core.errors import CdiError, DriverNotFound, NvmlError
from nvplugin.driver import discovery
from nvplugin.driver.state import DriverState
from nvplugin.gpu.service import GpuService
from tests.dockerenv import GpuHost
from tests.fakehost.build import write_ld_cache

LOGGER = "nvplugin.cdi.writer"


class Harness:
    def __init__(self, host: GpuHost, path: Path | None, gpus: GpuService,
                 driver: DriverState) -> None:
        self.host, self.path, self.gpus, self.driver = host, path, gpus, driver
        self.keeper = SpecKeeper(path=path, kind="nvidia.com/gpu", host_root=Path("/"),
                                 gpus=gpus, manifest=driver.manifest)

    async def rediscover(self, reason: str = "test") -> None:
        """What the daemon's rediscover does: GPUs, then the driver's files, then the spec."""
        await self.gpus.refresh()
        await self.driver.refresh()
        await self.keeper.refresh(reason)


@pytest.fixture
async def harness(gpu_host_factory: Callable[..., GpuHost], tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., Any]]:
    made: list[Harness] = []

    async def make(path: Path | None = tmp_path / "cdi" / "nvidia-docker.json",
                   **options: Any) -> Harness:
        host = gpu_host_factory(**{"n_gpus": 2, "minors": [0, 5], **options})
        monkeypatch.setenv("FAKE_NVML_CONFIG", str(host.nvml_config))
        gpus = await GpuService.start(driver_root=host.root, dev_root=host.root,
                                      nvml_library=discovery.find_nvml_library(host.root))
        driver = DriverState(host.root, gpus.driver_version)
        await driver.refresh()
        made.append(Harness(host, path, gpus, driver))
        return made[-1]

    yield make
    for done in made:
        await done.gpus.close()


async def test_start_up_writes_the_spec_atomically_with_mode_0644(harness, caplog):
    h = await harness()
    old_umask = os.umask(0o077)
    try:
        with caplog.at_level(logging.INFO, logger=LOGGER):
            await h.keeper.refresh("start-up")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(h.path).st_mode) == 0o644
    assert h.path.read_bytes() == h.keeper.current().render()
    assert [p.name for p in h.path.parent.iterdir()] == ["nvidia-docker.json"]  # no temp left
    body = json.loads(h.path.read_bytes())
    assert body["cdiVersion"] == "0.5.0" and body["kind"] == "nvidia.com/gpu"
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"Wrote CDI spec {h.path} (start-up): new spec: 5 devices, 3 control "
                     f"nodes, {len(body['containerEdits']['mounts'])} mounts, cdiVersion 0.5.0"]


async def test_an_unchanged_host_is_not_rewritten_or_logged(harness, caplog):
    h = await harness()
    await h.keeper.refresh("start-up")
    before = os.stat(h.path)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        await h.rediscover("SIGHUP")
    after = os.stat(h.path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert caplog.records == []


async def test_a_restarted_daemon_keeps_an_equal_spec_and_says_so_once(harness, caplog):
    h = await harness()
    await h.keeper.refresh("start-up")
    inode = os.stat(h.path).st_ino
    successor = SpecKeeper(path=h.path, kind="nvidia.com/gpu", host_root=Path("/"),
                           gpus=h.gpus, manifest=h.driver.manifest)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        await successor.refresh("start-up")
        await successor.refresh("SIGHUP")
    assert os.stat(h.path).st_ino == inode
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"CDI spec {h.path} is up to date (start-up)"]


async def test_a_library_removed_and_the_cache_rebuilt_rewrites_the_spec(harness, caplog):
    h = await harness()
    await h.keeper.refresh("start-up")
    lib = h.host.root / "usr/lib/x86_64-linux-gnu"
    for name in os.listdir(lib):
        if name.startswith("libnvidia-opticalflow"):
            (lib / name).unlink()
    write_ld_cache(h.host.root, ["/usr/lib/x86_64-linux-gnu", "/usr/lib/i386-linux-gnu"])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        await h.rediscover("driver files changed")
    written = read_spec(h.path)
    assert written == h.keeper.current()
    assert not any("opticalflow" in m.container_path for m in written.edits.mounts)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"Wrote CDI spec {h.path} (driver files changed): ")
    assert "mounts removed: /usr/lib/x86_64-linux-gnu/libnvidia-opticalflow.so" in line


async def test_a_spec_naming_a_missing_file_is_never_written(harness, caplog):
    h = await harness()
    await h.keeper.refresh("start-up")
    before = h.path.read_bytes()
    # The file goes without a new cache: discovery's manifest still names it.
    smi = h.host.root / "usr/bin/nvidia-smi"
    smi.unlink()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        await h.keeper.refresh("test")
    assert h.path.read_bytes() == before
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"Error: {h.path} not updated: the CDI spec would name what the "
                           f"host lacks: {smi}: No such file or directory")
    assert line.endswith("; the previous one stays")
    assert h.keeper.current() == Spec.from_json(json.loads(before))  # the last good one


async def test_a_link_swapped_in_for_a_driver_file_is_refused(harness):
    h = await harness(path=None)
    await h.keeper.refresh("start-up")
    spec = h.keeper.current()
    smi = h.host.root / "usr/bin/nvidia-smi"
    smi.unlink()
    smi.symlink_to("/etc/shadow")
    with pytest.raises(CdiError, match=f"{smi} is not a regular file"):
        check_host_files(spec, Path("/"))
    node = h.host.root / "dev/nvidia5"
    node.unlink()
    node.write_text("not a device")
    with pytest.raises(CdiError, match=f"{node} is not a character device"):
        check_host_files(spec, Path("/"))


async def test_the_driver_gone_takes_the_spec_away(harness, caplog):
    h = await harness()
    await h.keeper.refresh("start-up")

    def gone() -> Any:
        raise DriverNotFound(f"no NVIDIA driver found under {h.host.root}")

    h.keeper._manifest = gone
    with caplog.at_level(logging.INFO, logger=LOGGER):
        await h.keeper.refresh("driver files changed")
    assert not h.path.exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"Removed CDI spec {h.path}: no NVIDIA driver found under {h.host.root}"]
    with pytest.raises(DriverNotFound):
        h.keeper.current()
    await h.keeper.refresh("again")  # nothing left to remove, nothing said
    assert len(caplog.records) == 1


async def test_nvml_gone_takes_the_spec_away(harness):
    h = await harness()
    await h.keeper.refresh("start-up")
    config = json.loads(h.host.nvml_config.read_text())
    h.host.nvml_config.write_text(json.dumps({**config, "init_error": "DRIVER_NOT_LOADED"}))
    await h.rediscover("driver files changed")
    assert not h.path.exists()
    with pytest.raises(NvmlError, match="the NVIDIA kernel module is not loaded"):
        h.keeper.current()


async def test_without_a_cdi_dir_the_spec_is_only_served(harness, tmp_path):
    h = await harness(path=None)
    await h.keeper.refresh("start-up")
    assert h.keeper.current().device("all") is not None
    assert not (tmp_path / "cdi").exists()


async def test_a_file_that_is_not_ours_is_replaced(harness, caplog):
    h = await harness()
    h.path.parent.mkdir(parents=True)
    h.path.write_text('{"cdiVersion": "0.7.0", "kind": "nvidia.com/gpu", "devices": []}')
    with caplog.at_level(logging.INFO, logger=LOGGER):
        await h.keeper.refresh("start-up")
    assert read_spec(h.path) == h.keeper.current()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith(f"Replacing {h.path}: not a CDI spec nvplugin writes")
    assert messages[1].startswith(f"Wrote CDI spec {h.path} (start-up): new spec")


async def test_an_unwritable_directory_is_one_error_line_and_the_spec_is_still_served(
        harness, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    h = await harness(path=blocker / "cdi" / "nvidia-docker.json")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        await h.keeper.refresh("start-up")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"Error: cannot write the CDI spec {h.path}: Not a directory")
    assert "--cdi-dir" in line
    assert h.keeper.current().device("0") is not None


async def test_the_age_metric_follows_the_files_content(harness):
    h = await harness()
    assert h.keeper.age() is None
    await h.keeper.refresh("start-up")
    age = h.keeper.age()
    assert age is not None and 0 <= age < 5
    old = os.stat(h.path).st_mtime - 3600
    os.utime(h.path, (old, old))  # as a previous daemon left it an hour ago, up to date
    successor = SpecKeeper(path=h.path, kind="nvidia.com/gpu", host_root=Path("/"),
                           gpus=h.gpus, manifest=h.driver.manifest)
    await successor.refresh("start-up")
    age = successor.age()
    assert age is not None and 3590 < age < 3700
    successor._manifest = lambda: (_ for _ in ()).throw(DriverNotFound("gone"))
    await successor.refresh("driver gone")
    assert successor.age() is None
    idle = SpecKeeper(path=None, kind="nvidia.com/gpu", host_root=Path("/"), gpus=h.gpus,
                      manifest=h.driver.manifest)
    await idle.refresh("start-up")
    assert idle.age() is None
