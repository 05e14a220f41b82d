"""`nvidia_driver_<version>` volumes: built from a Manifest, tracked, removed.

A volume is `<volumes_dir>/nvidia_driver/<version>/`, built by volumes/build.py in a hidden
sibling and renamed into place, so a crash or a concurrent reader never sees half a volume; one
asyncio lock per volume makes a burst of Create/Mount requests for a new volume wait for a
single build. A lock lives only while someone holds or awaits it: Docker may ask about any name,
and a table keyed by every version ever asked about would only grow. Only the current driver's
version can be built: by `prebuild()` in the background (the daemon calls it after a start or an
upgrade, so the first container finds the volume ready), or by whichever of Create, Mount, Path
or Get comes first. A request that arrives during a prebuild waits for that build under the
version's lock, and raises its I/O priority back from idle: one build, never two. Volumes of other
versions (an older driver's) are served while they exist and, unless `keep_old`, removed once no
container mounts them: `collect_old` after an upgrade, and the last Unmount of one.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from nvplugin.core.atomicfile import fsync_dir
from nvplugin.core.errors import (
    ConfigError,
    NvpluginError,
    VolumeError,
    VolumeInUse,
    VolumeNotFound,
    VolumesDirBusy,
    VolumeVersionError,
)
from nvplugin.core.ioprio import IdleIo
from nvplugin.driver.manifest import Manifest
from nvplugin.volumes.build import build_volume
from nvplugin.volumes.clone import Cloner
from nvplugin.volumes.mount_table import STATE_FILE, MountTable
from nvplugin.volumes.names import KIND, VERSION_RE, VolumeInfo, parse_name

if TYPE_CHECKING:  # builds and collections come after the daemon answers: volumes/reports.py
    from nvplugin.volumes.reports import BuildReport, OldVolume

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCK_FILE = ".lock"
_LEFTOVER_RE = re.compile(r"^\..+\.(tmp|rm)-[0-9a-f]+$")

ManifestProvider = Callable[[], Manifest]
Ready = Callable[[], Awaitable[None]]


async def _no_wait() -> None:
    return None


BuildListener = Callable[["BuildReport"], None]


@dataclass(slots=True)
class _VersionLock:
    """The lock on one driver version's volume, and how many hold or wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # the holder and the waiters


class VolumeStore:
    """Every operation the plugin protocol needs, keyed by volume name."""

    def __init__(self, volumes_dir: Path, manifest_provider: ManifestProvider,
                 cloner: Cloner | None = None, *, keep_old: bool = False,
                 on_build: BuildListener | None = None, ready: Ready = _no_wait) -> None:
        """`ready()` is awaited before the first read of the manifest: the daemon serves
        before its first discovery has finished."""
        self.volumes_dir = Path(volumes_dir)
        self.kind_dir = self.volumes_dir / KIND
        self._provider = manifest_provider
        self._ready = ready
        self._background: dict[str, IdleIo] = {}  # prebuilds in progress, by version
        self.cloner = cloner or Cloner()
        self.keep_old = keep_old
        self.mounts = MountTable(self.volumes_dir / STATE_FILE)
        self._locks: dict[str, _VersionLock] = {}  # only versions held or awaited now
        self.builds = 0  # completed builds, for tests
        self._on_build = on_build
        self._directory_lock: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the directories, remove what a crash left behind, load the mount table."""
        try:
            await asyncio.to_thread(self._prepare)
        except OSError as err:
            where = "" if Path(err.filename or self.volumes_dir) == self.volumes_dir else (
                f"{err.filename}: ")
            raise ConfigError(f"cannot use the volumes directory {self.volumes_dir}: "
                              f"{where}{err.strerror}; choose another with -d") from err

    def _prepare(self) -> None:
        for d in (self.volumes_dir, self.kind_dir):
            d.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._hold_directory()
        for entry in os.scandir(self.kind_dir):
            if _LEFTOVER_RE.match(entry.name):
                log.warning("Removing %s, left over from an interrupted build or removal",
                            entry.path)
                shutil.rmtree(entry.path, ignore_errors=True)
        self.mounts.load()

    def _hold_directory(self) -> None:
        """One daemon per volumes directory: a second one would clean up the first one's builds
        in progress and overwrite its mount counts, so it is refused before it touches anything."""
        fd = os.open(self.volumes_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise VolumesDirBusy(
                f"another nvidia-docker-plugin is using the volumes directory {self.volumes_dir}: "
                "stop it first, or choose another with -d"
            ) from None
        self._directory_lock = fd

    async def close(self) -> None:
        """Wait for builds in progress (a worker thread cannot be cancelled), then flush."""
        for version in list(self._locks):
            async with self._lock(version):
                pass
        await self.mounts.persist()
        if self._directory_lock is not None:
            os.close(self._directory_lock)  # releases the flock
            self._directory_lock = None

    # -- protocol operations -----------------------------------------------------------------
    async def create(self, name: str) -> None:
        version = parse_name(name)
        if await self.built(version):
            return
        await self._ensure(name, version, explicit=True)

    async def remove(self, name: str) -> None:
        version = parse_name(name)
        async with self._lock(version):
            held = self.mounts.count(name)
            if held:
                raise VolumeInUse(f"volume {name} is in use by {held} container(s)")
            await asyncio.to_thread(self._delete, version)
            self.mounts.forget(name)
            with contextlib.suppress(OSError):  # nothing mounts it; a stale entry is harmless
                await self.mounts.persist()
        log.info("Removed volume %s", name)

    async def mount(self, name: str, mount_id: str) -> str:
        version = parse_name(name)
        self._hurry(version)
        async with self._lock(version):
            # Built (or found) and counted under one hold of the lock: a Remove racing this
            # Mount either ran before, and the current driver's volume is built again, or
            # waits and is refused. The write below can then happen outside the lock and be
            # shared with concurrent mounts.
            await self._ensure_locked(name, version)
            self.mounts.add(name, mount_id)
        try:
            await self.mounts.persist()
        except OSError as err:
            self.mounts.release(name, mount_id)
            raise VolumeError(f"cannot record the mount of {name} in "
                              f"{self.mounts.path}: {err.strerror}") from err
        return str(self.path_of(version))

    async def unmount(self, name: str, mount_id: str) -> None:
        version = parse_name(name)
        self.mounts.release(name, mount_id)
        try:
            await self.mounts.persist()
        except OSError as err:
            raise VolumeError(f"cannot record the unmount of {name} in "
                              f"{self.mounts.path}: {err.strerror}") from err
        if not self.keep_old and self.mounts.count(name) == 0:
            await self._collect_if_old(version)

    async def path(self, name: str) -> str:
        version = parse_name(name)
        await self._ensure(name, version)
        return str(self.path_of(version))

    async def get(self, name: str) -> VolumeInfo:
        version = parse_name(name)
        await self._ensure(name, version)
        info = await asyncio.to_thread(self._info, version)
        if info is None:
            raise VolumeNotFound(f"no such volume: {name}")
        return info

    async def list(self) -> list[VolumeInfo]:
        return await asyncio.to_thread(self._list)

    # -- old drivers' volumes ----------------------------------------------------------------
    async def collect_old(self) -> builtins.list[OldVolume]:
        """Remove every volume of another driver version that no container mounts; keep (and
        report) the others. One log line each. NvpluginError without a current driver."""
        current = (await self._current_manifest()).version
        found = []
        for info in await self.list():
            version = parse_name(info.name)
            if version != current and (old := await self._collect(version, current)):
                found.append(old)
        return found

    async def _collect_if_old(self, version: str) -> None:
        """After the last Unmount: remove the volume if it is an old driver's. Never fails the
        Unmount: Docker has already let go of the volume."""
        try:
            current = (await self._current_manifest()).version
        except NvpluginError:
            return  # no driver now, so nothing is known to be old
        if version == current:
            return
        try:
            await self._collect(version, current)
        except NvpluginError as err:
            log.warning("Cannot remove old volume: %s", err)

    async def _collect(self, version: str, current: str) -> OldVolume | None:
        from nvplugin.volumes.reports import OldVolume
        from nvplugin.volumes.usage import disk_usage

        name = f"{KIND}_{version}"
        async with self._lock(version):
            if not await self.built(version):
                return None  # removed since it was listed
            held = self.mounts.count(name)
            if held:
                log.info("Keeping volume %s of driver %s (now %s): %d container(s) mount it",
                         name, version, current, held)
                return OldVolume(name, removed=False, mounts=held)
            usage = await asyncio.to_thread(disk_usage, self.path_of(version))
            await asyncio.to_thread(self._delete, version)
            self.mounts.forget(name)
            with contextlib.suppress(OSError):  # nothing mounts it; a stale entry is harmless
                await self.mounts.persist()
        log.info("Removed volume %s of driver %s (now %s), mounted by no container: %s", name,
                 version, current, usage.describe())
        return OldVolume(name, removed=True, usage=usage)

    async def prebuild(self) -> None:
        """Build the current driver's volume now, at idle I/O priority, unless it exists.
        Never raises for the driver or the build: a request for the volume reports those."""
        try:
            version = (await self._current_manifest()).version
        except NvpluginError as err:
            log.debug("No volume to prebuild: %s", err.message)
            return
        name = f"{KIND}_{version}"
        # Registered before the lock is taken: a request arriving from now on hurries it.
        idle = self._background[version] = IdleIo()
        try:
            await self._ensure(name, version, background=idle)
        except NvpluginError as err:
            log.warning("Could not prebuild volume %s: %s", name, err.message)
        finally:
            if self._background.get(version) is idle:
                del self._background[version]

    # -- helpers -----------------------------------------------------------------------------
    def path_of(self, version: str) -> Path:
        return self.kind_dir / version

    @contextlib.asynccontextmanager
    async def _lock(self, version: str) -> AsyncIterator[None]:
        """Hold `version`'s lock; the entry goes when its last holder or waiter leaves."""
        entry = self._locks.get(version)
        if entry is None:
            entry = self._locks[version] = _VersionLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[version]

    async def built(self, version: str) -> bool:
        """Whether `version`'s volume is built: served as it is, whatever the driver's files
        are now (builds are atomic, so a volume that exists is whole)."""
        return await asyncio.to_thread(self.path_of(version).is_dir)

    async def _ensure(self, name: str, version: str, explicit: bool = False,
                      background: IdleIo | None = None) -> None:
        """Build the volume if it is absent and is the current driver's; else say why not.
        With `background`, the build runs at idle I/O priority until a request hurries it."""
        if await self.built(version):
            return
        if background is None:
            self._hurry(version)
        async with self._lock(version):
            await self._ensure_locked(name, version, explicit, background)

    async def _ensure_locked(self, name: str, version: str, explicit: bool = False,
                             background: IdleIo | None = None) -> None:
        """`_ensure`, with `version`'s lock held."""
        if await self.built(version):
            return  # built by the request we waited for
        manifest = await self._current_manifest()
        if manifest.version != version:
            if explicit:
                raise VolumeVersionError(
                    f"invalid volume version: {name} (this host's driver is "
                    f"{manifest.version}: use {KIND}_{manifest.version})")
            raise VolumeNotFound(f"no such volume: {name}")
        started = time.monotonic()
        try:
            size = await _to_the_end(asyncio.to_thread(self._build, manifest, name, background))
        except Exception:
            self._report(name, time.monotonic() - started, 0, ok=False)
            raise
        self.builds += 1
        took = time.monotonic() - started
        self._report(name, took, size, ok=True)
        log.info("Built volume %s from %d files in %.0f ms%s", name, len(manifest.entries),
                 took * 1000, "" if background is None else " in the background"
                 + (", hurried by a request" if background.hurried else ""))

    def _hurry(self, version: str) -> None:
        """A request waits for `version`: a prebuild of it in progress is idle work no more."""
        if (prebuild := self._background.get(version)) is not None:
            prebuild.hurry()

    def _build(self, manifest: Manifest, name: str, background: IdleIo | None) -> int:
        """Build (blocking; at idle I/O priority for a prebuild); the bytes of the files
        placed, measured in the same thread."""
        with background.running() if background is not None else contextlib.nullcontext():
            path = build_volume(manifest, self.kind_dir, name, self.cloner)
        size = 0
        for entry in manifest.entries:
            with contextlib.suppress(OSError):
                size += (path / entry.dest).stat().st_size
        return size

    def _report(self, name: str, seconds: float, size: int, *, ok: bool) -> None:
        if self._on_build is not None:
            from nvplugin.volumes.reports import BuildReport

            self._on_build(BuildReport(name=name, seconds=seconds, size=size, ok=ok))

    async def _current_manifest(self) -> Manifest:
        await self._ready()
        try:
            return await asyncio.to_thread(self._provider)
        except NvpluginError:
            raise
        except OSError as err:
            raise VolumeError(f"cannot read the driver's files: {err}") from err

    def _info(self, version: str) -> VolumeInfo | None:
        path = self.path_of(version)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        name = f"{KIND}_{version}"
        created = datetime.fromtimestamp(st.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return VolumeInfo(name, str(path), created, self.mounts.count(name))

    def _list(self) -> builtins.list[VolumeInfo]:
        try:
            found = sorted(e.name for e in os.scandir(self.kind_dir) if e.is_dir())
        except FileNotFoundError:
            return []
        infos = (self._info(v) for v in found if VERSION_RE.fullmatch(v))
        return [i for i in infos if i is not None]

    def _delete(self, version: str) -> None:
        path = self.path_of(version)
        # Renamed first so a crash mid-delete leaves a leftover, never a damaged volume.
        doomed = self.kind_dir / f".{version}.rm-{secrets.token_hex(4)}"
        try:
            path.rename(doomed)
        except FileNotFoundError:
            return
        except OSError as err:
            raise VolumeError(f"cannot remove {KIND}_{version}: {path}: {err.strerror}") from err
        fsync_dir(self.kind_dir)
        shutil.rmtree(doomed, ignore_errors=True)


async def _to_the_end(work: Coroutine[Any, Any, T]) -> T:
    """Await a build that a cancellation (a prebuild at shutdown) cannot stop: its thread runs
    on, so the caller keeps the volume's lock until it ends, and `close()` waits for it."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise
