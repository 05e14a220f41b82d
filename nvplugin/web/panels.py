"""The page's slow panels: the driver volumes (built or not, size, mounts held), the CDI spec's
state and `doctor`'s findings, read off the event loop and kept, so a page open costs no probe.

Doctor's probes take up to seconds (Docker, sockets, NVML): they run in a worker thread at most
once every `DOCTOR_MAX_AGE_S` while someone watches, and the page shows the last findings with
when they were made. A volume's size is measured once per build (volumes are immutable once
renamed into place; a rebuild has a new creation time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nvplugin.cdi.writer import SpecKeeper
from nvplugin.core.errors import NvpluginError
from nvplugin.volumes.names import VolumeInfo, parse_name
from nvplugin.volumes.store import VolumeStore

log = logging.getLogger(__name__)

DOCTOR_MAX_AGE_S = 60.0


class Finding(Protocol):
    """One of doctor's checks (`cli/doctor_checks.Check`): the page only reads these."""

    @property
    def check(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def detail(self) -> str: ...
    @property
    def fix(self) -> str: ...


Findings = Callable[[], Awaitable[Sequence[Finding]]]


@dataclass(frozen=True, slots=True)
class TreeSize:
    """The files under a directory and the bytes they take."""

    files: int
    bytes: int


def tree_size(path: Path) -> TreeSize:
    """Regular files under `path` and their apparent size (links not followed). Blocking."""
    files = size = 0
    for directory, _dirs, names in os.walk(path):
        for name in names:
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                files += 1
                size += st.st_size
    return TreeSize(files, size)


class Panels:
    def __init__(self, store: VolumeStore, driver_version: Callable[[], str | None],
                 doctor: Findings | None, cdi: SpecKeeper | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 doctor_max_age: float = DOCTOR_MAX_AGE_S) -> None:
        self._store = store
        self._driver_version = driver_version
        self._doctor = doctor
        self._cdi = cdi
        self._clock = clock
        self._wall = wall
        self._doctor_max_age = doctor_max_age
        self._sizes: dict[tuple[str, str | None], TreeSize] = {}
        self._findings: list[dict[str, str]] | None = None
        self._checked_at: float | None = None  # UNIX time of the last finished run
        self._doctor_error: str | None = None
        self._doctor_started = float("-inf")  # `clock` time
        self._doctor_task: asyncio.Task[None] | None = None

    # -- volumes

    async def volumes(self) -> dict[str, Any]:
        current = self._driver_version()
        infos = await self._store.list()
        sizes = await asyncio.to_thread(self._measure, infos)
        rows = [_volume_row(info, current, sizes[(info.name, info.created_at)])
                for info in infos]
        if current is not None and all(row["version"] != current for row in rows):
            rows.append({"name": f"{self._store.kind_dir.name}_{current}", "version": current,
                         "built": False, "current": True, "mounts": 0, "created": None,
                         "files": None, "bytes": None})
        return {"driver": current, "dir": str(self._store.volumes_dir), "volumes": rows}

    def _measure(self, infos: Sequence[VolumeInfo]) -> dict[tuple[str, str | None], TreeSize]:
        wanted = {(info.name, info.created_at): info.mountpoint for info in infos}
        for key, mountpoint in wanted.items():
            if key not in self._sizes:
                self._sizes[key] = tree_size(Path(mountpoint))
        for key in [k for k in self._sizes if k not in wanted]:
            del self._sizes[key]  # removed or rebuilt
        return dict(self._sizes)

    # -- CDI

    def cdi(self) -> dict[str, Any] | None:
        """The spec the daemon keeps (None: this daemon has no CDI), or why there is none."""
        keeper = self._cdi
        if keeper is None:
            return None
        where = None if keeper.path is None else str(keeper.path)
        try:
            spec = keeper.current()
        except NvpluginError as err:
            return {"path": where, "kind": keeper.kind, "error": err.message}
        age = keeper.age()
        return {"path": where, "kind": spec.kind, "version": spec.version,
                "devices": [device.name for device in spec.devices],
                "written_at": None if age is None else self._wall() - age, "error": None}

    # -- doctor

    def doctor(self) -> dict[str, Any]:
        """The last findings (None until the first run ends); starts a run when they are old."""
        doctor = self._doctor
        if doctor is None:
            return {"state": "off", "checks": None, "checked_at": None, "error": None}
        running = self._doctor_task is not None and not self._doctor_task.done()
        if not running and self._clock() - self._doctor_started >= self._doctor_max_age:
            self._doctor_started = self._clock()
            self._doctor_task = asyncio.create_task(self._run_doctor(doctor), name="page-doctor")
            running = True
        return {"state": "running" if running else "done", "checks": self._findings,
                "checked_at": self._checked_at, "error": self._doctor_error}

    async def _run_doctor(self, doctor: Findings) -> None:
        try:
            findings = await doctor()
        except (NvpluginError, OSError) as err:
            log.warning("Doctor's checks for the GPU page failed: %s", err)
            self._doctor_error = str(err)
            return
        self._findings = [{"check": str(f.check), "status": f.status, "detail": f.detail,
                           "fix": f.fix} for f in findings]
        self._checked_at = self._wall()
        self._doctor_error = None

    async def close(self) -> None:
        if self._doctor_task is not None:
            self._doctor_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._doctor_task


def _volume_row(info: VolumeInfo, current: str | None, size: TreeSize) -> dict[str, Any]:
    version = parse_name(info.name)
    return {"name": info.name, "version": version, "built": True, "current": version == current,
            "mounts": info.mounts, "created": info.created_at, "files": size.files,
            "bytes": size.bytes}
