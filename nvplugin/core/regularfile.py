"""Reads that cannot hang or balloon: regular files only, opened without blocking, size-bounded.

A FIFO where a file is expected blocks `open()` until a writer comes (forever, for a daemon),
a character device may do anything on open or read, and a sparse 10 GB `ld.so.cache` would be
read into memory whole. Every file the daemon reads from the driver root or its own state is
opened with `O_NONBLOCK` (a FIFO then opens at once), checked with `fstat`, and read up to a
limit; anything else is refused with `UnsafeFileError` naming the file and what it is.
Blocking I/O: run it in a thread when on the event loop.
"""

from __future__ import annotations

import os
import stat

from nvplugin.core.errors import UnsafeFileError

READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CHUNK = 1 << 16

_TYPES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


def file_type(mode: int) -> str:
    """`a FIFO`, `a directory`, ... for error messages; `a regular file` for one."""
    return next((name for test, name in _TYPES if test(mode)), "a regular file"
                if stat.S_ISREG(mode) else "an unknown kind of file")


def identity(st: os.stat_result) -> tuple[int, int]:
    """(device, inode): what makes a file the same file, whatever its path."""
    return st.st_dev, st.st_ino


def check_regular(fd: int, name: str, expect: tuple[int, int] | None = None) -> os.stat_result:
    """`fstat(fd)`, refusing anything but a regular file, and a file other than `expect`."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"{name} is {file_type(st.st_mode)}, not a regular file; "
                              "refusing to read it")
    if expect is not None and identity(st) != tuple(expect):
        raise UnsafeFileError(f"{name} is not the file discovery inspected (device and inode "
                              "changed); refusing it until the driver is discovered again")
    return st


def read_fd(fd: int, limit: int, name: str) -> bytes:
    """At most `limit` bytes of an open regular file; UnsafeFileError when it holds more."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = os.read(fd, min(_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise UnsafeFileError(f"{name} is larger than {limit} bytes; refusing to read it")


def read_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """A regular file's content, at most `limit` bytes; a final symlink is not followed.
    OSError as `open` raises it (FileNotFoundError, ...), UnsafeFileError for the rest."""
    name = os.fspath(path)
    fd = os.open(name, READ_FLAGS | os.O_NOFOLLOW)
    try:
        check_regular(fd, name)
        return read_fd(fd, limit, name)
    finally:
        os.close(fd)
