"""The GPU page in a real browser (Debian's headless Chromium) against the real daemon on a
2-GPU fake host: what a person sees, live, with nothing fetched from anywhere but the daemon."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.dockerenv import PluginDaemon
from tests.web.browser import Browser

pytestmark = [pytest.mark.docker, pytest.mark.root]

SHOTS_ENV = "NVP_PAGE_SCREENSHOTS"  # a directory to keep the screenshots in, besides tmp_path
WAIT_MS = 15_000
# Each card's live fields, by data-field, and where gpu/status/json has the same number.
LIVE_FIELDS = {"temperature_c": ("Temperature",), "power_w": ("Power",),
               "memory_used_mib": ("Memory", "GlobalUsed"), "util_gpu": ("Utilization", "GPU"),
               "clock_sm_mhz": ("Clocks", "Cores"), "clock_mem_mhz": ("Clocks", "Memory")}
# The focused element, as the keyboard tests compare it: 'chart:<name>' or '<TAG>:<its text>'.
FOCUSED_JS = ("(() => { const e = document.activeElement;"
              " return (e.dataset.chart ? 'chart:' : e.tagName + ':') +"
              " (e.dataset.chart || e.textContent.trim()); })()")
POWER_CHART = '[data-gpu="0"] figure[data-chart="power"]'
# The charts wider than their box (their right edge cut off), as 'GPU:chart'.
OVERFLOWING_CHARTS_JS = (
    "[...document.querySelectorAll('figure[data-chart]')]"
    ".filter((f) => f.querySelector('.uplot').offsetWidth > f.querySelector('.plot').clientWidth)"
    ".map((f) => f.closest('[data-gpu]').dataset.gpu + ':' + f.dataset.chart)")
CHARTS_FIT_JS = f"() => {OVERFLOWING_CHARTS_JS}.length === 0"


def status_json(daemon: PluginDaemon) -> list[dict[str, Any]]:
    with urllib.request.urlopen(daemon.url + "/v1.0/gpu/status/json", timeout=10) as answer:
        return json.loads(answer.read())["Devices"]


def expected_live(device: dict[str, Any]) -> dict[str, str]:
    """gpu/status/json's numbers for one device, as its card shows them, by data-field."""
    expected = {}
    for field, keys in LIVE_FIELDS.items():
        value: Any = device
        for key in keys:
            value = value[key]
        expected[field] = str(value)
    return expected


def expected_panels(daemon: PluginDaemon) -> dict[str, str]:
    """Text each panel holds: doctor's NVML check passed, the driver's volume, and the CDI spec
    the daemon keeps (as GET /cdi/spec serves it)."""
    assert daemon.host is not None
    with urllib.request.urlopen(daemon.url + "/v1.0/cdi/spec", timeout=10) as answer:
        spec = json.loads(answer.read())
    return {'#doctor-checks [data-check="nvml"]': "PASS",
            "#volumes-rows": f"nvidia_driver_{daemon.host.version}",
            "#cdi": f"{daemon.cdi_path}: cdiVersion {spec['cdiVersion']}, kind {spec['kind']}, "
                    f"{len(spec['devices'])} devices"}


def edit_nvml(daemon: PluginDaemon, edit: Callable[[dict[str, Any]], object]) -> None:
    """Change the fake NVML's config in place (atomically: the fake reads it on every call)."""
    assert daemon.host is not None
    config = json.loads(daemon.host.nvml_config.read_text())
    edit(config)
    tmp = daemon.host.nvml_config.with_suffix(".tmp")
    tmp.write_text(json.dumps(config))
    tmp.replace(daemon.host.nvml_config)


def assert_tab_order(focused: list[str]) -> None:
    """Tab reaches the skip link first, then every GPU's link, then the charts."""
    assert focused[0] == "A:Skip to the GPUs"
    assert "A:GPU 0" in focused and "A:GPU 1" in focused
    assert "chart:util" in focused


def assert_power_label(label: str | None) -> None:
    """The chart says in words what it shows."""
    assert label is not None and label.startswith("GPU 0 Power: Draw ") and "limit 700 W" in label


def value_at(gpu: int, field: str) -> str:
    """The selector of a live value on a GPU's card."""
    return f'[data-gpu="{gpu}"] [data-field="{field}"] .v'


def shown(page: Any, gpu: int, field: str) -> str:
    return page.inner_text(value_at(gpu, field))


def keep(shot: Path) -> None:
    if os.environ.get(SHOTS_ENV):
        Path(os.environ[SHOTS_ENV]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ[SHOTS_ENV]) / shot.name)


def assert_png(shot: Path, min_width: int) -> None:
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(data[16:20], "big")
    assert width >= min_width and len(data) > 20_000, (width, len(data))


def test_page_shows_both_gpus_live(running_plugin, browser: Browser, tmp_path: Path):
    daemon: PluginDaemon = running_plugin(n_gpus=2)
    assert daemon.host is not None
    page = browser.page(viewport={"width": 1280, "height": 900})
    page.goto(daemon.url + "/")
    page.wait_for_selector('[data-gpu="1"] [data-field="temperature_c"] .v:not(:text("N/A"))',
                           timeout=WAIT_MS)

    # Both cards, by UUID, with the driver version of the fake host.
    for index, uuid in enumerate(daemon.host.uuids):
        card = page.locator(f'section[data-gpu="{index}"]')
        assert card.get_attribute("data-uuid") == uuid
        assert uuid in card.inner_text()
        assert daemon.host.version in card.inner_text()
    assert f"driver {daemon.host.version}" in page.inner_text("h1")

    # Live numbers are gpu/status/json's.
    for device in status_json(daemon):
        for field, value in expected_live(device).items():
            assert shown(page, device["Index"], field) == value, field

    # A value changed in the fake NVML appears without a reload, in the card and the chart's
    # caption (the text alternative).
    page.evaluate("window.notReloaded = true")
    edit_nvml(daemon, lambda config: config["gpus"][1].update(temperature=77,
                                                              power_usage_mw=512_000))
    page.wait_for_selector('[data-gpu="1"] [data-field="temperature_c"] .v:text-is("77")',
                           timeout=WAIT_MS)
    assert page.evaluate("window.notReloaded") is True
    assert shown(page, 1, "power_w") == "512"
    assert "Temperature: GPU 77 °C" in page.inner_text('[data-gpu="1"] [data-chart="temperature"]')
    assert status_json(daemon)[1]["Temperature"] == 77

    # Volumes and doctor's findings are there too.
    page.wait_for_selector('#doctor-checks [data-check="nvml"]', timeout=30_000)
    for selector, text in expected_panels(daemon).items():
        assert text in page.inner_text(selector), selector
    page.wait_for_function(CHARTS_FIT_JS, timeout=WAIT_MS)

    shot = tmp_path / "gpu-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert_png(shot, 1280)
    keep(shot)
    assert browser.log.urls and browser.log.outside() == [] and browser.log.refused == []


def test_page_at_phone_width_and_by_keyboard(running_plugin, browser: Browser, tmp_path: Path):
    daemon: PluginDaemon = running_plugin(n_gpus=2)
    page = browser.page(viewport={"width": 390, "height": 844}, is_mobile=True,
                        device_scale_factor=2)
    page.goto(daemon.url + "/")
    page.wait_for_selector('[data-gpu="1"] figure[data-chart="pcie"] canvas', timeout=WAIT_MS)
    # Nothing wider than the screen: no sideways scrolling of the page itself.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.evaluate(OVERFLOWING_CHARTS_JS) == []

    focused = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused.append(page.evaluate(FOCUSED_JS))
    assert_tab_order(focused)
    assert_power_label(page.get_attribute(POWER_CHART, "aria-label"))
    # Charts follow a window resize (a phone turned sideways).
    page.set_viewport_size({"width": 844, "height": 390})
    page.wait_for_function(CHARTS_FIT_JS, timeout=WAIT_MS)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function(CHARTS_FIT_JS, timeout=WAIT_MS)

    shot = tmp_path / "gpu-page-phone.png"
    page.screenshot(path=str(shot), full_page=True)
    assert_png(shot, 390)
    keep(shot)
    assert browser.log.outside() == [] and browser.log.refused == []

    # An open page never holds up a graceful stop: its stream ends at once, where a stream
    # left open would keep the daemon draining for its 30 s and get it killed here (-9).
    assert daemon.stop(timeout=20) == 0
    assert "Successfully terminated" in daemon.log()
    page.wait_for_selector('#connection:text("reconnecting")', timeout=WAIT_MS)


def test_a_container_using_a_gpu_appears_by_name(running_plugin, browser: Browser, make_image,
                                                 docker_engine, tmp_path: Path):
    """A real container whose PID the fake NVML reports on GPU 1: the page names it."""
    daemon: PluginDaemon = running_plugin(n_gpus=2)
    assert daemon.host is not None
    name = f"nvp-page-trainer-{daemon.port}"
    container = docker_engine.client.containers.run(
        make_image(), ["sleep", "300"], name=name, detach=True, network_mode="none")
    try:
        container.reload()
        pid = int(container.attrs["State"]["Pid"])

        def attach(config: dict[str, Any]) -> None:
            config["gpus"][1]["processes"] = [{"pid": pid, "used_memory": 1536 << 20}]
            config["process_names"] = {str(pid): "sleep"}

        edit_nvml(daemon, attach)

        page = browser.page(viewport={"width": 1280, "height": 900})
        page.goto(daemon.url + "/")
        row = page.locator(f'#containers-rows tr[data-pid="{pid}"]')
        row.locator(f'td.container:text-matches("^{name} ")').wait_for(timeout=WAIT_MS)
        cells = row.locator("td").all_inner_texts()
        assert cells[0] == "GPU 1" and cells[1] == f"{name} ({container.id[:12]})"
        assert cells[2:5] == [str(pid), "sleep", "1536 MiB"] and cells[5] != "N/A"
        # The same attribution gpu/status/json shows.
        device = status_json(daemon)[1]
        assert device["Processes"][0]["Container"]["Name"] == name
        assert "healthy" in page.inner_text('[data-gpu="1"] .health')

        shot = tmp_path / "gpu-page-container.png"
        page.locator("#containers").screenshot(path=str(shot))
        keep(shot)
    finally:
        container.remove(force=True)
    assert browser.log.outside() == [] and browser.log.refused == []
