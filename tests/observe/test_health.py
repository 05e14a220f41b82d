"""The health state machine with a hand-driven clock: what makes a GPU unhealthy, what does
not, and how it recovers."""

from __future__ import annotations

import pytest

from nvplugin.gpu.readings import EVENT_DOUBLE_BIT_ECC, EVENT_LOST, EVENT_XID, GpuEvent
from nvplugin.observe.health import HealthTracker

A, B = "GPU-aaaa", "GPU-bbbb"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tracker(clock: Clock) -> HealthTracker:
    t = HealthTracker(ignore_xids={13, 31, 43, 45, 68, 109}, recovery_s=300, clock=clock,
                      wall=lambda: clock.now + 1.7e9)
    t.track([(0, A), (1, B)])
    return t


def xid(n: int, uuid: str = A) -> GpuEvent:
    return GpuEvent(index=0 if uuid == A else 1, uuid=uuid, kind=EVENT_XID, data=n)


def test_gpus_start_healthy(tracker, clock):
    assert [(h.index, h.uuid, h.healthy, h.reason) for h in tracker.states()] == [
        (0, A, True, None), (1, B, True, None)]
    assert tracker.states()[0].since == clock.now + 1.7e9


def test_a_critical_xid_makes_the_gpu_unhealthy_and_says_why(tracker):
    change = tracker.on_event(xid(79))
    assert change is not None and not change.healthy
    assert change.reason == "Xid 79: GPU has fallen off the bus"
    assert not tracker.healthy(A) and tracker.healthy(B)
    assert tracker.get(A).last_xid == 79 and tracker.get(A).status == "unhealthy"
    assert tracker.unhealthy() == [(0, A)]


@pytest.mark.parametrize("n", [13, 31, 43, 45, 68, 109])
def test_application_xids_are_ignored_but_remembered(tracker, n):
    assert tracker.on_event(xid(n)) is None
    assert tracker.healthy(A) and tracker.get(A).last_xid == n


def test_the_ignore_list_is_configurable(clock):
    t = HealthTracker(ignore_xids=(), recovery_s=1, clock=clock)
    t.track([(0, A)])
    assert t.on_event(xid(13)) is not None


@pytest.mark.parametrize(("kind", "reason"), [
    (EVENT_DOUBLE_BIT_ECC, "double-bit ECC error"),
    (EVENT_LOST, "GPU is lost: NVML no longer reaches it"),
])
def test_ecc_and_lost_gpus_are_unhealthy(tracker, kind, reason):
    change = tracker.on_event(GpuEvent(index=0, uuid=A, kind=kind))
    assert change is not None and change.reason == reason


def test_a_failed_read_is_bad_news_too(tracker):
    change = tracker.on_read(A, "NVML: GPU is lost")
    assert change is not None and change.reason == "NVML: GPU is lost"


def test_it_recovers_after_the_recovery_time_of_fine_reads(tracker, clock):
    tracker.on_event(xid(48))
    since = tracker.get(A).since
    clock.now += 299
    assert tracker.on_read(A, None) is None  # not yet
    clock.now += 1
    change = tracker.on_read(A, None)
    assert change is not None and change.healthy
    assert "300 s" in change.reason
    assert tracker.healthy(A) and tracker.get(A).reason is None
    assert tracker.get(A).since > since


def test_new_bad_news_restarts_the_recovery_clock_and_keeps_since(tracker, clock):
    tracker.on_event(xid(48))
    since = tracker.get(A).since
    clock.now += 200
    assert tracker.on_event(xid(94)) is None  # already unhealthy: no new transition
    assert tracker.get(A).reason == "Xid 94: contained ECC error"
    assert tracker.get(A).since == since
    clock.now += 200
    assert tracker.on_read(A, None) is None  # 200 s since the last critical event
    clock.now += 100
    assert tracker.on_read(A, None) is not None


def test_a_failing_read_restarts_the_recovery_clock(tracker, clock):
    tracker.on_event(xid(79))
    clock.now += 250
    tracker.on_read(A, "NVML: GPU is lost")
    clock.now += 250
    assert tracker.on_read(A, None) is None
    clock.now += 50
    assert tracker.on_read(A, None) is not None


def test_tracking_follows_the_gpus_nvml_shows(tracker):
    tracker.on_event(xid(79))
    tracker.track([(0, B), (1, A)])  # a reload swapped indices: health stays with the UUID
    assert not tracker.healthy(A) and tracker.get(A).index == 1
    tracker.track([(0, B)])
    assert tracker.get(A) is None and tracker.healthy(A)  # unknown is not condemned
    assert tracker.on_event(xid(79)) is None  # an event for a GPU no longer tracked
