"""tests/gpu/page_replay.py: a stream captured on a host without a browser (the GPU proof's
events.txt) is drawn here by the package's own page, in Chromium, as the host sent it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nvplugin.web import documents
from tests.gpu import page_replay
from tests.web.test_page_browser import assert_png


async def test_a_captured_stream_is_drawn_as_sent(make_feed, tmp_path: Path):
    feed = await make_feed(2)
    hello = await feed.hello()
    hello["inventory"]["gpus"][1]["model"] = "NVIDIA H200 (captured)"
    sample = dict(hello["sample"])
    sample["gpus"] = [dict(g, temperature_c=66, t=g["t"] + 1) for g in sample["gpus"]]
    sample["t"] += 1
    page_dir = tmp_path / "page"
    page_dir.mkdir()
    (page_dir / "events.txt").write_bytes(
        b"retry: 2000\n" + documents.event("hello", hello) + documents.event("sample", sample))
    png = tmp_path / "replayed.png"
    text = await asyncio.to_thread(page_replay.screenshot, page_dir, png)
    assert "GPU 1 · NVIDIA H200 (captured)" in text
    assert "Temperature: GPU 66 °C" in text  # the sample after hello was drawn too
    assert_png(png, 1280)
