"""The daemon's view of the host driver: the current manifest, kept fresh as the driver changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from nvplugin.core.errors import DriverNotFound, NvpluginError
from nvplugin.driver import discovery, elfinfo
from nvplugin.driver.manifest import Manifest

log = logging.getLogger(__name__)

VersionSource = Callable[[], Awaitable[str | None]]
Snapshot = tuple[discovery.Fingerprint, object]  # the driver's files, the devices' fingerprint
Fingerprint = Callable[[], object]


class DriverState:
    """Holds the last discovery result; `manifest()` is what the volume store and REST API read.

    Discovery reads dozens of files, so it runs in a worker thread. A watcher re-runs it when the
    driver's fingerprint (kernel module version, ld.so.cache) changes, so a driver upgrade needs no
    restart of the daemon; `devices` adds what else should wake it (the GPU set: a GPU, MIG
    instance or node that appears or goes), read in the same thread.
    """

    def __init__(self, driver_root: Path, version_source: VersionSource,
                 devices: Fingerprint | None = None) -> None:
        self._root = driver_root
        self._version_source = version_source
        self._devices = devices
        self._manifest: Manifest | None = None
        self._error: NvpluginError | None = DriverNotFound(
            f"NVIDIA driver not discovered yet under {driver_root}"
        )
        self._fingerprint: Snapshot | None = None
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._elf_memo = elfinfo.ElfMemo()  # a re-discovery re-reads only changed files

    def manifest(self) -> Manifest:
        """The current manifest, or the reason there is none (a DiscoveryError)."""
        if self._manifest is None:
            raise self._error or DriverNotFound(f"no NVIDIA driver under {self._root}")
        return self._manifest

    @property
    def version(self) -> str | None:
        return self._manifest.version if self._manifest else None

    @property
    def error(self) -> NvpluginError | None:
        return self._error

    async def snapshot(self) -> Snapshot:
        """The driver's and devices' fingerprint now, for `refresh(seen=...)`: taken before
        NVML reloads, a change made while it reloads is still a change afterwards."""
        return await asyncio.to_thread(self._read_fingerprint)

    async def refresh(self, seen: Snapshot | None = None) -> bool:
        """Re-run discovery; returns whether the selected files changed. `seen`: the snapshot
        this refresh answers (default: taken now)."""
        async with self._lock:
            before = self._manifest
            fingerprint = seen if seen is not None else await asyncio.to_thread(
                self._read_fingerprint)
            problem = fingerprint[0].problem
            if problem is not None and (
                    self._fingerprint is None or self._fingerprint[0].problem != problem):
                log.warning("Ignoring the kernel module's version file: %s", problem)
            self._fingerprint = fingerprint
            try:
                version = await self._version_source()
                manifest = await asyncio.to_thread(discovery.discover, self._root, version,
                                                   memo=self._elf_memo)
            except NvpluginError as err:
                self._manifest, self._error = None, err
                return before is not None
            self._manifest, self._error = manifest, None
            return before is None or before.digest() != manifest.digest()

    def _read_fingerprint(self) -> Snapshot:
        return (discovery.driver_fingerprint(self._root),
                self._devices() if self._devices is not None else None)

    async def _change(self) -> str | None:
        """Why the driver or the devices changed on disk since the last refresh, or None."""
        now = await asyncio.to_thread(self._read_fingerprint)
        last = self._fingerprint
        if last is None or now[0] != last[0]:
            return f"driver files changed under {self._root}"
        if now[1] != last[1]:
            return "GPU devices changed (a GPU, MIG instance or device node came or went)"
        return None

    def start_watching(self, interval: float,
                       on_change: Callable[[str], Awaitable[None]]) -> None:
        """Call `on_change(reason)` whenever the driver's or the devices' fingerprint changes."""
        async def watch() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    if (reason := await self._change()) is not None:
                        await on_change(reason)
                except NvpluginError as err:
                    log.warning("Driver re-discovery failed: %s", err)
                except Exception:  # a bug: say where, and keep watching
                    log.exception("Error: driver re-discovery failed")

        self._watcher = asyncio.create_task(watch(), name="driver-watcher")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
