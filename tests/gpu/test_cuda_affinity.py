"""The GPU proof's CUDA sizes and CPU affinity comparisons (pure parts), on the H200's figures."""

from __future__ import annotations

import pytest

from tests.gpu.report import (
    compare_affinity,
    compare_cuda_memory,
    expected_affinity,
    parse_cuda_props,
    vm_rss_kib,
)

# What cudaprops.cu prints on the H200: cudaDeviceGetPCIBusId, then bytes.
PROPS = "0000:00:06.0 65536 233472 62914560\n"
BUS = "00000000:00:06.0"


def info(memory: dict | None = None, affinity: int | None = 0) -> dict:
    return {"Devices": [{"PCI": {"BusID": BUS}, "CPUAffinity": affinity,
                         "Memory": memory or {"Constant": 64, "Shared": 228, "L2Cache": 61440}}]}


def test_cuda_runtime_bytes_are_1_0s_kib():
    assert parse_cuda_props("CUDA error: nope\n" + PROPS) == {
        "0000:00:06.0": (65536, 233472, 62914560)}
    lines, problems = compare_cuda_memory(info(), parse_cuda_props(PROPS))
    assert problems == []
    assert lines == ["GPU 0 (0000:00:06.0): CUDA runtime 65536 B, 233472 B, 62914560 B = 64, "
                     "228, 61440 KiB; ours Constant 64, Shared 228, L2Cache 61440 KiB"]


def test_na_or_a_wrong_size_or_a_missing_device_is_a_problem():
    _, problems = compare_cuda_memory(info({"Constant": None, "Shared": 228, "L2Cache": 6144}),
                                      parse_cuda_props(PROPS))
    assert problems == ["GPU 0 Constant: CUDA runtime 64 KiB, ours None",
                        "GPU 0 L2Cache: CUDA runtime 61440 KiB, ours 6144"]
    _, problems = compare_cuda_memory(info(), {})
    assert problems == ["GPU 0 (0000:00:06.0): the CUDA runtime lists no such device"]


@pytest.mark.parametrize(("numa_node", "nodes", "expected"), [
    ("-1", ["node0"], 0),  # the H200
    ("-1", ["node0", "node1"], None),
    ("1", ["node0", "node1"], 1),
    (None, ["node0"], None),
    ("garbage", ["node0"], None),
])
def test_expected_affinity(numa_node, nodes, expected):
    assert expected_affinity(numa_node, nodes) == expected


def test_the_h200_is_node0_and_says_why():
    lines, problems = compare_affinity(info(), {"0000:00:06.0": "-1"},
                                       {"0000:00:06.0": "0-15"}, {"node0": "0-15"})
    assert problems == []
    assert lines == ["GPU 0 (0000:00:06.0): numa_node '-1', local_cpulist '0-15'; system nodes: "
                     "node0 (CPUs 0-15); expected 0 (the only node: every CPU is its); ours 0"]
    _, problems = compare_affinity(info(affinity=None), {"0000:00:06.0": "-1"},
                                   {"0000:00:06.0": "0-15"}, {"node0": "0-15"})
    assert problems == ["GPU 0 CPUAffinity: sysfs says 0, ours None"]


def test_the_one_node_rule_is_checked_against_the_cpus():
    _, problems = compare_affinity(info(), {"0000:00:06.0": "-1"}, {"0000:00:06.0": "0-7"},
                                   {"node0": "0-15"})
    assert problems == ["GPU 0: local_cpulist 0-7 is not node0's 0-15: the one-node rule does "
                        "not hold here"]


def test_two_nodes_and_minus_one_must_be_na():
    lines, problems = compare_affinity(info(affinity=None), {"0000:00:06.0": "-1"},
                                       {"0000:00:06.0": "0-31"},
                                       {"node0": "0-15", "node1": "16-31"})
    assert problems == [] and "unknown: several nodes" in lines[0]


def test_vm_rss():
    assert vm_rss_kib("Name:\tpython3\nVmRSS:\t   41236 kB\nVmData: 1 kB\n") == 41236
    assert vm_rss_kib("Name: x\n") is None
