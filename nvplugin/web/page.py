"""The GPU page as its routes serve it (routes.py): the shared feed and the page's files.

Assets are the package's own files, read once into memory (about 75 KB) after the sockets
answer, and looked up by exact name. Apart from the routes, which are mounted before the REST
listener starts, so that these records load with the page and not before the daemon answers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nvplugin.web.feed import LiveFeed

CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                 ".txt": "text/plain", ".LICENSE": "text/plain"}


@dataclass(frozen=True, slots=True)
class Asset:
    """One static file of the page, in memory."""

    body: bytes
    content_type: str
    etag: str


@dataclass(frozen=True, slots=True)
class Page:
    """What the routes serve: the shared feed and the assets."""

    feed: LiveFeed
    assets: dict[str, Asset]


def load_assets() -> dict[str, Asset]:
    """The page and every file under `static/`, by file name. Blocking (start-up, in a thread)."""
    from importlib import resources

    found: dict[str, Asset] = {}
    pending = [resources.files("nvplugin.web") / "static"]
    while pending:
        for entry in pending.pop().iterdir():
            if entry.is_dir():
                pending.append(entry)
                continue
            suffix = "." + entry.name.rsplit(".", 1)[-1]
            if suffix not in CONTENT_TYPES:
                continue
            body = entry.read_bytes()
            found[entry.name] = Asset(body, CONTENT_TYPES[suffix],
                                      '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return found


def load_page(feed: LiveFeed) -> Page:
    """The page over `feed`, with its files read. Blocking (start-up, in a thread)."""
    return Page(feed, load_assets())
