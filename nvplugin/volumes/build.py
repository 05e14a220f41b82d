"""Build one volume directory from a Manifest, atomically (blocking; run it in a thread).

The tree is made in a hidden sibling (`.<version>.tmp-<random>`), each file cloned (link, reflink
or copy: clone.py), flushed with one syncfs and renamed into place, so a crash or a concurrent
reader never sees half a volume. Destinations must stay inside the volume. Each source is opened
inside the manifest's driver root (hostroot: never through a link out of it) and must be the
very file discovery inspected (its device and inode): a driver file replaced or swapped for a
link since then fails the build with the reason, and the next discovery vets the new one.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from nvplugin.core.atomicfile import fsync_dir
from nvplugin.core.errors import RootEscapeError, UnsafeFileError, VolumeBuildError
from nvplugin.driver.hostroot import HostRoot
from nvplugin.driver.manifest import Manifest
from nvplugin.volumes.clone import CloneError, Cloner

log = logging.getLogger(__name__)


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
    driver = HostRoot(manifest.root)
    for entry in manifest.entries:
        dst = root / _inside(entry.dest, fail)
        if entry.dest in placed:
            log.warning("Skipping %s for %s: already holds %s", entry.source, entry.dest,
                        placed[entry.dest])
            continue
        if entry.ident is None:
            raise fail(entry.source, "not vetted by discovery (no device and inode recorded)")
        dev = ensure_dir(dst.parent)
        try:
            # Opened inside the driver root, and only if it is still the file discovery read.
            with driver.open_file(driver.inner(entry.source), expect=entry.ident) as src:
                cloner.clone(src, str(dst), dev)
        except (UnsafeFileError, RootEscapeError) as err:
            raise VolumeBuildError(f"cannot build {name}: {err.message}") from err
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
