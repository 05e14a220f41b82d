"""The page's routes on the REST app: the page and its assets by exact name only, security
headers, the state document, the event stream (hello, then samples), its refusals, and streams
that end when the server shuts down."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from nvplugin.api.rest_app import error_middleware
from nvplugin.core.later import Later
from nvplugin.web import routes
from nvplugin.web.feed import LiveFeed
from nvplugin.web.page import load_page

MakeFeed = Callable[..., Awaitable[LiveFeed]]
PAGE_BUDGET = 200 * 1024  # the page and everything it loads


@pytest.fixture
async def page_client(aiohttp_client: Any, make_feed: MakeFeed) -> TestClient:
    feed = await make_feed(2, max_clients=3)
    app = web.Application(middlewares=[error_middleware])
    routes.mount(app, Later(load_page(feed)))
    return await aiohttp_client(app)


def referenced_assets(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="page/assets/([^"]+)"', html)


async def next_event(response: Any) -> tuple[str, dict[str, Any]]:
    block = (await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)).decode()
    fields = dict(line.split(": ", 1) for line in block.strip().split("\n")
                  if not line.startswith("retry:"))
    return fields["event"], json.loads(fields["data"])


async def test_page_and_its_assets_fit_the_budget(page_client: TestClient):
    response = await page_client.get("/")
    assert response.status == 200 and response.content_type == "text/html"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    html = await response.text()
    names = referenced_assets(html)
    assert {"app.js", "style.css", "uPlot.iife.min.js", "uPlot.min.css"} <= set(names)
    total = len(html.encode())
    for name in names:
        asset = await page_client.get(f"/page/assets/{name}")
        assert asset.status == 200, name
        total += len(await asset.read())
    assert total < PAGE_BUDGET, f"the page and its assets weigh {total} bytes"
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", html)  # nothing from elsewhere


async def test_assets_revalidate_with_an_etag(page_client: TestClient):
    first = await page_client.get("/page/assets/app.js")
    assert first.content_type == "text/javascript" and first.headers["Cache-Control"] == "no-cache"
    again = await page_client.get("/page/assets/app.js",
                                  headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 304 and await again.read() == b""


@pytest.mark.parametrize("name", [
    "..%2F__init__.py", "%2e%2e%2fhistory.py", "history.py", "index.html", "nope.js",
    "vendor%2FuPlot.min.css", "app.js%00.css", "APP.JS",
])
async def test_only_shipped_assets_by_exact_name(page_client: TestClient, name: str):
    response = await page_client.get(f"/page/assets/{name}")
    assert response.status == 404 and await response.text() == "404 page not found\n"


def test_vendored_files_match_their_record():
    vendor = resources.files("nvplugin.web") / "static" / "vendor"
    record = (vendor / "VENDORED.txt").read_text()
    assert re.search(r"^version: \d+\.\d+\.\d+$", record, re.M)
    assert re.search(r"^integrity: sha512-[A-Za-z0-9+/=]+$", record, re.M)
    sums = dict(reversed(line.split()[1:3]) for line in record.splitlines()
                if line.startswith("sha256: "))
    assert set(sums) == {"uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"}
    for name, digest in sums.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    assert "MIT License" in (vendor / "uPlot.LICENSE").read_text()


async def test_state_document(page_client: TestClient):
    response = await page_client.get("/page/state.json")
    state = await response.json()
    assert response.status == 200
    assert [g["index"] for g in state["inventory"]["gpus"]] == [0, 1]
    assert [g["index"] for g in state["sample"]["gpus"]] == [0, 1]
    assert set(state["history"]["0"]) == set(state["series"])


async def test_event_stream_says_hello_then_samples(page_client: TestClient):
    response = await page_client.get("/page/events")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    name, hello = await next_event(response)
    assert name == "hello" and len(hello["inventory"]["gpus"]) == 2
    seen = set()
    while "sample" not in seen:
        name, data = await next_event(response)
        seen.add(name)
    assert data["gpus"][0]["temperature_c"] == 31
    response.close()


async def test_a_page_more_than_allowed_is_refused_clearly(page_client: TestClient):
    streams = [await page_client.get("/page/events") for _ in range(3)]
    refused = await page_client.get("/page/events")
    assert refused.status == 503
    assert (await refused.text()).startswith("too many open GPU pages (3); close some")
    assert (await page_client.head("/page/events")).status == 405
    for stream in streams:
        stream.close()


async def test_status_requests_count_as_watching(page_client: TestClient):
    feed = page_client.app[routes.PAGE].now().feed
    assert not feed.watched
    await page_client.get("/v1.0/gpu/status/json")  # 404 here (no REST routes), still a look
    assert feed.watched and feed.sampling


async def test_shutdown_ends_open_streams(page_client: TestClient):
    response = await page_client.get("/page/events")
    await next_event(response)
    await page_client.app.shutdown()  # what the runner's cleanup does before draining
    rest = await asyncio.wait_for(response.content.read(), 10)  # EOF, not a hang
    assert rest == b"" or rest.startswith(b"event: ")
    assert page_client.app[routes.PAGE].now().feed.clients == 0
