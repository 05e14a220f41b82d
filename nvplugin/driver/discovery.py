"""Find the running driver's files under a driver root and explain each choice in a `Manifest`.

Libraries come from the root's `etc/ld.so.cache` (each entry resolved to its real file inside
the root), plus a scan of the usual library directories for what the cache misses. Each
candidate is read as ELF, and library_choice.py picks which of them go into the volume (1.0's
blacklist, one file per SONAME and ELF class, the running version first). Everything left out is
a `Rejected` with its reason.

Destinations inside the volume (mounted at /usr/local/nvidia, as 1.0's images expect):
  64-bit libraries -> lib64/<file>, 32-bit -> lib/<file> (capability compat32),
  binaries -> bin/<name>, Vulkan/EGL/GLVND manifests -> share/<path under share/ or etc/>,
  GSP firmware -> firmware/nvidia/<version>/<file> (the H200 squashfs's own layout).

Blocking I/O: the daemon runs this in a thread.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nvplugin.core.errors import (
    CacheFormatError,
    DriverNotFound,
    ElfError,
    RootEscapeError,
    UnsafeFileError,
)
from nvplugin.driver import catalog, driver_version, elfinfo, ldcache
from nvplugin.driver.catalog import Component
from nvplugin.driver.hostroot import HostRoot
from nvplugin.driver.library_choice import Candidate, choose_libraries
from nvplugin.driver.manifest import Entry, Manifest, Rejected

log = logging.getLogger(__name__)

LD_CACHE = "/etc/ld.so.cache"
PROC_VERSION = "/proc/driver/nvidia/version"
MAX_CACHE = 32 << 20  # a busy host's ld.so.cache is ~100 KB
MAX_PROC_FILE = 64 << 10  # the module's version text is ~200 bytes
_CORE = ("libcuda", "libnvidia-ml")


def _root(driver_root: Path | str | HostRoot) -> HostRoot:
    return driver_root if isinstance(driver_root, HostRoot) else HostRoot(driver_root)


def read_cache(root: HostRoot) -> list[ldcache.CacheEntry]:
    """The root's ld.so.cache entries; [] when it has none. CacheFormatError when garbled or
    not a readable regular file (a FIFO there would block forever)."""
    try:
        data = root.read_bytes(LD_CACHE, MAX_CACHE)
    except FileNotFoundError as err:
        log.debug("No ld.so.cache under %s: %s", root.root, err)
        return []
    except UnsafeFileError as err:
        raise CacheFormatError(err.message) from err
    except (OSError, RootEscapeError) as err:
        raise CacheFormatError(f"{root.host(LD_CACHE)} cannot be read: "
                               f"{getattr(err, 'strerror', None) or err}") from err
    return ldcache.parse(data, root.host(LD_CACHE))


def read_kernel_version_text(driver_root: Path | str | HostRoot) -> str:
    """The kernel module's proc/driver/nvidia/version under the root, decoded; the one reader of
    that file. OSError when the module is not loaded (or the file cannot be read),
    UnsafeFileError when it is not a small regular file."""
    return _root(driver_root).read_bytes(PROC_VERSION, MAX_PROC_FILE).decode(errors="replace")


def kernel_version(driver_root: Path | str | HostRoot) -> str | None:
    """The loaded kernel module's version, or None (a file that is not what the module makes is
    named in a warning)."""
    try:
        return driver_version.from_proc(read_kernel_version_text(driver_root))
    except UnsafeFileError as err:
        log.warning("Ignoring the kernel module's version: %s", err)
        return None
    except PermissionError as err:
        log.warning("Cannot read the kernel module's version: %s: %s", err.filename, err.strerror)
        if isinstance(driver_root, HostRoot):
            driver_root.note(err)
        return None
    except (OSError, RootEscapeError):
        return None


def driver_version_from_files(driver_root: Path | str | HostRoot) -> str | None:
    """From proc/driver/nvidia/version under the root, else from the libcuda.so.<version> name."""
    root = _root(driver_root)
    found = kernel_version(root)
    if found:
        return found
    try:
        entries = read_cache(root)
    except CacheFormatError:
        entries = []
    # The cache's first libcuda.so.1 is the one the loader would use; without a cache, the
    # newest of the libcuda.so.1 links in the usual directories (stale drivers are older).
    cached = [e.path for e in sorted(entries, key=lambda e: -e.bits) if e.key == "libcuda.so.1"]
    scanned = [f"{d}/libcuda.so.1" for d in catalog.LIBRARY_DIRS]
    for links, newest in ((cached, False), (scanned, True)):
        versions = [v for link in links
                    if (v := driver_version.from_file_name(_resolve_or_none(root, link)))]
        if versions:
            return max(versions, key=driver_version.sort_key) if newest else versions[0]
    return None


def find_nvml_library(driver_root: Path | str | HostRoot) -> str | None:
    """Host path of the 64-bit libnvidia-ml.so.1 the root's ld.so.cache names (else the usual
    dirs), with symlinks resolved inside the root, so NVML loads from the driver root."""
    return _find_library64(_root(driver_root), "libnvidia-ml.so.1")


def find_cuda_library(driver_root: Path | str | HostRoot) -> str | None:
    """The driver's own 64-bit libcuda.so.1, found as `find_nvml_library` finds NVML."""
    return _find_library64(_root(driver_root), "libcuda.so.1")


def _find_library64(root: HostRoot, soname: str) -> str | None:
    memo = elfinfo.ElfMemo()
    try:
        paths = [e.path for e in read_cache(root) if e.key == soname and e.bits == 64]
    except CacheFormatError as err:
        log.warning("%s", err)
        paths = []
    paths += [f"{d}/{soname}" for d in catalog.LIBRARY_DIRS if "i386" not in d
              and not d.endswith(("lib32", "/lib"))]
    for path in paths:
        inner = _resolve_or_none(root, path)
        if inner and root.is_file(inner):
            try:
                if memo.inspect(root, inner)[0].bits == 64:
                    return root.host(inner)
            except ElfError as err:
                log.warning("Skipping %s: %s", path, err)
    return None


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What changes when the driver does: the kernel module's version text and the cache's
    (mtime, size). `problem` says why the version file could not be read (not a regular
    file, ...); it stays the same while the file does, so it triggers no re-discovery."""

    proc: str | None
    cache: tuple[int, int] | None
    problem: str | None = None


def driver_fingerprint(driver_root: Path | str | HostRoot) -> Fingerprint:
    """The driver's fingerprint now (a few stats and one small read: the watcher polls it)."""
    root = _root(driver_root)
    problem = None
    try:
        proc: str | None = read_kernel_version_text(root)
    except UnsafeFileError as err:
        proc, problem = None, err.message
    except (OSError, RootEscapeError):
        proc = None
    try:
        st = root.stat(LD_CACHE)
        cache: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
    except (OSError, RootEscapeError):
        cache = None
    return Fingerprint(proc, cache, problem)


def _resolve_or_none(root: HostRoot, inner: str) -> str | None:
    try:
        return root.resolve(inner)
    except OSError as err:
        root.note(err, inner)
        return None
    except RootEscapeError:
        return None


def discover(driver_root: Path | str | HostRoot, version: str | None = None, *,
             memo: elfinfo.ElfMemo | None = None) -> Manifest:
    """The driver's files under the root. DriverNotFound when there is no NVIDIA driver.

    `memo` keeps ELF facts between runs (re-discovery); without one, every file is read."""
    root = _root(driver_root)
    memo = memo or elfinfo.ElfMemo()
    started, reads, read_seconds = time.perf_counter(), memo.reads, memo.read_seconds
    version = version or driver_version_from_files(root)
    rejected: list[Rejected] = []
    candidates = list(_library_candidates(root, memo, rejected))
    if version is None or not any(c.component.pattern in _CORE for c in candidates):
        raise _not_found(root, version, "no libcuda.so or libnvidia-ml.so")
    entries, links = choose_libraries(candidates, version, rejected)
    if not any(e.kind == "lib" and catalog.library_stem(e.dest.split("/")[-1]) in _CORE
               for e in entries):
        raise _not_found(root, version, f"no libcuda.so or libnvidia-ml.so of version {version}")
    entries += _binaries(root, memo, rejected)
    entries += _configs(root, rejected)
    entries += _firmware(root, version, rejected)
    for path in root.denied:  # what may hold driver files, unread: the volume may lack them
        log.warning("Cannot read %s: permission denied; driver files there are left out", path)
        rejected.append(Rejected(path, "permission denied: give the daemon's user read access"))
    log.debug("Discovered %d files and %d links of driver %s under %s (%d rejected) in %.1f ms; "
              "%d ELF files read in %.1f ms, %d remembered", len(entries), len(links), version,
              root.root, len(rejected), (time.perf_counter() - started) * 1000,
              memo.reads - reads, (memo.read_seconds - read_seconds) * 1000, len(memo))
    return Manifest(version=version, entries=tuple(entries), links=tuple(links),
                    rejected=tuple(rejected), root=root.root)


def _not_found(root: HostRoot, version: str | None, what: str) -> DriverNotFound:
    seen = f"driver version {version}" if version else f"no driver version in {PROC_VERSION}"
    if root.denied:
        # Not missing: unreadable. The hardened unit or a dedicated user meets this first.
        shown = ", ".join(root.denied[:3]) + (", ..." if len(root.denied) > 3 else "")
        return DriverNotFound(
            f"cannot read the NVIDIA driver under {root.root}: permission denied on {shown} "
            f"({what} found; {seen}); give the daemon's user read access to the driver root")
    return DriverNotFound(
        f"no NVIDIA driver found under {root.root}: {what} in {LD_CACHE} or in "
        f"{', '.join(catalog.LIBRARY_DIRS)} ({seen}); install the driver or point "
        f"--driver-root at the root that holds it")


def _library_candidates(root: HostRoot, memo: elfinfo.ElfMemo, rejected: list[Rejected],
                        ) -> Iterator[Candidate]:
    """Real library files named in the cache, then those only the directory scan finds."""
    seen: set[str] = set()
    try:
        cached = [(e.path, f"ld.so.cache {e.key}") for e in read_cache(root)]
    except CacheFormatError as err:
        log.warning("%s; scanning the usual library directories instead", err)
        rejected.append(Rejected(root.host(LD_CACHE), str(err)))
        cached = []
    scanned = [(f"{d}/{name}", f"found in {d}") for d in _distinct_dirs(root, catalog.LIBRARY_DIRS)
               for name in root.listdir(d) if name.startswith("lib") and ".so" in name]
    visited: set[str] = set()
    for path, found in cached + scanned:
        component = catalog.library(path.rsplit("/", 1)[-1])
        if component is None or path in visited:
            continue
        visited.add(path)
        try:
            inner = root.resolve(path)
        except RootEscapeError as err:
            log.warning("Skipping %s", err)
            rejected.append(Rejected(root.host(path), str(err)))
            continue
        except OSError as err:
            root.note(err, path)
            log.debug("Skipping %s: %s", root.host(path), err.strerror)
            continue
        if inner in seen:
            continue
        seen.add(inner)
        real = catalog.library(inner.rsplit("/", 1)[-1]) or component
        candidate = _inspect(root, memo, inner, found, real, rejected)
        if candidate is not None:
            yield candidate


def _distinct_dirs(root: HostRoot, dirs: tuple[str, ...]) -> list[str]:
    """The directories that exist, each once: /lib is /usr/lib on merged-/usr hosts."""
    seen: set[str] = set()
    found = []
    for directory in dirs:
        real = _resolve_or_none(root, directory)
        if real is not None and real not in seen and root.is_dir(real):
            seen.add(real)
            found.append(directory)
    return found


def _inspect(root: HostRoot, memo: elfinfo.ElfMemo, inner: str, found: str, component: Component,
             rejected: list[Rejected]) -> Candidate | None:
    host = root.host(inner)
    if not root.is_file(inner):
        return None  # a directory named like a library, a dangling name
    try:
        facts, ident = memo.inspect(root, inner, abi_tag=component.pattern == "libnvidia-tls")
    except ElfError as err:
        log.warning("Skipping %s", err)
        rejected.append(Rejected(host, str(err).removeprefix(f"{host}: ")))
        return None
    return Candidate(inner=inner, source=host, found=found, component=component, facts=facts,
                     ident=ident)


def _binaries(root: HostRoot, memo: elfinfo.ElfMemo, rejected: list[Rejected]) -> list[Entry]:
    entries: list[Entry] = []
    for comp in catalog.BINARIES:
        chosen: str | None = None
        seen: set[str] = set()
        skipped: list[ElfError] = []
        for directory in catalog.BINARY_DIRS:
            inner = _resolve_or_none(root, f"{directory}/{comp.pattern}")
            if inner is None or inner in seen or not root.is_file(inner):
                continue
            seen.add(inner)  # /bin -> usr/bin on merged-/usr hosts: one file, one verdict
            host = root.host(inner)
            if chosen is not None:
                rejected.append(Rejected(host, f"shadowed by {root.host(chosen)}"))
                continue
            try:
                facts, ident = memo.inspect(root, inner)
            except ElfError as err:
                # 1.0 failed the whole volume here; the H200 host has shell wrappers in
                # /usr/bin and the real binaries in /usr/local/nvidia/bin.
                skipped.append(err)
                rejected.append(Rejected(host, str(err).removeprefix(f"{host}: ")))
                continue
            chosen = inner
            entries.append(Entry(source=host, dest=f"bin/{comp.pattern}", kind="bin",
                                 capability=comp.capability,
                                 reason=f"{comp.reason} (found in {directory})",
                                 arch=facts.arch, ident=ident))
        for reason in skipped:  # only worth a warning when no usable copy was found
            log.log(logging.DEBUG if chosen else logging.WARNING, "Skipping %s", reason)
    return entries


def _configs(root: HostRoot, rejected: list[Rejected]) -> list[Entry]:
    entries: dict[str, Entry] = {}
    for prefix in catalog.DATA_PREFIXES:
        for comp in catalog.CONFIGS:
            subdir = comp.pattern.rpartition("/")[0]
            for name in root.listdir(f"{prefix}/{subdir}"):
                rel = f"{subdir}/{name}"
                if catalog.config(rel) is not comp:
                    continue
                inner = _resolve_or_none(root, f"{prefix}/{rel}")
                if inner is None or not root.is_file(inner):
                    continue
                dest, host = f"share/{rel}", root.host(inner)
                if dest in entries:
                    if entries[dest].source != host:
                        rejected.append(Rejected(host, f"{dest} comes from {entries[dest].source}"))
                    continue
                ident = _identify(root, inner, rejected)
                if ident is not None:
                    entries[dest] = Entry(source=host, dest=dest, kind="config",
                                          capability=comp.capability,
                                          reason=f"{comp.reason} (found in {prefix})", ident=ident)
    return list(entries.values())


def _firmware(root: HostRoot, version: str, rejected: list[Rejected]) -> list[Entry]:
    entries: dict[str, Entry] = {}
    seen: set[str] = set()
    comp = catalog.FIRMWARE[0]
    for directory in catalog.FIRMWARE_DIRS:
        real = _resolve_or_none(root, directory)
        if real is None or real in seen:
            continue
        seen.add(real)
        for sub in root.listdir(real):
            if sub != version:
                if driver_version.is_version(sub):
                    rejected.append(Rejected(root.host(f"{real}/{sub}"),
                                             f"firmware of driver {sub}, not of {version}"))
                continue
            for name in root.listdir(f"{real}/{sub}"):
                dest = f"firmware/nvidia/{version}/{name}"
                inner = _resolve_or_none(root, f"{real}/{sub}/{name}")
                if (dest in entries or inner is None or not root.is_file(inner)
                        or not fnmatch.fnmatchcase(name, comp.pattern)):
                    continue
                ident = _identify(root, inner, rejected)
                if ident is not None:
                    entries[dest] = Entry(source=root.host(inner), dest=dest, kind="firmware",
                                          capability=comp.capability,
                                          reason=f"{comp.reason} (found in {directory})",
                                          ident=ident)
    return list(entries.values())


def _identify(root: HostRoot, inner: str, rejected: list[Rejected]) -> tuple[int, int] | None:
    """The (device, inode) a data file is built from, or None and a rejection saying why."""
    try:
        return root.identify(inner)
    except UnsafeFileError as err:
        reason = err.message
    except (OSError, RootEscapeError) as err:
        reason = f"unreadable: {getattr(err, 'strerror', None) or err}"
    log.warning("Skipping %s: %s", root.host(inner), reason)
    rejected.append(Rejected(root.host(inner), reason.removeprefix(f"{root.host(inner)} ")))
    return None
