"""discover() over fake driver hosts: what is selected, where it goes, what is left out and why."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from nvplugin.core.errors import DriverNotFound
from nvplugin.driver import discovery, elfinfo
from nvplugin.driver.manifest import Manifest
from tests.discovery.multilib import has_32bit

HOSTS = {
    "new-cache": {},
    "compat-cache": {"cache_format": "compat"},
    "open-module": {"kernel_module": "open"},
    "stale-driver": {"stale_version": "570.86.15"},
    "damaged-lib": {"damaged_lib": True},
    "no-lookalikes": {"mesa_lookalikes": False, "old_tls": False},
    "usr-local-nvidia": {"layout": "usr-local-nvidia"},
    "64bit-only": {"with_32bit": False},
    "other-version": {"version": "575.57.08", "cache_format": "compat"},
}


def _rejected(manifest: Manifest, host) -> dict[str, str]:
    return {r.path: r.reason for r in manifest.rejected if r.path.startswith(str(host.root))}


@pytest.mark.parametrize("options", HOSTS.values(), ids=HOSTS.keys())
def test_selects_exactly_the_expected_files(fake_host_factory, options):
    host = fake_host_factory(**options)
    manifest = discovery.discover(host.root)
    assert manifest.version == host.version
    assert {e.dest for e in manifest.entries} == host.expected_dests
    rejected = _rejected(manifest, host)
    expected_rejected = {str(host.path(p)) for p in host.expected_rejected}
    assert expected_rejected <= set(rejected)
    sources = [e.source for e in manifest.entries]
    assert len(sources) == len(set(sources))
    assert all(e.source.startswith(str(host.root) + "/") for e in manifest.entries)
    assert all(os.path.isfile(s) and not os.path.islink(s) for s in sources)


@pytest.mark.parametrize("options", [{}, {"layout": "usr-local-nvidia"}],
                         ids=["usr-lib", "usr-local-nvidia"])
def test_destinations_by_elf_class(fake_host_factory, options):
    host = fake_host_factory(**options)
    manifest = discovery.discover(host.root)
    libs = [e for e in manifest.entries if e.kind == "lib"]
    assert libs
    for entry in libs:
        if entry.dest.startswith("lib64/"):
            assert (entry.arch, entry.source.startswith(str(host.path(host.lib64_dir)))) == (
                "x86-64", True)
            assert entry.capability != "compat32"
        else:
            assert entry.dest.startswith("lib/")
            assert (entry.arch, entry.capability) == ("i386", "compat32")
    assert any(e.dest.startswith("lib/") for e in libs) == host.with_32bit
    assert {e.dest.split("/")[0] for e in manifest.entries} <= {
        "lib", "lib64", "bin", "share", "firmware"}


@pytest.mark.parametrize(("path", "reason"), [
    ("/usr/lib/x86_64-linux-gnu/mesa/libGL.so.1.2.0", "another vendor"),
    ("/usr/lib/x86_64-linux-gnu/mesa/libEGL.so.1.0.0", "DT_NEEDED has no libGLdispatch"),
    ("/usr/lib/nvidia/classic-tls/libnvidia-tls.so.580.159.04", "classic-TLS build"),
    ("/usr/lib64/libcuda.so.570.86.15", "left over from driver 570.86.15"),
    ("/usr/lib64/libnvidia-nvvm.so.570.86.15", "left over from driver 570.86.15"),
    ("/lib/firmware/nvidia/570.86.15", "firmware of driver 570.86.15"),
    ("/usr/lib/x86_64-linux-gnu/libnvidia-ifr.so.580.159.04", "damaged ELF file"),
], ids=["mesa-libGL", "mesa-libEGL", "classic-tls", "stale-libcuda", "stale-nvvm-soname",
        "stale-firmware", "damaged"])
def test_rejections_carry_reasons(fake_host_factory, path, reason):
    host = fake_host_factory(stale_version="570.86.15", damaged_lib=True)
    rejected = _rejected(discovery.discover(host.root), host)
    assert reason in rejected[str(host.path(path))]


def test_damaged_library_is_logged_and_skipped(fake_host_factory, caplog):
    host = fake_host_factory(damaged_lib=True)
    with caplog.at_level(logging.WARNING, logger="nvplugin.driver.discovery"):
        manifest = discovery.discover(host.root)
    assert "lib64/libnvidia-ifr.so.580.159.04" not in {e.dest for e in manifest.entries}
    lines = [r.getMessage() for r in caplog.records if "libnvidia-ifr" in r.getMessage()]
    assert lines and "damaged ELF file" in lines[0]


def test_duplicate_copy_in_another_directory_is_rejected(fake_host_factory):
    # 1.0 hard-linked both copies to lib/ and failed with "file exists".
    host = fake_host_factory(with_32bit=False)
    lib = host.path(host.lib64_dir)
    dup = host.path("/usr/lib64")
    dup.mkdir(parents=True, exist_ok=True)
    (dup / "libnvcuvid.so.580.159.04").write_bytes((lib / "libnvcuvid.so.580.159.04").read_bytes())
    manifest = discovery.discover(host.root)
    assert [e.source for e in manifest.entries if e.dest == "lib64/libnvcuvid.so.580.159.04"] == [
        str(lib / "libnvcuvid.so.580.159.04")]
    assert "duplicate of" in _rejected(manifest, host)[str(dup / "libnvcuvid.so.580.159.04")]


def test_links_as_1_0_made_them(fake_host):
    links = {x.path: x.target for x in discovery.discover(fake_host.root).links}
    v = fake_host.version
    assert links["lib64/libcuda.so.1"] == f"libcuda.so.{v}"
    assert links["lib64/libcuda.so"] == f"libcuda.so.{v}"
    assert links["lib64/libGLX_indirect.so.0"] == f"libGLX_nvidia.so.{v}"
    assert links["lib64/libnvidia-ml.so.1"] == f"libnvidia-ml.so.{v}"
    assert links["lib64/libGL.so.1"] == "libGL.so.1.7.0"
    assert links["lib64/libnvidia-opticalflow.so"] == "libnvidia-opticalflow.so.1"
    assert "lib64/libnvidia-glcore.so" not in links  # SONAME is the file name: nothing to link
    if has_32bit(fake_host):
        assert links["lib/libcuda.so.1"] == f"libcuda.so.{v}"


def test_symlinked_lib_dir_and_absolute_links(fake_host_factory):
    host = fake_host_factory(layout="usr-local-nvidia")
    assert os.readlink(host.path("/usr/local/nvidia/lib")) == "lib64"
    assert os.readlink(host.path("/usr/local/nvidia/lib64/libcuda.so.1")).startswith("/")
    manifest = discovery.discover(host.root)
    cuda = next(e for e in manifest.entries if e.dest == f"lib64/libcuda.so.{host.version}")
    assert cuda.source == str(host.path(f"/usr/local/nvidia/lib64/libcuda.so.{host.version}"))
    assert cuda.soname == "libcuda.so.1"
    assert "ld.so.cache libcuda.so.1" in cuda.reason


def test_escape_link_is_refused(fake_host_factory, tmp_path):
    host = fake_host_factory(with_32bit=False)
    outside = tmp_path / "libnvidia-fbc.so.580.159.04"
    outside.write_bytes(b"not yours")
    lib = host.path(host.lib64_dir)
    (lib / "libnvidia-fbc.so.1").unlink()
    os.symlink(os.path.relpath(outside, lib), lib / "libnvidia-fbc.so.1")
    manifest = discovery.discover(host.root)
    reason = _rejected(manifest, host)[str(lib / "libnvidia-fbc.so.1")]
    assert "leaves the driver root" in reason
    assert all(not e.source.startswith(str(tmp_path / "libnvidia")) for e in manifest.entries)


def test_cache_misses_are_found_by_the_scan(fake_host_factory):
    host = fake_host_factory(with_32bit=False)
    host.cache_path.unlink()
    manifest = discovery.discover(host.root)
    assert {e.dest for e in manifest.entries} == host.expected_dests
    assert all("found in" in e.reason for e in manifest.entries if e.kind == "lib")


def test_corrupted_cache_falls_back_to_the_scan(fake_host_factory, caplog):
    host = fake_host_factory(with_32bit=False)
    host.cache_path.write_bytes(host.cache_path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="nvplugin.driver.discovery"):
        manifest = discovery.discover(host.root)
    assert {e.dest for e in manifest.entries} == host.expected_dests
    assert "truncated" in _rejected(manifest, host)[str(host.cache_path)]
    assert any(str(host.cache_path) in r.getMessage() for r in caplog.records)


def test_shell_wrapper_binary_is_rejected(fake_host):
    smi = fake_host.path("/usr/bin/nvidia-smi")
    smi.write_text("#!/bin/sh\nexec /opt/real/nvidia-smi \"$@\"\n")
    manifest = discovery.discover(fake_host.root)
    assert "bin/nvidia-smi" not in {e.dest for e in manifest.entries}
    assert "not an ELF file" in _rejected(manifest, fake_host)[str(smi)]


@pytest.mark.parametrize("remove", [["proc", "usr", "lib", "etc"], ["usr/lib", "etc"]],
                         ids=["empty-root", "no-libraries"])
def test_no_driver_raises_driver_not_found(fake_host_factory, remove):
    import shutil

    host = fake_host_factory(with_32bit=False)
    for rel in remove:
        shutil.rmtree(host.root / rel, ignore_errors=True)
    with pytest.raises(DriverNotFound) as info:
        discovery.discover(host.root)
    message = str(info.value)
    assert str(host.root) in message and "/etc/ld.so.cache" in message
    assert "/usr/lib/x86_64-linux-gnu" in message and "--driver-root" in message


def test_only_stale_libraries_is_no_driver(fake_host_factory):
    host = fake_host_factory(with_32bit=False)
    with pytest.raises(DriverNotFound, match=r"of version 999\.1\.1"):
        discovery.discover(host.root, "999.1.1")


def test_manifest_is_stable(fake_host):
    first = discovery.discover(fake_host.root)
    assert discovery.discover(fake_host.root) == first
    assert first.digest() == discovery.discover(fake_host.root).digest()


def test_a_driver_reinstalled_over_itself_is_a_change(fake_host):
    """Same names, new files (a package reinstall): the old identities would no longer build."""
    first = discovery.discover(fake_host.root)
    source = Path(next(e.source for e in first.entries if e.dest.startswith("lib64/libcuda.so.")))
    copy = source.with_name(".reinstalled")
    copy.write_bytes(source.read_bytes())
    os.replace(copy, source)
    again = discovery.discover(fake_host.root)
    assert [(e.source, e.dest) for e in again.entries] == [(e.source, e.dest)
                                                           for e in first.entries]
    assert again.digest() != first.digest()


def test_a_kept_elf_memo_changes_nothing_but_the_reads(fake_host):
    memo = elfinfo.ElfMemo()
    assert discovery.discover(fake_host.root, memo=memo) == discovery.discover(fake_host.root)
    assert discovery.discover(fake_host.root, memo=memo) == discovery.discover(fake_host.root)


def test_second_copy_of_a_binary_is_shadowed(fake_host):
    extra = fake_host.path("/usr/local/nvidia/bin")
    extra.mkdir(parents=True)
    (extra / "nvidia-smi").write_bytes(fake_host.path("/usr/bin/nvidia-smi").read_bytes())
    manifest = discovery.discover(fake_host.root)
    smi = next(e for e in manifest.entries if e.dest == "bin/nvidia-smi")
    assert smi.source == str(fake_host.path("/usr/bin/nvidia-smi"))
    assert "shadowed by" in _rejected(manifest, fake_host)[str(extra / "nvidia-smi")]


def test_config_files_under_etc_count_once(fake_host):
    etc = fake_host.path("/etc/vulkan/icd.d")
    etc.mkdir(parents=True)
    (etc / "nvidia_icd.json").write_text("{}\n")
    (etc / "nvidia_icd.x86_64.json").write_text("{}\n")
    manifest = discovery.discover(fake_host.root)
    dests = {e.dest: e.source for e in manifest.entries if e.kind == "config"}
    assert dests["share/vulkan/icd.d/nvidia_icd.json"] == str(
        fake_host.path("/usr/share/vulkan/icd.d/nvidia_icd.json"))
    assert dests["share/vulkan/icd.d/nvidia_icd.x86_64.json"] == str(etc / "nvidia_icd.x86_64.json")
    assert "comes from" in _rejected(manifest, fake_host)[str(etc / "nvidia_icd.json")]


def test_h200_wrapper_scripts_give_way_to_the_real_binaries(fake_host_factory, caplog):
    # The H200 host: /usr/bin/nvidia-smi is a shell wrapper, /bin -> usr/bin, and the ELF
    # binaries live in the read-only /usr/local/nvidia/bin.
    host = fake_host_factory(layout="usr-local-nvidia")
    with caplog.at_level(logging.DEBUG, logger="nvplugin.driver.discovery"):
        manifest = discovery.discover(host.root)
    bins = {e.dest: e.source for e in manifest.entries if e.kind == "bin"}
    assert bins["bin/nvidia-smi"] == str(host.path("/usr/local/nvidia/bin/nvidia-smi"))
    wrapper = str(host.path("/usr/bin/nvidia-smi"))
    assert [r.reason for r in manifest.rejected if r.path == wrapper] == [
        "not an ELF file (starts with b'#!/b')"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "nvidia-smi" in
                r.getMessage()]


def test_missing_binary_is_warned_about(fake_host, caplog):
    smi = fake_host.path("/usr/bin/nvidia-smi")
    smi.write_text("#!/bin/sh\n")
    with caplog.at_level(logging.WARNING, logger="nvplugin.driver.discovery"):
        discovery.discover(fake_host.root)
    assert any(str(smi) in r.getMessage() for r in caplog.records)
