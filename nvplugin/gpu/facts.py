"""Pure facts about NVIDIA GPUs: tables and small conversions.

No NVML and no I/O: `nvml.py` reads raw values and turns them into records with these. Each
function takes plain values and returns one; `None` in means `None` out (unknown stays unknown).
"""

from __future__ import annotations

# MB/s per lane after line coding, 1.0's table {1..4} extended to PCIe 5, 6 and 7.
PCIE_LANE_MBS = {1: 250, 2: 500, 3: 985, 4: 1969, 5: 3938, 6: 7877, 7: 15754}
# nvmlDeviceGetTopologyCommonAncestor level -> 1.0's P2P link code (devices.P2P_LINK_NAMES).
TOPOLOGY_LINK = {0: 6, 10: 5, 20: 4, 30: 3, 40: 2, 50: 1}
FAMILIES = {1: "Tesla", 2: "Fermi", 3: "Kepler", 5: "Maxwell", 6: "Pascal", 10: "Blackwell",
            11: "Blackwell", 12: "Blackwell"}
FAMILY_BY_ARCH = {(7, 0): "Volta", (7, 2): "Volta", (7, 5): "Turing", (8, 0): "Ampere",
                  (8, 6): "Ampere", (8, 7): "Ampere", (8, 9): "Ada", (9, 0): "Hopper"}
# CUDA cores per multiprocessor (CUDA C Programming Guide, "Arithmetic Instructions").
CORES_PER_SM = {(1, None): 8, (2, 0): 32, (2, 1): 48, (3, None): 192, (5, None): 128,
                (6, 0): 64, (6, 1): 128, (6, 2): 128, (7, None): 64, (8, 0): 64, (8, None): 128,
                (9, None): 128, (10, None): 128, (11, None): 128, (12, None): 128}


def family(major: int, minor: int) -> str | None:
    return FAMILY_BY_ARCH.get((major, minor)) or FAMILIES.get(major)


def cores_per_sm(major: int, minor: int) -> int | None:
    return CORES_PER_SM.get((major, minor), CORES_PER_SM.get((major, None)))


def cuda_version(value: int) -> str:
    """nvmlSystemGetCudaDriverVersion's integer as `major.minor` (12080 -> "12.8")."""
    return f"{value // 1000}.{value % 1000 // 10}"


def pcie_bandwidth(generation: int | None, width: int | None) -> int | None:
    if generation is None or width is None or generation not in PCIE_LANE_MBS:
        return None
    return PCIE_LANE_MBS[generation] * width


def memory_bandwidth(clock_mhz: int | None, bus_width_bits: int | None) -> int | None:
    """Peak MB/s of double-data-rate memory: 2 x clock x bus width in bytes."""
    if clock_mhz is None or bus_width_bits is None:
        return None
    return 2 * clock_mhz * bus_width_bits // 8


def sysfs_bus_id(bus_id: str) -> str:
    """NVML's `00000000:06:00.0` as sysfs names it: `0000:06:00.0` (1.0 looked up the former)."""
    domain, _, rest = bus_id.partition(":")
    return f"{int(domain, 16):04x}:{rest.lower()}"
