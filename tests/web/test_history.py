"""The per-GPU ring: fixed memory whatever the uptime, oldest first, gaps where nobody watched."""

from __future__ import annotations

import dataclasses

from nvplugin.gpu.readings import GpuStatus
from nvplugin.web.history import LENGTH, SERIES, History, Ring, row_of


def status(index: int, t: float, temperature: int | None = 40) -> GpuStatus:
    return GpuStatus(index=index, power_w=100, temperature_c=temperature, utilization_gpu=7,
                     utilization_memory=3, utilization_encoder=None, utilization_decoder=None,
                     memory_used_mib=1024, ecc_l1=0, ecc_l2=0, ecc_global=0,
                     clock_cores_mhz=1980, clock_memory_mhz=3201, bar1_used_mib=3,
                     pcie_rx_mbs=2, pcie_tx_mbs=1, sampled_at=t)


def test_memory_is_fixed_whatever_the_uptime():
    ring = Ring()
    empty = ring.nbytes
    assert empty == len(SERIES) * LENGTH * 8 == 72_000  # the figure docs/page.md states
    for t in range(3 * LENGTH + 17):
        ring.append(row_of(status(0, float(t))))
    assert ring.nbytes == empty and ring.count == LENGTH
    times = ring.series()["t"]
    assert times == [float(t) for t in range(2 * LENGTH + 17, 3 * LENGTH + 17)]


def test_series_keep_order_before_the_ring_wraps_and_missing_readings_are_null():
    ring = Ring(length=5)
    ring.append(row_of(status(0, 1.0, temperature=None)))
    ring.append(row_of(status(0, 2.0, temperature=41)))
    series = ring.series()
    assert series["t"] == [1.0, 2.0]
    assert series["temperature_c"] == [None, 41.0]
    assert set(series) == set(SERIES)


def test_a_pause_in_watching_leaves_a_gap():
    history = History(length=10, interval=1.0)
    history.record([status(0, 100.0), status(1, 100.0)])
    history.record([status(0, 101.0), status(1, 101.0)])
    history.record([status(0, 160.0)])  # nobody watched for a minute
    gpu0 = history.snapshot()["0"]
    assert gpu0["t"] == [100.0, 101.0, 102.0, 160.0]
    assert gpu0["temperature_c"] == [40.0, 40.0, None, 40.0]


def test_gpus_the_host_lost_are_forgotten():
    history = History(length=10)
    history.record([status(0, 1.0), status(1, 1.0), status(2, 1.0)])
    history.keep_only([0, 2])
    assert list(history.snapshot()) == ["0", "2"]
    assert history.nbytes == 2 * Ring(10).nbytes


def test_row_follows_the_series_names():
    st = dataclasses.replace(status(3, 5.0), pcie_rx_mbs=None)
    row = dict(zip(SERIES, row_of(st), strict=True))
    assert row == {"t": 5.0, "util_gpu": 7, "util_memory": 3, "memory_used_mib": 1024,
                   "power_w": 100, "temperature_c": 40, "clock_sm_mhz": 1980,
                   "clock_mem_mhz": 3201, "pcie_rx_mbs": None, "pcie_tx_mbs": 1}
