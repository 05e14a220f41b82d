"""How a driver file gets into a volume: hard link, else reflink, else a mode-keeping copy.

1.0 only hard-linked, which fails with `invalid cross-device link` whenever the volumes dir is on
another filesystem than the driver (a read-only squashfs on the GPU hosts). Each strategy that
cannot work for a (source device, target device) pair is dropped for that pair, so a 40-file
build pays for a failed link once, not 40 times. Blocking; runs in the build's worker thread.

The source is a file already open (the build opens it inside the driver root and checks it is
the one discovery inspected): links are made from that open file through `/proc/self/fd`, and
reflinks and copies read it, so nothing here follows a path that may have changed. Docker
mounts volumes without `nosuid`, so a set-user-ID or set-group-ID bit, or file capabilities,
would work in every GPU container: such a file is never linked (a link shares the inode and its
bits), and copies drop the bits (and carry no extended attributes, so no capabilities).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Callable, Sequence
from enum import Enum

from nvplugin.driver.hostroot import OpenFile

log = logging.getLogger(__name__)

FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h

# Errors meaning "this strategy cannot work here", as opposed to a real failure of the file.
_LINK_UNSUPPORTED = frozenset({
    errno.EXDEV,  # another filesystem, or another mount of the same one
    errno.EPERM,  # fs.protected_hardlinks, or a filesystem without hard links
    errno.EROFS, errno.EMLINK, errno.EOPNOTSUPP, errno.EACCES,
    errno.ENOENT,  # no /proc to link the open file through
})
_REFLINK_UNSUPPORTED = frozenset({
    errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.EPERM, errno.ENOSYS,
    errno.EBADF, errno.EISDIR,
})
_COPY_CHUNK = 1 << 30
_DESTINATION_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class Method(Enum):
    LINK = "link"
    REFLINK = "reflink"
    COPY = "copy"


DEFAULT_ORDER: tuple[Method, ...] = (Method.LINK, Method.REFLINK, Method.COPY)


class CloneError(OSError):
    """The last strategy failed; `tried` says why each earlier one was skipped."""

    def __init__(self, err: OSError, tried: Sequence[tuple[Method, str]]) -> None:
        super().__init__(err.errno, err.strerror, err.filename)
        self.tried = tuple(tried)

    def reason(self) -> str:
        why = self.strerror or "failed"
        if self.tried:
            why += " (" + "; ".join(f"{m.value}: {r}" for m, r in self.tried) + ")"
        return why


class Cloner:
    """Places files with the cheapest strategy that works, remembered per device pair."""

    def __init__(self, order: Sequence[Method] = DEFAULT_ORDER) -> None:
        if not order:
            raise ValueError("a Cloner needs at least one method")
        self._order = tuple(order)
        self._broken: dict[tuple[int, int], set[Method]] = {}  # methods that cannot work
        self._lock = threading.Lock()
        self.used: dict[Method, int] = dict.fromkeys(Method, 0)

    def clone(self, src: OpenFile, dst: str, dst_dev: int | None = None) -> Method:
        """Create `dst` (which must not exist) with the contents and mode of the open `src`,
        set-ID bits dropped."""
        st = src.st
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", src.path)
        if dst_dev is None:
            dst_dev = os.stat(os.path.dirname(dst) or ".").st_dev
        key = (st.st_dev, dst_dev)
        with self._lock:
            broken = set(self._broken.get(key, ()))
        privileged = _privileged(src)
        tried: list[tuple[Method, str]] = []
        usable = []
        for method in self._order:
            if method in broken:
                continue
            if privileged and method is Method.LINK:
                # This file only: the next one may link.
                tried.append((method, f"{privileged}, never linked"))
                continue
            usable.append(method)
        if not usable:
            raise CloneError(OSError(errno.EPERM, f"{privileged} is never linked, and only "
                                     "linking is configured", src.path), tried)
        for method in usable:
            try:
                _METHODS[method](src, dst)
            except OSError as err:
                if method is usable[-1] or err.errno not in _unsupported(method):
                    raise CloneError(err, tried) from err
                tried.append((method, err.strerror or str(err)))
                self._give_up(key, method, err)
                continue
            with self._lock:
                self.used[method] += 1
            return method
        raise AssertionError("unreachable: the last method either returns or raises")

    def _give_up(self, key: tuple[int, int], failed: Method, err: OSError) -> None:
        with self._lock:
            broken = self._broken.setdefault(key, set())
            if failed not in broken:
                broken.add(failed)
                log.debug("Cloning from device %d to %d: %s failed (%s), not tried again",
                          key[0], key[1], failed.value, err.strerror)


def _unsupported(method: Method) -> frozenset[int]:
    return _LINK_UNSUPPORTED if method is Method.LINK else _REFLINK_UNSUPPORTED


_SET_ID = stat.S_ISUID | stat.S_ISGID
_CAPABILITY_XATTR = "security.capability"


def _privileged(src: OpenFile) -> str | None:
    """Why `src` must not be linked into a volume (it would keep its privileges), or None."""
    if src.st.st_mode & _SET_ID:
        return "a set-user-ID or set-group-ID file"
    try:
        os.getxattr(src.fd, _CAPABILITY_XATTR)
    except OSError:
        return None  # ENODATA: none; ENOTSUP: the filesystem has no xattrs
    return "a file with capabilities"


def _link(src: OpenFile, dst: str) -> None:
    # linkat(AT_SYMLINK_FOLLOW) through the magic link names the open file itself; without
    # /proc, ENOENT skips to a copy of the same open file. Python calls plain link(), which
    # would link the magic link, unless a dir fd asks for linkat.
    parent = os.open(os.path.dirname(dst) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(f"/proc/self/fd/{src.fd}", os.path.basename(dst), dst_dir_fd=parent,
                follow_symlinks=True)
    finally:
        os.close(parent)


def _reflink(src: OpenFile, dst: str) -> None:
    _with_new_file(src, dst, lambda d: fcntl.ioctl(d, FICLONE, src.fd))


def _copy(src: OpenFile, dst: str) -> None:
    _with_new_file(src, dst, lambda d: _copy_data(src.fd, d, src.st.st_size))


def _with_new_file(src: OpenFile, dst: str, fill: Callable[[int], object]) -> None:
    """Create dst exclusively, fill it from src, give it src's mode (set-ID bits dropped),
    owner and times."""
    st = src.st
    dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            fill(dst_fd)
        except OSError as err:
            if err.errno in _DESTINATION_FULL:
                # A full disk is the volumes directory's problem, not the driver file's.
                raise OSError(err.errno, err.strerror, dst) from err
            raise
        if os.geteuid() == 0:
            os.fchown(dst_fd, st.st_uid, st.st_gid)
        # After chown (which clears set-ID bits anyway): the mode, never with set-ID bits.
        os.fchmod(dst_fd, stat.S_IMODE(st.st_mode) & ~_SET_ID)
        os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    except BaseException:
        os.close(dst_fd)
        with contextlib.suppress(OSError):
            os.unlink(dst)
        raise
    os.close(dst_fd)


def _copy_data(src_fd: int, dst_fd: int, size: int) -> None:
    """In-kernel copy: copy_file_range (can share extents), else sendfile."""
    offset = 0
    use_cfr = hasattr(os, "copy_file_range")
    while offset < size:
        count = min(_COPY_CHUNK, size - offset)
        if use_cfr:
            try:
                sent = os.copy_file_range(src_fd, dst_fd, count)
            except OSError as err:
                # Kernels before 5.19 and some filesystem pairs refuse cross-fs copy_file_range.
                if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                use_cfr = False
                continue
        else:
            sent = os.sendfile(dst_fd, src_fd, offset, count)
        if sent == 0:
            break  # the file shrank while we copied it
        offset += sent


_METHODS = {Method.LINK: _link, Method.REFLINK: _reflink, Method.COPY: _copy}
