"""Render the GPU page of a host without a browser from what the GPU proof saved there.

    python3 -m tests.gpu.page_replay OUT/page [--png OUT/page/gpu-page.png] [--width 1280]

The GPU host has no Chromium (and no registry to bring one from), so its proof step saves the
event stream the page received (`events.txt`). Here, where Debian's chromium is installed,
this serves the package's own page and assets on a loopback port, replays that stream to it
unchanged (the host's `hello`, then its samples), and takes a full-page screenshot with
Playwright: the page exactly as it drew the real GPU's numbers, containers and health.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
from pathlib import Path

from aiohttp import web

from nvplugin.web.page import load_assets
from nvplugin.web.routes import SECURITY_HEADERS
from tests.web.browser import CHROMIUM_FLAGS, LOCAL_HOSTS, chromium_path


def make_app(events: bytes) -> web.Application:
    assets = load_assets()

    async def file(request: web.Request) -> web.Response:
        name = request.match_info.get("name", "index.html")
        asset = assets.get(name)
        if asset is None:
            raise web.HTTPNotFound()
        return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8",
                            headers=SECURITY_HEADERS)

    async def replay(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(events)
        await asyncio.sleep(3600)  # held open as the daemon would; the browser leaves first
        return response

    app = web.Application()
    app.router.add_get("/", file)
    app.router.add_get("/page/assets/{name}", file)
    app.router.add_get("/page/events", replay)
    return app


def serve(app: web.Application) -> tuple[str, asyncio.AbstractEventLoop]:
    """Serve `app` on a free loopback port from a thread; returns its URL and loop."""
    loop = asyncio.new_event_loop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def start() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    threading.Thread(target=loop.run_forever, daemon=True, name="page-replay").start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    return f"http://127.0.0.1:{port}", loop


def screenshot(page_dir: Path, png: Path, width: int = 1280) -> str:
    """Write the replayed page's full-page screenshot to `png`; returns the page's text."""
    from playwright.sync_api import sync_playwright

    url, loop = serve(make_app((page_dir / "events.txt").read_bytes()))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(),
                                                 args=list(CHROMIUM_FLAGS))
            context = browser.new_context(viewport={"width": width, "height": 900})
            # Everything the page loads comes from this replay server.
            context.route(lambda u: u.split("/")[2].rsplit(":", 1)[0] not in LOCAL_HOSTS,
                          lambda route: route.abort())
            page = context.new_page()
            page.goto(url + "/")
            page.wait_for_selector('section.gpu [data-field="temperature_c"] .v', timeout=15_000)
            page.wait_for_timeout(500)  # the replayed samples after hello are drawn
            page.screenshot(path=str(png), full_page=True)
            text = str(page.inner_text("body"))
            browser.close()
    finally:
        loop.call_soon_threadsafe(loop.stop)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.gpu.page_replay",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("page_dir", type=Path, help="the proof's --page-dir")
    parser.add_argument("--png", type=Path, help="where to write (default PAGE_DIR/gpu-page.png)")
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args(argv)
    png = args.png or args.page_dir / "gpu-page.png"
    screenshot(args.page_dir, png, args.width)
    print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
