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


class DriverState:
    """Holds the last discovery result; `manifest()` is what the volume store and REST API read.

    Discovery reads dozens of files, so it runs in a worker thread. A watcher re-runs it when the
    driver's fingerprint (kernel module version, ld.so.cache) changes, so a driver upgrade needs no
    restart of the daemon.
    """

    def __init__(self, driver_root: Path, version_source: VersionSource) -> None:
        self._root = driver_root
        self._version_source = version_source
        self._manifest: Manifest | None = None
        self._error: NvpluginError | None = DriverNotFound(
            f"NVIDIA driver not discovered yet under {driver_root}"
        )
        self._fingerprint: discovery.Fingerprint | None = None
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

    async def refresh(self) -> bool:
        """Re-run discovery; returns whether the selected files changed."""
        async with self._lock:
            before = self._manifest
            fingerprint = await asyncio.to_thread(discovery.driver_fingerprint, self._root)
            if fingerprint.problem is not None and (
                    self._fingerprint is None or self._fingerprint.problem != fingerprint.problem):
                log.warning("Ignoring the kernel module's version file: %s", fingerprint.problem)
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

    async def _changed_on_disk(self) -> bool:
        fingerprint = await asyncio.to_thread(discovery.driver_fingerprint, self._root)
        return fingerprint != self._fingerprint

    def start_watching(self, interval: float,
                       on_change: Callable[[str], Awaitable[None]]) -> None:
        """Call `on_change(reason)` whenever the driver's fingerprint changes on disk."""
        async def watch() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    if await self._changed_on_disk():
                        await on_change(f"driver files changed under {self._root}")
                except NvpluginError as err:
                    log.warning("Driver re-discovery failed: %s", err)

        self._watcher = asyncio.create_task(watch(), name="driver-watcher")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
