"""A build copies or links only the files discovery inspected, from inside the driver root.

The attack: after discovery, a driver file is replaced by a link to a secret outside the root
(or its directory by a link to another directory). Before, the build reopened the plain host
path and put the secret into the volume, byte for byte (copy) or as the very inode (link).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nvplugin.core.errors import VolumeBuildError
from nvplugin.driver import hostroot
from nvplugin.driver.discovery import discover
from nvplugin.volumes.build import build_volume
from nvplugin.volumes.clone import Cloner, Method
from tests.fakehost.build import FakeHost

SECRET = b"root:$6$secret-hash:19000:0:99999:7:::\n"


@pytest.fixture(params=["link", "copy"])
def cloner(request: pytest.FixtureRequest) -> Cloner:
    return Cloner() if request.param == "link" else Cloner((Method.COPY,))


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "walk":
        monkeypatch.setattr(hostroot, "_openat2", lambda: None)
    elif hostroot._openat2() is None:
        pytest.skip("this kernel has no openat2; the walk covers it")
    return request.param


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "shadow"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    return secret


def _contents(directory: Path) -> list[bytes]:
    return [p.read_bytes() for p in directory.rglob("*") if p.is_file() and not p.is_symlink()]


def test_a_file_swapped_for_a_link_out_is_refused(fake_host: FakeHost, tmp_path: Path,
                                                  cloner: Cloner, resolver: str):
    manifest = discover(fake_host.root)
    entry = next(e for e in manifest.entries if e.dest.startswith("lib64/libcuda.so."))
    os.unlink(entry.source)
    os.symlink(_secret(tmp_path), entry.source)
    kind_dir = tmp_path / "volumes" / "nvidia_driver"
    with pytest.raises(VolumeBuildError) as raised:
        build_volume(manifest, kind_dir, "nvidia_driver_x", cloner)
    assert raised.value.message.startswith(f"cannot build nvidia_driver_x: {entry.source}")
    assert SECRET not in _contents(tmp_path / "volumes")
    assert os.listdir(kind_dir) == []  # nothing half-built left


def test_a_file_replaced_since_discovery_is_refused(fake_host: FakeHost, tmp_path: Path,
                                                    cloner: Cloner, resolver: str):
    manifest = discover(fake_host.root)
    entry = next(e for e in manifest.entries if e.dest == "bin/nvidia-smi")
    replacement = Path(entry.source).with_name(".new")
    replacement.write_bytes(SECRET)
    os.replace(replacement, entry.source)
    with pytest.raises(VolumeBuildError, match="is not the file discovery inspected"):
        build_volume(manifest, tmp_path / "volumes", "nvidia_driver_x", cloner)
    assert SECRET not in _contents(tmp_path / "volumes")
    # Discovered again, the new file is vetted and builds.
    build_volume(discover(fake_host.root), tmp_path / "volumes", "nvidia_driver_x", cloner)


def test_a_directory_swapped_for_a_link_out_is_refused(fake_host: FakeHost, tmp_path: Path,
                                                       cloner: Cloner, resolver: str):
    manifest = discover(fake_host.root)
    lib64 = fake_host.path(fake_host.lib64_dir)
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    for entry in manifest.entries:
        if Path(entry.source).parent == lib64:
            (decoy / Path(entry.source).name).write_bytes(SECRET)
    os.rename(lib64, tmp_path / "moved")
    os.symlink(decoy, lib64)
    with pytest.raises(VolumeBuildError, match="cannot build nvidia_driver_x"):
        build_volume(manifest, tmp_path / "volumes", "nvidia_driver_x", cloner)
    assert SECRET not in _contents(tmp_path / "volumes")


def test_an_entry_discovery_never_vetted_is_refused(fake_host: FakeHost, tmp_path: Path):
    from dataclasses import replace

    manifest = discover(fake_host.root)
    unvetted = replace(manifest, entries=(replace(manifest.entries[0], ident=None),))
    with pytest.raises(VolumeBuildError, match="not vetted by discovery"):
        build_volume(unvetted, tmp_path / "volumes", "nvidia_driver_x", Cloner())


async def test_setuid_driver_files_reach_the_volume_without_the_bit(fake_host: FakeHost,
                                                                    tmp_path: Path):
    smi = fake_host.path(f"{fake_host.bin_dir}/nvidia-smi")
    smi.chmod(0o4755)
    manifest = discover(fake_host.root)
    cloner = Cloner()
    volume = build_volume(manifest, tmp_path / "volumes", "nvidia_driver_x", cloner)
    placed = (volume / "bin/nvidia-smi").stat()
    assert placed.st_mode & 0o7777 == 0o755
    assert placed.st_ino != smi.stat().st_ino  # copied although the rest is linked
    assert cloner.used[Method.COPY] == 1
    assert cloner.used[Method.LINK] == len(manifest.entries) - 1
