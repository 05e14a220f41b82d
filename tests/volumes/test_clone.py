"""Link when possible, copy when not: same fs, another fs (tmpfs), a read-only source; set-ID
bits and file capabilities never reach a volume."""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

import pytest

from nvplugin.core.errors import UnsafeFileError
from nvplugin.driver.hostroot import HostRoot
from nvplugin.volumes import clone
from nvplugin.volumes.clone import CloneError, Cloner, Method
from nvplugin.volumes.store import VolumeStore
from tests.volumes.conftest import (
    VERSION,
    Driver,
    make_manifest,
    mounted,
    read_only_copy,
    rebase,
    tree,
)

NAME = f"nvidia_driver_{VERSION}"


def place(cloner: Cloner, src: Path | str, dst: Path | str) -> Method:
    """Clone `src` as the build does: opened first (here inside the root `/`)."""
    with HostRoot("/").open_file(str(src)) as opened:
        return cloner.clone(opened, str(dst))


def _source(tmp_path: Path, mode: int = 0o750, data: bytes = b"\x7fELF driver bytes") -> Path:
    src = tmp_path / "src" / "libfoo.so.1"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    src.chmod(mode)
    os.utime(src, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    return src


def test_same_filesystem_links(tmp_path: Path):
    src = _source(tmp_path)
    cloner = Cloner()
    assert place(cloner, src, tmp_path / "dst") is Method.LINK
    assert os.stat(tmp_path / "dst").st_ino == src.stat().st_ino


def test_another_filesystem_copies_with_mode_and_time_and_decides_once(
    tmp_path: Path, tmpfs: Path, monkeypatch: pytest.MonkeyPatch
):
    data = os.urandom(3 * 1024 * 1024 + 7)
    src = _source(tmp_path, 0o751, data)
    cloner = Cloner()
    attempts: list[Method] = []
    for method, fill in list(clone._METHODS.items()):
        def counted(s: object, d: str, method=method, fill=fill) -> None:
            attempts.append(method)
            fill(s, d)
        monkeypatch.setitem(clone._METHODS, method, counted)
    calls: list[Method] = []
    for i in range(5):
        dst = tmpfs / f"copy{i}"
        calls.append(place(cloner, src, dst))
        st = dst.stat()
        assert dst.read_bytes() == data
        assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o751, 1_600_000_000_000_000_000)
        assert st.st_ino != src.stat().st_ino
    assert calls == [Method.COPY] * 5
    # link and reflink were tried once for this device pair, then skipped.
    assert attempts == [Method.LINK, Method.REFLINK] + [Method.COPY] * 5
    assert cloner.used == {Method.LINK: 0, Method.REFLINK: 0, Method.COPY: 5}


def test_the_decision_is_per_device_pair(tmp_path: Path, tmpfs: Path):
    src = _source(tmp_path)
    cloner = Cloner()
    assert place(cloner, src, tmpfs / "a") is Method.COPY
    assert place(cloner, src, tmp_path / "b") is Method.LINK


def test_read_only_source_is_copied(tmp_path: Path):
    src = _source(tmp_path)
    ro = tmp_path / "ro"
    with read_only_copy(src.parent, ro):
        with pytest.raises(OSError) as info:
            os.link(ro / src.name, tmp_path / "probe")
        assert info.value.errno in (errno.EXDEV, errno.EROFS, errno.EPERM)
        assert place(Cloner(), ro / src.name, tmp_path / "dst") is Method.COPY
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()


def test_a_real_failure_is_not_hidden_by_fallbacks(tmp_path: Path):
    src = _source(tmp_path)
    (tmp_path / "taken").write_text("x")
    with pytest.raises(CloneError) as info:
        place(Cloner(), src, tmp_path / "taken")
    assert info.value.errno == errno.EEXIST


def test_copy_failure_says_why_link_was_skipped(tmp_path: Path):
    src = _source(tmp_path, data=os.urandom(1024 * 1024))
    small = tmp_path / "small"
    small.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)):
        with pytest.raises(CloneError) as info:
            place(Cloner((Method.LINK, Method.COPY)), src, small / "dst")
        assert info.value.reason() == "No space left on device (link: Invalid cross-device link)"
        # The full disk is named, not the driver file that was being copied.
        assert info.value.filename == str(small / "dst")
        assert not (small / "dst").exists()  # no partial file left behind


@pytest.mark.parametrize("bits", [stat.S_ISUID, stat.S_ISGID, stat.S_ISUID | stat.S_ISGID],
                         ids=["setuid", "setgid", "both"])
def test_set_id_files_are_copied_without_the_bits_even_where_links_work(tmp_path: Path,
                                                                         bits: int):
    """Docker mounts volumes without nosuid: a kept bit would work in every GPU container."""
    src = _source(tmp_path, 0o755 | bits)
    plain = _source(tmp_path / "other", 0o755)
    cloner = Cloner()
    assert place(cloner, src, tmp_path / "dst") is Method.COPY
    st = (tmp_path / "dst").stat()
    assert st.st_ino != src.stat().st_ino and st.st_mode & 0o7777 == 0o755
    assert src.stat().st_mode & bits == bits  # the driver's own file is untouched
    # Only that file: the next one on the same device pair still links.
    assert place(cloner, plain, tmp_path / "dst2") is Method.LINK
    with pytest.raises(CloneError, match="set-user-ID or set-group-ID file is never linked"):
        place(Cloner((Method.LINK,)), src, tmp_path / "dst3")
    assert not (tmp_path / "dst3").exists()


def test_files_with_capabilities_are_copied_without_them(tmp_path: Path):
    src = _source(tmp_path, 0o755)
    # vfs_cap_data revision 2: cap_net_raw permitted and effective.
    os.setxattr(src, "security.capability", struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0))
    assert place(Cloner(), src, tmp_path / "dst") is Method.COPY
    assert "security.capability" not in os.listxattr(tmp_path / "dst")


def test_directories_and_devices_are_refused(tmp_path: Path):
    with pytest.raises(UnsafeFileError, match="is a directory, not a regular file"):
        place(Cloner(), tmp_path, tmp_path / "x")


async def test_volume_on_tmpfs_is_a_copy(tmp_path: Path, tmpfs: Path, driver: Driver):
    store = VolumeStore(tmpfs / "volumes", driver)
    await store.start()
    mountpoint = await store.mount(NAME, "c1")
    assert tree(Path(mountpoint)) == tree(await _linked_reference(tmp_path, driver))
    for entry in driver.manifest.entries:
        copied = Path(mountpoint, entry.dest)
        assert copied.stat().st_ino != os.stat(entry.source).st_ino
        assert copied.read_bytes() == Path(entry.source).read_bytes()
    assert store.cloner.used[Method.COPY] == len(driver.manifest.entries)
    assert store.cloner.used[Method.LINK] == 0
    await store.close()


async def test_read_only_driver_is_copied_into_the_volume(tmp_path: Path):
    """The GPU host's driver is on a read-only squashfs: 1.0 failed with EXDEV there."""
    manifest = make_manifest(tmp_path / "driver", "590.1")
    ro = tmp_path / "squash"
    with read_only_copy(tmp_path / "driver", ro):
        store = VolumeStore(tmp_path / "volumes", Driver(rebase(manifest, tmp_path / "driver", ro)))
        await store.start()
        mountpoint = Path(await store.path("nvidia_driver_590.1"))
        await store.close()
    assert (mountpoint / "lib64" / "libcuda.so.1").read_bytes().startswith(b"lib64/libcuda")
    assert store.cloner.used[Method.COPY] == len(manifest.entries)


async def _linked_reference(tmp_path: Path, driver: Driver) -> Path:
    store = VolumeStore(tmp_path / "reference", driver)
    await store.start()
    path = Path(await store.path(NAME))
    await store.close()
    return path
