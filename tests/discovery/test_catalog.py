"""The component table: name matching, links and the blacklist, as data."""

from __future__ import annotations

import pytest

from nvplugin.driver import catalog
from nvplugin.driver.elfinfo import ElfFacts


@pytest.mark.parametrize(("name", "stem"), [
    ("libcuda.so", "libcuda"), ("libcuda.so.1", "libcuda"),
    ("libcuda.so.580.159.04", "libcuda"),
    ("libnvidia-pkcs11-openssl3.so.580.159.04", "libnvidia-pkcs11-openssl3"),
    ("libnvidia-pkcs11.so.580.159.04", "libnvidia-pkcs11"),
    ("libnvidia-egl-gbm.so.1.1.2", "libnvidia-egl-gbm"),
    ("libnvidia-eglcore.so.580.159.04", "libnvidia-eglcore"),
    ("libGLX_nvidia.so.0", "libGLX_nvidia"), ("libGLX.so.0", "libGLX"),
    ("libGLESv1_CM.so.1", "libGLESv1_CM"), ("libnvoptix.so.1", "libnvoptix"),
    ("libcuda.so.1.bak", None), ("libGLX_indirect.so.0", None), ("libnvidia-gtk3.so.5", None),
    ("libOpenCL.so.1", None), ("libfoo.so", None), ("nvidia-smi", None),
], ids=lambda v: str(v))
def test_library_matching(name, stem):
    found = catalog.library(name)
    assert (found.pattern if found else None) == stem


def test_table_is_consistent():
    stems = [c.pattern for c in catalog.LIBRARIES]
    assert len(stems) == len(set(stems))
    for comp in (*catalog.LIBRARIES, *catalog.BINARIES, *catalog.CONFIGS, *catalog.FIRMWARE):
        assert comp.capability in ("compute", "utility", "video", "graphics", "display", "ngx")
        # Reasons are cells of `list`'s aligned table: one line, no tabs.
        assert comp.reason.strip() and not {"\t", "\n"} & set(comp.reason)
    assert set(stems) >= catalog.GL_LOADERS


@pytest.mark.parametrize(("stem", "soname", "expected"), [
    ("libcuda", "libcuda.so.1", {"lib64/libcuda.so.1": "libcuda.so.9.1",
                                 "lib64/libcuda.so": "libcuda.so.9.1"}),
    ("libGLX_nvidia", "libGLX_nvidia.so.0", {"lib64/libGLX_nvidia.so.0": "libGLX_nvidia.so.9.1",
                                             "lib64/libGLX_indirect.so.0": "libGLX_nvidia.so.9.1"}),
    ("libnvidia-opticalflow", "libnvidia-opticalflow.so.1", {
        "lib64/libnvidia-opticalflow.so.1": "libnvidia-opticalflow.so.9.1",
        "lib64/libnvidia-opticalflow.so": "libnvidia-opticalflow.so.1"}),
    ("libnvidia-glcore", "libnvidia-glcore.so.9.1", {}),
], ids=["libcuda", "GLX_indirect", "opticalflow", "no-link"])
def test_library_links(stem, soname, expected):
    filename = soname if soname.endswith("9.1") else f"{stem}.so.9.1"
    links = catalog.library_links("lib64", stem, filename, soname)
    assert {path: target for path, target, _why in links} == expected
    assert all(why for _p, _t, why in links)


def _facts(needed=(), abi=None, elf_type="ET_DYN", bits=64, arch="x86-64") -> ElfFacts:
    return ElfFacts(path="/x", bits=bits, machine="EM_X86_64", arch=arch, elf_type=elf_type,
                    soname=None, needed=tuple(needed), abi_tag=abi)


@pytest.mark.parametrize(("stem", "facts", "reason"), [
    ("libGL", _facts(["libGLdispatch.so.0"]), None),
    ("libGL", _facts(["libnvidia-glcore.so.375.26"]), None),
    ("libEGL", _facts(["libnvidia-eglcore.so.375.26"]), None),
    ("libGL", _facts(["libglapi.so.0", "libdrm.so.2"]), "another vendor"),
    ("libGLESv2", _facts([]), "another vendor"),
    ("libGLX", _facts([]), None),  # not a Mesa name: no check
    ("libnvidia-tls", _facts(abi=(0, 2, 3, 99)), None),
    ("libnvidia-tls", _facts(abi=(0, 2, 2, 5)), "classic-TLS"),
    ("libnvidia-tls", _facts(abi=None), "no .note.ABI-tag"),
    ("libcuda", _facts(elf_type="ET_EXEC"), "not a shared library"),
    ("libcuda", _facts(bits=32, arch="x32"), "x32"),
], ids=["glvnd-GL", "legacy-GL", "legacy-EGL", "mesa-GL", "mesa-GLES", "GLX-unchecked",
        "new-tls", "classic-tls", "tls-no-note", "executable", "x32"])
def test_blacklist(stem, facts, reason):
    comp = next(c for c in catalog.LIBRARIES if c.pattern == stem)
    got = catalog.blacklisted(comp, facts)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got
