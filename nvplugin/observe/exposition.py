"""`GET /metrics`: dcgm-exporter's GPU families (dcgm.py) and nvplugin's own, over HTTP.

nvplugin's own metrics are prometheus_client's, on a registry of the daemon's own (no global):

    nvplugin_gpu_healthy{gpu,UUID,reason}            1 healthy, 0 unhealthy (reason says why)
    nvplugin_gpu_health_since_timestamp_seconds      when each GPU became what it is
    nvplugin_container_gpu_memory_used_bytes{container_id,container_name,runtime,gpu,UUID}
    nvplugin_container_gpu_processes{...}            processes of a container on a GPU
    nvplugin_gpu_observation_timestamp_seconds       when this scrape's GPU readings were taken
    nvplugin_volume_builds_total{result}, nvplugin_volume_build_duration_seconds (histogram),
    nvplugin_volume_build_bytes_total, nvplugin_volume_mounts{volume}
    nvplugin_rest_request_duration_seconds{route,method,code},
    nvplugin_plugin_request_duration_seconds{route,code}   (histograms)
    nvplugin_cdi_spec_age_seconds                    when a CDI spec source is wired in
    process_*, python_*                              prometheus_client's process collectors

A page is rendered at most once per `page_max_age` (1 s, the observations' own age limit) and
whenever the observation or a GPU's health changed: prometheus_client writes ~7 us per sample,
so the request histograms alone would cost more than the rest of a scrape (0.34 ms for three
routes), and Prometheus scrapes seconds apart anyway. Back-to-back scrapes are served from
memory (bench/bench_metrics.py).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from nvplugin.observe import dcgm
from nvplugin.observe.records import GpuHealth, Observation
from nvplugin.observe.service import ObserveService

log = logging.getLogger(__name__)

MIB = 1 << 20
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BUILD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def node_name(environ: Mapping[str, str]) -> str:
    """The Hostname label, as dcgm-exporter chooses it: NODE_NAME, else the host's name."""
    return environ.get("NODE_NAME") or socket.gethostname()


class Metrics:
    """The daemon's registry and the `/metrics` handler (on the REST listener and, with
    `--metrics-listen`, alone on its own)."""

    def __init__(self, service: ObserveService, *, hostname: str,
                 mounts: Callable[[], Mapping[str, int]] | None = None,
                 cdi_spec_age: Callable[[], float | None] | None = None,
                 page_max_age: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.page_max_age = page_max_age
        self._clock = clock
        self.hostname = hostname
        self.mounts = mounts
        self.cdi_spec_age = cdi_spec_age
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.rest_seconds = Histogram(
            "nvplugin_rest_request_duration_seconds", "REST API requests by route, method and "
            "status code.", ["route", "method", "code"], buckets=LATENCY_BUCKETS,
            registry=self.registry)
        self.plugin_seconds = Histogram(
            "nvplugin_plugin_request_duration_seconds", "Docker volume-plugin requests by route "
            "and status code.", ["route", "code"], buckets=LATENCY_BUCKETS,
            registry=self.registry)
        self.builds = Counter("nvplugin_volume_builds", "Driver volume builds by result.",
                              ["result"], registry=self.registry)
        self.build_seconds = Histogram("nvplugin_volume_build_duration_seconds",
                                       "Time to build a driver volume.", buckets=BUILD_BUCKETS,
                                       registry=self.registry)
        self.build_bytes = Counter("nvplugin_volume_build_bytes",
                                   "Bytes of driver files placed in built volumes.",
                                   registry=self.registry)
        self.registry.register(_StateCollector(self))
        self._observation: Observation | None = None  # the one the current scrape shows
        self._page: tuple[float, tuple[GpuHealth, ...], bytes] | None = None  # at, health, page

    def record_build(self, seconds: float, size: int, ok: bool) -> None:
        self.builds.labels("ok" if ok else "error").inc()
        if ok:
            self.build_seconds.observe(seconds)
            self.build_bytes.inc(size)

    async def page(self) -> bytes:
        observation = await self.service.observation()
        health = self.service.health()
        cached = self._page
        if cached is not None and observation is self._observation and cached[1] == health \
                and self._clock() - cached[0] < self.page_max_age:
            return cached[2]
        self._observation = observation  # what the state collector shows
        gpus = b"" if observation is None else dcgm.render(observation, self.hostname)
        page = gpus + generate_latest(self.registry)
        self._page = (self._clock(), health, page)
        return page

    async def handle(self, _request: web.Request) -> web.Response:
        return web.Response(body=await self.page(),
                            headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    def record_request(self, listener: str, labels: tuple[str, ...], seconds: float) -> None:
        """One request's duration (timed by observe/timing.py): `listener` is "rest" (labels
        route, method, code) or "plugin" (route, code)."""
        histogram = self.rest_seconds if listener == "rest" else self.plugin_seconds
        histogram.labels(*labels).observe(seconds)


class _StateCollector(Collector):
    """nvplugin's GPU, container and volume gauges, read when a scrape renders."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        healthy = GaugeMetricFamily("nvplugin_gpu_healthy", "1 while the GPU is healthy, 0 while "
                                    "unhealthy; reason says why.", labels=["gpu", "UUID",
                                                                           "reason"])
        since = GaugeMetricFamily("nvplugin_gpu_health_since_timestamp_seconds",
                                  "When the GPU became healthy or unhealthy (UNIX time).",
                                  labels=["gpu", "UUID"])
        for h in m.service.health():
            healthy.add_metric([str(h.index), h.uuid, h.reason or ""], 1 if h.healthy else 0)
            since.add_metric([str(h.index), h.uuid], h.since)
        yield healthy
        yield since
        observation = m._observation
        if observation is not None:
            yield from _containers(observation)
            taken = GaugeMetricFamily("nvplugin_gpu_observation_timestamp_seconds",
                                      "When the GPU readings of this scrape were taken.")
            taken.add_metric([], observation.taken_at)
            yield taken
        if m.mounts is not None:
            mounts = GaugeMetricFamily("nvplugin_volume_mounts",
                                       "Containers holding each driver volume mounted.",
                                       labels=["volume"])
            for volume, count in sorted(m.mounts().items()):
                mounts.add_metric([volume], count)
            yield mounts
        if m.cdi_spec_age is not None:
            age = m.cdi_spec_age()
            if age is not None:
                yield GaugeMetricFamily("nvplugin_cdi_spec_age_seconds",
                                        "Seconds since the CDI spec was last written.", age)


def _containers(observation: Observation) -> Iterator[Metric]:
    labels = ["container_id", "container_name", "runtime", "gpu", "UUID"]
    memory = GaugeMetricFamily("nvplugin_container_gpu_memory_used_bytes",
                               "GPU memory used by a container's processes.", labels=labels)
    processes = GaugeMetricFamily("nvplugin_container_gpu_processes",
                                  "Processes of a container on a GPU.", labels=labels)
    for use in observation.containers:
        values = [use.container.id, use.container.name or "", use.container.runtime,
                  str(use.gpu_index), use.gpu_uuid]
        processes.add_metric(values, use.processes)
        if use.memory_used_mib is not None:
            memory.add_metric(values, use.memory_used_mib * MIB)
    yield memory
    yield processes

