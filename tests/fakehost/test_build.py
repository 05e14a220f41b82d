"""The fake driver host itself: real ELF files, a real cache, runnable binaries, device nodes."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from nvplugin.driver import elfinfo
from tests.fakehost import components as c
from tests.fakehost.build import FAKE_NVML_SOURCE, build_fake_host, make_dev_nodes
from tests.fakehost.compiler import ObjectCache
from tests.requirements import need_root


def test_every_library_is_real_elf_with_its_soname(fake_host):
    for lib in c.LIBS:
        path = fake_host.path(f"{fake_host.lib64_dir}/{lib.filename(fake_host.version)}")
        facts = elfinfo.inspect(str(path))
        assert facts.soname == lib.soname(fake_host.version), lib.name
        assert os.readlink(path.parent / f"lib{lib.name}.so") == path.name


def test_symlink_chain(fake_host):
    lib = fake_host.path(fake_host.lib64_dir)
    v = fake_host.version
    assert os.readlink(lib / "libcuda.so.1") == f"libcuda.so.{v}"
    assert os.readlink(lib / "libcuda.so") == f"libcuda.so.{v}"
    assert os.readlink(lib / "libGLX_nvidia.so.0") == f"libGLX_nvidia.so.{v}"


@pytest.mark.parametrize("name", c.BINARIES)
def test_binaries_run_and_say_who_they_are(fake_host, name):
    out = subprocess.run([fake_host.path(f"/usr/bin/{name}")], capture_output=True, text=True,
                         check=True).stdout
    assert out == f"{name} (fake NVIDIA driver {fake_host.version})\n"
    assert elfinfo.inspect(str(fake_host.path(f"/usr/bin/{name}"))).needed == ()  # static


def test_proc_version_wordings(fake_host_factory):
    open_host = fake_host_factory(kernel_module="open", with_32bit=False)
    text = open_host.path("/proc/driver/nvidia/version").read_text()
    assert text.startswith("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04 ")


def test_usr_local_nvidia_layout(fake_host_factory):
    host = fake_host_factory(layout="usr-local-nvidia")
    assert host.lib32_dir is None and host.bin_dir == "/usr/local/nvidia/bin"
    assert os.readlink(host.path("/usr/local/nvidia/lib")) == "lib64"
    assert (host.root / "etc/ld.so.conf").read_text().splitlines()[0] == "/usr/local/nvidia/lib"
    assert host.path("/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json").is_file()


def test_fake_nvml_is_the_hosts_libnvidia_ml(fake_host):
    assert FAKE_NVML_SOURCE.exists()
    if fake_host.nvml_source is None:
        pytest.fail(f"{FAKE_NVML_SOURCE} does not compile (see the log)")
    lib = fake_host.path(f"{fake_host.lib64_dir}/libnvidia-ml.so.{fake_host.version}")
    assert b"FAKE_NVML_CONFIG" in lib.read_bytes()


def test_objects_are_compiled_once(tmp_path):
    objects = ObjectCache(tmp_path / "objects")
    build_fake_host(tmp_path / "a", objects=objects, with_32bit=False, nvml_source=None)
    first = objects.compiled
    assert first > 30
    build_fake_host(tmp_path / "b", objects=objects, with_32bit=False, nvml_source=None)
    assert objects.compiled == first
    # Each host has its own files: changing one leaves the other and the cache alone.
    a = tmp_path / "a/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04"
    a.write_bytes(b"changed")
    assert (tmp_path / "b/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04").read_bytes()[:4] == (
        b"\x7fELF")


def test_dev_nodes(tmp_path):
    need_root()
    made = make_dev_nodes(tmp_path, [0, 3], modeset=True)
    got = {p.name: (os.major(p.stat().st_rdev), os.minor(p.stat().st_rdev)) for p in made}
    assert got == {"nvidiactl": (195, 255), "nvidia0": (195, 0), "nvidia3": (195, 3),
                   "nvidia-uvm": (238, 0), "nvidia-uvm-tools": (238, 1),
                   "nvidia-modeset": (195, 254)}
    assert all(stat.S_ISCHR(p.stat().st_mode) for p in made)
    assert {p.parent for p in made} == {tmp_path / "dev"}


def test_dev_nodes_never_in_real_dev():
    with pytest.raises(ValueError, match="real /dev"):
        make_dev_nodes(Path("/"), [0])
