"""The CDI spec on disk: built from the running host, checked against the host's files, written
atomically, kept true by the daemon, removed when the driver is gone.

`SpecKeeper` is the daemon's: `refresh(reason)` at start-up and after every re-discovery (the
driver watcher, SIGHUP, a GPU or MIG change), one log line per rewrite saying what changed.
`spec_from_host` is the one-shot commands' (`cdi`, `doctor`). Both build through `current_spec`.

At a clean stop the spec stays: it describes the host, not the daemon, and engines read it at
each container start, so removing it would fail every GPU container started while the daemon
restarts or is upgraded. It is only as stale as driver changes made while the daemon is down,
and the next start rewrites it; /var/run/cdi is a tmpfs, so a reboot clears it until then.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from nvplugin.cdi.build import build_spec
from nvplugin.cdi.spec import EXAMPLES, Spec, describe_change, validate
from nvplugin.core.atomicfile import remove_durably, write_atomic
from nvplugin.core.config import Config
from nvplugin.core.errors import CdiError, DiscoveryError, NvmlError, NvpluginError
from nvplugin.driver import discovery
from nvplugin.driver.manifest import Manifest
from nvplugin.gpu.service import GpuService

log = logging.getLogger(__name__)

SPEC_MODE = 0o644
DIR_MODE = 0o755


class DriverGone(NvpluginError):
    """No driver, NVML or GPU to describe: there must be no spec."""


def host_view(host_path: str, host_root: Path) -> Path:
    """Where this process sees a path the engine's host sees as `host_path`."""
    return host_root / host_path.lstrip("/")


def check_host_files(spec: Spec, host_root: Path) -> None:
    """CdiError unless every device node is a character device and every mount source a regular
    file (not a link that could have been swapped since discovery vetted it). Blocking."""
    problems = []
    for edits in (spec.edits, *(d.edits for d in spec.devices)):
        for node in edits.nodes:
            problems += _check(host_view(node.host_path, host_root), stat.S_ISCHR,
                               "a character device")
        for mount in edits.mounts:
            problems += _check(host_view(mount.host_path, host_root), stat.S_ISREG,
                               "a regular file")
    unique = list(dict.fromkeys(problems))
    if unique:
        more = f" (and {len(unique) - EXAMPLES} more)" if len(unique) > EXAMPLES else ""
        raise CdiError("the CDI spec would name what the host lacks: "
                       + "; ".join(unique[:EXAMPLES]) + more)


def _check(path: Path, is_kind: Callable[[int], bool], what: str) -> list[str]:
    try:
        mode = os.lstat(path).st_mode
    except OSError as err:
        return [f"{path}: {err.strerror}"]
    return [] if is_kind(mode) else [f"{path} is not {what}"]


async def current_spec(gpus: GpuService, manifest: Manifest, *, kind: str, host_root: Path,
                       healthy: Callable[[str], bool] = lambda _uuid: True,
                       ) -> tuple[Spec, tuple[str, ...]]:
    """The spec for the driver and GPUs now, validated and checked against the host's files;
    with the MIG devices left out and why. DriverGone without NVML or GPUs; CdiError when a
    valid spec cannot be made."""
    if not gpus.available:
        raise DriverGone(f"NVML is unavailable: {gpus.reason}")
    inventory = await gpus.inventory(cuda_sizes=False)  # the spec needs no memory sizes
    if not inventory.gpus:
        raise DriverGone("NVML sees no GPU")
    nodes = await gpus.control_nodes()
    built = build_spec(manifest, inventory.gpus, nodes, kind=kind, host_root=str(host_root),
                       healthy=healthy)
    validate(built.spec)
    await asyncio.to_thread(check_host_files, built.spec, host_root)
    return built.spec, built.left_out


async def spec_from_host(cfg: Config, healthy: Callable[[str], bool] = lambda _uuid: True,
                         ) -> tuple[Spec, tuple[str, ...]]:
    """One-shot: NVML started and stopped, the driver discovered with NVML's version (the
    authority, as for the daemon), the spec built. NvpluginError says why there is none.
    `healthy`: what the daemon holds healthy, when asked (doctor); a one-shot alone has no
    health to go by, and its `all` holds every GPU."""
    library = await asyncio.to_thread(discovery.find_nvml_library, cfg.driver_root)
    gpus = await GpuService.start(driver_root=cfg.driver_root, dev_root=cfg.dev_root,
                                  nvml_library=library)
    try:
        version = await gpus.driver_version() if gpus.available else None
        manifest = await asyncio.to_thread(discovery.discover, cfg.driver_root, version)
        return await current_spec(gpus, manifest, kind=cfg.cdi_kind, host_root=cfg.host_root,
                                  healthy=healthy)
    finally:
        await gpus.close()


def read_spec(path: Path) -> Spec | None:
    """The spec in `path` if nvplugin wrote it; None when there is none. CdiError when the
    file is there but is not one of ours. Blocking."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CdiError(f"cannot read {path}: {err.strerror}") from None
    try:
        body = json.loads(data)
    except ValueError as err:
        raise CdiError(f"{path} is not JSON: {err}") from None
    return Spec.from_json(body)


def _read_with_mtime(path: Path) -> tuple[Spec | None, float | None]:
    spec = read_spec(path)
    if spec is None:
        return None, None
    try:
        return spec, os.stat(path).st_mtime
    except OSError:
        return spec, None


def write_spec(path: Path, spec: Spec) -> None:
    """Atomically, mode 0644 whatever the umask; the directory is made if missing. Blocking."""
    try:
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except FileExistsError:  # a file where the directory should be: say that, not EEXIST
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                 str(path.parent)) from None
    write_atomic(path, spec.render(), SPEC_MODE)


class SpecKeeper:
    """The daemon's spec: what `GET /v1.0/cdi/spec` serves and, with a path, the file engines
    read. Never raises from `refresh`: a spec that cannot be made leaves the last good one in
    place and says why in the log; a driver that is gone takes the file away."""

    def __init__(self, *, path: Path | None, kind: str, host_root: Path, gpus: GpuService,
                 manifest: Callable[[], Manifest],
                 healthy: Callable[[str], bool] = lambda _uuid: True) -> None:
        """`healthy` (ObserveService.healthy in the daemon) decides `all`; refresh on each
        health change."""
        self.path = path
        self._healthy = healthy
        self.kind = kind
        self._host_root = host_root
        self._gpus = gpus
        self._manifest = manifest
        self._spec: Spec | None = None
        self._error: NvpluginError = DriverGone("the CDI spec has not been built yet")
        self._on_disk: Spec | None = None
        self._read_disk = True  # the first refresh learns what a previous daemon left
        self._first = True
        self._written_at: float | None = None  # UNIX time of the file's content
        self._lock = asyncio.Lock()

    def current(self) -> Spec:
        """The spec now, or the NvpluginError saying why there is none."""
        if self._spec is None:
            raise self._error
        return self._spec

    def age(self) -> float | None:
        """Seconds since the file's content was written (by this daemon or, when it found it
        up to date, a previous one); None while there is no file."""
        return None if self._written_at is None else max(0.0, time.time() - self._written_at)

    async def refresh(self, reason: str) -> None:
        async with self._lock:
            if self._read_disk and self.path is not None:
                self._read_disk = False
                try:
                    self._on_disk, self._written_at = await asyncio.to_thread(
                        _read_with_mtime, self.path)
                except CdiError as err:
                    log.warning("Replacing %s: %s", self.path, err)
            try:
                spec, left_out = await current_spec(self._gpus, self._manifest_now(),
                                                    kind=self.kind, host_root=self._host_root,
                                                    healthy=self._healthy)
            except (DriverGone, DiscoveryError, NvmlError) as err:
                await self._driver_gone(err)
                return
            except CdiError as err:
                self._error = err
                where = f"{self.path} not updated" if self.path else "CDI spec not built"
                log.error("Error: %s: %s; %s", where, err,
                          "the previous one stays" if self._on_disk else "none is written")
                return
            self._spec = spec
            await self._write(spec, left_out, reason)

    def _manifest_now(self) -> Manifest:
        return self._manifest()  # raises the DiscoveryError that says why there is none

    async def _write(self, spec: Spec, left_out: tuple[str, ...], reason: str) -> None:
        notes = "".join(f"; left out {item}" for item in left_out)
        if self.path is None:
            log.debug("CDI spec built (no --cdi-dir): %s%s", describe_change(None, spec), notes)
            return
        if spec == self._on_disk:
            # Said once at start-up; afterwards only a rewrite is news.
            log.log(logging.INFO if self._first else logging.DEBUG,
                    "CDI spec %s is up to date (%s): %s%s", self.path, reason,
                    describe_change(spec, spec), notes)
            self._first = False
            return
        try:
            await asyncio.to_thread(write_spec, self.path, spec)
        except OSError as err:
            log.error("Error: cannot write the CDI spec %s: %s; make its directory writable "
                      "for the daemon (ReadWritePaths= under systemd) or change --cdi-dir",
                      self.path, err.strerror or err)
            return
        log.info("Wrote CDI spec %s (%s): %s%s", self.path, reason,
                 describe_change(self._on_disk, spec), notes)
        self._on_disk, self._first, self._written_at = spec, False, time.time()

    async def _driver_gone(self, err: NvpluginError) -> None:
        self._spec, self._error = None, err
        if self.path is None:
            return
        try:
            removed = await asyncio.to_thread(remove_durably, self.path)
        except OSError as exc:
            log.error("Error: cannot remove the CDI spec %s: %s", self.path,
                      exc.strerror or exc)
            return
        if removed:
            log.info("Removed CDI spec %s: %s", self.path, err)
        self._on_disk, self._written_at = None, None
