"""Volume-plugin fixtures: driver files in tmp_path, a store, the plugin on a real socket."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from nvplugin.api.plugin import make_app
from nvplugin.api.plugin_socket import PluginSite, start_plugin_site
from nvplugin.core.config import Config
from nvplugin.core.regularfile import identity
from nvplugin.driver.manifest import Entry, Link, Manifest
from nvplugin.volumes.store import VolumeStore
from tests.requirements import need_root

VERSION = "580.159.04"
DOCKER_ACCEPT = {"Accept": "application/vnd.docker.plugins.v1.2+json"}

# (dest, mode, soname links) of the fake driver files; content is unique per file.
FILES: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("bin/nvidia-smi", 0o755, ()),
    ("bin/nvidia-cuda-mps-control", 0o755, ()),
    ("lib64/libcuda.so.{v}", 0o644, ("libcuda.so.1", "libcuda.so")),
    ("lib64/libnvidia-ml.so.{v}", 0o644, ("libnvidia-ml.so.1",)),
    ("lib64/libGLX_nvidia.so.{v}", 0o644, ("libGLX_nvidia.so.0", "libGLX_indirect.so.0")),
    ("lib/libcuda.so.{v}", 0o644, ("libcuda.so.1", "libcuda.so")),
    ("firmware/nvidia/{v}/gsp_ga10x.bin", 0o444, ()),
)


def make_manifest(source_dir: Path, version: str = VERSION, size: int = 4096) -> Manifest:
    """Real files under `source_dir/<version>` and the Manifest discovery would report."""
    entries: list[Entry] = []
    links: list[Link] = []
    for dest_t, mode, sonames in FILES:
        dest = dest_t.format(v=version)
        src = source_dir / version / dest
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes((dest.encode() + b"\n") * (size // (len(dest) + 1) + 1))
        src.chmod(mode)
        kind = "bin" if dest.startswith("bin/") else "firmware" if "firmware" in dest else "lib"
        entries.append(Entry(str(src), dest, kind, "compute", "test file",
                             ident=identity(src.stat())))
        folder, base = dest.rsplit("/", 1)
        links += [Link(f"{folder}/{s}", base, "soname") for s in sonames]
    return Manifest(version, tuple(entries), tuple(links))


@dataclass
class Driver:
    """A switchable driver: tests change `manifest` (upgrade) or `error` (driver gone)."""

    manifest: Manifest
    error: Exception | None = None
    calls: int = 0

    def __call__(self) -> Manifest:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.manifest


@pytest.fixture
def driver(tmp_path: Path) -> Driver:
    return Driver(make_manifest(tmp_path / "driver"))


@pytest.fixture
async def store(tmp_path: Path, driver: Driver) -> AsyncIterator[VolumeStore]:
    s = VolumeStore(tmp_path / "volumes", driver)
    await s.start()
    yield s
    await s.close()


@dataclass
class Plugin:
    """The plugin app served on a real unix socket, called as Docker calls it."""

    store: VolumeStore
    site: PluginSite
    session: aiohttp.ClientSession

    async def raw(self, route: str, body: bytes | str = b"", headers: dict[str, str] | None = None,
                  method: str = "POST") -> tuple[int, str, str]:
        hdrs = DOCKER_ACCEPT if headers is None else headers
        async with self.session.request(method, "http://plugin.moby.localhost" + route,
                                        data=body, headers=hdrs) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.text()

    async def call(self, route: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST as Docker does (JSON plus newline, no Content-Type); the answer must be 200."""
        data = b"" if body is None else (json.dumps(body) + "\n").encode()
        status, _ctype, text = await self.raw(route, data)
        assert status == 200, text
        return json.loads(text)


async def serve_plugin(store: VolumeStore, socket_dir: Path,
                       ) -> AsyncIterator[tuple[web.AppRunner, PluginSite]]:
    runner = web.AppRunner(make_app(store), access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = await start_plugin_site(runner, Config(socket_dir=socket_dir,
                                                  spec_dir=socket_dir.parent / "spec"))
    try:
        yield runner, site
    finally:
        await site.close()
        await runner.cleanup()


@pytest.fixture
async def plugin(store: VolumeStore, tmp_path: Path) -> AsyncIterator[Plugin]:
    async for _runner, site in serve_plugin(store, tmp_path / "sock"):
        connector = aiohttp.UnixConnector(path=str(site.socket_path))
        async with aiohttp.ClientSession(connector=connector) as session:
            yield Plugin(store, site, session)


@contextlib.contextmanager
def mounted(*args: str) -> Iterator[None]:
    """`mount ARGS...` for the duration (root only); the last argument is the mount point."""
    need_root()
    subprocess.run(["mount", *args], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", args[-1]], check=False, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs: a filesystem other than the one tmp_path is on."""
    point = tmp_path / "tmpfs"
    point.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=256m,mode=0755", "tmpfs", str(point)):
        yield point


def read_only_copy(src: Path, point: Path) -> contextlib.AbstractContextManager[None]:
    """`src` bind-mounted read-only at `point` (what a squashfs driver looks like)."""
    point.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def cm() -> Iterator[None]:
        with mounted("--bind", str(src), str(point)):
            subprocess.run(["mount", "-o", "remount,ro,bind", str(point)], check=True,
                           capture_output=True)
            yield

    return cm()


def rebase(manifest: Manifest, old: Path, new: Path) -> Manifest:
    """The same manifest with every source under `new` instead of `old`."""
    sources = [new / Path(e.source).relative_to(old) for e in manifest.entries]
    entries = tuple(replace(e, source=str(src), ident=identity(src.stat()))
                    for e, src in zip(manifest.entries, sources, strict=True))
    return replace(manifest, entries=entries)


def tree(root: Path) -> dict[str, str]:
    """`relative path -> 'dir' | 'file:<mode>' | '-> target'` for a whole directory tree."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = f"file:{p.stat().st_mode & 0o7777:o}"
    return out


