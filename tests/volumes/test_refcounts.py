"""Mount counters per (volume, Docker mount ID), persisted atomically."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from nvplugin.core.atomicfile import write_atomic
from nvplugin.volumes import mount_table
from nvplugin.volumes.mount_table import MountTable

V = "nvidia_driver_1.0"


def saved(table: MountTable) -> dict[str, dict[str, int]]:
    """What the table would write to state.json: counters per volume and mount ID."""
    return json.loads(table.encode())["mounts"]


async def test_counters_per_id(tmp_path: Path):
    table = MountTable(tmp_path / "state.json")
    assert table.add(V, "a") == 1
    assert table.add(V, "a") == 2
    table.add(V, "b")
    assert (table.count(V), saved(table)) == (3, {V: {"a": 2, "b": 1}})
    assert table.release(V, "a") == 1
    assert table.release(V, "nope") == 0
    assert table.release("nvidia_driver_9", "a") == 0
    table.release(V, "a")
    table.release(V, "b")
    assert (table.count(V), saved(table)) == (0, {})


async def test_saved_atomically_with_mode_0600_and_reloaded(tmp_path: Path):
    path = tmp_path / "state.json"
    table = MountTable(path)
    table.add(V, "a")
    table.add("nvidia_driver_2.0", "b")
    await table.persist()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {
        "format": 1, "mounts": {V: {"a": 1}, "nvidia_driver_2.0": {"b": 1}}}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp files left
    again = MountTable(path)
    again.load()
    assert saved(again)[V] == {"a": 1} and again.count("nvidia_driver_2.0") == 1


async def test_concurrent_changes_share_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    writes: list[bytes] = []

    def slow_write(path: Path, data: bytes, mode: int = 0o644) -> None:
        writes.append(data)
        write_atomic(path, data, mode)

    monkeypatch.setattr(mount_table, "write_atomic", slow_write)
    table = MountTable(tmp_path / "state.json")

    async def mount(i: int) -> None:
        table.add(V, f"id{i}")
        await table.persist()

    await asyncio.gather(*(mount(i) for i in range(50)))
    assert 1 <= len(writes) < 50
    assert json.loads(writes[-1])["mounts"][V] == {f"id{i}": 1 for i in range(50)}
    await table.persist()  # nothing changed: nothing written
    assert len(writes) == len(set(writes))


async def test_damaged_state_is_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path = tmp_path / "state.json"
    path.write_text('{"format": 1, "mounts": [')
    table = MountTable(path)
    table.load()
    assert saved(table) == {}
    assert (tmp_path / "state.json.corrupt").read_text().startswith('{"format"')
    assert "Ignoring damaged mount state" in caplog.text


@pytest.mark.parametrize("body", [
    {"format": 2, "mounts": {}}, {"format": 1, "mounts": []}, {"format": 1, "mounts": {V: 3}},
], ids=["future-format", "mounts-list", "ids-not-object"])
async def test_foreign_state_is_refused(tmp_path: Path, body: object):
    path = tmp_path / "state.json"
    path.write_text(json.dumps(body))
    table = MountTable(path)
    table.load()
    assert saved(table) == {} and (tmp_path / "state.json.corrupt").exists()


@pytest.mark.parametrize(("raw", "why"), [
    (b'{"format": 1, "mounts": {"a": ' * 2_000 + b"1" + b"}}" * 2_000,
     "nested 4000 levels deep (at most 64)"),
    (b'{"format": 1, "mounts": {"nvidia_driver_1.0": {"c1": ' + b"9" * 4_000 + b"}}}",
     "a mount count of 4000 digits"),
    (b'{"format": 1, "mounts": {"nvidia_driver_1.0": {"c1": 1000000000000}}}',
     "a mount count of 1000000000000"),
    (b'{"format": 1, "mounts": {"nvidia_driver_1.0": {"' + b"i" * 300 + b'": 1}}}',
     "a mount ID longer than 256 characters"),
    (b'{"format": 1, "mounts": {"' + b"n" * 300 + b'": {"c1": 1}}}',
     "a volume name longer than 255 characters"),
], ids=["nesting", "4000-digits", "huge-count", "long-id", "long-name"])
async def test_hostile_state_is_set_aside_and_bounded(tmp_path: Path, raw: bytes, why: str,
                                                      caplog: pytest.LogCaptureFixture):
    path = tmp_path / "state.json"
    path.write_bytes(raw)
    table = MountTable(path)
    table.load()  # the daemon starts: no RecursionError, no 4000-digit count kept
    assert saved(table) == {}
    assert (tmp_path / "state.json.corrupt").read_bytes() == raw
    assert not path.exists()
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert line.startswith(f"Ignoring damaged mount state {path} (") and why in line
    assert len(line) < 400


async def test_state_that_is_no_regular_file_is_set_aside_without_blocking(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path = tmp_path / "state.json"
    os.mkfifo(path)
    table = MountTable(path)
    await asyncio.wait_for(asyncio.to_thread(table.load), 10)
    assert saved(table) == {} and stat.S_ISFIFO(os.lstat(tmp_path / "state.json.corrupt").st_mode)
    assert "is a FIFO, not a regular file" in caplog.text


async def test_write_atomic_replaces_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "spec"
    write_atomic(target, b"one", 0o644)
    inode = target.stat().st_ino
    write_atomic(target, b"two", 0o640)
    assert target.read_bytes() == b"two" and target.stat().st_ino != inode
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["spec"]
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing-dir" / "x", b"")
    assert os.listdir(tmp_path) == ["spec"]
