"""The GPU page in Firefox (Debian's headless firefox-esr, over WebDriver BiDi) against the real
daemon on a 2-GPU fake host: the Chromium tests' checks, from the same helpers, in the other
engine, with nothing fetched from anywhere but the daemon."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from tests.dockerenv import PluginDaemon
from tests.web.firefox import BidiError, Firefox, element, text_of
from tests.web.test_page_browser import (
    FOCUSED_JS,
    OVERFLOWING_CHARTS_JS,
    POWER_CHART,
    WAIT_MS,
    assert_png,
    assert_power_label,
    assert_tab_order,
    edit_nvml,
    expected_live,
    expected_panels,
    keep,
    status_json,
    value_at,
)


def contains(selector: str, text: str) -> str:
    return f"{text_of(selector)}.includes({json.dumps(text)})"


async def test_firefox_fence_stops_a_request_off_the_host(firefox: Firefox):
    """The fence the page tests rely on is real: a page on another host is asked of the trap,
    which refuses it, and the request log names it."""
    page = await firefox.page(800, 600)
    with contextlib.suppress(BidiError):  # the navigation fails: the trap answers 403
        await page.goto("http://example.com/")
    assert "GET http://example.com/ HTTP/1.1" in firefox.log.refused
    assert "http://example.com/" in firefox.log.outside()


@pytest.mark.docker
@pytest.mark.root
async def test_firefox_shows_both_gpus_live(running_plugin, firefox: Firefox, tmp_path: Path):
    daemon: PluginDaemon = running_plugin(n_gpus=2)
    assert daemon.host is not None
    page = await firefox.page(1280, 900)
    await page.goto(daemon.url + "/")
    temperature = text_of(value_at(1, "temperature_c"))
    await page.wait_for(f"{temperature} && !{temperature}.includes('N/A')", WAIT_MS)

    # Both cards, by UUID, with the driver version of the fake host.
    for index, uuid in enumerate(daemon.host.uuids):
        card = f'section[data-gpu="{index}"]'
        assert await page.evaluate(f"{element(card)}.dataset.uuid") == uuid
        assert uuid in await page.text(card) and daemon.host.version in await page.text(card)
    assert f"driver {daemon.host.version}" in await page.text("h1")

    # Live numbers are gpu/status/json's.
    for device in status_json(daemon):
        for field, value in expected_live(device).items():
            assert await page.text(value_at(device["Index"], field)) == value, field

    # A value changed in the fake NVML appears without a reload, in the card and the chart's
    # caption.
    await page.evaluate("window.notReloaded = true")
    edit_nvml(daemon, lambda config: config["gpus"][1].update(temperature=77,
                                                              power_usage_mw=512_000))
    await page.wait_for(f"{temperature}.trim() === '77'", WAIT_MS)
    assert await page.evaluate("window.notReloaded") is True
    assert await page.text(value_at(1, "power_w")) == "512"
    assert "Temperature: GPU 77 °C" in await page.text('[data-gpu="1"] [data-chart="temperature"]')
    assert status_json(daemon)[1]["Temperature"] == 77

    # Volumes, the CDI spec and doctor's findings (doctor's first run may take a while).
    panels = expected_panels(daemon)
    await page.wait_for(" && ".join(contains(s, t) for s, t in panels.items()), 30_000)
    # The page is taller than the window now: Firefox's scrollbar took its width from the charts.
    await page.wait_for(f"{OVERFLOWING_CHARTS_JS}.length === 0", WAIT_MS)

    shot = tmp_path / "gpu-page-firefox.png"
    await page.screenshot(shot)
    # The document's width: Firefox's scrollbar takes its share of the 1280 px window.
    assert_png(shot, await page.evaluate("document.documentElement.scrollWidth"))
    keep(shot)
    assert firefox.errors == []
    assert firefox.log.urls and firefox.log.outside() == [] and firefox.log.refused == []


@pytest.mark.docker
@pytest.mark.root
async def test_firefox_at_phone_width_and_by_keyboard(running_plugin, firefox: Firefox,
                                                      tmp_path: Path):
    daemon: PluginDaemon = running_plugin(n_gpus=2)
    page = await firefox.page(390, 844, scale=2)
    await page.goto(daemon.url + "/")
    await page.wait_for(element('[data-gpu="1"] figure[data-chart="pcie"] canvas'), WAIT_MS)
    # Nothing wider than the screen: no sideways scrolling of the page itself.
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    assert await page.evaluate(OVERFLOWING_CHARTS_JS) == []

    focused = []
    for _ in range(12):
        await page.press("Tab")
        focused.append(await page.evaluate(FOCUSED_JS))
    assert_tab_order(focused)
    assert_power_label(await page.evaluate(f"{element(POWER_CHART)}.getAttribute('aria-label')"))
    # Charts follow a window resize (a phone turned sideways).
    for width, height in ((844, 390), (390, 844)):
        await page.set_viewport(width, height, scale=2)
        await page.wait_for(f"{OVERFLOWING_CHARTS_JS}.length === 0", WAIT_MS)

    shot = tmp_path / "gpu-page-firefox-phone.png"
    await page.screenshot(shot)
    assert_png(shot, 390)
    keep(shot)
    assert firefox.errors == []
    assert firefox.log.urls and firefox.log.outside() == [] and firefox.log.refused == []

    # The stream ends at a graceful stop and Firefox's EventSource says it is reconnecting.
    assert daemon.stop(timeout=20) == 0
    await page.wait_for(contains("#connection", "reconnecting"), WAIT_MS)
