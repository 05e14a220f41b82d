"""The plugin socket's life: a stale file replaced, a live one refused, removed on every exit.

A socket file left behind costs every `docker volume ls` on the host about 15 s (Docker retries
it), and Python 3.11 does not unlink it on close, so `PluginSite.close()` does. When the socket
is not in Docker's own directory, Docker finds it through a spec file holding its URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from nvplugin.core.atomicfile import remove_durably, write_text_atomic
from nvplugin.core.config import Config
from nvplugin.core.errors import ConfigError

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
# aiohttp's default of 128 refused 5-18 % of a 500-connection burst (a host starting many GPU
# containers at once); the kernel caps any value at net.core.somaxconn, which then decides.
LISTEN_BACKLOG = 65535
SOCKET_GROUP = "docker"
_MAX_SUN_PATH = 107  # sockaddr_un.sun_path is 108 bytes with the terminating NUL


@dataclass(slots=True)
class PluginSite:
    """The listening socket; `close()` is safe to call more than once and in any order with
    `runner.cleanup()`."""

    runner: web.AppRunner
    site: web.UnixSite
    socket_path: Path
    socket_id: tuple[int, int]  # (inode, ctime ns): inode numbers alone are reused at once
    spec_path: Path | None
    closed: bool = False

    async def publish_spec(self, config: Config) -> None:
        """Write the spec file that lets Docker find a socket outside its plugin directory.

        Called last, once every listener is up: a daemon that fails to start must not have
        pointed Docker away from a plugin that is running. A spec naming another socket that
        still answers belongs to another daemon and is left alone.
        """
        if not config.needs_spec_file or self.spec_path is not None:
            return
        spec = config.spec_path
        other = await asyncio.to_thread(_spec_target, spec)
        if other is not None and other != self.socket_path and await _answers(other):
            raise ConfigError(f"{spec} points Docker at {other}, where another "
                              "nvidia-docker-plugin is serving: stop it first")
        await asyncio.to_thread(_write_spec, spec, self.socket_path)
        self.spec_path = spec

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.site in self.runner.sites:
            await self.site.stop()
        await asyncio.to_thread(self._remove_files)

    def _remove_files(self) -> None:
        try:
            st = os.lstat(self.socket_path)
            # Only our own socket: a successor may already listen on the same path.
            if (st.st_ino, st.st_ctime_ns) == self.socket_id and stat.S_ISSOCK(st.st_mode):
                os.unlink(self.socket_path)
                log.debug("Removed %s", self.socket_path)
        except FileNotFoundError:
            pass
        if self.spec_path is not None:
            with contextlib.suppress(OSError):
                if self.spec_path.read_text().strip() == f"unix://{self.socket_path}":
                    remove_durably(self.spec_path)


async def start_plugin_site(runner: web.AppRunner, config: Config) -> PluginSite:
    """Listen on `config.socket_path` (after `await runner.setup()`); raises ConfigError naming
    the path. The spec file, where one is needed, comes later: `PluginSite.publish_spec`."""
    path = config.socket_path
    if len(os.fsencode(path)) > _MAX_SUN_PATH:
        raise ConfigError(f"socket path {path} is longer than {_MAX_SUN_PATH} bytes: "
                          "choose a shorter --socket-dir")
    await asyncio.to_thread(_make_dir, config.socket_dir)
    await _clear_stale(path)
    site = web.UnixSite(runner, str(path), backlog=LISTEN_BACKLOG)
    try:
        await site.start()
    except OSError as err:
        raise ConfigError(f"cannot listen on {path}: {err.strerror}") from err
    st = os.lstat(path)
    ident = (st.st_ino, st.st_ctime_ns)
    try:
        ident = await asyncio.to_thread(_set_access, path)
    except BaseException:
        await PluginSite(runner, site, path, ident, None).close()
        raise
    return PluginSite(runner, site, path, ident, None)


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the socket directory {directory}: "
                          f"{err.strerror}") from err
    if not directory.is_dir():
        raise ConfigError(f"the socket directory {directory} is not a directory")


async def _answers(path: Path) -> bool:
    """Whether something listens on the unix socket `path` (False: nothing, or a stale file)."""
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2)
    except (ConnectionRefusedError, FileNotFoundError, NotADirectoryError):
        return False
    except (OSError, TimeoutError) as err:
        raise ConfigError(f"cannot tell whether {path} is in use ({err}): "
                          "stop the other plugin or remove the file") from err
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _clear_stale(path: Path) -> None:
    """Unlink a socket nobody answers on; refuse a live one or anything that is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path} exists and is not a socket: move it away or choose "
                          "another --socket-dir")
    if await _answers(path):
        raise ConfigError(f"another nvidia-docker-plugin is already serving {path}: "
                          "stop it first, or use another --socket-dir")
    log.info("Replacing stale socket %s", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _spec_target(spec: Path) -> Path | None:
    """The socket an existing spec file names, if it names a unix socket."""
    try:
        text = spec.read_text().strip()
    except OSError:
        return None
    return Path(text.removeprefix("unix://")) if text.startswith("unix://") else None


def _set_access(path: Path) -> tuple[int, int]:
    # Docker (root) connects; group `docker` may talk to the plugin too, others may not.
    try:
        gid = grp.getgrnam(SOCKET_GROUP).gr_gid
    except KeyError:
        log.debug("No group %s on this host: only root and the daemon's user reach %s",
                  SOCKET_GROUP, path)
    else:
        try:
            os.chown(path, -1, gid)
        except OSError as err:
            log.warning("Cannot give group %s access to %s: %s; only root and the daemon's user "
                        "reach it (the daemon needs CAP_CHOWN or membership of group %s)",
                        SOCKET_GROUP, path, err.strerror, SOCKET_GROUP)
    os.chmod(path, SOCKET_MODE)
    st = os.lstat(path)
    return st.st_ino, st.st_ctime_ns


def _write_spec(spec: Path, socket_path: Path) -> None:
    try:
        spec.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_text_atomic(spec, f"unix://{socket_path}\n", 0o644)
    except OSError as err:
        raise ConfigError(f"cannot write the plugin spec file {spec}: {err.strerror}: "
                          "Docker would not find the plugin socket") from err
    log.info("Wrote %s for Docker to find %s", spec, socket_path)
