"""ELF facts of the fake host's gcc-built files, the ABI note, and damaged files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nvplugin.core.errors import ElfError
from nvplugin.driver import elfinfo
from nvplugin.driver.hostroot import HostRoot
from tests.discovery.multilib import need_32bit


@pytest.mark.parametrize(("rel", "soname", "needed"), [
    ("libcuda.so.580.159.04", "libcuda.so.1", ()),
    ("libGLX_nvidia.so.580.159.04", "libGLX_nvidia.so.0",
     ("libnvidia-glcore.so.580.159.04", "libnvidia-tls.so.580.159.04")),
    ("libGL.so.1.7.0", "libGL.so.1", ("libGLdispatch.so.0", "libGLX.so.0")),
    ("libnvidia-glcore.so.580.159.04", "libnvidia-glcore.so.580.159.04", ()),
    ("mesa/libGL.so.1.2.0", "libGL.so.1", ()),
], ids=["libcuda", "GLX_nvidia", "GLVND-libGL", "no-soname-link", "mesa-libGL"])
def test_facts_of_64bit_libraries(fake_host, rel, soname, needed):
    facts = elfinfo.inspect(str(fake_host.path(f"{fake_host.lib64_dir}/{rel}")))
    assert (facts.bits, facts.arch, facts.elf_type) == (64, "x86-64", "ET_DYN")
    assert facts.soname == soname
    assert tuple(n for n in facts.needed if not n.startswith("libc.so")) == needed


def test_facts_of_32bit_library(fake_host):
    need_32bit(fake_host)
    facts = elfinfo.inspect(str(fake_host.path(f"{fake_host.lib32_dir}/libcuda.so.580.159.04")))
    assert (facts.bits, facts.arch, facts.machine) == (32, "i386", "EM_386")


@pytest.mark.parametrize(("rel", "new_tls"), [
    ("/usr/lib/x86_64-linux-gnu/libnvidia-tls.so.580.159.04", True),
    ("/usr/lib/nvidia/classic-tls/libnvidia-tls.so.580.159.04", False),
], ids=["new-tls", "classic-tls"])
def test_abi_tag(fake_host, rel, new_tls):
    facts = elfinfo.inspect(str(fake_host.path(rel)), abi_tag=True)
    assert facts.abi_tag == ((0, 2, 3, 99) if new_tls else (0, 2, 2, 5))
    assert elfinfo.is_new_tls(facts) is new_tls


def test_gl_loader_predicate(fake_host):
    lib = fake_host.lib64_dir
    glvnd = elfinfo.inspect(str(fake_host.path(f"{lib}/libEGL.so.1.1.0")))
    mesa = elfinfo.inspect(str(fake_host.path(f"{lib}/mesa/libEGL.so.1.0.0")))
    assert elfinfo.is_nvidia_gl_loader(glvnd)
    assert not elfinfo.is_nvidia_gl_loader(mesa)


def test_static_binary_has_no_dynamic_section(fake_host):
    facts = elfinfo.inspect(str(fake_host.path("/usr/bin/nvidia-smi")))
    assert (facts.elf_type, facts.soname, facts.needed) == ("ET_EXEC", None, ())


@pytest.mark.parametrize(("content", "message"), [
    (b"#!/bin/sh\nexec nvidia-smi.real\n", "not an ELF file"),
    (b"", "not an ELF file"),
    (None, "damaged ELF file"),
], ids=["script", "empty", "truncated"])
def test_bad_files_raise_elf_error(fake_host, tmp_path, content, message):
    path = tmp_path / "bad.so"
    if content is None:
        content = fake_host.path(f"{fake_host.lib64_dir}/libcuda.so.580.159.04").read_bytes()[:300]
    path.write_bytes(content)
    for abi in (False, True):
        with pytest.raises(ElfError, match=message) as info:
            elfinfo.inspect(str(path), abi_tag=abi)
        assert str(path) in str(info.value)


def test_fast_reader_agrees_with_pyelftools(fake_host):
    files = [p for p in fake_host.root.rglob("*") if p.is_file() and not p.is_symlink()]
    files += [Path("/lib/x86_64-linux-gnu/libc.so.6"), Path("/usr/bin/ls")]
    compared = 0
    for path in files:
        if not path.exists():
            continue
        for abi in (False, True):
            try:
                with open(path, "rb") as f:
                    fast: object = elfinfo._inspect_fast(str(path), f, abi)
            except ElfError as err:
                fast = type(err)
            except elfinfo._Unusual:
                continue  # handed to pyelftools: nothing to agree on
            try:
                slow: object = elfinfo._inspect_pyelftools(str(path), abi)
            except ElfError as err:
                slow = type(err)
            assert fast == slow, (path, abi)
            compared += 1
    assert compared > 120


def test_driver_files_need_no_pyelftools(fake_host):
    """pyelftools (3-5 MB, 20 ms to import) loads only for unusual files: discovery of an
    ordinary driver, the ABI note of libnvidia-tls included, never imports it."""
    code = ("import sys; from nvplugin.driver import discovery; "
            f"m = discovery.discover({str(fake_host.root)!r}); "
            "print(len(m.entries), sorted(n for n in sys.modules if n.startswith('elftools')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], check=True)
    count, loaded = done.stdout.split(" ", 1)
    assert int(count) > 20 and loaded.strip() == "[]"


def test_memo_notices_a_replaced_file(fake_host, tmp_path):
    lib = fake_host.path(f"{fake_host.lib64_dir}")
    path = tmp_path / "lib.so"
    path.write_bytes((lib / "libcuda.so.580.159.04").read_bytes())
    memo = elfinfo.ElfMemo()
    root = HostRoot(tmp_path)
    facts, ident = memo.inspect(root, "/lib.so")
    assert facts.soname == "libcuda.so.1" and ident == (path.stat().st_dev, path.stat().st_ino)
    replacement = tmp_path / "new.so"
    replacement.write_bytes((lib / "libnvcuvid.so.580.159.04").read_bytes())
    os.replace(replacement, path)
    facts, ident = memo.inspect(root, "/lib.so")
    assert facts.soname == "libnvcuvid.so.1" and ident[1] == path.stat().st_ino


def test_memo_reads_inside_the_root_and_refuses_other_kinds_of_file(fake_host, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.so"
    outside.write_bytes(fake_host.path(f"{fake_host.lib64_dir}/libcuda.so.580.159.04").read_bytes())
    os.symlink(outside, root / "lib.so")  # absolute: re-rooted, so <root>/<tmp>/outside.so
    os.mkfifo(root / "fifo.so")
    memo = elfinfo.ElfMemo()
    with pytest.raises(ElfError, match="No such file or directory"):
        memo.inspect(HostRoot(root), "/lib.so")
    with pytest.raises(ElfError, match="is a FIFO, not a regular file"):
        memo.inspect(HostRoot(root), "/fifo.so")
