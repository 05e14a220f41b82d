"""Which Docker mounts hold which volume, persisted so a daemon restart forgets nothing.

Docker's mount ID is a random 64-hex string per container mount point, and the same ID can be
mounted twice (`docker cp` on a running container), so each (volume, ID) pair has a counter.
Unmounting an ID we never saw succeeds: after a restart or with --live-restore Docker unmounts
IDs a plugin may not know. The table is saved as `state.json` (0600) with an atomic write before
a Mount or Unmount is answered; concurrent changes share one write (group commit).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from nvplugin.core.atomicfile import write_atomic
from nvplugin.core.errors import UnsafeFileError
from nvplugin.core.regularfile import read_file
from nvplugin.core.text import escape_controls, parse_json
from nvplugin.volumes.names import MAX_MOUNT_ID, MAX_NAME, shown

log = logging.getLogger(__name__)

STATE_FORMAT = 1
MAX_STATE = 16 << 20  # a thousand containers' mounts take ~100 KB
# Docker mounts one ID more than once only for `docker cp` and the like; a count beyond this is
# damage, not use (a 4000-digit count was once accepted and held its volume forever).
MAX_COUNT = 1 << 20
STATE_FILE = "state.json"  # in the volumes directory


class MountTable:
    """Counters per volume name and mount ID; `await persist()` after each change."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._counts: dict[str, dict[str, int]] = {}
        self._changes = 0  # bumped on every change
        self._saved = 0  # the change number the file on disk reflects
        self._save_lock = asyncio.Lock()

    # -- reading -----------------------------------------------------------------------------
    def count(self, name: str) -> int:
        """How many mounts hold `name` (the sum over its mount IDs)."""
        return sum(self._counts.get(name, {}).values())

    # -- changing (in memory; call persist() before answering) -------------------------------
    def counts(self) -> dict[str, int]:
        """Mounts held per volume name (/metrics)."""
        return {name: sum(ids.values()) for name, ids in self._counts.items()}

    def add(self, name: str, mount_id: str) -> int:
        ids = self._counts.setdefault(name, {})
        ids[mount_id] = ids.get(mount_id, 0) + 1
        self._changes += 1
        return ids[mount_id]

    def release(self, name: str, mount_id: str) -> int:
        """Drop one mount of `mount_id`; returns what is left for that ID (0 when unknown)."""
        ids = self._counts.get(name)
        if not ids or mount_id not in ids:
            return 0
        left = ids[mount_id] - 1
        if left > 0:
            ids[mount_id] = left
        else:
            del ids[mount_id]
            if not ids:
                del self._counts[name]
        self._changes += 1
        return left

    def forget(self, name: str) -> None:
        if self._counts.pop(name, None) is not None:
            self._changes += 1

    # -- disk --------------------------------------------------------------------------------
    def load(self) -> None:
        """Read the saved table (blocking). A missing file is an empty table; a damaged one (not
        JSON, nested or numbered beyond reason, not a regular file, too large) is set aside as
        `state.json.corrupt` so the daemon still starts."""
        try:
            raw = read_file(self.path, MAX_STATE)
            self._counts = _decode(raw)
        except FileNotFoundError:
            self._counts = {}
        except (ValueError, UnsafeFileError) as err:
            aside = self.path.with_name(self.path.name + ".corrupt")
            self.path.replace(aside)
            why = err.message if isinstance(err, UnsafeFileError) else str(err)
            log.warning("Ignoring damaged mount state %s (%s); kept as %s",
                        self.path, escape_controls(why[:200]), aside)
            self._counts = {}
        self._saved = self._changes

    def encode(self) -> bytes:
        body = {"format": STATE_FORMAT, "mounts": self._counts}
        return (json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n").encode()

    async def persist(self) -> None:
        """Make every change so far durable. Callers that arrive while a write runs are covered
        by the next single write instead of each writing the file."""
        wanted = self._changes
        async with self._save_lock:
            if self._saved >= wanted:
                return
            snapshot, data = self._changes, self.encode()
            await asyncio.to_thread(write_atomic, self.path, data, 0o600)
            self._saved = snapshot


def read_counts(path: Path) -> dict[str, int]:
    """Mounts per volume name as the daemon last saved them, read without changing anything
    (doctor's view; blocking). {} without a file; ValueError when it is damaged."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return {}
    return {name: sum(ids.values()) for name, ids in _decode(raw).items()}


def _decode(raw: bytes) -> dict[str, dict[str, int]]:
    try:
        body: Any = parse_json(raw)
    except ValueError as err:
        raise ValueError(f"not JSON: {err}") from err
    if not isinstance(body, dict) or body.get("format") != STATE_FORMAT:
        raise ValueError(f"expected an object with format {STATE_FORMAT}")
    mounts = body.get("mounts")
    if not isinstance(mounts, dict):
        raise ValueError("'mounts' is not an object")
    table: dict[str, dict[str, int]] = {}
    for name, ids in mounts.items():
        if len(name) > MAX_NAME:
            raise ValueError(f"a volume name longer than {MAX_NAME} characters")
        if not isinstance(ids, dict):
            raise ValueError(f"mounts of {shown(name)!r} is not an object")
        kept = {}
        for mount_id, count in ids.items():
            if len(mount_id) > MAX_MOUNT_ID:
                raise ValueError(f"a mount ID longer than {MAX_MOUNT_ID} characters")
            if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
                continue  # not a count this daemon writes: that mount is not held
            if count > MAX_COUNT:
                raise ValueError("a mount count of " + (
                    f"{count}" if count < 10**30 else f"{len(str(count))} digits")
                    + f", over {MAX_COUNT}")
            kept[mount_id] = count
        if kept:
            table[name] = kept
    return table
