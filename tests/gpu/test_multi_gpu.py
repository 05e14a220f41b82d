"""The multi-GPU steps' pure parts: nvidia-smi topo, /proc minors, isolation, placement, SKIP."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from tests.gpu import proof
from tests.gpu.report import (
    ComputeApp,
    Report,
    compare_identity,
    compare_placement,
    compare_topology,
    compare_visible,
    count_gpus,
    format_summary,
    nvlink_count,
    parse_compute_apps,
    parse_smi_csv,
    parse_topo_matrix,
    proc_bus_dir,
    proc_device_minor,
    short_bus,
    skip_reason,
    smi_list_uuids,
    topo_matrix_text,
    vecadd_devices,
)

LEGEND = """
Legend:

  X    = Self
  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)
  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node
  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)
  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)
  PIX  = Connection traversing at most a single PCIe bridge
  NV#  = Connection traversing a bonded set of # NVLinks
"""  # noqa: E501 - nvidia-smi's own lines

# Two H200s of an NVSwitch board: every GPU pair shows NV18; a NIC column and row to ignore.
# nvidia-smi underlines the header with ANSI escapes, also when its output is a pipe.
TOPO_NV = ("\x1b[4m\tGPU0\tGPU1\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
           "GPU0\t X \tNV18\tPXB\t0-47,96-143\t0\t\tN/A\n"
           "GPU1\tNV18\t X \tSYS\t48-95,144-191\t1\t\tN/A\n"
           "NIC0\tPXB\tSYS\t X \t\t\t\t\n" + LEGEND + "\nNIC Legend:\n\n  NIC0: mlx5_0\n")
# The same box, PCIe only (`topo -mp`), and its P2P read status (`topo -p2p r`).
TOPO_NV_PCI = ("\tGPU0\tGPU1\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\n"
               "GPU0\t X \tSYS\tPXB\t0-47,96-143\t0\t\tN/A\n"
               "GPU1\tSYS\t X \tSYS\t48-95,144-191\t1\t\tN/A\n"
               "NIC0\tPXB\tSYS\t X \t\t\t\t\n" + LEGEND)
P2P_OK = (" \tGPU0\tGPU1\t\n GPU0\tX\tOK\t\n GPU1\tOK\tX\t\n\nLegend:\n\n  X    = Self\n"
          "  OK   = Status Ok\n  CNS  = Chipset not supported\n  NS   = Not supported\n")
BUS_NV = ["00000000:19:00.0", "00000000:3B:00.0"]
INFO_NV = {"Devices": [
    {"Topology": [{"BusID": "00000000:3B:00.0", "Link": 1, "NVLinks": 18}]},
    {"Topology": [{"BusID": "00000000:19:00.0", "Link": 1, "NVLinks": 18}]},
]}

# Four PCIe GPUs: two behind one switch (PIX), a third behind another (PXB), a fourth on the
# other socket (SYS); two NICs whose columns sit between the GPUs' and the affinities.
TOPO_PCIE = (
    "\tGPU0\tGPU1\tGPU2\tGPU3\tNIC0\tNIC1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\n"
    "GPU0\t X \tPIX\tPXB\tSYS\tPIX\tSYS\t0-15,32-47\t0\t\tN/A\n"
    "GPU1\tPIX\t X \tPXB\tSYS\tPIX\tSYS\t0-15,32-47\t0\t\tN/A\n"
    "GPU2\tPXB\tPXB\t X \tSYS\tPXB\tSYS\t0-15,32-47\t0\t\tN/A\n"
    "GPU3\tSYS\tSYS\tSYS\t X \tSYS\tPIX\t16-31,48-63\t1\t\tN/A\n"
    "NIC0\tPIX\tPIX\tPXB\tSYS\t X \tSYS\t\t\t\t\n"
    "NIC1\tSYS\tSYS\tSYS\tPIX\tSYS\t X \t\t\t\t\n" + LEGEND
    + "\nNIC Legend:\n\n  NIC0: mlx5_0\n  NIC1: mlx5_1\n")
BUS_PCIE = ["00000000:1A:00.0", "00000000:1B:00.0", "00000000:3D:00.0", "00000000:88:00.0"]
CODES_PCIE = [[None, 5, 4, 1], [5, None, 4, 1], [4, 4, None, 1], [1, 1, 1, None]]


def pcie_info(nvlinks: int | None = None) -> dict:
    return {"Devices": [
        {"Topology": [{"BusID": BUS_PCIE[j].lower(), "Link": CODES_PCIE[i][j], "NVLinks": nvlinks}
                      for j in range(4) if j != i]}
        for i in range(4)]}


def test_nvlink_box_matrix_without_nic_or_ansi():
    assert parse_topo_matrix(TOPO_NV) == {0: {0: "X", 1: "NV18"}, 1: {0: "NV18", 1: "X"}}


def test_pcie_box_matrix_ignores_nic_rows_columns_and_legends():
    matrix = parse_topo_matrix(TOPO_PCIE)
    assert sorted(matrix) == [0, 1, 2, 3]
    assert matrix[0] == {0: "X", 1: "PIX", 2: "PXB", 3: "SYS"}
    assert matrix[3] == {0: "SYS", 1: "SYS", 2: "SYS", 3: "X"}


def test_matrix_text_for_the_report_drops_escapes_and_legends():
    shown = topo_matrix_text(TOPO_NV)
    assert shown.splitlines()[0] == "\tGPU0\tGPU1\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID"
    assert shown.splitlines()[-1].startswith("NIC0\tPXB") and "Legend" not in shown


def test_p2p_status_matrix_with_leading_spaces():
    assert parse_topo_matrix(P2P_OK) == {0: {0: "X", 1: "OK"}, 1: {0: "OK", 1: "X"}}


def test_space_separated_matrix_is_read_too():
    text = ("        GPU0    GPU1    CPU Affinity\n"
            "GPU0     X      PHB     0-7\nGPU1    PHB      X      0-7\n")
    assert parse_topo_matrix(text) == {0: {0: "X", 1: "PHB"}, 1: {0: "PHB", 1: "X"}}


def test_nvlink_count():
    assert [nvlink_count(c) for c in ("NV18", " NV4 ", "SYS", "X", "NVX")] == [18, 4, None,
                                                                              None, None]


def test_nvlink_box_agrees_and_shows_the_pcie_path_under_nvlink():
    lines, problems = compare_topology(INFO_NV, BUS_NV, parse_topo_matrix(TOPO_NV),
                                       parse_topo_matrix(TOPO_NV_PCI), parse_topo_matrix(P2P_OK))
    assert problems == []
    assert lines[0] == ("GPU0 -> GPU1: nvidia-smi NV18 (PCIe SYS), P2P read OK; "
                        "ours Link 1, NVLinks 18")
    assert len(lines) == 2


def test_nvlink_box_without_pcie_matrix_checks_nvlinks_only():
    info = copy.deepcopy(INFO_NV)
    info["Devices"][0]["Topology"][0]["Link"] = 3  # unverifiable without -mp
    assert compare_topology(info, BUS_NV, parse_topo_matrix(TOPO_NV))[1] == []


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("NVLinks", 12, "GPU0 -> GPU1: nvidia-smi NV18, our NVLinks 12"),
    ("NVLinks", None, "GPU0 -> GPU1: nvidia-smi NV18, our NVLinks None"),
    ("Link", 3, "GPU0 -> GPU1: nvidia-smi SYS is Link 1, ours 3"),
])
def test_nvlink_box_differences_are_named(key, value, problem):
    info = copy.deepcopy(INFO_NV)
    info["Devices"][0]["Topology"][0][key] = value
    _, problems = compare_topology(info, BUS_NV, parse_topo_matrix(TOPO_NV),
                                   parse_topo_matrix(TOPO_NV_PCI))
    assert problems == [problem]


@pytest.mark.parametrize("nvlinks", [None, 0])
def test_pcie_box_agrees_with_null_or_zero_nvlinks(nvlinks):
    lines, problems = compare_topology(pcie_info(nvlinks), BUS_PCIE, parse_topo_matrix(TOPO_PCIE))
    assert problems == [] and len(lines) == 12
    assert f"GPU2 -> GPU0: nvidia-smi PXB; ours Link 4, NVLinks {nvlinks}" in lines


def test_pcie_box_wrong_code_and_phantom_nvlinks_are_named():
    info = pcie_info()
    info["Devices"][0]["Topology"][0]["Link"] = 4  # PIX is 5
    info["Devices"][3]["Topology"][2]["NVLinks"] = 2
    _, problems = compare_topology(info, BUS_PCIE, parse_topo_matrix(TOPO_PCIE))
    assert problems == ["GPU0 -> GPU1: nvidia-smi PIX is Link 5, ours 4",
                        "GPU3 -> GPU2: nvidia-smi SYS (no NVLink), our NVLinks 2"]


@pytest.mark.parametrize(("cell", "code"), [("SYS", 1), ("SOC", 1), ("NODE", 2), ("PHB", 3),
                                            ("PXB", 4), ("PIX", 5)])
def test_each_pcie_relation_maps_to_its_1_0_code(cell, code):
    text = f"\tGPU0\tGPU1\nGPU0\t X \t{cell}\nGPU1\t{cell}\t X \n"
    info = {"Devices": [{"Topology": [{"BusID": BUS_NV[1], "Link": code, "NVLinks": None}]},
                        {"Topology": [{"BusID": BUS_NV[0], "Link": code, "NVLinks": None}]}]}
    assert compare_topology(info, BUS_NV, parse_topo_matrix(text))[1] == []
    info["Devices"][1]["Topology"][0]["Link"] = 6
    assert compare_topology(info, BUS_NV, parse_topo_matrix(text))[1] == [
        f"GPU1 -> GPU0: nvidia-smi {cell} is Link {code}, ours 6"]


def test_unknown_relation_is_a_problem():
    text = "\tGPU0\tGPU1\nGPU0\t X \tC2C\nGPU1\tC2C\t X \n"
    info = {"Devices": [{"Topology": [{"BusID": BUS_NV[1], "Link": 0, "NVLinks": None}]},
                        {"Topology": [{"BusID": BUS_NV[0], "Link": 0, "NVLinks": None}]}]}
    problems = compare_topology(info, BUS_NV, parse_topo_matrix(text))[1]
    assert problems[0] == "GPU0 -> GPU1: nvidia-smi relation 'C2C' has no 1.0 link code"


def test_absent_peer_is_right_only_where_p2p_cannot_read():
    info = {"Devices": [{"Topology": None}, {"Topology": None}]}
    matrix = parse_topo_matrix(TOPO_NV)
    _, problems = compare_topology(info, BUS_NV, matrix, p2p=parse_topo_matrix(P2P_OK))
    assert problems == ["GPU0 -> GPU1: nvidia-smi NV18, P2P read OK; absent from our Topology",
                        "GPU1 -> GPU0: nvidia-smi NV18, P2P read OK; absent from our Topology"]
    cns = parse_topo_matrix(P2P_OK.replace("OK\t\n", "CNS\t\n").replace("\tOK\tX", "\tCNS\tX"))
    lines, problems = compare_topology(info, BUS_NV, matrix, p2p=cns)
    assert problems == [] and "absent from ours, as 1.0 for a peer P2P cannot read" in lines[0]
    _, problems = compare_topology(INFO_NV, BUS_NV, matrix, p2p=cns)
    assert "GPU0 -> GPU1: listed by us, but nvidia-smi P2P read is CNS" in problems


def test_peer_unknown_to_nvidia_smi_and_row_count_are_named():
    info = copy.deepcopy(INFO_NV)
    info["Devices"][0]["Topology"].append({"BusID": "00000000:99:00.0", "Link": 1})
    _, problems = compare_topology(info, BUS_NV, parse_topo_matrix(TOPO_NV))
    assert problems == ["GPU0: our Topology has 00000000:99:00.0, which nvidia-smi topo -m "
                        "does not show"]
    _, problems = compare_topology(INFO_NV, [*BUS_NV, "00000000:5D:00.0"],
                                   parse_topo_matrix(TOPO_NV))
    assert problems == ["topo -m rows GPU[0, 1], nvidia-smi lists 3"]


INFORMATION = """Model: \t\t NVIDIA H200
IRQ:   \t\t 164
GPU UUID: \t GPU-4cb890f6-d409-0aa2-a4f8-69c28aca8cfa
Video BIOS: \t 96.00.af.00.01
Bus Type: \t PCIe
DMA Size: \t 52 bits
DMA Mask: \t 0xfffffffffffff
Bus Location: \t 0000:3b:00.0
Device Minor: \t 5
GPU Excluded:\t No
"""
IDS = """index, uuid, pci.bus_id
0, GPU-4cb890f6-d409-0aa2-a4f8-69c28aca8cfa, 00000000:19:00.0
1, GPU-9a1b2c3d-0000-1111-2222-333344445555, 00000000:3B:00.0
"""
INFO_IDS = {"Devices": [
    {"Index": 0, "UUID": "GPU-4cb890f6-d409-0aa2-a4f8-69c28aca8cfa", "Minor": 0,
     "Path": "/dev/nvidia0", "PCI": {"BusID": "00000000:19:00.0"}},
    {"Index": 1, "UUID": "GPU-9a1b2c3d-0000-1111-2222-333344445555", "Minor": 5,
     "Path": "/dev/nvidia5", "PCI": {"BusID": "00000000:3b:00.0"}},
]}


def test_proc_information_minor_and_directory():
    assert proc_device_minor(INFORMATION) == 5
    assert proc_device_minor("Model: x\n") is None
    assert proc_bus_dir("00000000:3B:00.0") == "0000:3b:00.0"
    assert proc_bus_dir("00000001:3B:00.0") == "0001:3b:00.0"


def test_identity_agrees_and_names_each_difference():
    rows = parse_smi_csv(IDS)
    lines, problems = compare_identity(rows, [0, 5], INFO_IDS)
    assert problems == [] and len(lines) == 2
    assert lines[1].endswith("minor 5; ours Index 1 GPU-9a1b2c3d-0000-1111-2222-333344445555 "
                             "00000000:3b:00.0 Minor 5 /dev/nvidia5")
    swapped = {"Devices": INFO_IDS["Devices"][::-1]}
    _, problems = compare_identity(rows, [0, 5], swapped)
    assert any(p.startswith("GPU 0 uuid:") for p in problems)
    assert any(p.startswith("GPU 0 Index:") for p in problems)
    _, problems = compare_identity(rows, [0, None], INFO_IDS)
    assert problems[0] == "GPU 1: no 'Device Minor:' in /proc/driver/nvidia/gpus"
    _, problems = compare_identity(rows[:1], [0], INFO_IDS)
    assert problems == ["GPU count: nvidia-smi 1, ours 2"]


SMI_L = """GPU 0: NVIDIA H200 (UUID: GPU-9a1b2c3d-0000-1111-2222-333344445555)
"""
SMI_L_MIG = """GPU 0: NVIDIA H200 (UUID: GPU-4cb890f6-d409-0aa2-a4f8-69c28aca8cfa)
  MIG 1g.18gb     Device  0: (UUID: MIG-11111111-2222-3333-4444-555555555555)
GPU 1: NVIDIA H200 (UUID: GPU-9a1b2c3d-0000-1111-2222-333344445555)
"""
VECADD_ONE = """CUDA driver API: 13.0
Devices: 1
Device 0: NVIDIA H200 (3b:00.0)
Vector add of 16777216 elements: PASS
"""
VECADD_TWO = """CUDA driver API: 13.0
Devices: 2
Device 0: NVIDIA H200 (3b:00.0)
Device 1: NVIDIA H200 (19:00.0)
Vector add of 16777216 elements: PASS
"""
U0, U1 = (row["uuid"] for row in parse_smi_csv(IDS))


def test_nvidia_smi_l_uuids_leave_mig_lines_out():
    assert smi_list_uuids(SMI_L_MIG) == [U0, U1]


def test_vecadd_devices_and_short_bus():
    assert vecadd_devices(VECADD_TWO) == (2, ["3b:00.0", "19:00.0"])
    assert vecadd_devices("CUDA error: no CUDA-capable device is detected\n") == (None, [])
    assert short_bus("00000000:3B:00.0") == "3b:00.0"
    assert short_bus("00000000:00:06.0") == "00:06.0"  # the one-GPU host's vecadd said 00:06.0


def test_visible_gpus_agree_in_any_cuda_order():
    assert compare_visible(SMI_L, VECADD_ONE, [U1], ["00000000:3B:00.0"]) == []
    assert compare_visible(SMI_L_MIG, VECADD_TWO, [U0, U1],
                           ["00000000:19:00.0", "00000000:3B:00.0"]) == []


def test_a_gpu_too_many_or_the_wrong_one_is_named():
    problems = compare_visible(SMI_L_MIG, VECADD_TWO, [U1], ["00000000:3B:00.0"])
    assert problems == [f"nvidia-smi -L shows {[U0, U1]}, selected {[U1]}",
                        "vecadd: Devices: 2, selected 1",
                        "vecadd sees PCI ['19:00.0', '3b:00.0'], selected ['3b:00.0']"]
    wrong = VECADD_ONE.replace("3b:00.0", "19:00.0").replace("PASS", "FAIL")
    problems = compare_visible(SMI_L, wrong, [U1], ["00000000:3B:00.0"])
    assert problems == ["vecadd sees PCI ['19:00.0'], selected ['3b:00.0']",
                        "vecadd did not print 'Vector add ... PASS'"]


APPS = f"""4242, {U0}, /bin/vecadd
4310, {U1}, vecadd
977, {U1}, /usr/bin/python3
"""


def test_compute_apps_parse_and_each_gpu_runs_one_vecadd():
    apps = parse_compute_apps(APPS)
    assert apps[0] == ComputeApp(4242, U0, "/bin/vecadd")
    assert len(apps) == 3 and parse_compute_apps("No running processes found\n") == []
    assert compare_placement(apps, [U0, U1]) == []


def test_both_on_one_gpu_or_on_an_unselected_gpu_is_named():
    both = parse_compute_apps(f"1, {U1}, vecadd\n2, {U1}, vecadd\n")
    assert compare_placement(both, [U0, U1]) == [
        f"{U0}: 0 vecadd processes [], expected 1",
        f"{U1}: 2 vecadd processes [1, 2], expected 1"]
    stray = parse_compute_apps(f"1, {U0}, vecadd\n2, GPU-other, vecadd\n")
    assert compare_placement(stray, [U0]) == ["GPU-other: vecadd pid 2 on a GPU not selected"]


def test_skip_is_neither_pass_nor_fail(capsys):
    report = Report()
    report.add("one", True)
    report.skip("two", "needs 2+ GPUs")
    text = format_summary(report)
    assert "[SKIP] two (needs 2+ GPUs)" in capsys.readouterr().out
    assert "two  SKIP (needs 2+ GPUs)" in text
    assert "1 passed, 0 failed, 1 skipped (needs 2+ GPUs: not run on this host)" in text
    assert report.ok
    report.add("three", False)
    assert not report.ok and "1 passed, 1 failed, 1 skipped" in format_summary(report)


def test_a_report_of_only_skips_proves_nothing():
    report = Report()
    report.skip("two", "needs 2+ GPUs")
    assert not report.ok
    clean = Report()
    clean.add("one", True)
    assert format_summary(clean).splitlines()[-1] == "1 passed, 0 failed, 0 skipped"


def test_skip_reason_and_gpu_count():
    assert skip_reason(2, 1) == "needs 2+ GPUs"
    assert skip_reason(2, 2) is None and skip_reason(1, 1) is None
    assert count_gpus("0\n1\n") == 2 and count_gpus("") == 0
    assert count_gpus("NVIDIA-SMI has failed because it couldn't communicate\n") == 0


def _steps(report: Report) -> list:
    def single() -> None:
        report.add("single", True)

    @proof.needs_gpus(2, "pair a", "pair b")
    def pair() -> None:
        report.add("pair a", True)
        report.add("pair b", False)

    def broken() -> None:
        raise RuntimeError("boom")

    return [single, pair, broken]


@pytest.mark.parametrize(("gpus", "states"), [
    (1, [("single", "PASS"), ("pair a", "SKIP"), ("pair b", "SKIP"), ("broken", "FAIL")]),
    (2, [("single", "PASS"), ("pair a", "PASS"), ("pair b", "FAIL"), ("broken", "FAIL")]),
])
def test_run_steps_skips_by_gpu_count(gpus, states, capsys):
    report = Report()
    proof.run_steps(report, _steps(report), gpus)
    assert [(s.name, s.state) for s in report.steps] == states
    assert report.steps[-1].detail == "RuntimeError: boom"
    if gpus == 1:
        assert report.steps[1].detail == "needs 2+ GPUs"
        assert "[SKIP] pair a (needs 2+ GPUs)" in capsys.readouterr().out


def test_the_proof_skips_exactly_the_multi_gpu_steps_on_one_gpu():
    p = proof.Proof(proof.parse_args([]))
    try:
        steps = p.steps()
    finally:
        shutil.rmtree(p.work)
    skipped = [s.__name__ for s in steps if skip_reason(getattr(s, "needs_gpus", 1), 1)]
    assert skipped == ["check_identity", "check_topology", "isolation", "concurrent",
                       "status_all_gpus"]
    names = [n for s in steps if skip_reason(getattr(s, "needs_gpus", 1), 1)
             for n in s.step_names]
    assert names == [proof.IDENTITY, proof.TOPOLOGY, *proof.ISOLATION, proof.CONCURRENT,
                     proof.STATUS_ALL]
    assert not [s for s in steps if skip_reason(getattr(s, "needs_gpus", 1), 2)]
    assert steps[-1].__name__ == "status_all_gpus" and steps[-2].__name__ == "timings"


def test_containers_get_nvlink_multicast_off():
    assert proof.MULTICAST_OFF == {"NCCL_NVLS_ENABLE": "0",
                                   "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                                   "NVSHMEM_DISABLE_NVLS": "1"}
    argv = proof.run_argv("docker", "--rm", "img", "vecadd")
    assert argv == ["docker", "run", "--env=NCCL_NVLS_ENABLE=0",
                    "--env=TORCH_SYMM_MEM_DISABLE_MULTICAST=1", "--env=NVSHMEM_DISABLE_NVLS=1",
                    "--rm", "img", "vecadd"]



# Real output of the one-GPU H200 host (driver 580.159.04), kept byte for byte in data/: the
# ANSI underline around the header, the tab layout, the p2p matrix's leading spaces.
DATA = Path(__file__).parent / "data"


def test_real_h200_outputs_parse():
    from tests.gpu.report import parse_topo_matrix, proc_device_minor

    assert parse_topo_matrix((DATA / "h200-topo-m.txt").read_text()) == {0: {0: "X"}}
    assert parse_topo_matrix((DATA / "h200-topo-p2p-r.txt").read_text()) == {0: {0: "X"}}
    assert proc_device_minor((DATA / "h200-gpu-information.txt").read_text()) == 0
