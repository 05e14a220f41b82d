"""Volume build and Mount speed, against `cp -al` / `cp -a` of the same files in the same run.

    python3 bench/bench_volumes.py [--driver-root /] [--rounds 5] [--mounts 500]

With a driver under --driver-root the real discovery Manifest is used; without one (no NVIDIA
driver on this machine) a synthetic driver of --synthetic-mb spread over 40 files is written to
a scratch directory and used instead (said so in the output). Prints figures and ratios only.
Targets: linking within 1.5x of `cp -al`, copying within 1.2x of `cp -a`, Mount p50 < 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web

from nvplugin.api.plugin import make_app
from nvplugin.core.errors import NvpluginError
from nvplugin.core.regularfile import identity
from nvplugin.driver.discovery import discover
from nvplugin.driver.manifest import Entry, Link, Manifest
from nvplugin.volumes.build import build_volume
from nvplugin.volumes.clone import Cloner, Method
from nvplugin.volumes.store import VolumeStore


def synthetic_manifest(where: Path, total_mb: int, files: int = 40) -> Manifest:
    """A driver-shaped tree: a few big libraries, many small ones, like a real driver."""
    version = "999.1"
    weights = [30, 20, 12, 10, 8, 6, 5, 4] + [1] * (files - 8)
    unit = total_mb * 1024 * 1024 // sum(weights)
    entries: list[Entry] = []
    links: list[Link] = []
    block = os.urandom(1024 * 1024)
    for i, weight in enumerate(weights):
        folder = "bin" if i % 10 == 9 else "lib64"
        base = f"nvidia-tool{i}" if folder == "bin" else f"libnvidia-bench{i}.so.{version}"
        src = where / folder / base
        src.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "wb") as f:
            left = weight * unit
            while left > 0:
                left -= f.write(block[: min(left, len(block))])
        entries.append(Entry(str(src), f"{folder}/{base}", "lib", "compute", "synthetic",
                             ident=identity(src.stat())))
        if folder == "lib64":
            links.append(Link(f"lib64/libnvidia-bench{i}.so.1", base, "soname"))
    return Manifest(version, tuple(entries), tuple(links))


def load_manifest(args: argparse.Namespace, scratch: Path) -> tuple[Manifest, str]:
    try:
        manifest = discover(args.driver_root)
        return manifest, f"driver {manifest.version} under {args.driver_root}"
    except NvpluginError as err:
        print(f"note: no driver under {args.driver_root} ({err}); using a synthetic driver")
        manifest = synthetic_manifest(scratch / "synthetic-driver", args.synthetic_mb)
        return manifest, f"synthetic driver, {args.synthetic_mb} MB"


def cp_volume(manifest: Manifest, dest: Path, flags: str) -> None:
    """`cp <flags>` of the manifest's files, one cp per destination directory."""
    groups: dict[str, list[str]] = {}
    for entry in manifest.entries:
        groups.setdefault(str(Path(entry.dest).parent), []).append(entry.source)
    for folder, sources in groups.items():
        (dest / folder).mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", flags, *sources, str(dest / folder)], check=True)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def compare(label: str, manifest: Manifest, target: Path, flags: str, rounds: int,
            expect: Method) -> None:
    ours: list[float] = []
    theirs: list[float] = []
    for i in range(rounds):
        cloner = Cloner()
        kind_dir = target / f"ours{i}"
        ours.append(timed(lambda: build_volume(manifest, kind_dir, "bench", cloner)))  # noqa: B023
        theirs.append(timed(lambda: cp_volume(manifest, target / f"cp{i}", flags)))  # noqa: B023
        if cloner.used[expect] != len(manifest.entries):
            print(f"  warning: expected {expect.value} for every file, got {cloner.used}")
        shutil.rmtree(kind_dir)
        shutil.rmtree(target / f"cp{i}")
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{label}: build {a * 1000:8.1f} ms   cp {flags} {b * 1000:8.1f} ms   "
          f"ratio {a / b:5.2f}x   (median of {rounds})")


@contextlib.contextmanager
def other_filesystem(scratch: Path) -> Iterator[Path | None]:
    """A tmpfs: mounted for the run when root, else /dev/shm when it is one."""
    point = scratch / "tmpfs"
    point.mkdir()
    if os.geteuid() == 0 and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=75%", "tmpfs", str(point)]).returncode == 0:
        try:
            yield point
        finally:
            subprocess.run(["umount", "-l", str(point)], check=False)
        return
    shm = Path("/dev/shm")
    if shm.is_dir() and os.stat(shm).st_dev != os.stat(scratch).st_dev:
        with tempfile.TemporaryDirectory(dir=shm) as d:
            yield Path(d)
        return
    yield None


async def mount_latency(manifest: Manifest, volumes: Path, count: int) -> None:
    store = VolumeStore(volumes, lambda: manifest)
    await store.start()
    name = f"nvidia_driver_{manifest.version}"
    await store.create(name)
    runner = web.AppRunner(make_app(store), access_log=None)
    await runner.setup()
    sock = volumes / "bench.sock"
    site = web.UnixSite(runner, str(sock))
    await site.start()
    headers = {"Accept": "application/vnd.docker.plugins.v1.2+json"}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(str(sock))) as s:
            async def post(route: str, body: str) -> float:
                start = time.perf_counter()
                async with s.post("http://plugin" + route, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{route}: HTTP {r.status}")
                return time.perf_counter() - start

            for _ in range(20):  # warm the connection pool and caches
                await post("/VolumeDriver.Capabilities", "{}")
            mounts = [await post("/VolumeDriver.Mount", f'{{"Name":"{name}","ID":"{i:064x}"}}')
                      for i in range(count)]
            gets = [await post("/VolumeDriver.Get", f'{{"Name":"{name}"}}') for _ in range(count)]
            caps = [await post("/VolumeDriver.Capabilities", "{}") for _ in range(count)]
    finally:
        await runner.cleanup()
        await store.close()
    for label, samples in (("Mount", mounts), ("Get", gets), ("Capabilities (HTTP only)", caps)):
        samples.sort()
        p50, p95 = samples[len(samples) // 2], samples[int(len(samples) * 0.95)]
        print(f"{label:>26}: p50 {p50 * 1000:6.2f} ms   p95 {p95 * 1000:6.2f} ms   (n={count})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver-root", default="/")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mounts", type=int, default=500)
    parser.add_argument("--synthetic-mb", type=int, default=256)
    parser.add_argument("--scratch", default="/var/tmp",
                        help="scratch directory on a disk (the volumes dir of the link test)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nvplugin-bench-", dir=args.scratch) as tmp:
        scratch = Path(tmp)
        manifest, what = load_manifest(args, scratch)
        size = sum(os.stat(e.source).st_size for e in manifest.entries)
        print(f"{what}: {len(manifest.entries)} files, {len(manifest.links)} links, "
              f"{size / 2**20:.1f} MiB")
        first = os.stat(manifest.entries[0].source).st_dev
        same_fs = all(os.stat(e.source).st_dev == first for e in manifest.entries)
        if same_fs and os.stat(scratch).st_dev == first:
            compare("link (same filesystem)  ", manifest, scratch, "-al", args.rounds,
                    Method.LINK)
        else:
            print(f"link: skipped, {args.scratch} is not on the driver's filesystem "
                  "(pass --scratch on it to measure linking)")
        with other_filesystem(scratch) as other:
            if other is None:
                print("copy: skipped, no other filesystem (need root to mount a tmpfs)")
            else:
                compare("copy (onto a tmpfs)     ", manifest, other, "-a", args.rounds,
                        Method.COPY)
        asyncio.run(mount_latency(manifest, scratch / "volumes", args.mounts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
