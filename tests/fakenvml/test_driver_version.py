"""The driver version belongs to the library file, as with NVIDIA's libnvidia-ml.so.<version>.

A process loads one libnvidia-ml.so.1, so each reading is a fresh Python that finds the library
the way pynvml does on a host: by soname, through LD_LIBRARY_PATH and the libnvidia-ml.so.1 link.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakenvml.build import build_fake_nvml, link_soname, make_config, write_config
from tests.requirements import need_tool

READ = """
import pynvml
pynvml.nvmlInit()
try:
    print(pynvml.nvmlSystemGetDriverVersion())
    print(pynvml.nvmlSystemGetNVMLVersion())
except pynvml.NVMLError as err:
    print(f"error {err.value}")
pynvml.nvmlShutdown()
"""


def read_versions(lib_dir: Path, config: Path) -> list[str]:
    """[driver version, NVML version] as pynvml reads them in a new process loading lib_dir's."""
    env = dict(os.environ, LD_LIBRARY_PATH=str(lib_dir), FAKE_NVML_CONFIG=str(config))
    out = subprocess.run([sys.executable, "-c", READ], env=env, capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2])
    return out.stdout.splitlines()


@pytest.fixture
def gcc() -> str:
    return need_tool("gcc")


@pytest.fixture
def no_version_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "nvml.json", make_config(1, driver_version=None))


def test_each_library_reports_its_own_version(tmp_path, gcc, no_version_config):
    for version in ("570.86.15", "580.159.04"):
        lib = build_fake_nvml(tmp_path / version, version=version, gcc=gcc)
        assert lib.name == f"libnvidia-ml.so.{version}"
        link_soname(lib)
        assert read_versions(lib.parent, no_version_config) == [version, f"13.{version}"]


def test_a_driver_upgrade_in_place(tmp_path, gcc, no_version_config):
    """Old files deleted, new ones installed and linked: the next process sees the new driver."""
    lib_dir = tmp_path / "usr-lib"
    old = link_soname(build_fake_nvml(lib_dir, version="570.86.15", gcc=gcc)).resolve()
    assert read_versions(lib_dir, no_version_config)[0] == "570.86.15"
    old.unlink()
    link_soname(build_fake_nvml(lib_dir, version="580.159.04", gcc=gcc))
    assert sorted(p.name for p in lib_dir.glob("libnvidia-ml.so*")) == [
        "libnvidia-ml.so.1", "libnvidia-ml.so.580.159.04"]
    assert read_versions(lib_dir, no_version_config)[0] == "580.159.04"


def test_the_config_still_names_the_version(tmp_path, gcc):
    link_soname(build_fake_nvml(tmp_path / "lib", version="570.86.15", gcc=gcc))
    config = write_config(tmp_path / "nvml.json", make_config(1, driver_version="590.10.01"))
    assert read_versions(tmp_path / "lib", config) == ["590.10.01", "13.590.10.01"]
    write_config(config, make_config(1, driver_version="NO_PERMISSION"))
    assert read_versions(tmp_path / "lib", config)[0] == "error 4"


def test_a_build_without_a_version_reads_its_file_name(tmp_path, fake_nvml_lib,
                                                       no_version_config):
    """tests/fakehost copies one build to every libnvidia-ml.so.<version> it installs."""
    (tmp_path / "host").mkdir()
    copy = Path(shutil.copy(fake_nvml_lib, tmp_path / "host" / "libnvidia-ml.so.575.51.03"))
    link_soname(copy)
    assert read_versions(copy.parent, no_version_config)[0] == "575.51.03"
    # As libnvidia-ml.so.1 itself there is no version to read: NVML_ERROR_UNKNOWN, as before.
    assert read_versions(fake_nvml_lib.parent, no_version_config) == ["error 999"]


def test_versions_are_checked(tmp_path, gcc):
    with pytest.raises(ValueError, match="not a driver version"):
        build_fake_nvml(tmp_path, version='1"; int x; "', gcc=gcc)
