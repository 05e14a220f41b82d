"""VolumeStore: layout, lazy and exclusive builds, removal, mount counts, upgrades, crashes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
from pathlib import Path

import pytest

from nvplugin.core.errors import (
    ConfigError,
    DriverNotFound,
    VolumeBuildError,
    VolumeInUse,
    VolumeNameError,
    VolumeNotFound,
    VolumeVersionError,
)
from nvplugin.driver.manifest import Entry
from nvplugin.volumes.build import build_volume
from nvplugin.volumes.reports import BuildReport
from nvplugin.volumes.store import VolumeStore
from tests.volumes.conftest import VERSION, Driver, make_manifest, tree

NAME = f"nvidia_driver_{VERSION}"


async def test_create_builds_the_1_0_layout_with_links(store: VolumeStore, driver: Driver):
    await store.create(NAME)
    root = store.volumes_dir / "nvidia_driver" / VERSION
    got = tree(root)
    assert got["bin"] == got["lib"] == got["lib64"] == "dir"
    assert got["bin/nvidia-smi"] == "file:755"
    assert got[f"lib64/libcuda.so.{VERSION}"] == "file:644"
    assert got[f"firmware/nvidia/{VERSION}/gsp_ga10x.bin"] == "file:444"
    assert got["lib64/libcuda.so.1"] == got["lib64/libcuda.so"] == f"-> libcuda.so.{VERSION}"
    assert got["lib64/libGLX_indirect.so.0"] == f"-> libGLX_nvidia.so.{VERSION}"
    assert got["lib/libcuda.so.1"] == f"-> libcuda.so.{VERSION}"
    assert (root / "lib64/libcuda.so").read_bytes() == Path(
        driver.manifest.entries[2].source).read_bytes()
    assert sum(1 for v in got.values() if v.startswith("file")) == len(driver.manifest.entries)
    # Same filesystem: every file is a hard link to the driver's own inode.
    for entry in driver.manifest.entries:
        assert os.stat(root / entry.dest).st_ino == os.stat(entry.source).st_ino
    assert store.builds == 1


async def test_directories_are_world_readable_whatever_the_umask(store: VolumeStore):
    old = os.umask(0o077)
    try:
        await store.create(NAME)
    finally:
        os.umask(old)
    root = store.volumes_dir / "nvidia_driver" / VERSION
    for d in (root, root / "bin", root / "lib64", root / f"firmware/nvidia/{VERSION}"):
        assert d.stat().st_mode & 0o777 == 0o755, d


async def test_create_is_idempotent_and_builds_once(store: VolumeStore):
    await store.create(NAME)
    await store.create(NAME)
    assert store.builds == 1


@pytest.mark.parametrize("call", ["mount", "path", "get"])
async def test_current_volume_is_built_lazily(store: VolumeStore, call: str):
    if call == "mount":
        where = await store.mount(NAME, "a" * 64)
    elif call == "path":
        where = await store.path(NAME)
    else:
        where = (await store.get(NAME)).mountpoint
    assert where == str(store.volumes_dir / "nvidia_driver" / VERSION)
    assert Path(where, "bin/nvidia-smi").is_file()
    assert store.builds == 1


async def test_other_versions_cannot_be_created(store: VolumeStore):
    with pytest.raises(VolumeVersionError, match=r"^invalid volume version: nvidia_driver_1\.2 "):
        await store.create("nvidia_driver_1.2")
    for call in (store.path, store.get):
        with pytest.raises(VolumeNotFound, match=r"^no such volume: nvidia_driver_1\.2$"):
            await call("nvidia_driver_1.2")
    with pytest.raises(VolumeNotFound):
        await store.mount("nvidia_driver_1.2", "x")
    assert store.builds == 0


@pytest.mark.parametrize(("name", "message"), [
    ("myvolume", "bad volume format: myvolume"),
    ("a" * 64, "bad volume format: " + "a" * 64),
    ("nvidia_driver_", "bad volume format: nvidia_driver_"),
    ("nvidia_driver_..", "bad volume format: nvidia_driver_.."),
    ("nvidia_driver_1..2", "bad volume format: nvidia_driver_1..2"),
    ("nvidia_driver_1/2", "bad volume format: nvidia_driver_1/2"),
    ("../nvidia_driver_1", "bad volume format: ../nvidia_driver_1"),
    ("nvidia_driver_1\x002", "bad volume format: nvidia_driver_1\\x002"),
    ("nvidia_driver_1\n", "bad volume format: nvidia_driver_1\\x0a"),
    ("nvidia_opencl_1.0", "unsupported volume: nvidia_opencl_1.0"),
], ids=["plain", "anonymous", "no-version", "dotdot", "empty-part", "slash", "parent", "nul",
        "newline", "other-kind"])
async def test_names_outside_the_grammar_are_refused(store: VolumeStore, name: str,
                                                     message: str):
    for call in (store.create, store.remove, store.path, store.get):
        with pytest.raises(VolumeNameError) as info:
            await call(name)
        assert str(info.value) == message
    assert os.listdir(store.kind_dir) == []


async def test_huge_names_are_refused_with_a_short_message(store: VolumeStore):
    name = "nvidia_driver_" + "1" * 100_000
    with pytest.raises(VolumeNameError) as info:
        await store.create(name)
    assert len(str(info.value)) < 200
    assert str(info.value).startswith("bad volume format: nvidia_driver_111")


async def test_fifty_concurrent_requests_share_one_build(store: VolumeStore):
    calls = [store.mount(NAME, f"{i:064x}") for i in range(25)]
    calls += [store.create(NAME) for _ in range(15)]
    calls += [store.get(NAME) for _ in range(10)]
    results = await asyncio.gather(*calls)
    assert store.builds == 1
    assert set(results[:25]) == {str(store.kind_dir / VERSION)}
    assert store.mounts.count(NAME) == 25


async def test_remove_refused_while_mounted_then_deletes(store: VolumeStore):
    await store.mount(NAME, "id1")
    await store.mount(NAME, "id1")  # docker cp on a running container: same ID twice
    await store.mount(NAME, "id2")
    with pytest.raises(VolumeInUse, match=rf"^volume {NAME} is in use by 3 container\(s\)$"):
        await store.remove(NAME)
    await store.unmount(NAME, "id1")
    await store.unmount(NAME, "id2")
    await store.unmount(NAME, "never-mounted")  # unknown IDs are fine
    with pytest.raises(VolumeInUse, match="in use by 1 container"):
        await store.remove(NAME)
    await store.unmount(NAME, "id1")
    await store.remove(NAME)
    assert os.listdir(store.kind_dir) == []
    await store.remove(NAME)  # already gone: fine, as 1.0
    assert await store.list() == []


async def test_mount_counts_survive_a_restart(tmp_path: Path, driver: Driver):
    first = VolumeStore(tmp_path / "volumes", driver)
    await first.start()
    await first.mount(NAME, "running-container")
    await first.close()
    state = tmp_path / "volumes" / "state.json"
    assert state.stat().st_mode & 0o777 == 0o600

    second = VolumeStore(tmp_path / "volumes", driver)
    await second.start()
    with pytest.raises(VolumeInUse):
        await second.remove(NAME)
    assert (await second.get(NAME)).mounts == 1
    await second.unmount(NAME, "running-container")
    await second.remove(NAME)
    await second.close()
    assert second.builds == 0  # the restart reused the volume


async def test_driver_upgrade_keeps_old_volume_mounted_and_removable(
        store: VolumeStore, driver: Driver, tmp_path: Path):
    old = await store.mount(NAME, "old-container")
    driver.manifest = make_manifest(tmp_path / "driver", "590.10")
    new = await store.mount("nvidia_driver_590.10", "new-container")
    assert old != new and Path(new, "lib64/libcuda.so.590.10").is_file()
    assert await store.path(NAME) == old  # the old one stays usable
    with pytest.raises(VolumeVersionError, match=r"this host.s driver is 590\.10"):
        await store.create("nvidia_driver_1.0")
    assert [v.name for v in await store.list()] == [NAME, "nvidia_driver_590.10"]
    await store.unmount(NAME, "old-container")
    await store.remove(NAME)
    assert [v.name for v in await store.list()] == ["nvidia_driver_590.10"]


async def test_no_driver_gives_the_reason(store: VolumeStore, driver: Driver):
    driver.error = DriverNotFound("no libcuda.so.* or libnvidia-ml.so.* under /nope")
    with pytest.raises(DriverNotFound, match="under /nope"):
        await store.create(NAME)
    driver.error = None
    await store.create(NAME)
    driver.error = DriverNotFound("gone")
    assert await store.mount(NAME, "x")  # an existing volume needs no driver


async def test_failed_build_leaves_nothing_and_names_the_file(store: VolumeStore,
                                                              driver: Driver, tmp_path: Path):
    missing = str(tmp_path / "driver" / "gone.so")
    driver.manifest = driver.manifest.__class__(
        VERSION, (*driver.manifest.entries,
                  Entry(missing, "lib64/gone.so", "lib", "compute", "x", ident=(1, 1))))
    with pytest.raises(VolumeBuildError) as info:
        await store.create(NAME)
    assert str(info.value) == f"cannot build {NAME}: {missing}: No such file or directory"
    assert os.listdir(store.kind_dir) == []
    with pytest.raises(VolumeBuildError):
        await store.mount(NAME, "x")
    assert store.mounts.count(NAME) == 0


async def test_escaping_destinations_are_refused(store: VolumeStore, driver: Driver):
    src = driver.manifest.entries[0].source
    driver.manifest = driver.manifest.__class__(
        VERSION, (Entry(src, "../../escaped", "bin", "compute", "x"),))
    with pytest.raises(VolumeBuildError, match=r"\.\./\.\./escaped: the path must stay inside"):
        await store.create(NAME)
    assert not (store.volumes_dir / "escaped").exists()


async def test_crash_leftovers_are_cleaned_at_start(tmp_path: Path, driver: Driver):
    kind_dir = tmp_path / "volumes" / "nvidia_driver"
    kind_dir.mkdir(parents=True)
    half = kind_dir / f".{VERSION}.tmp-0badf00d"
    (half / "lib64").mkdir(parents=True)
    (half / "lib64" / "libcuda.so.1").write_bytes(b"half")
    (kind_dir / ".1.0.rm-deadbeef").mkdir()
    store = VolumeStore(tmp_path / "volumes", driver)
    await store.start()
    assert sorted(os.listdir(kind_dir)) == []
    assert await store.list() == []
    with pytest.raises(VolumeNotFound):
        await store.get("nvidia_driver_1.0")
    await store.close()


async def test_build_never_exposes_a_partial_volume(tmp_path: Path, driver: Driver):
    """While a build runs, only a hidden temp dir exists; the rename is the only publish."""
    from nvplugin.driver.hostroot import OpenFile
    from nvplugin.volumes.clone import Cloner, Method

    seen: list[list[str]] = []

    class Watching(Cloner):
        def clone(self, src: OpenFile, dst: str, dst_dev: int | None = None) -> Method:
            seen.append(os.listdir(tmp_path / "kind"))
            return super().clone(src, dst, dst_dev)

    build_volume(driver.manifest, tmp_path / "kind", NAME, Watching())
    assert all(len(names) == 1 and re.match(rf"^\.{VERSION}\.tmp-[0-9a-f]+$", names[0])
               for names in seen)
    assert os.listdir(tmp_path / "kind") == [VERSION]


async def test_list_and_get_report_created_at_in_rfc3339(store: VolumeStore):
    await store.create(NAME)
    (store.kind_dir / "not-a-version").mkdir()
    (store.kind_dir / "1.0").write_text("a file, not a volume")
    (infos,) = [await store.list()]
    assert [i.name for i in infos] == [NAME]
    info = await store.get(NAME)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", info.created_at or "")
    assert info.mountpoint == str(store.kind_dir / VERSION)


async def test_an_unwritable_volumes_dir_is_a_build_error(store: VolumeStore, tmp_path: Path):
    store.kind_dir.rmdir()
    store.kind_dir.write_text("a file where the kind directory belongs")
    with pytest.raises(VolumeBuildError) as info:
        await store.create(NAME)
    assert str(info.value).startswith(f"cannot build {NAME}: {store.kind_dir}")
    assert "File exists" in str(info.value) or "Not a directory" in str(info.value)


async def test_an_unusable_volumes_dir_stops_the_start_with_a_reason(tmp_path: Path,
                                                                     driver: Driver):
    (tmp_path / "file").write_text("not a directory")
    store = VolumeStore(tmp_path / "file" / "volumes", driver)
    with pytest.raises(ConfigError, match=r"volumes: Not a directory; choose another with -d$"):
        await store.start()


async def test_the_lock_table_keeps_no_entry_for_names_only_asked_about(store: VolumeStore):
    """Docker may ask Get/Mount/Path/Create/Remove about any name: none of them leaves a lock."""
    for i in range(300):
        name = f"nvidia_driver_{i}.{i % 7}.{i % 13}"
        for call in (store.get(name), store.mount(name, "b" * 64), store.path(name)):
            with pytest.raises(VolumeNotFound):
                await call
        with pytest.raises(VolumeVersionError):
            await store.create(name)
        await store.remove(name)  # nothing to remove
    assert store._locks == {}
    await store.mount(NAME, "a" * 64)
    await store.unmount(NAME, "a" * 64)
    await store.remove(NAME)
    assert store._locks == {} and store.builds == 1


async def _until(predicate) -> None:
    for _ in range(1000):  # 10 s: far beyond what a few loop turns and thread hops take
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the store never got there")


async def test_a_volume_lock_lives_while_held_or_awaited(tmp_path: Path, driver: Driver):
    gate = threading.Event()

    def slow_driver():
        gate.wait(30)
        return driver()

    store = VolumeStore(tmp_path / "volumes", slow_driver)
    await store.start()
    try:
        mounts = [asyncio.create_task(store.mount(NAME, f"{i:064x}")) for i in range(10)]
        # one building (held at the gate), nine waiting for it
        await _until(lambda: VERSION in store._locks and store._locks[VERSION].users == 10)
        waiter = asyncio.create_task(store.get(NAME))
        await _until(lambda: store._locks[VERSION].users == 11)
        waiter.cancel()  # a waiter that gives up is no longer counted
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        assert list(store._locks) == [VERSION] and store._locks[VERSION].users == 10
        gate.set()
        await asyncio.gather(*mounts)
    finally:
        gate.set()
        await store.close()
    assert store.builds == 1 and store.mounts.count(NAME) == 10
    assert store._locks == {}


async def test_a_mount_racing_a_remove_of_the_current_volume_gets_it_built_again(
        store: VolumeStore):
    """`docker volume rm` and a container start at once: the Mount used to find the volume,
    lose it to the Remove, and answer `no such volume` for the current driver's volume."""
    outcomes: set[str] = set()
    for i in range(30):
        await store.create(NAME)
        mount_id = f"c{i}"
        removed, mounted = await asyncio.gather(store.remove(NAME), store.mount(NAME, mount_id),
                                                return_exceptions=True)
        assert isinstance(mounted, str), mounted  # never VolumeNotFound
        assert os.path.isdir(mounted) and store.mounts.count(NAME) == 1
        outcomes.add("removed, then built again" if removed is None else type(removed).__name__)
        await store.unmount(NAME, mount_id)
    assert outcomes <= {"removed, then built again", "VolumeInUse"}


async def test_each_build_is_reported_with_its_time_and_bytes(tmp_path: Path, driver: Driver):
    reports: list[BuildReport] = []
    store = VolumeStore(tmp_path / "volumes", driver, on_build=reports.append)
    await store.start()
    try:
        await store.create(NAME)
        await store.create(NAME)  # already there: no build, no report
        size = sum(Path(e.source).stat().st_size for e in driver.manifest.entries)
        assert [(r.name, r.size, r.ok) for r in reports] == [(NAME, size, True)]
        assert reports[0].seconds > 0
        await store.remove(NAME)
        driver.manifest = driver.manifest.__class__(
            VERSION, (Entry(str(tmp_path / "gone.so"), "lib64/gone.so", "lib", "compute", "x",
                            ident=(1, 1)),))
        with pytest.raises(VolumeBuildError):
            await store.create(NAME)
        assert [(r.size, r.ok) for r in reports[1:]] == [(0, False)]
    finally:
        await store.close()
