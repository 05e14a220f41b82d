"""Paths under --driver-root, resolved as if that root were `/`.

Every read of the driver goes through `HostRoot`, so a driver container (`/run/nvidia/driver`),
the H200's squashfs under `/usr/local/nvidia` and a test's fake host are all just roots.

"In-root" paths are absolute strings as the root itself sees them (`/usr/lib/libcuda.so.1`);
"host" paths are where those files really are (`<driver_root>/usr/lib/libcuda.so.1`).
Symlinks are resolved component by component: an absolute target restarts at the root (it is
re-rooted, not followed out to the host), and a `..` that would climb above a root other than `/`
raises `RootEscapeError` (the toolkit's symlink CVEs came from following such links out).

Files are opened the same way, relative to the root, never through a link that leaves it:
`openat2(RESOLVE_IN_ROOT)` (Linux 5.6+) resolves every component inside the root in the kernel,
so a file swapped for a link to `/etc/shadow` after discovery cannot be followed; where the
kernel or a seccomp filter lacks it, a walk opens each component of the resolved path with
`O_NOFOLLOW` relative to its parent, and a component that became a link fails (ELOOP/ENOTDIR).
Every open is a non-blocking regular-file open with an fstat check (core/regularfile), and
callers may demand the (device, inode) discovery saw.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nvplugin.core.errors import RootEscapeError
from nvplugin.core.regularfile import READ_FLAGS, check_regular, read_fd

_MAX_LINKS = 40  # the kernel's MAXSYMLINKS
# Reads of whole files under the root are bounded: ld.so.cache is ~100 KB on a busy host, the
# /proc files a few hundred bytes.
MAX_READ = 32 << 20

# openat2(2): the syscall number is the same on every architecture (added after the unified
# table); RESOLVE_IN_ROOT treats the dirfd as "/", RESOLVE_NO_MAGICLINKS refuses /proc/*/fd links.
_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_OPENAT2_RETRIES = 8  # EAGAIN: a rename or mount raced the lookup


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


Openat2 = Callable[[int, str, int], int]


@functools.cache
def _openat2() -> Openat2 | None:
    """openat2 with RESOLVE_IN_ROOT, or None where the kernel (< 5.6) or a seccomp profile
    (Docker's before 20.10) refuses the syscall."""
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long

    def openat2(dirfd: int, path: str, flags: int) -> int:
        how = _OpenHow(flags, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
        for _ in range(_OPENAT2_RETRIES):
            fd = syscall(_SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how),
                         ctypes.sizeof(how))
            if fd >= 0:
                return int(fd)
            err = ctypes.get_errno()
            if err != errno.EAGAIN:
                raise OSError(err, os.strerror(err), path)
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)

    probe = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(openat2(probe, ".", os.O_PATH | os.O_CLOEXEC))
    except OSError:
        return None
    finally:
        os.close(probe)
    return openat2


@dataclass(frozen=True, slots=True)
class OpenFile:
    """A regular file opened inside the root: read and clone through `fd`, never `path`."""

    fd: int
    st: os.stat_result
    path: str  # its host path, for messages


class HostRoot:
    """The driver root and the device root (which defaults to the driver root)."""

    def __init__(self, driver_root: Path | str, dev_root: Path | str | None = None) -> None:
        self.root = os.path.realpath(os.fspath(driver_root))
        self.dev_root = os.path.realpath(os.fspath(dev_root)) if dev_root else self.root
        self._is_slash = self.root == "/"
        self._dirs: dict[str, str] = {}  # in-root dir -> resolved in-root dir (memo)
        # Host paths this process was not allowed to read: a lookup that fails with EACCES is
        # no missing file, and discovery says so instead of "install the driver".
        self.denied: list[str] = []

    def note(self, err: OSError, inner: str = "/") -> None:
        """Remember `err` if it is a permission error (callers that treat failures as absent)."""
        if err.errno in (errno.EACCES, errno.EPERM):
            path = err.filename if isinstance(err.filename, str) else self.host(inner)
            if path not in self.denied:
                self.denied.append(path)

    def __repr__(self) -> str:
        return f"HostRoot({self.root!r}, dev_root={self.dev_root!r})"

    def host(self, inner: str) -> str:
        """The host path of an in-root path (no symlink resolution)."""
        rel = inner.lstrip("/")
        if self._is_slash:
            return "/" + rel
        return f"{self.root}/{rel}" if rel else self.root

    def dev(self, inner: str) -> str:
        """The host path of a device node's in-root path, under the device root."""
        return os.path.join(self.dev_root, inner.lstrip("/"))

    def inner(self, host_path: str) -> str:
        """The in-root path of a host path under the root."""
        if self._is_slash:
            return host_path
        if host_path == self.root:
            return "/"
        if not host_path.startswith(self.root + "/"):
            raise RootEscapeError(f"{host_path} is not under the driver root {self.root}")
        return host_path[len(self.root):]

    def resolve(self, inner: str) -> str:
        """The in-root path with every symlink resolved inside the root.

        Raises RootEscapeError for a `..` above the root and OSError (ELOOP, ENOENT, ...) for
        dangling or looping links.
        """
        head, _, name = inner.rstrip("/").rpartition("/")
        parent = self._resolve_dir(head or "/")
        if not name or name == ".":
            return parent
        return self._walk(parent, [name], inner, budget=[_MAX_LINKS])

    def _resolve_dir(self, inner: str) -> str:
        found = self._dirs.get(inner)
        if found is None:
            found = self._walk("/", [p for p in inner.split("/") if p], inner, [_MAX_LINKS])
            self._dirs[inner] = found
        return found

    def _walk(self, base: str, parts: list[str], original: str, budget: list[int]) -> str:
        current = base
        pending = list(reversed(parts))
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if current == "/":
                    if self._is_slash:
                        continue  # as the kernel does at the real root
                    raise RootEscapeError(
                        f"{self.host(original)} leaves the driver root {self.root} through "
                        f"'..'; refusing to follow it")
                current = current.rsplit("/", 1)[0] or "/"
                continue
            candidate = f"{current.rstrip('/')}/{part}"
            host = self.host(candidate)
            st = os.lstat(host)
            if not stat.S_ISLNK(st.st_mode):
                current = candidate
                continue
            budget[0] -= 1
            if budget[0] < 0:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", self.host(original))
            target = os.readlink(host)
            if target.startswith("/"):
                current = "/"  # absolute targets are re-rooted, never followed onto the host
            pending.extend(reversed(target.split("/")))
        return current

    # Opens and reads, all taking in-root paths and never leaving the root.
    @contextlib.contextmanager
    def open_file(self, inner: str, *, expect: tuple[int, int] | None = None,
                  ) -> Iterator[OpenFile]:
        """The regular file at `inner` (links resolved inside the root), open for reading.

        UnsafeFileError for another kind of file, or for a file whose (device, inode) is not
        `expect`; OSError (ENOENT, EACCES, ELOOP, ...) and RootEscapeError as the lookup fails.
        """
        opened = self.open_fd(inner, expect=expect)
        try:
            yield opened
        finally:
            os.close(opened.fd)

    def open_fd(self, inner: str, *, expect: tuple[int, int] | None = None) -> OpenFile:
        """As `open_file`, for a caller that keeps the file open (it closes `fd`)."""
        host = self.host(inner)
        fd = self._open(inner, READ_FLAGS)
        try:
            return OpenFile(fd, check_regular(fd, host, expect), host)
        except BaseException:
            os.close(fd)
            raise

    def read_bytes(self, inner: str, limit: int = MAX_READ) -> bytes:
        """A regular file's content, at most `limit` bytes (UnsafeFileError beyond)."""
        with self.open_file(inner) as f:
            return read_fd(f.fd, limit, f.path)

    def identify(self, inner: str) -> tuple[int, int]:
        """(device, inode) of the regular file at `inner`, as `open_file` would open it."""
        with self.open_file(inner) as f:
            return f.st.st_dev, f.st.st_ino

    def _open(self, inner: str, flags: int) -> int:
        try:
            rootfd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                openat2 = _openat2()
                if openat2 is not None:
                    return openat2(rootfd, inner.lstrip("/") or ".", flags)
                return self._open_walk(rootfd, inner, flags)
            finally:
                os.close(rootfd)
        except OSError as err:  # named by the file asked for, not by a component or a dirfd
            raise OSError(err.errno, err.strerror, self.host(inner)) from err

    def _open_walk(self, rootfd: int, inner: str, flags: int) -> int:
        """Without openat2: resolve inside the root, then open each component with O_NOFOLLOW
        relative to the last, so a component swapped for a link since is refused, not followed."""
        parts = [p for p in self.resolve(inner).split("/") if p]
        fd = os.dup(rootfd)
        try:
            for part in parts[:-1]:
                parent, fd = fd, -1
                try:
                    fd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 dir_fd=parent)
                finally:
                    os.close(parent)
            return os.open(parts[-1] if parts else ".", flags | os.O_NOFOLLOW, dir_fd=fd)
        finally:
            if fd >= 0:
                os.close(fd)

    def stat(self, inner: str) -> os.stat_result:
        return os.stat(self.host(self.resolve(inner)))

    def listdir(self, inner: str) -> list[str]:
        """Names in a directory (resolved inside the root); [] when it is missing."""
        try:
            return sorted(os.listdir(self.host(self.resolve(inner))))
        except OSError as err:
            self.note(err, inner)
            return []
        except RootEscapeError:
            return []

    def is_file(self, inner: str) -> bool:
        try:
            return stat.S_ISREG(self.stat(inner).st_mode)
        except OSError as err:
            self.note(err, inner)
            return False
        except RootEscapeError:
            return False

    def is_dir(self, inner: str) -> bool:
        try:
            return stat.S_ISDIR(self.stat(inner).st_mode)
        except OSError as err:
            self.note(err, inner)
            return False
        except RootEscapeError:
            return False
