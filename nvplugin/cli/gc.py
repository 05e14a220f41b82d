"""`nvidia-docker-plugin gc [--json]`: remove the volumes of older drivers that no container mounts.

Safe while the daemon runs: the daemon holds the volumes directory's lock and owns the mount
table, so when the lock is taken gc asks the daemon over its plugin socket to do the work
(`COLLECT_ROUTE`); when it is free, no daemon can start meanwhile, and gc takes the lock and does
the same itself with the driver found under --driver-root. A lock held by a daemon that does not
answer is refused with what to do.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from nvplugin.api.plugin import COLLECT_ROUTE, old_volumes_body
from nvplugin.core.config import DEFAULT_SOCKET_DIR, Config
from nvplugin.core.errors import DiscoveryError, NvpluginError, VolumesDirBusy
from nvplugin.core.names import DAEMON_PROGRAM, DRIVER_VOLUME_KIND
from nvplugin.driver import discovery
from nvplugin.engine.transport import UnixHTTPConnection
from nvplugin.volumes.store import VolumeStore
from nvplugin.volumes.usage import DiskUsage

DAEMON_TIMEOUT_S = 120.0  # removing trees of a few hundred MiB each; far more than needed


class GcError(NvpluginError):
    pass


def run_gc(cfg: Config, *, as_json: bool, out: TextIO,
           nvml_version: Callable[[], str | None]) -> int:
    """0 when every old volume was removed or kept for a reason; 1 when gc could not run."""
    try:
        if not (cfg.volumes_dir / DRIVER_VOLUME_KIND).is_dir():
            answer: dict[str, Any] = {"Removed": [], "Kept": [], "By": None}
        else:
            answer = asyncio.run(_collect_here(cfg, nvml_version))
    except VolumesDirBusy:
        try:
            answer = _ask_daemon(cfg)
        except GcError as err:
            return _fail(err, as_json, out)
    except NvpluginError as err:
        return _fail(err, as_json, out)
    out.write(json.dumps(answer, indent=2) + "\n" if as_json else render(answer, cfg))
    return 0


async def _collect_here(cfg: Config, nvml_version: Callable[[], str | None]) -> dict[str, Any]:
    def current() -> Any:
        # In the store's worker thread, once the lock is ours: NVML's version, as the daemon
        # takes it (else the driver files').
        return discovery.discover(cfg.driver_root, nvml_version())

    store = VolumeStore(cfg.volumes_dir, current)
    await store.start()  # VolumesDirBusy when a daemon holds the directory
    try:
        old = await store.collect_old()
    except DiscoveryError as err:
        raise GcError(f"cannot tell which volumes are old: {err}; fix the driver "
                      f"({DAEMON_PROGRAM} doctor), or remove them with docker volume rm") from err
    finally:
        await store.close()
    return {**old_volumes_body(old), "By": DAEMON_PROGRAM + " gc"}


def _sockets(cfg: Config) -> list[Path]:
    """Where the daemon listens: -s's socket; with Docker's default directory, also the
    `<dir>/nvidia-docker/nvidia-docker.sock` a daemon running as its own user uses."""
    paths = [cfg.socket_path]
    if cfg.socket_dir == Path(DEFAULT_SOCKET_DIR):
        paths.append(cfg.socket_dir / cfg.plugin_name / cfg.socket_path.name)
    return paths


def _ask_daemon(cfg: Config) -> dict[str, Any]:
    busy = f"a running {DAEMON_PROGRAM} holds {cfg.volumes_dir}"
    paths = _sockets(cfg)
    path = next((p for p in paths if p.exists()), paths[0])
    connection = UnixHTTPConnection(str(path), DAEMON_TIMEOUT_S)
    try:
        connection.request("POST", COLLECT_ROUTE, body=b"{}",
                           headers={"Accept": "application/json"})
        response = connection.getresponse()
        body = json.loads(response.read())
    except (OSError, ValueError, http.client.HTTPException) as err:
        raise GcError(f"{busy}, but its socket {path} does not answer ({err}): give gc the "
                      "daemon's --socket-dir, or stop the daemon and run gc again") from err
    finally:
        connection.close()
    if not isinstance(body, dict):
        raise GcError(f"{busy}; its answer on {path} is not a JSON object")
    if response.status == 404:
        raise GcError(f"{busy}, and it is too old to remove volumes on request: restart it, or "
                      "remove them with docker volume rm")
    if body.get("Err"):
        raise GcError(f"the running daemon could not remove old volumes: {body['Err']}")
    return {"Removed": body.get("Removed") or [], "Kept": body.get("Kept") or [],
            "By": f"the running daemon ({path})"}


def _fail(err: NvpluginError, as_json: bool, out: TextIO) -> int:
    if as_json:
        out.write(json.dumps({"Error": str(err)}, indent=2) + "\n")
    else:
        out.write(f"{DAEMON_PROGRAM} gc: error: {err}\n")
    return 1


def render(answer: dict[str, Any], cfg: Config) -> str:
    lines = []
    for removed in answer["Removed"]:
        usage = (DiskUsage(removed["Bytes"], removed["Freed"]).describe()
                 if isinstance(removed.get("Bytes"), int) and isinstance(removed.get("Freed"), int)
                 else "size unknown")
        lines.append(f"Removed {removed['Name']}: {usage}")
    for kept in answer["Kept"]:
        lines.append(f"Kept {kept['Name']}: {kept['Mounts']} container(s) mount it")
    if not lines:
        lines.append(f"No volumes of older drivers in {cfg.volumes_dir}")
    elif answer.get("By"):
        lines.append(f"({len(answer['Removed'])} removed, {len(answer['Kept'])} kept, by "
                     f"{answer['By']})")
    return "\n".join(lines) + "\n"
