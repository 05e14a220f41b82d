"""The GPU proof's page step, its pure parts: the captured event stream parsed, the page's
assets found, and what the stream showed compared with gpu/status/json and nvidia-smi."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.gpu.report import compare_page, page_assets, parse_events

UUID = "GPU-dca48b69-e8c0-c305-b8d9-17b2151aed28"
DRIVER = "580.159.04"
NAME = "nvplugin-proof-page"


def sample(t: float, temperature: int = 40, memory: int = 600, container: str | None = NAME,
           state: str = "healthy") -> dict[str, Any]:
    process = {"pid": 4242, "name": "vecadd", "memory_used_mib": 512, "since": 1.0,
               "container": None if container is None else
               {"id": "a" * 64, "name": container, "runtime": "docker"}}
    return {"t": t, "error": None,
            "health": [{"index": 0, "uuid": UUID, "state": state, "reason": None}],
            "gpus": [{"index": 0, "temperature_c": temperature, "memory_used_mib": memory,
                      "processes": [process]}]}


HELLO = {"inventory": {"driver": DRIVER, "gpus": [{"index": 0, "uuid": UUID}]}}
STATUS = {"Devices": [{"Index": 0, "Temperature": 41, "Memory": {"GlobalUsed": 610}}]}


def stream(*events: tuple[str, Any]) -> str:
    return "retry: 2000\n" + "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n"
                                     for name, data in events)


def test_events_are_parsed_in_order_and_a_cut_one_dropped():
    text = stream(("hello", HELLO), ("sample", sample(1.0)), ("panels", {"x": 1}))
    text += 'event: sample\ndata: {"t": 2'  # the capture ended mid-event
    assert [name for name, _ in parse_events(text)] == ["hello", "sample", "panels"]
    assert parse_events(text)[0][1] == HELLO


def test_page_assets_are_found():
    html = ('<link rel="stylesheet" href="page/assets/style.css">'
            '<script src="page/assets/app.js" defer></script><a href="gpu/status/json">')
    assert page_assets(html) == ["style.css", "app.js"]


def test_a_good_capture_has_no_problems():
    assert compare_page(HELLO, [sample(1.0), sample(2.0)], STATUS, [UUID], DRIVER, NAME) == []


@pytest.mark.parametrize(("change", "needle"), [
    (lambda h, s, st: h["inventory"]["gpus"][0].update(uuid="GPU-other"), "page GPUs"),
    (lambda h, s, st: h["inventory"].update(driver="570.1"), "page driver 570.1"),
    (lambda h, s, st: s.pop(), "expected 2+ samples"),
    (lambda h, s, st: s[1].update(t=0.5), "each later than the last"),
    (lambda h, s, st: s[1]["gpus"][0].update(temperature_c=80), "temperature_c: page 80"),
    (lambda h, s, st: st["Devices"][0]["Memory"].update(GlobalUsed=None), "memory_used_mib"),
    (lambda h, s, st: s[1].update(health=None), "health: None"),
    (lambda h, s, st: s[1]["health"][0].update(state="unhealthy"), "'unhealthy'"),
    (lambda h, s, st: [x["gpus"][0]["processes"][0].update(container=None) for x in s],
     f"no process of container {NAME}"),
    (lambda h, s, st: [x["gpus"][0]["processes"][0].update(memory_used_mib=0) for x in s],
     "show no GPU memory"),
])
def test_each_difference_is_named(change, needle):
    hello, samples, status = copy.deepcopy(HELLO), [sample(1.0), sample(2.0)], copy.deepcopy(STATUS)
    change(hello, samples, status)
    problems = compare_page(hello, samples, status, [UUID], DRIVER, NAME)
    assert any(needle in p for p in problems), problems
