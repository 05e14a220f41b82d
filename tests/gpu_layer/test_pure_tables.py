from __future__ import annotations

import pytest

from nvplugin.gpu import facts


@pytest.mark.parametrize(("cc", "family", "per_sm"), [
    ((1, 3), "Tesla", 8), ((2, 0), "Fermi", 32), ((2, 1), "Fermi", 48), ((3, 7), "Kepler", 192),
    ((5, 2), "Maxwell", 128), ((6, 0), "Pascal", 64), ((6, 1), "Pascal", 128),
    ((7, 0), "Volta", 64), ((7, 2), "Volta", 64), ((7, 5), "Turing", 64), ((8, 0), "Ampere", 64),
    ((8, 6), "Ampere", 128), ((8, 7), "Ampere", 128), ((8, 9), "Ada", 128),
    ((9, 0), "Hopper", 128), ((10, 0), "Blackwell", 128), ((12, 0), "Blackwell", 128),
    ((4, 0), None, None),
], ids=str)
def test_family_and_cores_per_sm(cc: tuple[int, int], family: str | None, per_sm: int | None):
    assert facts.family(*cc) == family
    assert facts.cores_per_sm(*cc) == per_sm


@pytest.mark.parametrize(("value", "text"), [(13000, "13.0"), (12080, "12.8"), (8000, "8.0"),
                                             (9020, "9.2"), (10010, "10.1")])
def test_cuda_version(value: int, text: str):
    assert facts.cuda_version(value) == text


@pytest.mark.parametrize(("gen", "width", "mbs"), [(1, 16, 4000), (3, 16, 15760), (4, 8, 15752),
                                                   (5, 16, 63008), (6, 16, 126032),
                                                   (9, 16, None), (None, 16, None),
                                                   (5, None, None)])
def test_pcie_bandwidth(gen: int | None, width: int | None, mbs: int | None):
    assert facts.pcie_bandwidth(gen, width) == mbs


def test_memory_bandwidth_is_double_data_rate_over_the_bus():
    assert facts.memory_bandwidth(715, 4096) == 2 * 715 * 512
    assert facts.memory_bandwidth(None, 4096) is None
    assert facts.memory_bandwidth(715, None) is None


def test_sysfs_bus_id_uses_the_four_digit_lower_case_domain():
    assert facts.sysfs_bus_id("00000000:00:06.0") == "0000:00:06.0"
    assert facts.sysfs_bus_id("00000001:3B:00.0") == "0001:3b:00.0"
