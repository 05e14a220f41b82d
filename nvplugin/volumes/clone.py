"""How a driver file gets into a volume: hard link, else reflink, else a mode-keeping copy.

1.0 only hard-linked, which fails with `invalid cross-device link` whenever the volumes dir is on
another filesystem than the driver (a read-only squashfs on the GPU hosts). Each strategy that
cannot work for a (source device, target device) pair is dropped for that pair, so a 40-file
build pays for a failed link once, not 40 times. Blocking; runs in the build's worker thread.
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

log = logging.getLogger(__name__)

FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h

# Errors meaning "this strategy cannot work here", as opposed to a real failure of the file.
_LINK_UNSUPPORTED = frozenset({
    errno.EXDEV,  # another filesystem, or another mount of the same one
    errno.EPERM,  # fs.protected_hardlinks, or a filesystem without hard links
    errno.EROFS, errno.EMLINK, errno.EOPNOTSUPP, errno.EACCES,
})
_REFLINK_UNSUPPORTED = frozenset({
    errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.EPERM, errno.ENOSYS,
    errno.EBADF, errno.EISDIR,
})
_COPY_CHUNK = 1 << 30


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
        self._start: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()
        self.used: dict[Method, int] = dict.fromkeys(Method, 0)

    def clone(self, src: str, dst: str, dst_dev: int | None = None) -> Method:
        """Create `dst` (which must not exist) with the contents and mode of `src`."""
        st = os.stat(src)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", src)
        if dst_dev is None:
            dst_dev = os.stat(os.path.dirname(dst) or ".").st_dev
        key = (st.st_dev, dst_dev)
        with self._lock:
            start = self._start.get(key, 0)
        tried: list[tuple[Method, str]] = []
        for index in range(start, len(self._order)):
            method = self._order[index]
            try:
                _METHODS[method](src, dst, st)
            except OSError as err:
                last = index == len(self._order) - 1
                if last or err.errno not in _unsupported(method):
                    raise CloneError(err, tried) from err
                tried.append((method, err.strerror or str(err)))
                self._advance(key, index + 1, method, err)
                continue
            with self._lock:
                self.used[method] += 1
            return method
        raise AssertionError("unreachable: the last method either returns or raises")

    def _advance(self, key: tuple[int, int], index: int, failed: Method, err: OSError) -> None:
        with self._lock:
            if self._start.get(key, 0) < index:
                self._start[key] = index
                log.debug("Cloning from device %d to %d: %s failed (%s), using %s from now on",
                          key[0], key[1], failed.value, err.strerror, self._order[index].value)


def _unsupported(method: Method) -> frozenset[int]:
    return _LINK_UNSUPPORTED if method is Method.LINK else _REFLINK_UNSUPPORTED


def _link(src: str, dst: str, st: os.stat_result) -> None:
    os.link(src, dst)


def _reflink(src: str, dst: str, st: os.stat_result) -> None:
    _with_new_file(src, dst, st, lambda s, d: fcntl.ioctl(d, FICLONE, s))


def _copy(src: str, dst: str, st: os.stat_result) -> None:
    _with_new_file(src, dst, st, lambda s, d: _copy_data(s, d, st.st_size))


def _with_new_file(src: str, dst: str, st: os.stat_result,
                   fill: Callable[[int, int], object]) -> None:
    """Open src, create dst exclusively, fill it, give it src's mode, owner and times."""
    src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fill(src_fd, dst_fd)
            if os.geteuid() == 0:
                os.fchown(dst_fd, st.st_uid, st.st_gid)
            # After chown: chown clears set-id bits, and the copy must keep the source's mode.
            os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
            os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        except BaseException:
            os.close(dst_fd)
            with contextlib.suppress(OSError):
                os.unlink(dst)
            raise
        os.close(dst_fd)
    finally:
        os.close(src_fd)


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
