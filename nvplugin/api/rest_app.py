"""The REST API on localhost:3476: nvidia-docker 1.0's routes and the CDI ones (`cdi/spec`,
`cdi/cli`), under `/v1.0` and unversioned.

Handlers parse the query, make one service call and hand records to `text_pages`, `json_docs`
or `launch_args`. One middleware maps failures to one-line `text/plain` answers: 400 for a bad
selector, 404/405 for routing, 503 while the driver or NVML is unavailable, and 500 (logged once,
with the route) for anything unexpected.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware

from nvplugin.api import json_docs, launch_args, text_pages
from nvplugin.core.config import Config
from nvplugin.core.errors import ConfigError, NvmlError, NvpluginError, SelectionError
from nvplugin.core.later import Later
from nvplugin.core.text import escape_controls, quote_untrusted
from nvplugin.driver.manifest import Manifest
from nvplugin.gpu import devnodes
from nvplugin.gpu.records import GpuInventory
from nvplugin.gpu.selection import Selection, means_all

if TYPE_CHECKING:  # the records behind these sources load after the sockets answer
    from nvplugin.cdi.spec import Spec
    from nvplugin.gpu.readings import GpuStatus
    from nvplugin.observe.records import ContainerRef, GpuHealth

log = logging.getLogger(__name__)
T = TypeVar("T")

API_VERSION = "v1.0"
METRICS_PATH = "/metrics"  # unversioned only: where Prometheus scrapes by default
TEXT = "text/plain"
JSON = "application/json"
MAX_ERROR_LINE = 512  # characters; quoted items are at most 64 (plus escapes)


class GpuSource(Protocol):
    """What the REST API needs of `nvplugin.gpu.service.GpuService`."""

    @property
    def available(self) -> bool: ...
    @property
    def reason(self) -> str | None: ...

    async def inventory(self, *, cuda_sizes: bool = True) -> GpuInventory: ...
    async def status(self) -> tuple[GpuStatus, ...]: ...
    def select(self, spec: str | None) -> Selection: ...
    async def control_nodes(self) -> tuple[launch_args.DeviceNodeLike, ...]: ...
    async def driver_version(self) -> str: ...


class ObserveSource(Protocol):
    """What the REST API needs of `nvplugin.observe.service.ObserveService`."""

    def healthy(self, uuid: str) -> bool: ...
    def health(self) -> tuple[GpuHealth, ...]: ...
    async def containers_of(self, pids: Iterable[int]) -> dict[int, ContainerRef | None]: ...


class CdiSource(Protocol):
    """What the REST API needs of `nvplugin.cdi.writer.SpecKeeper`."""

    @property
    def kind(self) -> str: ...
    def current(self) -> Spec: ...


ManifestProvider = Callable[[], Manifest]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Ready = Callable[[], Awaitable[None]]
# The driver version whose volume is built already, once NVML has loaded; None: wait for `Ready`.
BuiltVersion = Callable[[], Awaitable[str | None]]


class LastPages:
    """The last answer of each inventory renderer, kept with the inventory it was made from.

    gpu/info, its JSON and mesos/cli lay the static inventory out again on every request (about
    0.3 ms for 8 GPUs); comparing equal records, mostly the very same objects, takes under 1 us.
    """

    def __init__(self) -> None:
        self._last: dict[Callable[[GpuInventory], str], tuple[GpuInventory, str]] = {}

    def render(self, renderer: Callable[[GpuInventory], str], inventory: GpuInventory) -> str:
        last = self._last.get(renderer)
        if last is not None and last[0] == inventory:
            return last[1]
        page = renderer(inventory)
        self._last[renderer] = (inventory, page)
        return page


GPUS = web.AppKey("gpus", GpuSource)
PAGES = web.AppKey("pages", LastPages)
MANIFEST: web.AppKey[ManifestProvider] = web.AppKey("manifest_provider")
CONFIG = web.AppKey("config", Config)
OBSERVE: web.AppKey[Later[ObserveSource] | None] = web.AppKey("observe")
CDI: web.AppKey[Later[CdiSource]] = web.AppKey("cdi")
READY: web.AppKey[Ready] = web.AppKey("ready")
BUILT_VERSION: web.AppKey[BuiltVersion] = web.AppKey("built_version")


def _text(body: str, status: int = 200) -> web.Response:
    return web.Response(body=body.encode("utf-8", "replace"), status=status,
                        content_type=TEXT, charset="utf-8")


def _json(body: str) -> web.Response:
    return web.Response(body=body.encode("utf-8", "replace"), content_type=JSON)


async def _gpus(request: web.Request) -> GpuSource:
    await request.app[READY]()
    return _loaded_gpus(request)


def _loaded_gpus(request: web.Request) -> GpuSource:
    """The GPUs, once NVML has loaded (or is known to be missing)."""
    gpus = request.app[GPUS]
    if not gpus.available:
        raise NvmlError(gpus.reason or "NVML is unavailable on this host")
    return gpus


async def _manifest(request: web.Request) -> Manifest:
    await request.app[READY]()
    return request.app[MANIFEST]()  # the daemon's current manifest, already in memory


async def _inventory(request: web.Request, *, cuda_sizes: bool = True) -> GpuInventory:
    # GpuService keeps it; no cache here. Only gpu/info shows CUDA's sizes and waits for them.
    return await (await _gpus(request)).inventory(cuda_sizes=cuda_sizes)


# ---------------------------------------------------------------- handlers


async def _page(request: web.Request, renderer: Callable[[GpuInventory], str], *,
                cuda_sizes: bool = True) -> str:
    return request.app[PAGES].render(renderer, await _inventory(request, cuda_sizes=cuda_sizes))


async def gpu_info(request: web.Request) -> web.Response:
    return _text(await _page(request, text_pages.gpu_info_text))


async def gpu_info_json(request: web.Request) -> web.Response:
    return _json(await _page(request, json_docs.gpu_info_json))


async def gpu_status(request: web.Request) -> web.Response:
    # The page prints "used / total": the totals come from the static inventory.
    statuses = await (await _gpus(request)).status()
    return _text(text_pages.gpu_status_text(await _inventory(request, cuda_sizes=False),
                                            statuses))


async def gpu_status_json(request: web.Request) -> web.Response:
    statuses = await (await _gpus(request)).status()
    observe = await _observe(request)
    if observe is None:
        return _json(json_docs.gpu_status_json(statuses))
    containers = await observe.containers_of(p.pid for st in statuses for p in st.processes)
    health = {h.index: h for h in observe.health()}
    return _json(json_docs.gpu_status_json(statuses, health, containers))


async def _observe(request: web.Request) -> ObserveSource | None:
    """GPU health and attribution, waited for while the daemon starts; None without them."""
    later = request.app[OBSERVE]
    return None if later is None else await later.get()


def _health_now(request: web.Request) -> ObserveSource | None:
    """GPU health as far as it is known, never waited for: until it watches (it loads after
    docker/cli is ready), no GPU is known unhealthy, as when it has just started."""
    later = request.app[OBSERVE]
    return None if later is None else later.now()


def _healthy_only(observe: ObserveSource | None, spec: str | None,
                  chosen: Selection) -> Selection:
    """Every GPU (`dev` absent, '', `all`, `*`) means every healthy one: a GPU that had a
    critical Xid, a double-bit ECC error or fell off the bus is left out until it recovers.
    GPUs named by index or UUID are given as asked, healthy or not: the caller chose them
    (to run a diagnostic, say). With no healthy GPU left, the answer is 503 with the reasons."""
    if observe is None or not means_all(spec):
        return chosen
    healthy = tuple(gpu for gpu in chosen.gpus if observe.healthy(gpu.uuid))
    if len(healthy) == len(chosen.gpus):
        return chosen
    if not healthy:
        reasons = {h.uuid: h.reason for h in observe.health()}
        raise NvpluginError("no healthy GPU: " + "; ".join(
            f"GPU {gpu.index} ({gpu.uuid}) is unhealthy: {reasons.get(gpu.uuid) or 'unknown'}"
            for gpu in chosen.gpus) + "; name a GPU with dev= to use it anyway")
    return Selection(gpus=healthy)


async def _docker_args(request: web.Request) -> launch_args.DockerArgs:
    kinds = launch_args.volume_kinds(request.query.get("vol"))
    # The volume is named after the driver files the daemon discovered (and can build), which
    # also saves an NVML call per request; no files means no volume to offer: 503. Until the
    # first discovery is done, a volume built already for NVML's version is named without
    # waiting for it: the plugin serves a built volume as it is (a restart's common case).
    built = await request.app[BUILT_VERSION]()
    gpus = _loaded_gpus(request) if built is not None else await _gpus(request)
    # absent, "", "*": every GPU; MIG devices get their parent's node and their access nodes
    spec = request.query.get("dev")
    selected = devnodes.selection_nodes(_healthy_only(_health_now(request), spec,
                                                      gpus.select(spec)))
    version = built if built is not None else (await _manifest(request)).version
    nodes = await gpus.control_nodes()
    host_root = str(request.app[CONFIG].host_root)
    try:
        return launch_args.docker_args(version, kinds, (*nodes, *selected), host_root=host_root)
    except ConfigError as err:
        # A node the Docker host cannot see (start-up refuses a --dev-root outside --host-root,
        # so only a node found elsewhere gets here): the daemon's setup, not the request, is
        # wrong. Refused, logged, and answered 503 rather than handing Docker a dead path.
        log.error("Error: refusing %s: %s", request.path, err.message)
        raise NvpluginError(err.message) from err


async def docker_cli(request: web.Request) -> web.Response:
    return _text(launch_args.docker_cli_text(await _docker_args(request)))


async def docker_cli_json(request: web.Request) -> web.Response:
    return _json(launch_args.docker_cli_json(await _docker_args(request)))


async def mesos_cli(request: web.Request) -> web.Response:
    return _text(await _page(request, launch_args.mesos_cli_text, cuda_sizes=False))


async def cdi_spec(request: web.Request) -> web.Response:
    # The same bytes the daemon writes to <cdi-dir>/nvidia-docker.json (with or without one).
    source = await request.app[CDI].get()
    return web.Response(body=source.current().render(), content_type=JSON)


async def _cdi_devices(request: web.Request) -> tuple[str, ...]:
    dev = request.query.get("dev")
    asked = (await _gpus(request)).select(dev)  # docker/cli's grammar and 400s
    chosen = _healthy_only(_health_now(request), dev, asked)  # and its choice of every GPU
    source = await request.app[CDI].get()
    source.current()  # no spec for engines to resolve the names in: 503, with the reason
    # Loaded with the spec's keeper (off the loop, after the sockets answer): a dict lookup.
    from nvplugin.cdi.build import device_arguments

    return device_arguments(source.kind, chosen, means_all(dev) and chosen == asked)


async def cdi_cli(request: web.Request) -> web.Response:
    return _text(launch_args.cdi_cli_text(await _cdi_devices(request)))


async def cdi_cli_json(request: web.Request) -> web.Response:
    return _json(launch_args.cdi_cli_json(await _cdi_devices(request)))


async def driver_files(request: web.Request) -> web.Response:
    return _json(json_docs.go_json((await _manifest(request)).to_json()))


# One table, registered under /v1.0 and again unversioned (the latest API version).
ROUTES: tuple[tuple[str, Handler], ...] = (
    ("/gpu/info", gpu_info),
    ("/gpu/info/json", gpu_info_json),
    ("/gpu/status", gpu_status),
    ("/gpu/status/json", gpu_status_json),
    ("/docker/cli", docker_cli),
    ("/docker/cli/json", docker_cli_json),
    ("/mesos/cli", mesos_cli),
    ("/driver/files", driver_files),
    ("/cdi/spec", cdi_spec),
    ("/cdi/cli", cdi_cli),
    ("/cdi/cli/json", cdi_cli_json),
)


# ---------------------------------------------------------------- errors


def _client_error(err: NvpluginError) -> str:
    """The 400 line. Selectors quote the offending item (cut, escaped) when they raise; this
    only guarantees one bounded line should a message arrive unquoted."""
    line = escape_controls(err.message, backslash=False)
    return line[:MAX_ERROR_LINE] + "\n"


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "an unknown route"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.body_exists:
        # GETs take no body, yet one that cannot be decoded (a wrong Content-Encoding) made
        # aiohttp log a traceback while draining it after the answer: read it here instead.
        try:
            await request.read()
        except web.RequestPayloadError:
            request.content.feed_eof()
            encoding = quote_untrusted(request.headers.get("Content-Encoding", ""), 64)
            response = _text(f"the request body cannot be decoded (Content-Encoding "
                             f"{encoding}); these requests take no body\n", status=400)
            response.force_close()
            return response
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _text("404 page not found\n", status=404)
    except web.HTTPMethodNotAllowed as exc:
        response = _text("405 method not allowed: use GET\n", status=405)
        response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return response
    except (SelectionError, ConfigError) as err:
        return _text(_client_error(err), status=400)
    except NvpluginError as err:
        # No driver, NVML down, or no driver files yet: the host's state, not a daemon bug.
        return _text(text_pages.one_line(err.message), status=503)
    except web.HTTPException:
        raise
    except Exception as err:
        route = _route_name(request)
        log.exception("Error: unexpected failure serving %s %s", request.method, route)
        return _text(
            f"internal error serving {request.method} {route}: {type(err).__name__}; "
            "the traceback is in the nvidia-docker-plugin log\n",
            status=500,
        )


def _later(source: T | Later[T]) -> Later[T]:
    return source if isinstance(source, Later) else Later(source)


async def _no_wait() -> None:
    return None


async def _no_version() -> str | None:
    return None


def make_app(gpus: GpuSource, manifest_provider: ManifestProvider, config: Config,
             cdi: CdiSource | Later[CdiSource],
             observe: ObserveSource | Later[ObserveSource] | None = None,
             metrics: Handler | None = None, middlewares: Sequence[Middleware] = (),
             ready: Ready = _no_wait,
             built_version: BuiltVersion = _no_version) -> web.Application:
    """The REST application; the daemon serves it on `config.listen`, with `cdi` the spec it
    keeps. With `observe`, GPU health and containers join gpu/status/json and the choice of
    every GPU (docker/cli, cdi/cli); with `metrics`, `GET /metrics` (unversioned: Prometheus'
    default path). `middlewares` run outermost. Every route that reads GPUs or driver files
    first awaits `ready()`, and the CDI and health routes await their source when it comes
    `Later`: the daemon answers before its start-up work is done, and such a request waits for
    it rather than answering from half a start; only docker/cli may answer before `ready()`,
    with the volume `built_version()` names."""
    app = web.Application(middlewares=(*middlewares, error_middleware))
    app[GPUS] = gpus
    app[PAGES] = LastPages()
    app[MANIFEST] = manifest_provider
    app[CONFIG] = config
    app[OBSERVE] = None if observe is None else _later(observe)
    app[CDI] = _later(cdi)
    app[READY] = ready
    app[BUILT_VERSION] = built_version
    for prefix in (f"/{API_VERSION}", ""):
        for path, handler in ROUTES:
            app.router.add_get(prefix + path, handler)
    if metrics is not None:
        app.router.add_get(METRICS_PATH, metrics)
    return app
