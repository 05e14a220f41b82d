"""`nvidia_driver_<version>` volumes: built from a Manifest, tracked, removed.

A volume is `<volumes_dir>/nvidia_driver/<version>/`. It is built in a hidden sibling
(`.<version>.tmp-<random>`), flushed to disk and renamed into place, so a crash or a concurrent
reader never sees half a volume; one asyncio lock per volume makes a burst of Create/Mount
requests for a new volume wait for a single build. Only the current driver's version can be
built, lazily, by whichever of Create, Mount, Path or Get comes first after a start or upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from nvplugin.atomicfile import fsync_dir
from nvplugin.clone import CloneError, Cloner
from nvplugin.errors import (
    ConfigError,
    NvpluginError,
    VolumeBuildError,
    VolumeError,
    VolumeInUse,
    VolumeNameError,
    VolumeNotFound,
    VolumeVersionError,
)
from nvplugin.manifest import Manifest
from nvplugin.refcounts import MountTable

log = logging.getLogger(__name__)

KIND = "nvidia_driver"
NAME_RE = re.compile(r"^([a-zA-Z0-9_.-]+)_([0-9.]+)$")  # 1.0's grammar: greedy, last `_`
VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # refuses `..`, which would leave the kind dir
MAX_NAME = 255
_LEFTOVER_RE = re.compile(r"^\..+\.(tmp|rm)-[0-9a-f]+$")

ManifestProvider = Callable[[], Manifest]


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    name: str
    mountpoint: str
    created_at: str | None = None  # RFC 3339, UTC
    mounts: int = 0


def shown(name: str) -> str:
    """A name as echoed in errors and logs: absurd lengths cut, control characters escaped."""
    cut = name if len(name) <= MAX_NAME else name[:64] + f"...({len(name)} characters)"
    return cut.encode("unicode_escape").decode("ascii") if not cut.isprintable() else cut


def parse_name(name: str) -> str:
    """The version in `nvidia_driver_<version>`, or VolumeNameError in 1.0's words."""
    if len(name) > MAX_NAME:
        raise VolumeNameError(f"bad volume format: {shown(name)}")
    match = NAME_RE.fullmatch(name)
    if match is None or not VERSION_RE.fullmatch(match.group(2)):
        raise VolumeNameError(f"bad volume format: {shown(name)}")
    if match.group(1) != KIND:
        raise VolumeNameError(f"unsupported volume: {shown(name)}")
    return match.group(2)


class VolumeStore:
    """Every operation the plugin protocol needs, keyed by volume name."""

    def __init__(self, volumes_dir: Path, manifest_provider: ManifestProvider,
                 cloner: Cloner | None = None) -> None:
        self.volumes_dir = Path(volumes_dir)
        self.kind_dir = self.volumes_dir / KIND
        self._provider = manifest_provider
        self.cloner = cloner or Cloner()
        self.mounts = MountTable(self.volumes_dir / "state.json")
        self._locks: dict[str, asyncio.Lock] = {}
        self.builds = 0  # completed builds, for tests and /metrics

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
        for entry in os.scandir(self.kind_dir):
            if _LEFTOVER_RE.match(entry.name):
                log.warning("Removing %s, left over from an interrupted build or removal",
                            entry.path)
                shutil.rmtree(entry.path, ignore_errors=True)
        self.mounts.load()

    async def close(self) -> None:
        """Wait for builds in progress (a worker thread cannot be cancelled), then flush."""
        for lock in list(self._locks.values()):
            async with lock:
                pass
        await self.mounts.persist()

    # -- protocol operations -----------------------------------------------------------------
    async def create(self, name: str) -> None:
        version = parse_name(name)
        if await self._exists(version):
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
        await self._ensure(name, version)
        async with self._lock(version):
            # Re-checked under the lock: a Remove may have run since the build. Once counted,
            # a Remove is refused, so the write below can happen outside the lock and be
            # shared with concurrent mounts.
            if not await self._exists(version):
                raise VolumeNotFound(f"no such volume: {name}")
            self.mounts.add(name, mount_id)
        try:
            await self.mounts.persist()
        except OSError as err:
            self.mounts.release(name, mount_id)
            raise VolumeError(f"cannot record the mount of {name} in "
                              f"{self.mounts.path}: {err.strerror}") from err
        return str(self.path_of(version))

    async def unmount(self, name: str, mount_id: str) -> None:
        parse_name(name)
        self.mounts.release(name, mount_id)
        try:
            await self.mounts.persist()
        except OSError as err:
            raise VolumeError(f"cannot record the unmount of {name} in "
                              f"{self.mounts.path}: {err.strerror}") from err

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

    # -- helpers -----------------------------------------------------------------------------
    def path_of(self, version: str) -> Path:
        return self.kind_dir / version

    def _lock(self, version: str) -> asyncio.Lock:
        return self._locks.setdefault(version, asyncio.Lock())

    async def _exists(self, version: str) -> bool:
        return await asyncio.to_thread(self.path_of(version).is_dir)

    async def _ensure(self, name: str, version: str, explicit: bool = False) -> None:
        """Build the volume if it is absent and is the current driver's; else say why not."""
        if await self._exists(version):
            return
        async with self._lock(version):
            if await self._exists(version):
                return  # built by the request we waited for
            manifest = await self._current_manifest()
            if manifest.version != version:
                if explicit:
                    raise VolumeVersionError(
                        f"invalid volume version: {name} (this host's driver is "
                        f"{manifest.version}: use {KIND}_{manifest.version})")
                raise VolumeNotFound(f"no such volume: {name}")
            started = time.monotonic()
            await asyncio.to_thread(build_volume, manifest, self.kind_dir, name, self.cloner)
            self.builds += 1
            log.info("Built volume %s from %d files in %.0f ms", name, len(manifest.entries),
                     (time.monotonic() - started) * 1000)

    async def _current_manifest(self) -> Manifest:
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

    def _list(self) -> list[VolumeInfo]:
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


def build_volume(manifest: Manifest, kind_dir: Path, name: str, cloner: Cloner) -> Path:
    """Build `<kind_dir>/<version>` from `manifest` atomically (blocking)."""
    final = kind_dir / manifest.version
    tmp = kind_dir / f".{manifest.version}.tmp-{secrets.token_hex(4)}"
    try:
        kind_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp.mkdir(mode=0o755)
        os.chmod(tmp, 0o755)  # the volume's root is the container's /usr/local/nvidia
        _fill(manifest, tmp, name, cloner)
        _flush(tmp)
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # someone else's build won; keep theirs
        fsync_dir(kind_dir)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        where = err.filename or kind_dir
        raise VolumeBuildError(f"cannot build {name}: {where}: {err.strerror or err}") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _fill(manifest: Manifest, root: Path, name: str, cloner: Cloner) -> None:
    def fail(path: object, reason: str) -> VolumeBuildError:
        return VolumeBuildError(f"cannot build {name}: {path}: {reason}")

    made: dict[Path, int] = {root: root.stat().st_dev}

    def ensure_dir(d: Path) -> int:
        if d not in made:
            ensure_dir(d.parent)
            d.mkdir(mode=0o755, exist_ok=True)
            os.chmod(d, 0o755)  # the daemon's umask must not hide the driver from containers
            made[d] = made[root]
        return made[d]

    for d in manifest.dirs:
        ensure_dir(root / _inside(d, fail))
    placed: dict[str, str] = {}
    for entry in manifest.entries:
        dst = root / _inside(entry.dest, fail)
        if entry.dest in placed:
            log.warning("Skipping %s for %s: already holds %s", entry.source, entry.dest,
                        placed[entry.dest])
            continue
        dev = ensure_dir(dst.parent)
        try:
            cloner.clone(entry.source, str(dst), dev)
        except CloneError as err:
            raise fail(err.filename or entry.source, err.reason()) from err
        except OSError as err:
            raise fail(err.filename or entry.source, err.strerror or str(err)) from err
        placed[entry.dest] = entry.source
    for link in manifest.links:
        path = root / _inside(link.path, fail)
        ensure_dir(path.parent)
        try:
            os.symlink(link.target, path)
        except FileExistsError:
            log.debug("Skipping link %s -> %s: the name is taken", link.path, link.target)
        except OSError as err:
            raise fail(path, err.strerror or str(err)) from err


def _inside(rel: str, fail: Callable[[object, str], VolumeBuildError]) -> PurePosixPath:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise fail(rel, "the path must stay inside the volume")
    return p


def _flush(root: Path) -> None:
    """Flush the whole new tree: one syncfs() for the filesystem beats an fsync per file."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _syncfs is None or _syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _load_syncfs() -> Any:
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).syncfs
    return None


_syncfs = _load_syncfs()
