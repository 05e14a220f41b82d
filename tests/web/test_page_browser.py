"""The GPU page in a real browser (Debian's headless Chromium) against the real daemon on a
2-GPU fake host: what a person sees, live, with nothing fetched from anywhere but the daemon."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.dockerenv import PluginDaemon
from tests.web.browser import Browser

pytestmark = [pytest.mark.docker, pytest.mark.root]

SHOTS_ENV = "NVP_PAGE_SCREENSHOTS"  # a directory to keep the screenshots in, besides tmp_path
WAIT_MS = 15_000


def status_json(daemon: PluginDaemon) -> list[dict[str, Any]]:
    with urllib.request.urlopen(daemon.url + "/v1.0/gpu/status/json", timeout=10) as answer:
        return json.loads(answer.read())["Devices"]


def shown(page: Any, gpu: int, field: str) -> str:
    return page.inner_text(f'[data-gpu="{gpu}"] [data-field="{field}"] .v')


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
    fields = {"temperature_c": ("Temperature",), "power_w": ("Power",),
              "memory_used_mib": ("Memory", "GlobalUsed"), "util_gpu": ("Utilization", "GPU"),
              "clock_sm_mhz": ("Clocks", "Cores"), "clock_mem_mhz": ("Clocks", "Memory")}
    for device in status_json(daemon):
        for field, keys in fields.items():
            value: Any = device
            for key in keys:
                value = value[key]
            assert shown(page, device["Index"], field) == str(value), field

    # A value changed in the fake NVML appears without a reload, in the card and the chart's
    # caption (the text alternative).
    page.evaluate("window.notReloaded = true")
    config = json.loads(daemon.host.nvml_config.read_text())
    config["gpus"][1]["temperature"] = 77
    config["gpus"][1]["power_usage_mw"] = 512_000
    tmp = daemon.host.nvml_config.with_suffix(".tmp")
    tmp.write_text(json.dumps(config))
    tmp.replace(daemon.host.nvml_config)
    page.wait_for_selector('[data-gpu="1"] [data-field="temperature_c"] .v:text-is("77")',
                           timeout=WAIT_MS)
    assert page.evaluate("window.notReloaded") is True
    assert shown(page, 1, "power_w") == "512"
    assert "Temperature: GPU 77 °C" in page.inner_text('[data-gpu="1"] [data-chart="temperature"]')
    assert status_json(daemon)[1]["Temperature"] == 77

    # Volumes and doctor's findings are there too.
    page.wait_for_selector('#doctor-checks [data-check="nvml"]', timeout=30_000)
    assert "PASS" in page.inner_text('#doctor-checks [data-check="nvml"]')
    assert f"nvidia_driver_{daemon.host.version}" in page.inner_text("#volumes-rows")
    cdi = page.inner_text("#cdi")  # the spec the daemon keeps, as GET /cdi/spec serves it
    with urllib.request.urlopen(daemon.url + "/v1.0/cdi/spec", timeout=10) as answer:
        spec = json.loads(answer.read())
    assert f"{daemon.cdi_path}: cdiVersion {spec['cdiVersion']}, kind {spec['kind']}, " \
        f"{len(spec['devices'])} devices" in cdi

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

    # Tab reaches the skip link first, then every GPU's link, then the charts.
    focused = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused.append(page.evaluate(
            "(() => { const e = document.activeElement;"
            " return (e.dataset.chart ? 'chart:' : e.tagName + ':') +"
            " (e.dataset.chart || e.textContent.trim()); })()"))
    assert focused[0] == "A:Skip to the GPUs"
    assert "A:GPU 0" in focused and "A:GPU 1" in focused
    assert "chart:util" in focused
    # Each chart says in words what it shows.
    label = page.get_attribute('[data-gpu="0"] figure[data-chart="power"]', "aria-label")
    assert label is not None and label.startswith("GPU 0 Power: Draw ") and "limit 700 W" in label

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
        config = json.loads(daemon.host.nvml_config.read_text())
        config["gpus"][1]["processes"] = [{"pid": pid, "used_memory": 1536 << 20}]
        config["process_names"] = {str(pid): "sleep"}
        tmp = daemon.host.nvml_config.with_suffix(".tmp")
        tmp.write_text(json.dumps(config))
        tmp.replace(daemon.host.nvml_config)

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
