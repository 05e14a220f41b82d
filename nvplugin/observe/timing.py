"""Request durations for /metrics, timed without prometheus_client.

The daemon answers before it loads its metrics registry (prometheus_client costs ~40 ms and
1 MB to import, cli/serve.py loads it after the sockets answer), so the middleware that times
every request is this light one: it hands each duration to `record`, which the daemon keeps
until the registry exists (`Metrics.record_request`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Record = Callable[[tuple[str, ...], float], None]  # (route[, method], code), seconds


def timed(record: Record, *, with_method: bool) -> Middleware:
    """Times every request of an app by route pattern (bounded labels), its method (with
    `with_method`) and status code."""

    @web.middleware
    async def timing(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        code = 500
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            labels = [resource.canonical if resource is not None else "unmatched"]
            if with_method:
                labels.append(request.method if request.method in METHODS else "other")
            record((*labels, str(code)), time.perf_counter() - started)

    return timing
