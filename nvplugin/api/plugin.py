"""The Docker volume-plugin protocol (legacy v1) over the VolumeStore.

Shapes are 1.0's: single-line JSON plus a newline, `null` where 1.0 had it, content type
`application/vnd.docker.plugins.v1+json`. Docker sends no Content-Type, an empty body for
Activate and `Opts: null`; all of that is accepted. Protocol errors are HTTP 200 with `Err`;
malformed requests get 400 with `Err`; neither stops the server.

Besides Docker's routes, one of ours: `COLLECT_ROUTE`, which `nvidia-docker-plugin gc` calls to
have the running daemon (the owner of the mount table) remove old drivers' volumes. Whoever may
open this socket may already remove volumes through Docker's own Remove.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from nvplugin.core.errors import NvpluginError
from nvplugin.core.text import parse_json, quote_untrusted
from nvplugin.volumes.names import MAX_MOUNT_ID, VolumeInfo, shown
from nvplugin.volumes.store import VolumeStore

if TYPE_CHECKING:  # collections come after the daemon answers: volumes/reports.py
    from nvplugin.volumes.reports import OldVolume

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
MAX_BODY = 64 * 1024
STORE: web.AppKey[VolumeStore] = web.AppKey("volume_store", VolumeStore)
_DECODED = frozenset({"", "identity", "gzip", "deflate"})  # what aiohttp itself decodes
COLLECT_ROUTE = "/NvidiaDockerPlugin.CollectOldVolumes"

Body = dict[str, Any]
Handler = Callable[[VolumeStore, Body], Awaitable[Body]]


class BadRequest(Exception):
    """The request itself is malformed (not JSON, no Name): answered with 400."""

    close_connection = False  # the stream cannot be trusted past this request


def reply(body: Body, status: int = 200) -> web.Response:
    data = json.dumps(body, separators=(",", ":")) + "\n"
    return web.Response(status=status, body=data.encode(), content_type=CONTENT_TYPE)


def _accepted(accept: str | None) -> bool:
    """Docker sends `application/vnd.docker.plugins.v1.2+json`; curl sends `*/*` or nothing."""
    if not accept:
        return True
    for item in accept.split(","):
        media = item.split(";")[0].strip().lower()
        if media in ("*/*", "application/*", "application/json") or (
            media.startswith("application/vnd.docker.plugins.v1") and media.endswith("+json")
        ):
            return True
    return False


def _name(body: Body) -> str:
    name = body.get("Name")
    if not isinstance(name, str) or not name:
        raise BadRequest("the request has no volume Name")
    return name


def _mount_id(body: Body) -> str:
    mount_id = body.get("ID", "")
    if mount_id is None:
        mount_id = ""
    if not isinstance(mount_id, str) or len(mount_id) > MAX_MOUNT_ID:
        raise BadRequest(f"the mount ID must be a string of at most {MAX_MOUNT_ID} characters")
    return mount_id


async def _read_body(request: web.Request) -> Body:
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    undecodable = BadRequest(
        f"the request body cannot be decoded (Content-Encoding {quote_untrusted(encoding, 64)}): "
        "send it unencoded, as Docker does")
    if encoding not in _DECODED:
        raise undecodable  # aiohttp would hand over the encoded bytes as they are
    try:
        raw = await request.read()
    except web.RequestPayloadError as err:
        # The rest of the body cannot be read either: aiohttp would try after the answer (and
        # log a traceback); the connection ends with this answer instead.
        request.content.feed_eof()
        undecodable.close_connection = True
        raise undecodable from err
    if not raw.strip():
        return {}  # Activate's body is empty; a blank body means "no fields"
    try:
        body = parse_json(raw)
    except ValueError as err:
        raise BadRequest(f"the request body is not JSON: {err}") from err
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


# -- handlers: parse, one store call, shape ---------------------------------------------------
async def activate(store: VolumeStore, body: Body) -> Body:
    log.info("Received activate request")
    log.info("Plugins activated [VolumeDriver]")
    return {"Implements": ["VolumeDriver"]}


async def create(store: VolumeStore, body: Body) -> Body:
    name = _name(body)
    log.info("Received create request for volume '%s'", shown(name))
    await store.create(name)
    return {"Err": None}


async def remove(store: VolumeStore, body: Body) -> Body:
    name = _name(body)
    log.info("Received remove request for volume '%s'", shown(name))
    await store.remove(name)
    return {"Err": None}


async def mount(store: VolumeStore, body: Body) -> Body:
    name, mount_id = _name(body), _mount_id(body)
    log.info("Received mount request for volume '%s'", shown(name))
    return {"Mountpoint": await store.mount(name, mount_id), "Err": None}


async def unmount(store: VolumeStore, body: Body) -> Body:
    name, mount_id = _name(body), _mount_id(body)
    log.info("Received unmount request for volume '%s'", shown(name))
    await store.unmount(name, mount_id)
    return {"Err": None}


async def path(store: VolumeStore, body: Body) -> Body:
    name = _name(body)
    log.info("Received mount request for volume '%s'", shown(name))  # 1.0 logged Path so
    return {"Mountpoint": await store.path(name), "Err": None}


def _volume(info: VolumeInfo, status: bool) -> Body:
    volume: Body = {"Name": info.name, "Mountpoint": info.mountpoint}
    if info.created_at is not None:
        volume["CreatedAt"] = info.created_at  # RFC 3339 or absent: "" breaks Docker's decode
    if status:
        volume["Status"] = {"Mounts": info.mounts}
    return volume


async def get(store: VolumeStore, body: Body) -> Body:
    info = await store.get(_name(body))
    return {"Volume": _volume(info, status=True), "Err": None}


async def list_(store: VolumeStore, body: Body) -> Body:
    infos = await store.list()
    return {"Volumes": [_volume(i, status=False) for i in infos] or None, "Err": None}


async def capabilities(store: VolumeStore, body: Body) -> Body:
    return {"Capabilities": {"Scope": "local"}}


async def collect_old(store: VolumeStore, body: Body) -> Body:
    log.info("Received request to remove old volumes")
    return {**old_volumes_body(await store.collect_old()), "Err": None}


def old_volumes_body(old: list[OldVolume]) -> Body:
    """`collect_old`'s answer as the gc route (and `gc --json`) gives it."""
    return {
        "Removed": [{"Name": o.name, "Bytes": o.usage.total if o.usage else None,
                     "Freed": o.usage.freed if o.usage else None} for o in old if o.removed],
        "Kept": [{"Name": o.name, "Mounts": o.mounts} for o in old if not o.removed],
    }


# Route, handler, and the fields that are null beside `Err` when the call fails.
ROUTES: tuple[tuple[str, Handler, tuple[str, ...]], ...] = (
    ("/Plugin.Activate", activate, ()),
    ("/VolumeDriver.Create", create, ()),
    ("/VolumeDriver.Remove", remove, ()),
    ("/VolumeDriver.Mount", mount, ("Mountpoint",)),
    ("/VolumeDriver.Unmount", unmount, ()),
    ("/VolumeDriver.Path", path, ("Mountpoint",)),
    ("/VolumeDriver.Get", get, ("Volume",)),
    ("/VolumeDriver.List", list_, ("Volumes",)),
    ("/VolumeDriver.Capabilities", capabilities, ()),
    (COLLECT_ROUTE, collect_old, ("Removed", "Kept")),
)


def _endpoint(handler: Handler, nulls: tuple[str, ...],
              ) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def serve(request: web.Request) -> web.Response:
        accept = request.headers.get("Accept")
        if not _accepted(accept):
            log.warning("Unsupported plugin API %s", accept)
            return reply({"Err": f"unsupported plugin API {accept!r}: send "
                          "Accept: application/vnd.docker.plugins.v1.2+json"}, status=406)
        store = request.app[STORE]
        try:
            return reply(await handler(store, await _read_body(request)))
        except NvpluginError as err:
            log.error("Error: %s", err.message)
            return reply({**dict.fromkeys(nulls), "Err": err.message})
        except BadRequest as err:
            message = f"{request.path}: {err}"
            log.error("Error: %s", message)
            response = reply({**dict.fromkeys(nulls), "Err": message}, status=400)
            if err.close_connection:
                response.force_close()
            return response

    return serve


@web.middleware
async def _errors(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                  ) -> web.StreamResponse:
    """Routing errors and bugs still answer JSON with a specific `Err`."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.reason
        if exc.status == 404:
            reason = f"unknown plugin endpoint {shown(request.path)}"
        elif exc.status == 405:
            reason = f"{request.method} is not supported on {request.path}: use POST"
        elif exc.status == 413:
            reason = f"the request body is larger than {MAX_BODY} bytes"
        return reply({"Err": reason}, status=exc.status)
    except Exception as exc:  # a bug: say where, keep serving
        log.exception("Error: %s failed", request.path)
        return reply({"Err": f"{request.path} failed: {type(exc).__name__}: {exc} "
                      "(the nvidia-docker-plugin log has the details)"}, status=500)


def make_app(store: VolumeStore, middlewares: Sequence[Middleware] = ()) -> web.Application:
    """The protocol's app; `middlewares` (the daemon's request timing) run outermost."""
    app = web.Application(middlewares=(*middlewares, _errors), client_max_size=MAX_BODY)
    app[STORE] = store
    for route, handler, nulls in ROUTES:
        app.router.add_post(route, _endpoint(handler, nulls))
    return app
