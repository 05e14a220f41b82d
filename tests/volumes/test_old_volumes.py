"""Old drivers' volumes: kept while mounted, removed once nothing mounts them (unless kept), and
what the plugin protocol answers for one that is gone."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from nvplugin.core.errors import DriverNotFound, VolumeError, VolumeNotFound
from nvplugin.volumes.store import VolumeStore
from nvplugin.volumes.usage import disk_usage
from tests.volumes.conftest import VERSION, Driver, Plugin, make_manifest

OLD = f"nvidia_driver_{VERSION}"
NEW_VERSION = "590.10.01"
NEW = f"nvidia_driver_{NEW_VERSION}"


def upgrade(driver: Driver, tmp_path: Path) -> None:
    driver.manifest = make_manifest(tmp_path / "driver", NEW_VERSION)


def state(store: VolumeStore) -> dict:
    return json.loads(store.mounts.path.read_text())["mounts"]


def lines(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start)]


async def test_kept_while_mounted_then_removed_by_the_last_unmount(
        store: VolumeStore, driver: Driver, tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="nvplugin")
    await store.mount(OLD, "a")
    await store.mount(OLD, "b")
    upgrade(driver, tmp_path)
    [kept] = await store.collect_old()
    assert (kept.name, kept.removed, kept.mounts) == (OLD, False, 2)
    assert lines(caplog, "Keeping volume") == [
        f"Keeping volume {OLD} of driver {VERSION} (now {NEW_VERSION}): 2 container(s) mount it"]
    await store.unmount(OLD, "a")
    assert store.path_of(VERSION).is_dir()  # b still mounts it
    await store.unmount(OLD, "b")
    assert not store.path_of(VERSION).exists()
    assert OLD not in state(store)
    [removed] = lines(caplog, "Removed volume")
    assert removed.startswith(f"Removed volume {OLD} of driver {VERSION} (now {NEW_VERSION}), "
                              "mounted by no container: ")
    assert removed.endswith("MiB of them freed by removal")


async def test_collect_removes_every_unmounted_old_volume_and_never_the_current(
        store: VolumeStore, driver: Driver, tmp_path: Path):
    await store.create(OLD)
    driver.manifest = make_manifest(tmp_path / "driver", "585.1")
    await store.create("nvidia_driver_585.1")
    upgrade(driver, tmp_path)
    await store.create(NEW)
    removed = await store.collect_old()
    assert sorted(o.name for o in removed if o.removed) == [OLD, "nvidia_driver_585.1"]
    assert all(o.usage is not None and o.usage.total > 0 for o in removed)
    assert [v.name for v in await store.list()] == [NEW]
    assert await store.collect_old() == []


async def test_keep_old_keeps_them_after_unmount_but_collect_still_removes(
        tmp_path: Path, driver: Driver):
    store = VolumeStore(tmp_path / "volumes", driver, keep_old=True)
    await store.start()
    try:
        await store.mount(OLD, "a")
        upgrade(driver, tmp_path)
        await store.unmount(OLD, "a")
        assert store.path_of(VERSION).is_dir()
        [removed] = await store.collect_old()  # `gc` asks for it explicitly
        assert removed.removed and not store.path_of(VERSION).exists()
    finally:
        await store.close()


async def test_without_a_driver_nothing_is_old(store: VolumeStore, driver: Driver):
    await store.mount(OLD, "a")
    driver.error = DriverNotFound("no libcuda.so.* or libnvidia-ml.so.* under /nope")
    await store.unmount(OLD, "a")  # answered, and the volume stays: nothing to compare with
    assert store.path_of(VERSION).is_dir()
    with pytest.raises(DriverNotFound):
        await store.collect_old()


async def test_a_failed_removal_never_fails_the_unmount(store: VolumeStore, driver: Driver,
                                                        tmp_path: Path, caplog):
    await store.mount(OLD, "a")
    upgrade(driver, tmp_path)
    real = store._delete

    def refuse(version: str) -> None:  # as _delete fails on a read-only volumes directory
        raise VolumeError(f"cannot remove nvidia_driver_{version}: Permission denied")

    store._delete = refuse  # type: ignore[method-assign]
    try:
        await store.unmount(OLD, "a")
    finally:
        store._delete = real  # type: ignore[method-assign]
    assert lines(caplog, "Cannot remove old volume") == [
        f"Cannot remove old volume: cannot remove {OLD}: Permission denied"]
    assert store.path_of(VERSION).is_dir()


async def test_a_mount_racing_the_collection_is_either_counted_or_refused(
        store: VolumeStore, driver: Driver, tmp_path: Path):
    for attempt in range(20):
        await store.create(OLD) if attempt == 0 else None
        upgrade(driver, tmp_path)
        mount, collected = await asyncio.gather(store.mount(OLD, f"m{attempt}"),
                                                store.collect_old(), return_exceptions=True)
        if isinstance(mount, VolumeNotFound):
            assert not store.path_of(VERSION).exists()
            break
        assert isinstance(mount, str) and Path(mount).is_dir()  # counted first: kept
        assert [o.removed for o in collected] == [False]  # type: ignore[union-attr]
        await store.unmount(OLD, f"m{attempt}")  # the last unmount removes it
        assert not store.path_of(VERSION).exists()
        driver.manifest = make_manifest(tmp_path / "driver")
        await store.create(OLD)


async def test_the_protocol_after_removal(plugin: Plugin, driver: Driver, tmp_path: Path):
    """What Docker hears about a volume the plugin removed on its own: not listed, Get says
    `no such volume` (so `docker volume inspect` does), Remove succeeds (so `docker volume rm`
    can always drop Docker's own record), Mount is refused."""
    await plugin.call("/VolumeDriver.Mount", {"Name": OLD, "ID": "a"})
    upgrade(driver, tmp_path)
    await plugin.call("/VolumeDriver.Unmount", {"Name": OLD, "ID": "a"})
    assert await plugin.call("/VolumeDriver.List") == {"Volumes": None, "Err": None}
    assert await plugin.call("/VolumeDriver.Get", {"Name": OLD}) == {
        "Volume": None, "Err": f"no such volume: {OLD}"}
    assert await plugin.call("/VolumeDriver.Mount", {"Name": OLD, "ID": "b"}) == {
        "Mountpoint": None, "Err": f"no such volume: {OLD}"}
    assert await plugin.call("/VolumeDriver.Remove", {"Name": OLD}) == {"Err": None}


async def test_the_collect_route(plugin: Plugin, driver: Driver, tmp_path: Path):
    await plugin.call("/VolumeDriver.Mount", {"Name": OLD, "ID": "a"})
    driver.manifest = make_manifest(tmp_path / "driver", "585.1")
    await plugin.call("/VolumeDriver.Create", {"Name": "nvidia_driver_585.1"})
    upgrade(driver, tmp_path)
    answer = await plugin.call("/NvidiaDockerPlugin.CollectOldVolumes")
    assert answer["Err"] is None
    assert answer["Kept"] == [{"Name": OLD, "Mounts": 1}]
    [removed] = answer["Removed"]
    # Its files were hard links to the driver's, which still has them: removal frees nothing.
    assert removed["Name"] == "nvidia_driver_585.1" and removed["Bytes"] > 0
    assert removed["Freed"] == 0
    driver.error = DriverNotFound("no NVIDIA driver under /nope")
    assert await plugin.call("/NvidiaDockerPlugin.CollectOldVolumes") == {
        "Removed": None, "Kept": None, "Err": "no NVIDIA driver under /nope"}


def test_disk_usage_counts_what_removal_frees(tmp_path: Path):
    volume, elsewhere = tmp_path / "volume", tmp_path / "driver"
    volume.mkdir()
    elsewhere.mkdir()
    (volume / "only-here").write_bytes(b"x" * 10000)
    (elsewhere / "lib").write_bytes(b"y" * 20000)
    os.link(elsewhere / "lib", volume / "linked")  # the driver keeps its copy
    os.link(volume / "only-here", volume / "twice")  # two names, one inode, both inside
    (volume / "link").symlink_to("only-here")
    usage = disk_usage(volume)
    blocks = {name: os.stat(volume / name).st_blocks * 512 for name in ("only-here", "linked")}
    assert usage.total == blocks["only-here"] + blocks["linked"]
    assert usage.freed == blocks["only-here"]
    assert disk_usage(tmp_path / "missing").total == 0
