"""Idle I/O priority of one thread (core/ioprio.py), read back from the kernel."""

from __future__ import annotations

import threading

import pytest

from nvplugin.core import ioprio
from tests.requirements import need


@pytest.fixture(autouse=True)
def _kernel_has_ioprio() -> None:
    need(ioprio.get() is not None, "ioprio_get/ioprio_set (Linux on a known machine)")


def in_thread(work) -> object:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(work()))
    thread.start()
    thread.join()
    return out[0]


def test_running_lowers_only_the_calling_thread_and_restores_it():
    def work() -> tuple[int | None, int | None, int | None]:
        before = ioprio.get()
        idle = ioprio.IdleIo()
        with idle.running():
            during = ioprio.get()
            assert idle.idle
        return before, during, ioprio.get()

    before, during, after = in_thread(work)
    assert during == ioprio.IDLE and after == before != ioprio.IDLE
    assert ioprio.get() != ioprio.IDLE  # this thread was never touched


def test_hurry_from_another_thread_raises_it_at_once():
    idle = ioprio.IdleIo()
    lowered, hurried = threading.Event(), threading.Event()
    seen: list[int | None] = []

    def work() -> None:
        with idle.running():
            seen.append(ioprio.get())
            lowered.set()
            assert hurried.wait(10)
            seen.append(ioprio.get())

    thread = threading.Thread(target=work)
    thread.start()
    assert lowered.wait(10)
    idle.hurry()
    hurried.set()
    thread.join()
    assert seen[0] == ioprio.IDLE and seen[1] != ioprio.IDLE and idle.hurried


def test_work_hurried_before_it_runs_is_never_idle():
    idle = ioprio.IdleIo()
    idle.hurry()

    def work() -> int | None:
        with idle.running():
            return ioprio.get()

    assert in_thread(work) != ioprio.IDLE
