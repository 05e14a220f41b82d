"""Paths under --driver-root, resolved as if that root were `/`.

Every read of the driver goes through `HostRoot`, so a driver container (`/run/nvidia/driver`),
the H200's squashfs under `/usr/local/nvidia` and a test's fake host are all just roots.

"In-root" paths are absolute strings as the root itself sees them (`/usr/lib/libcuda.so.1`);
"host" paths are where those files really are (`<driver_root>/usr/lib/libcuda.so.1`).
Symlinks are resolved component by component: an absolute target restarts at the root (it is
re-rooted, not followed out to the host), and a `..` that would climb above a root other than `/`
raises `RootEscapeError` (the toolkit's symlink CVEs came from following such links out).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from nvplugin.core.errors import RootEscapeError

_MAX_LINKS = 40  # the kernel's MAXSYMLINKS


class HostRoot:
    """The driver root and the device root (which defaults to the driver root)."""

    def __init__(self, driver_root: Path | str, dev_root: Path | str | None = None) -> None:
        self.root = os.path.realpath(os.fspath(driver_root))
        self.dev_root = os.path.realpath(os.fspath(dev_root)) if dev_root else self.root
        self._is_slash = self.root == "/"
        self._dirs: dict[str, str] = {}  # in-root dir -> resolved in-root dir (memo)

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

    # Reads, all taking in-root paths.
    def read_bytes(self, inner: str) -> bytes:
        with open(self.host(inner), "rb") as f:
            return f.read()

    def stat(self, inner: str) -> os.stat_result:
        return os.stat(self.host(self.resolve(inner)))

    def listdir(self, inner: str) -> list[str]:
        """Names in a directory (resolved inside the root); [] when it is missing."""
        try:
            return sorted(os.listdir(self.host(self.resolve(inner))))
        except (OSError, RootEscapeError):
            return []

    def is_file(self, inner: str) -> bool:
        try:
            return stat.S_ISREG(self.stat(inner).st_mode)
        except (OSError, RootEscapeError):
            return False

    def is_dir(self, inner: str) -> bool:
        try:
            return stat.S_ISDIR(self.stat(inner).st_mode)
        except (OSError, RootEscapeError):
            return False
