"""Headless Chromium for the page tests: Debian's `chromium`, driven by Playwright-for-Python
(its own browser downloads are never used), with a log of every request the page makes and a
route that refuses (and records) any request for another host."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.requirements import need

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# Flags that work as root in a container without a display, and keep Chromium itself quiet on
# the network (no component updates, sync, field trials or QUIC probes).
CHROMIUM_FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage")
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def browser_path(candidates: tuple[str, ...], package: str) -> str:
    """The first of `candidates` installed (by path, then on PATH by its name); skips, or fails
    in CI, naming Debian's `package` when none is."""
    found = next((p for p in candidates if Path(p).is_file()), None)
    found = found or next(filter(None, (shutil.which(Path(p).name) for p in candidates)), None)
    need(found is not None, f"Debian's {package} (apt-get install {package})")
    return str(found)


def chromium_path() -> str:
    return browser_path(CHROMIUM_CANDIDATES, "chromium")


@dataclass
class RequestLog:
    urls: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def outside(self) -> list[str]:
        return [u for u in self.urls if urlsplit(u).scheme not in ("data", "blob")
                and urlsplit(u).hostname not in LOCAL_HOSTS]


@dataclass
class Browser:
    browser: Any  # playwright's Browser
    log: RequestLog

    def page(self, **context_options: Any) -> Any:
        """A page in a fresh context (its own profile state) that logs and fences requests."""
        context = self.browser.new_context(**context_options)
        context.route(lambda url: urlsplit(url).hostname not in LOCAL_HOSTS, self._refuse)
        page = context.new_page()
        page.on("request", lambda request: self.log.urls.append(request.url))
        return page

    def _refuse(self, route: Any) -> None:
        self.log.refused.append(route.request.url)
        route.abort()


@pytest.fixture
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "playwright for Python (pip install playwright; no browser download)")
        raise
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=list(CHROMIUM_FLAGS))
        try:
            yield Browser(launched, RequestLog())
        finally:
            launched.close()
