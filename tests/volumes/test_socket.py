"""The socket's life: created with tight access, stale replaced, live refused, always removed."""

from __future__ import annotations

import asyncio
import grp
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from aiohttp import web

from nvplugin.api.plugin import make_app
from nvplugin.api.plugin_socket import SOCKET_GROUP, start_plugin_site
from nvplugin.core.config import Config
from nvplugin.core.errors import ConfigError
from nvplugin.volumes.store import VolumeStore
from tests.requirements import need, need_root, need_tool
from tests.unixhttp import unix_post
from tests.volumes.conftest import Plugin


async def _runner(store: VolumeStore) -> web.AppRunner:
    runner = web.AppRunner(make_app(store), access_log=None, shutdown_timeout=1)
    await runner.setup()
    return runner


def _config(tmp_path: Path, socket_dir: Path | None = None) -> Config:
    return Config(socket_dir=socket_dir or tmp_path / "run" / "plugins",
                  spec_dir=tmp_path / "etc" / "docker" / "plugins")


async def test_socket_access_spec_file_and_removal(store: VolumeStore, tmp_path: Path):
    cfg = _config(tmp_path)
    runner = await _runner(store)
    site = await start_plugin_site(runner, cfg)
    assert not cfg.spec_path.exists()  # only once every listener is up
    await site.publish_spec(cfg)
    st = os.lstat(cfg.socket_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    groups = {g.gr_name: g.gr_gid for g in grp.getgrall()}
    # Without a docker group the socket keeps the daemon's group.
    assert st.st_gid == groups.get("docker", os.getegid())
    assert stat.S_IMODE(cfg.socket_dir.stat().st_mode) == 0o755
    assert cfg.spec_path.read_text() == f"unix://{cfg.socket_path}\n"
    answer = await asyncio.to_thread(unix_post, cfg.socket_path, "/Plugin.Activate")
    assert answer is not None and answer.endswith(b'{"Implements":["VolumeDriver"]}\n')
    await site.close()
    await runner.cleanup()
    assert not cfg.socket_path.exists() and not cfg.spec_path.exists()
    await site.close()  # twice is fine


async def test_close_after_runner_cleanup_still_removes_the_socket(store: VolumeStore,
                                                                   tmp_path: Path):
    cfg = _config(tmp_path)
    runner = await _runner(store)
    site = await start_plugin_site(runner, cfg)
    await runner.cleanup()  # Python 3.11 leaves the file here
    await site.close()
    assert not cfg.socket_path.exists() and not cfg.spec_path.exists()


async def test_docker_default_dir_gets_no_spec_file(store: VolumeStore, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    cfg = _config(tmp_path)
    monkeypatch.setattr(Config, "needs_spec_file", property(lambda self: False))
    runner = await _runner(store)
    site = await start_plugin_site(runner, cfg)
    await site.publish_spec(cfg)
    assert not cfg.spec_path.exists()
    await site.close()
    await runner.cleanup()


async def test_a_stale_socket_is_replaced(store: VolumeStore, tmp_path: Path):
    cfg = _config(tmp_path)
    cfg.socket_dir.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(cfg.socket_path))
    dead.close()  # bound, never listened, closed: what a killed daemon leaves
    runner = await _runner(store)
    site = await start_plugin_site(runner, cfg)
    assert await asyncio.to_thread(unix_post, cfg.socket_path, "/Plugin.Activate")
    await site.close()
    await runner.cleanup()


async def test_a_live_socket_is_refused_and_left_alone(store: VolumeStore, tmp_path: Path):
    cfg = _config(tmp_path)
    first_runner = await _runner(store)
    first = await start_plugin_site(first_runner, cfg)
    await first.publish_spec(cfg)
    second_runner = await _runner(store)
    with pytest.raises(ConfigError, match=rf"already serving {cfg.socket_path}: stop it first"):
        await start_plugin_site(second_runner, cfg)
    await second_runner.cleanup()
    assert await asyncio.to_thread(unix_post, cfg.socket_path, "/Plugin.Activate")
    assert cfg.spec_path.exists()
    await first.close()
    await first_runner.cleanup()


async def test_something_else_at_the_socket_path_is_refused(store: VolumeStore, tmp_path: Path):
    cfg = _config(tmp_path)
    cfg.socket_dir.mkdir(parents=True)
    cfg.socket_path.write_text("not a socket")
    runner = await _runner(store)
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        await start_plugin_site(runner, cfg)
    await runner.cleanup()
    assert cfg.socket_path.read_text() == "not a socket"


async def test_a_successor_socket_is_not_removed(store: VolumeStore, tmp_path: Path):
    """close() removes only the socket it created, not one a new daemon bound since."""
    cfg = _config(tmp_path)
    runner = await _runner(store)
    site = await start_plugin_site(runner, cfg)
    await runner.cleanup()
    os.unlink(cfg.socket_path)
    successor = socket.socket(socket.AF_UNIX)
    successor.bind(str(cfg.socket_path))
    try:
        await site.close()
        assert stat.S_ISSOCK(os.lstat(cfg.socket_path).st_mode)
    finally:
        successor.close()


async def test_too_long_a_socket_path_is_a_clear_error(store: VolumeStore, tmp_path: Path):
    cfg = _config(tmp_path, tmp_path / ("d" * 120))
    runner = await _runner(store)
    with pytest.raises(ConfigError, match="longer than 107 bytes: choose a shorter --socket-dir"):
        await start_plugin_site(runner, cfg)
    await runner.cleanup()


async def test_a_spec_naming_another_live_plugin_is_not_overwritten(store: VolumeStore,
                                                                    tmp_path: Path):
    first_cfg = _config(tmp_path, tmp_path / "first")
    first_runner = await _runner(store)
    first = await start_plugin_site(first_runner, first_cfg)
    await first.publish_spec(first_cfg)
    second_cfg = _config(tmp_path, tmp_path / "second")  # same spec file, another socket
    second_runner = await _runner(store)
    second = await start_plugin_site(second_runner, second_cfg)
    with pytest.raises(ConfigError, match=f"points Docker at {first_cfg.socket_path}"):
        await second.publish_spec(second_cfg)
    await second.close()
    await second_runner.cleanup()
    assert first_cfg.spec_path.read_text() == f"unix://{first_cfg.socket_path}\n"
    await first.close()
    await first_runner.cleanup()
    assert not first_cfg.spec_path.exists()


async def test_a_spec_naming_a_dead_socket_is_taken_over(store: VolumeStore, tmp_path: Path):
    cfg = _config(tmp_path)
    cfg.spec_path.parent.mkdir(parents=True)
    cfg.spec_path.write_text(f"unix://{tmp_path / 'gone.sock'}\n")
    runner = await _runner(store)
    site = await start_plugin_site(runner, cfg)
    await site.publish_spec(cfg)
    assert cfg.spec_path.read_text() == f"unix://{cfg.socket_path}\n"
    await site.close()
    await runner.cleanup()


def test_a_failed_chown_of_the_socket_is_logged(tmp_path: Path):
    """Root without CAP_CHOWN (setpriv drops it from the bounding set) cannot hand the socket to
    group docker: once silent, now one warning saying who can reach the socket."""
    setpriv = need_tool("setpriv")
    need_root()
    try:
        grp.getgrnam(SOCKET_GROUP)
    except KeyError:
        need(False, f"a group {SOCKET_GROUP!r} (installed with Docker)")
    script = textwrap.dedent(f"""
        import logging, socket, sys
        from pathlib import Path
        logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")
        from nvplugin.api.plugin_socket import _set_access
        path = Path({str(tmp_path / "p.sock")!r})
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))
            _set_access(path)
    """)
    done = subprocess.run([setpriv, "--bounding-set=-chown", sys.executable, "-c", script],
                          capture_output=True, text=True, cwd=Path(__file__).parents[2],
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"WARNING Cannot give group {SOCKET_GROUP} access to "
                                  f"{tmp_path / 'p.sock'}: Operation not permitted; only root")
    assert (tmp_path / "p.sock").stat().st_mode & 0o777 == 0o660


async def test_a_burst_of_connections_waits_in_the_backlog_instead_of_being_refused(
        plugin: Plugin):
    """500 containers starting at once: with aiohttp's backlog of 128, 5-18 % of the connects
    were refused. Here the event loop is kept busy (nothing is accepted) while 500 connect."""
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    need(somaxconn >= 500, "net.core.somaxconn of at least 500 (the kernel default is 4096)")
    sockets: list[socket.socket] = []
    refused = 0
    try:
        for _ in range(500):  # synchronous: the loop cannot accept any of them meanwhile
            sock = socket.socket(socket.AF_UNIX)
            sock.setblocking(False)
            sockets.append(sock)
            try:
                sock.connect(str(plugin.site.socket_path))
            except (BlockingIOError, ConnectionRefusedError):
                refused += 1
    finally:
        for sock in sockets:
            sock.close()
    assert refused == 0
    assert (await plugin.call("/VolumeDriver.Capabilities"))["Capabilities"] == {"Scope": "local"}
