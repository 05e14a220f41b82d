"""The /metrics page: rendered at most once per page_max_age, again as soon as the observation
or a GPU's health changes; nvplugin's own families beside dcgm-exporter's."""

from __future__ import annotations

import dataclasses

from prometheus_client.parser import text_string_to_metric_families

from nvplugin.observe.exposition import Metrics
from nvplugin.observe.records import ContainerRef, ContainerUse, GpuHealth, Observation
from tests.observe.test_dcgm import observation


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


class Source:
    """What Metrics reads of ObserveService: an observation and the health now."""

    def __init__(self) -> None:
        self.current: Observation | None = observation()
        self.states = self.current.health

    async def observation(self) -> Observation | None:
        return self.current

    def health(self) -> tuple[GpuHealth, ...]:
        return self.states


def samples(page: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(page.decode()) for s in f.samples}


async def test_a_page_is_reused_until_it_ages_or_something_changes():
    source, clock = Source(), Clock()
    metrics = Metrics(source, hostname="h", clock=clock)  # type: ignore[arg-type]
    first = await metrics.page()
    metrics.builds.labels("ok").inc()
    assert await metrics.page() is first  # within a second, nothing changed
    clock.now += 1.0
    aged = await metrics.page()
    assert aged is not first and b'nvplugin_volume_builds_total{result="ok"} 1.0' in aged
    source.states = (dataclasses.replace(source.states[0], healthy=False, reason="Xid 79"),)
    sick = await metrics.page()
    assert sick is not aged
    assert samples(sick)["nvplugin_gpu_healthy", (("UUID", source.states[0].uuid), ("gpu", "0"),
                                                  ("reason", "Xid 79"))] == 0
    use = ContainerUse(ContainerRef("c" * 64, "docker", "web"), 0, source.states[0].uuid, 2, 300)
    source.current = dataclasses.replace(source.current, containers=(use,))
    page = samples(await metrics.page())
    labels = (("UUID", use.gpu_uuid), ("container_id", "c" * 64), ("container_name", "web"),
              ("gpu", "0"), ("runtime", "docker"))
    assert page["nvplugin_container_gpu_processes", labels] == 2
    assert page["nvplugin_container_gpu_memory_used_bytes", labels] == 300 << 20


async def test_without_nvml_the_page_has_nvplugins_own_metrics_only():
    source = Source()
    source.current = None
    page = await Metrics(source, hostname="h", mounts=lambda: {"nvidia_driver_580.159.04": 2},  # type: ignore[arg-type]
                         cdi_spec_age=lambda: 12.5).page()
    names = {name for name, _labels in samples(page)}
    assert not any(name.startswith("DCGM_") for name in names)
    assert {"nvplugin_gpu_healthy", "nvplugin_volume_mounts", "nvplugin_cdi_spec_age_seconds",
            "process_resident_memory_bytes"} <= names
    assert samples(page)["nvplugin_volume_mounts", (("volume", "nvidia_driver_580.159.04"),)] == 2
