"""The GPU page's routes, mounted on the REST app: `GET /` (the page), `/page/assets/<name>`
(its script, styles and the vendored chart library), `/page/state.json` (what a page is first
sent, for scripts and the GPU proof) and `/page/events` (the shared event stream).

Assets are the package's own files, read once at start-up into memory (page.py) and looked up by
exact name, so no part of a URL ever reaches a file path. Every answer forbids other
origins, inline script and framing (Content-Security-Policy): the page loads nothing from
anywhere but this daemon.

The routes are mounted before the REST listener starts; the page itself (its feed and assets)
arrives after the sockets answer (`Later`): a page request waits for it, and this module
imports nothing heavy meanwhile.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from nvplugin.core.later import Later

if TYPE_CHECKING:  # the page, its records and its documents load after the sockets answer
    from nvplugin.web.page import Asset, Page

PAGE_FILE = "index.html"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Requests that count as someone watching the GPUs, and so keep the history sampled.
WATCHED_PATHS = frozenset({"/gpu/status", "/gpu/status/json", "/v1.0/gpu/status",
                           "/v1.0/gpu/status/json", "/metrics"})

RETRY_MS = 2000  # how soon a page's EventSource reconnects after losing the stream
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


PAGE: web.AppKey[Later[Page]] = web.AppKey("gpu_page")


def _file(request: web.Request, page: Page, name: str) -> web.Response:
    asset: Asset | None = page.assets.get(name)
    if asset is None:
        raise web.HTTPNotFound()
    # no-cache: revalidate each time (a 304 when unchanged), so an upgraded daemon's page
    # never runs a stale script.
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8",
                        headers=headers)


async def page(request: web.Request) -> web.Response:
    loaded = await request.app[PAGE].get()
    loaded.feed.touch()
    return _file(request, loaded, PAGE_FILE)


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return _file(request, await request.app[PAGE].get(), name if name != PAGE_FILE else "")


async def state(request: web.Request) -> web.Response:
    feed = (await request.app[PAGE].get()).feed
    feed.touch()
    body = json.dumps(await feed.hello(), separators=(",", ":"), allow_nan=False)
    return web.Response(text=body + "\n", content_type="application/json",
                        headers=SECURITY_HEADERS)


async def events(request: web.Request) -> web.StreamResponse:
    feed = (await request.app[PAGE].get()).feed
    client = feed.subscribe()  # TooManyPages (an NvpluginError) answers 503
    try:
        response = web.StreamResponse(headers={
            **SECURITY_HEADERS, "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        from nvplugin.web.documents import event

        hello: dict[str, Any] = await feed.hello()
        await response.write(f"retry: {RETRY_MS}\n".encode() + event("hello", hello))
        while (message := await client.queue.get()) is not None:
            await response.write(message)
        return response
    except ConnectionResetError:  # the page went away mid-write
        return response
    finally:
        feed.unsubscribe(client)


def watching(page: Later[Page]) -> Middleware:
    """A status request or a scrape also counts as watching: the history keeps up with it.
    Also for the metrics-only listener (`--metrics-listen`)."""

    @web.middleware
    async def watch(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in WATCHED_PATHS and (loaded := page.now()) is not None:
            loaded.feed.touch()
        return await handler(request)

    return watch


ROUTES: tuple[tuple[str, Handler], ...] = (
    ("/", page),
    ("/page/assets/{name}", asset),
    ("/page/state.json", state),
    ("/page/events", events),
)


def mount(app: web.Application, page: Later[Page]) -> None:
    """Add the page to the REST app (before it starts; the page may arrive later); its streams
    end when the app shuts down, so the daemon's graceful stop never waits on an open page."""
    app[PAGE] = page
    app.middlewares.append(watching(page))
    for path, handler in ROUTES:
        # HEAD of a stream would hold a client slot open for an answer with no body.
        app.router.add_get(path, handler, allow_head=handler is not events)

    async def end_streams(_: web.Application) -> None:
        if (loaded := page.now()) is not None:
            await loaded.feed.end_streams()

    app.on_shutdown.append(end_streams)
