"""Headless Firefox for the page tests: Debian's `firefox-esr`, driven over WebDriver BiDi by the
small client below, with every request the page makes logged and a trap for any that would leave
localhost.

Why a client of our own: no maintained driver runs Debian's stock Firefox without a download,
and the test machines reach only PyPI, Debian and npm (GitHub downloads fail). What was tried:
- Playwright drives its own patched Firefox build (a download). Its `moz-firefox` channel does
  speak BiDi to a stock Firefox given `executable_path`, but (1.65) sets up every browser context
  with `emulation.setMediaFeaturesOverride`, which Firefox 153 ESR answers `unknown command`.
- Selenium needs geckodriver, which Selenium Manager and npm's `geckodriver` fetch from GitHub.
- puppeteer-core (25, `browser: 'firefox'`, `executablePath`) needs Node >= 22.12 (Debian 12 has
  18) and would put the checks in JavaScript, away from the fixtures that drive the fake GPUs.
Firefox >= 129 speaks BiDi itself when started with `--remote-debugging-port`; this module starts
it and sends the few commands the tests need over aiohttp's websocket client.

Nothing leaves localhost: the profile's prefs turn off Firefox's own traffic; its HTTP and TLS
proxy is `Trap`, on localhost, which records and refuses whatever would still go out (pages on
localhost itself never go through a proxy); and with MOZ_DISABLE_NONLOCAL_CONNECTIONS set a
connection to another host past the proxy aborts Firefox.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.web.browser import RequestLog, browser_path

FIREFOX_CANDIDATES = ("/usr/bin/firefox-esr", "/usr/bin/firefox")
START_S = 30
LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")
KEYS = {"Tab": "\ue004"}  # WebDriver's key codes
REFUSAL = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

# Firefox's own connections, off: telemetry and data reporting, updates (application, add-ons,
# search engines, system add-ons), remote settings and Nimbus/Normandy experiments, safe browsing,
# captive portal and connectivity checks, push, DNS-over-HTTPS, prefetches and speculative
# connections, region and geolocation lookups, the new-tab page's feeds, translations' models.
PREFS: dict[str, bool | int | str] = {
    "app.normandy.enabled": False,
    "app.normandy.api_url": "",
    "app.shield.optoutstudies.enabled": False,
    "app.update.auto": False,
    "app.update.checkInstallTime": False,
    "app.update.disabledForTesting": True,
    "browser.aboutHomeSnippets.updateUrl": "",
    "browser.newtabpage.enabled": False,
    "browser.newtabpage.activity-stream.feeds.system.topstories": False,
    "browser.newtabpage.activity-stream.feeds.telemetry": False,
    "browser.newtabpage.activity-stream.showSponsoredTopSites": False,
    "browser.newtabpage.activity-stream.telemetry": False,
    "browser.ping-centre.telemetry": False,
    "browser.region.network.url": "",
    "browser.region.update.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.downloads.remote.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.provider.google4.updateURL": "",
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "browser.search.update": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage": "about:blank",
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "browser.translations.enable": False,
    "browser.urlbar.speculativeConnect.enabled": False,
    "browser.urlbar.suggest.searches": False,
    "captivedetect.canonicalURL": "",
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.usage.uploadEnabled": False,
    "dom.push.connection.enabled": False,
    "dom.push.enabled": False,
    "dom.security.https_first": False,
    "extensions.blocklist.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "extensions.update.enabled": False,
    "geo.enabled": False,
    "geo.provider.network.url": "",
    "media.gmp-manager.updateEnabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.http.speculative-parallel-limit": 0,
    "network.prefetch-next": False,
    "network.trr.mode": 5,
    "services.settings.server": "data:,#remote-settings-dummy/v1",
    "toolkit.telemetry.archive.enabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.server": "",
    "toolkit.telemetry.unified": False,
    # Keyboard focus in a headless window that is never "active" on a desktop.
    "focusmanager.testmode": True,
}


class BidiError(Exception):
    pass


@dataclass
class Trap:
    """Firefox's proxy: records the request line of each connection and answers 403, so anything
    meant for another host is seen and never sent."""
    refused: list[str]
    server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._refuse, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            if line := (await asyncio.wait_for(reader.readline(), 5)).strip():
                self.refused.append(line.decode(errors="replace"))
            writer.write(REFUSAL)
            await writer.drain()
        writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@dataclass
class Firefox:
    """One BiDi session; `errors` collects the pages' console errors and uncaught exceptions."""
    ws: aiohttp.ClientWebSocketResponse
    log: RequestLog
    version: str = ""
    errors: list[str] = field(default_factory=list)
    _pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        command_id = next(self._ids)
        answer = self._pending[command_id] = asyncio.get_running_loop().create_future()
        await self.ws.send_json({"id": command_id, "method": method, "params": params})
        return await asyncio.wait_for(answer, START_S)

    async def read(self) -> None:
        """Answers to their commands, events to the logs, until the socket closes."""
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data and (answer := self._pending.pop(data["id"], None)):
                if data.get("type") == "error":
                    answer.set_exception(BidiError(f"{data['error']}: {data.get('message')}"))
                else:
                    answer.set_result(data["result"])
            elif data.get("method") == "network.beforeRequestSent":
                self.log.urls.append(data["params"]["request"]["url"])
            elif data.get("method") == "log.entryAdded" and data["params"]["level"] == "error":
                self.errors.append(data["params"].get("text") or "")
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(BidiError("Firefox closed the session"))

    async def page(self, width: int, height: int, scale: float = 1) -> Page:
        """The window's tab, with this viewport (CSS pixels) and device pixel ratio."""
        tree = await self.send("browsingContext.getTree", maxDepth=0)
        page = Page(self, tree["contexts"][0]["context"])
        await page.set_viewport(width, height, scale)
        return page


@dataclass
class Page:
    firefox: Firefox
    context: str

    async def set_viewport(self, width: int, height: int, scale: float = 1) -> None:
        await self.firefox.send("browsingContext.setViewport", context=self.context,
                                viewport={"width": width, "height": height},
                                devicePixelRatio=scale)

    async def goto(self, url: str) -> None:
        await self.firefox.send("browsingContext.navigate", context=self.context, url=url,
                                wait="complete")

    async def evaluate(self, expression: str) -> Any:
        """The expression's value, through JSON (None for undefined)."""
        answer = await self.firefox.send(
            "script.evaluate", expression=f"JSON.stringify({expression})",
            target={"context": self.context}, awaitPromise=True)
        if answer["type"] == "exception":
            raise BidiError(f"{expression}: {answer['exceptionDetails']['text']}")
        value = answer["result"]
        return json.loads(value["value"]) if value["type"] == "string" else None

    async def text(self, selector: str) -> str:
        return str(await self.evaluate(text_of(selector)))

    async def wait_for(self, expression: str, timeout_ms: int) -> None:
        """Until the expression is truthy (errors count as not yet: the element may be missing)."""
        deadline = time.monotonic() + timeout_ms / 1000
        while time.monotonic() < deadline:
            with contextlib.suppress(BidiError):
                if await self.evaluate(f"Boolean({expression})"):
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"not within {timeout_ms} ms: {expression}")

    async def press(self, key: str) -> None:
        code = KEYS[key]
        await self.firefox.send("input.performActions", context=self.context, actions=[
            {"type": "key", "id": "keyboard",
             "actions": [{"type": "keyDown", "value": code}, {"type": "keyUp", "value": code}]}])

    async def screenshot(self, path: Path) -> None:
        """The whole document, not just the viewport, as PNG."""
        shot = await self.firefox.send("browsingContext.captureScreenshot",
                                       context=self.context, origin="document")
        path.write_bytes(base64.b64decode(shot["data"]))


def element(selector: str) -> str:
    """JavaScript: the first element the selector matches, or null."""
    return f"document.querySelector({json.dumps(selector)})"


def text_of(selector: str) -> str:
    """JavaScript: that element's rendered text, '' while there is none."""
    return f"({element(selector)}?.innerText ?? '')"


def firefox_path() -> str:
    return browser_path(FIREFOX_CANDIDATES, "firefox-esr")


def write_profile(profile: Path, proxy_port: int) -> None:
    proxy: dict[str, bool | int | str] = {
        "network.proxy.type": 1, "network.proxy.share_proxy_settings": True,
        "network.proxy.http": "127.0.0.1", "network.proxy.http_port": proxy_port,
        "network.proxy.ssl": "127.0.0.1", "network.proxy.ssl_port": proxy_port,
        "network.proxy.no_proxies_on": ""}
    profile.mkdir(parents=True)
    (profile / "user.js").write_text("".join(
        f"user_pref({json.dumps(name)}, {json.dumps(value)});\n"
        for name, value in {**PREFS, **proxy}.items()))


async def endpoint(process: asyncio.subprocess.Process, output: Path) -> str:
    """The BiDi websocket Firefox prints once it listens (it picks the port: no race)."""
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline and process.returncode is None:
        if found := LISTENING.search(output.read_text(errors="replace")):
            return found.group(1) + "/session"
        await asyncio.sleep(0.05)
    raise AssertionError(f"Firefox did not start its BiDi server:\n{output.read_text()[-2000:]}")


@contextlib.asynccontextmanager
async def launch(executable: str, where: Path) -> AsyncIterator[Firefox]:
    """Headless Firefox on a fresh profile (and HOME) under `where`, one BiDi session on it."""
    log = RequestLog()
    trap = Trap(log.refused)
    write_profile(where / "profile", await trap.start())
    (where / "home").mkdir()
    output = where / "firefox.log"
    # MOZ_DISABLE_NONLOCAL_CONNECTIONS, as Mozilla's own test harness runs it: a connection
    # that bypassed the trap to another host would make Firefox abort (a loud failure), and a
    # release build honours services.settings.server only then.
    env = {**os.environ, "HOME": str(where / "home"), "MOZ_CRASHREPORTER_DISABLE": "1",
           "MOZ_DISABLE_NONLOCAL_CONNECTIONS": "1"}
    with output.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            executable, "--headless", "--no-remote", "--remote-debugging-port=0",
            "--profile", str(where / "profile"), "about:blank",
            stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink, env=env)
    try:
        url = await endpoint(process, output)
        async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
            firefox = Firefox(ws, log)
            reader = asyncio.create_task(firefox.read())
            session = await firefox.send("session.new", capabilities={})
            firefox.version = session["capabilities"]["browserVersion"]
            await firefox.send("session.subscribe",
                               events=["network.beforeRequestSent", "log.entryAdded"])
            try:
                yield firefox
            finally:
                with contextlib.suppress(BidiError, asyncio.TimeoutError, ConnectionError):
                    await firefox.send("browser.close")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(reader, 10)
    finally:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(process.wait(), 10)
        if process.returncode is None:
            process.kill()
            await process.wait()
        trap.close()


@pytest.fixture
async def firefox(tmp_path: Path) -> AsyncIterator[Firefox]:
    async with launch(firefox_path(), tmp_path / "firefox") as browser:
        yield browser
