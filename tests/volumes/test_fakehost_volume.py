"""A volume built from what discovery finds on the fake driver host (gcc ELF files, ld.so.cache)."""

from __future__ import annotations

import os
from pathlib import Path

from nvplugin.driver.discovery import discover
from nvplugin.volumes.clone import Method
from nvplugin.volumes.store import VolumeStore
from tests.fakehost.build import FakeHost
from tests.volumes.conftest import tree


async def _build(fake_host: FakeHost, volumes_dir: Path) -> tuple[VolumeStore, Path]:
    manifest = discover(fake_host.root)
    store = VolumeStore(volumes_dir, lambda: manifest)
    await store.start()
    path = Path(await store.mount(f"nvidia_driver_{fake_host.version}", "c" * 64))
    await store.close()
    return store, path


async def test_volume_holds_every_selected_file_and_link(fake_host: FakeHost, tmp_path: Path):
    manifest = discover(fake_host.root)
    store, root = await _build(fake_host, tmp_path / "volumes")
    got = tree(root)
    for entry in manifest.entries:
        assert got[entry.dest].startswith("file:"), entry.dest
        assert os.stat(root / entry.dest).st_ino == os.stat(entry.source).st_ino  # linked
    for link in manifest.links:
        assert got[link.path] == f"-> {link.target}", link.path
        assert (root / link.path).resolve().is_file(), link.path  # no dangling link
    v = fake_host.version
    assert got["lib64/libcuda.so"] == f"-> libcuda.so.{v}"
    assert got["lib64/libGLX_indirect.so.0"] == f"-> libGLX_nvidia.so.{v}"
    assert "bin/nvidia-smi" in got and {"bin", "lib", "lib64"} <= set(got)
    assert fake_host.expected_dests <= set(got)
    assert store.cloner.used[Method.LINK] == len(manifest.entries)


async def test_same_volume_copied_onto_a_tmpfs(fake_host: FakeHost, tmp_path: Path, tmpfs: Path):
    _store, linked = await _build(fake_host, tmp_path / "linked")
    store, copied = await _build(fake_host, tmpfs / "volumes")
    assert tree(copied) == tree(linked)
    assert store.cloner.used[Method.COPY] == len(discover(fake_host.root).entries)
    smi = copied / "bin" / "nvidia-smi"
    assert smi.read_bytes() == (linked / "bin" / "nvidia-smi").read_bytes()
    assert os.access(smi, os.X_OK)
