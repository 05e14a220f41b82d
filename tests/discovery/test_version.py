"""Driver version from /proc or the libcuda name; NVML library lookup; the driver fingerprint."""

from __future__ import annotations

import ctypes
import os

import pytest

from nvplugin.driver import discovery, driver_version

PROC_LINES = [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  575.57.08  Sat May 24 07:21:16 UTC 2025",
     "575.57.08"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  "
     "(dvs-builder@U22)  Wed Nov 19 03:12:44 UTC 2025", "580.159.04"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  570.86.15  Release Build",
     "570.86.15"),
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  375.26  Thu Dec  8 18:36:43 PST 2016",
     "375.26"),
    ("GCC version:  gcc version 12.2.0", None),
    ("NVRM version: something else entirely", None),
]


@pytest.mark.parametrize(("text", "version"), PROC_LINES,
                         ids=["proprietary", "open", "open-aarch64", "two-part", "no-nvrm",
                              "garbled"])
def test_version_from_proc(text, version):
    assert driver_version.from_proc(text + "\nGCC version: gcc 12\n") == version


@pytest.mark.parametrize(("path", "version"), [
    ("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.159.04", "580.159.04"),
    ("/usr/lib64/libcuda.so.375.26", "375.26"), ("/usr/lib64/libnvidia-ml.so.1", None),
    ("/usr/lib64/libnvidia-ml.so.580.159.04.bak", None), (None, None),
], ids=str)
def test_version_from_file_name(path, version):
    assert driver_version.from_file_name(path) == version


def test_versions_order_by_number():
    assert max(["580.9.1", "580.159.04", "575.57.08"], key=driver_version.sort_key) == "580.159.04"


@pytest.mark.parametrize("kernel_module", ["proprietary", "open"])
def test_version_from_proc_under_the_root(fake_host_factory, kernel_module):
    host = fake_host_factory(kernel_module=kernel_module, with_32bit=False)
    assert discovery.driver_version_from_files(host.root) == host.version


@pytest.mark.parametrize("layout", ["usr-lib", "usr-local-nvidia"])
def test_version_from_libcuda_name_without_proc(fake_host_factory, layout):
    host = fake_host_factory(layout=layout, stale_version="570.86.15", with_32bit=False)
    host.path("/proc/driver/nvidia/version").unlink()
    assert discovery.driver_version_from_files(host.root) == host.version
    host.cache_path.unlink()  # and from the directory scan alone
    assert discovery.driver_version_from_files(host.root) == host.version
    assert discovery.discover(host.root).version == host.version


def test_given_version_wins_over_files(fake_host_factory):
    host = fake_host_factory(stale_version="570.86.15", with_32bit=False)
    manifest = discovery.discover(host.root, "570.86.15")
    assert manifest.version == "570.86.15"
    cuda = next(e for e in manifest.entries if e.soname == "libcuda.so.1")
    assert cuda.dest == "lib64/libcuda.so.570.86.15"


def test_no_version_anywhere(tmp_path):
    assert discovery.driver_version_from_files(tmp_path) is None


@pytest.mark.parametrize("layout", ["usr-lib", "usr-local-nvidia"])
def test_find_nvml_library(fake_host_factory, layout):
    host = fake_host_factory(layout=layout)
    found = discovery.find_nvml_library(host.root)
    assert found == str(host.path(f"{host.lib64_dir}/libnvidia-ml.so.{host.version}"))
    lib = ctypes.CDLL(found)
    if host.nvml_source is not None:  # the fake NVML from tests/fakenvml
        assert hasattr(lib, "nvmlInit_v2")


def test_find_nvml_library_skips_32bit_and_missing(fake_host_factory, tmp_path):
    host = fake_host_factory()
    os.unlink(host.path(f"{host.lib64_dir}/libnvidia-ml.so.1"))
    host.cache_path.unlink()
    assert discovery.find_nvml_library(host.root) is None
    assert discovery.find_nvml_library(tmp_path) is None


def test_fingerprint_follows_the_driver(fake_host_factory):
    host = fake_host_factory(with_32bit=False)
    first = discovery.driver_fingerprint(host.root)
    assert first == discovery.driver_fingerprint(host.root)
    assert first.proc and host.version in first.proc and first.problem is None
    proc = host.path("/proc/driver/nvidia/version")
    proc.write_text(proc.read_text().replace(host.version, "590.1.2"))
    second = discovery.driver_fingerprint(host.root)
    assert second != first
    st = host.cache_path.stat()
    os.utime(host.cache_path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert discovery.driver_fingerprint(host.root) != second


def test_fingerprint_of_empty_root(tmp_path):
    assert discovery.driver_fingerprint(tmp_path) == discovery.Fingerprint(None, None)
