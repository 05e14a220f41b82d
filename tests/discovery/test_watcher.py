"""The driver watcher: it notices a change on disk and survives whatever re-discovery raises."""

from __future__ import annotations

import asyncio

import pytest

from nvplugin.core.errors import DriverNotFound
from nvplugin.driver.state import DriverState
from tests.fakehost.build import FakeHost


async def no_nvml() -> None:
    return None


async def test_the_watcher_logs_any_failure_and_keeps_watching(
        fake_host: FakeHost, caplog: pytest.LogCaptureFixture):
    state = DriverState(fake_host.root, no_nvml)
    await state.refresh()
    calls: list[str] = []
    failures = [RuntimeError("a bug in a re-discovery step"), DriverNotFound("gone for now")]

    async def on_change(reason: str) -> None:
        calls.append(reason)
        await state.refresh()  # the change is seen: the next one is a new one
        if failures:
            raise failures.pop(0)

    proc = fake_host.path("/proc/driver/nvidia/version")
    state.start_watching(0.01, on_change)
    try:
        for n in range(1, 4):  # three changes: a bug, a driver error, then a clean one
            proc.write_text(proc.read_text() + " ")
            async with asyncio.timeout(10):
                while len(calls) < n:
                    await asyncio.sleep(0.01)
    finally:
        await state.close()
    assert calls == [f"driver files changed under {fake_host.root}"] * 3
    assert "Error: driver re-discovery failed" in caplog.text
    assert "RuntimeError: a bug in a re-discovery step" in caplog.text  # the traceback says where
    assert "Driver re-discovery failed: gone for now" in caplog.text
