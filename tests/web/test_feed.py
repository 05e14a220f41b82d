"""The page's one sampler: one status read per tick for any number of pages, sampling only while
someone watches, a stalled page dropped, and the panels (volumes, doctor) read off the loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from nvplugin.volumes.store import VolumeStore
from nvplugin.web.feed import CLIENT_QUEUE, Client, LiveFeed, TooManyPages
from tests.web.conftest import DRIVER, Finding

MakeFeed = Callable[..., Awaitable[LiveFeed]]


def decode(message: bytes) -> tuple[str, dict[str, Any]]:
    head, data = message.decode().rstrip("\n").split("\n")
    return head.removeprefix("event: "), json.loads(data.removeprefix("data: "))


async def next_sample(client: Client) -> dict[str, Any]:
    while True:
        message = await asyncio.wait_for(client.queue.get(), 10)
        assert message is not None, "the stream ended"
        name, data = decode(message)
        if name == "sample":
            return data


class Clock:
    """Monotonic time that moves only when the sampler sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 1.0)
        await asyncio.sleep(0)


async def test_one_status_read_per_tick_whatever_the_number_of_pages(make_feed: MakeFeed,
                                                                     monkeypatch):
    feed = await make_feed(2, interval=0.01)
    reads = 0
    real_status = feed._gpus.status

    async def counted() -> Any:
        nonlocal reads
        reads += 1
        return await real_status()

    monkeypatch.setattr(feed._gpus, "status", counted)
    clients = [feed.subscribe() for _ in range(40)]
    while feed.ticks < 10:
        await asyncio.sleep(0.01)
    feed._closed = True  # the sampler stops after this tick; the queues keep what they got
    while feed.sampling:
        await asyncio.sleep(0.01)
    assert reads == feed.ticks  # not 40 x ticks
    streams = [[client.queue.get_nowait() for _ in range(client.queue.qsize())]
               for client in clients]
    # Every page got the very same bytes, samples carrying both GPUs.
    assert all(stream == streams[0] for stream in streams)
    samples = [data for name, data in map(decode, streams[0]) if name == "sample"]
    assert samples and all([g["index"] for g in s["gpus"]] == [0, 1] for s in samples)


async def test_samples_only_while_someone_watches(make_feed: MakeFeed):
    clock = Clock()
    feed = await make_feed(1, clock=clock, sleep=clock.sleep, watch_window=60.0)
    assert not feed.sampling and feed.ticks == 0  # nobody asked yet: no task at all
    feed.touch()
    while feed.sampling:
        await asyncio.sleep(0)
    assert feed.ticks == 60  # one a second for the minute after the last look
    assert len(feed.history.snapshot()["0"]["t"]) == 60

    client = feed.subscribe()  # an open page keeps it going past the window
    while feed.ticks < 200:
        assert await client.queue.get() is not None
    assert feed.sampling
    feed.unsubscribe(client)
    clock.now += 61
    while feed.sampling:
        await asyncio.sleep(0)
    assert not feed.watched


async def test_a_stalled_page_is_dropped_and_the_others_keep_going(make_feed: MakeFeed):
    feed = await make_feed(1, interval=0.001)
    stalled, reading = feed.subscribe(), feed.subscribe()
    received = 0
    while received < 3 * CLIENT_QUEUE:
        message = await reading.queue.get()
        assert message is not None
        received += 1
    assert feed.clients == 1
    assert stalled.queue.get_nowait() is None  # its stream ends; its EventSource reconnects


async def test_too_many_pages_is_a_clear_refusal(make_feed: MakeFeed):
    feed = await make_feed(1, max_clients=2)
    feed.subscribe(), feed.subscribe()
    with pytest.raises(TooManyPages, match=r"too many open GPU pages \(2\)"):
        feed.subscribe()


async def test_hello_carries_cards_history_and_panels(make_feed: MakeFeed):
    feed = await make_feed(2)
    hello = await feed.hello()
    assert hello["available"] and hello["inventory"]["driver"] == DRIVER
    assert [g["uuid"] for g in hello["inventory"]["gpus"]] == [
        "GPU-00000000-67d9-9e02-1f7a-53d331412b6f", "GPU-00000001-67d9-9e02-1f7a-53d331412b6f"]
    assert hello["series"][0] == "t" and set(hello["history"]) == {"0", "1"}
    assert hello["sample"]["gpus"][1]["temperature_c"] == 31
    assert hello["volumes"]["volumes"] == [{
        "name": f"nvidia_driver_{DRIVER}", "version": DRIVER, "built": False, "current": True,
        "mounts": 0, "created": None, "files": None, "bytes": None}]
    assert hello["cdi"] is None and hello["attribution"] is False  # neither handed in here
    json.dumps(hello, allow_nan=False)  # what the stream sends must be strict JSON


async def test_without_nvml_the_page_says_why(make_feed: MakeFeed, fake_nvml):
    fake_nvml.write(fake_nvml.make_config(1, init_error="DRIVER_NOT_LOADED"))
    feed = await make_feed(0)
    fake_nvml.write(fake_nvml.make_config(1, init_error="DRIVER_NOT_LOADED"))
    await feed._gpus.refresh()
    hello = await feed.hello()
    assert not hello["available"] and "kernel module is not loaded" in hello["reason"]
    assert hello["sample"]["gpus"] == [] and "kernel module" in hello["sample"]["error"]


async def test_volumes_panel_reports_builds_sizes_and_mounts(make_feed: MakeFeed,
                                                             store: VolumeStore):
    feed = await make_feed(1)
    built = store.kind_dir / DRIVER
    (built / "lib64").mkdir(parents=True)
    (built / "lib64/libcuda.so.1").write_bytes(b"x" * 1000)
    (built / "lib64/libcuda.so").symlink_to("libcuda.so.1")
    (store.kind_dir / "470.1").mkdir()
    store.mounts.add(f"nvidia_driver_{DRIVER}", "mount-1")
    panel = await feed.panels.volumes()
    rows = {row["version"]: row for row in panel["volumes"]}
    assert rows[DRIVER]["built"] and rows[DRIVER]["current"] and rows[DRIVER]["mounts"] == 1
    assert (rows[DRIVER]["files"], rows[DRIVER]["bytes"]) == (1, 1000)  # links not counted
    assert rows["470.1"]["built"] and not rows["470.1"]["current"]


async def test_doctor_runs_off_the_loop_once_per_period(make_feed: MakeFeed):
    runs = 0
    release = asyncio.Event()

    async def findings() -> list[Finding]:
        nonlocal runs
        runs += 1
        await release.wait()
        return [Finding("nvml", "PASS", "NVML loaded"),
                Finding("docker", "FAIL", "no engine", "start Docker")]

    clock = Clock()
    feed = await make_feed(1, doctor=findings, clock=clock)
    feed.panels._clock = clock
    first = feed.panels.doctor()
    assert first["state"] == "running" and first["checks"] is None  # the page says "Checking…"
    assert feed.panels.doctor()["state"] == "running" and runs <= 1
    release.set()
    while feed.panels.doctor()["state"] == "running":
        await asyncio.sleep(0)
    done = feed.panels.doctor()
    assert runs == 1 and done["checks"][1] == {"check": "docker", "status": "FAIL",
                                               "detail": "no engine", "fix": "start Docker"}
    clock.now += 61
    assert feed.panels.doctor()["state"] == "running" and done["checked_at"] is not None


async def test_closing_ends_every_stream(make_feed: MakeFeed, tmp_path: Path):
    feed = await make_feed(1)
    clients = [feed.subscribe() for _ in range(3)]
    await feed.close()
    assert [c.queue.get_nowait() for c in clients] == [None, None, None]
    assert not feed.sampling and feed.clients == 0


CONTAINER_ID = "c0ffee" + "0" * 58


@pytest.fixture
def fake_proc(tmp_path: Path) -> Path:
    """A host root whose /proc shows PID 4242 in a Docker container, started 123.45 s after
    boot (field 22 is 12345 ticks; the name holds a space and parentheses)."""
    root = tmp_path / "hostroot"
    (root / "proc/4242").mkdir(parents=True)
    (root / "proc/4242/cgroup").write_text(f"0::/system.slice/docker-{CONTAINER_ID}.scope\n")
    (root / "proc/4242/stat").write_text(
        "4242 (vec add (x)) S 1 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0\n")
    (root / "proc/stat").write_text("cpu  1 2 3\nbtime 1700000000\n")
    return root


async def test_health_containers_and_since_come_from_observe(
        start_service, store: VolumeStore, fake_nvml, fake_proc: Path):
    from nvplugin.observe.service import ObserveService
    from nvplugin.web.panels import Panels

    config = fake_nvml.make_config(2, process_names={"4242": "vecadd"})
    config["gpus"][0]["processes"] = [{"pid": 4242, "used_memory": 512 << 20}]
    fake_nvml.write(config)
    service = await start_service()
    observe = ObserveService(service, host_root=fake_proc, ignore_xids=(), recovery_s=300,
                             list_containers=lambda: [{"Id": CONTAINER_ID,
                                                       "Names": ["/trainer"]}])
    await observe.start()
    feed = LiveFeed(service, Panels(store, lambda: DRIVER, None), observe, host_root=fake_proc,
                    interval=0.01)
    client = feed.subscribe()
    try:
        data = await next_sample(client)
        while data["gpus"][0]["processes"][0]["container"]["name"] is None:  # named off-path
            data = await next_sample(client)
        process = data["gpus"][0]["processes"][0]
        assert process == {"pid": 4242, "name": "vecadd", "memory_used_mib": 512,
                           "since": 1700000000 + 12345 / 100,
                           "container": {"id": CONTAINER_ID, "name": "trainer",
                                         "runtime": "docker"}}
        assert [h["state"] for h in data["health"]] == ["healthy", "healthy"]

        fake_nvml.inject_event(1, "xid", 79)  # fell off the bus: critical
        while data["health"][1]["state"] == "healthy":
            data = await next_sample(client)
        assert "79" in data["health"][1]["reason"] and data["health"][1]["last_xid"] == 79
        assert (await feed.hello())["attribution"] is True
    finally:
        await feed.close()
        await observe.close()


async def test_a_page_opened_after_a_pause_gets_fresh_readings(make_feed: MakeFeed, fake_nvml):
    clock = Clock()
    feed = await make_feed(1, clock=clock, sleep=clock.sleep)
    feed.touch()
    while feed.sampling:
        await asyncio.sleep(0)
    kept = feed.ticks
    fake_nvml.update(lambda c: c["gpus"][0].update(temperature=55))
    clock.now += 3600  # nobody watched for an hour
    hello = await feed.hello()
    assert hello["sample"]["gpus"][0]["temperature_c"] == 55  # not what was kept an hour ago
    assert feed.ticks == kept
