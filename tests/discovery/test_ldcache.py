"""The ld.so.cache parser against ldconfig itself, against damage, and under fuzzing."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvplugin.core.errors import CacheFormatError
from nvplugin.driver import ldcache
from tests.discovery.multilib import has_32bit
from tests.fakehost.build import write_ld_cache
from tests.requirements import need, need_tool

_LINE = re.compile(r"^\t(\S+) \(([^)]*)\) => (.*)$", re.M)
_ARCH_WORDS = {"libc6,x86-64": "x86-64", "libc6": "i386", "libc6,x32": "x32",
               "libc6,AArch64": "aarch64", "libc6,64bit": "ppc64le",
               "ELF": "i386"}  # plain ELF (flags 0x0001): ld-linux.so.2 on multilib hosts


def ldconfig_p(cache: Path) -> list[tuple[str, str, str]]:
    """(key, arch, path) as `ldconfig -p -C` prints them."""
    out = subprocess.run([need_tool("ldconfig"), "-p", "-C", str(cache)], capture_output=True,
                         text=True, check=True).stdout
    return [(m[1], _ARCH_WORDS.get(m[2].split(", hwcap")[0], m[2]), m[3])
            for m in _LINE.finditer(out)]


def ours(cache: Path) -> list[tuple[str, str, str]]:
    return [(e.key, e.arch, e.path) for e in ldcache.parse(cache.read_bytes(), str(cache))]


@pytest.mark.parametrize("cache_format", ["new", "compat"], ids=["new-only", "compat"])
def test_agrees_with_ldconfig_on_fake_host(fake_host_factory, cache_format):
    host = fake_host_factory(cache_format=cache_format, stale_version="570.86.15")
    data = host.cache_path.read_bytes()
    assert data.startswith(b"ld.so-1.7.0" if cache_format == "compat" else b"glibc-ld.so.cache")
    expected = ldconfig_p(host.cache_path)
    assert len(expected) > 60
    assert ours(host.cache_path) == expected


def test_agrees_with_ldconfig_on_this_machine():
    cache = Path("/etc/ld.so.cache")
    need(cache.exists(), "/etc/ld.so.cache (run ldconfig)")
    assert ours(cache) == ldconfig_p(cache)


def test_compat_and_new_list_the_same_entries(fake_host_factory):
    new = fake_host_factory(cache_format="new")
    compat = fake_host_factory(cache_format="compat")
    assert ldcache.new_header_offset(compat.cache_path.read_bytes()) > 0
    assert ldcache.new_header_offset(new.cache_path.read_bytes()) == 0
    assert ours(new.cache_path) == ours(compat.cache_path)


def test_entries_carry_arch_and_bits(fake_host):
    entries = ldcache.parse(fake_host.cache_path.read_bytes())
    by_arch = {(e.arch, e.bits) for e in entries if e.key == "libcuda.so.1"}
    assert ("x86-64", 64) in by_arch
    if has_32bit(fake_host):
        assert ("i386", 32) in by_arch


def _real_cache(tmp_path: Path, fmt: str) -> bytes:
    need_tool("ldconfig")
    lib = tmp_path / "root/usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True)
    for name in ("libone.so.1", "libtwo.so.2"):
        subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{name}", "-x", "c", "-", "-o",
                        str(lib / name)], input=b"int f(void){return 1;}", check=True)
    write_ld_cache(tmp_path / "root", ["/usr/lib/x86_64-linux-gnu"], fmt)
    return (tmp_path / "root/etc/ld.so.cache").read_bytes()


def _new_start(data: bytes) -> int:
    return ldcache.new_header_offset(data)


DAMAGE = [
    ("empty", lambda d: b"", "not an ld.so.cache"),
    ("foreign", lambda d: b"\x7fELF" + d[4:], "not an ld.so.cache"),
    ("header-cut", lambda d: d[: _new_start(d) + 30], "truncated"),
    ("table-cut", lambda d: d[: _new_start(d) + 48 + 10], "truncated"),
    ("strings-cut", lambda d: d[: len(d) - 200], "truncated|past the end|NUL"),
    ("huge-count", lambda d: d[: _new_start(d) + 20] + struct.pack("<I", 10**9)
     + d[_new_start(d) + 24:], "announces 1000000000 entries"),
    ("bad-version", lambda d: d[: _new_start(d) + 17] + b"9.9" + d[_new_start(d) + 20:],
     "bad new-format magic"),
    ("key-offset-out", lambda d: d[: _new_start(d) + 48 + 4] + struct.pack("<I", 0xFFFFFF00)
     + d[_new_start(d) + 56:], "points past the end"),
    ("big-endian", lambda d: d[: _new_start(d) + 28] + b"\x03" + d[_new_start(d) + 29:],
     "big-endian"),
]


@pytest.mark.parametrize("fmt", ["new", "compat"])
@pytest.mark.parametrize(("damage", "message"), [(d, m) for _n, d, m in DAMAGE],
                         ids=[n for n, _d, _m in DAMAGE])
def test_damage_is_one_clear_error(tmp_path, fmt, damage, message):
    data = damage(_real_cache(tmp_path, fmt))
    with pytest.raises(CacheFormatError, match=message) as info:
        ldcache.parse(data, "/x/etc/ld.so.cache")
    assert "/x/etc/ld.so.cache" in str(info.value)


def test_old_only_cache_is_refused():
    data = b"ld.so-1.7.0\0" + struct.pack("<I", 1) + struct.pack("<iII", 0x303, 0, 0)
    with pytest.raises(CacheFormatError, match="no new-format table follows"):
        ldcache.parse(data, "old.cache")


def test_libc5_and_non_elf_entries_are_skipped():
    strings = b"libkeep.so.1\0/lib/libkeep.so.1\0libold.so.1\0/lib/libold.so.1\0"
    table = (struct.pack("<iIIIQ", 0x0303, 48 + 48, 48 + 48 + 13, 0, 0)
             + struct.pack("<iIIIQ", 0x0002, 48 + 48 + 31, 48 + 48 + 43, 0, 0))
    header = struct.pack("<17s3sIIB3sI12s", b"glibc-ld.so.cache", b"1.1", 2, len(strings), 2,
                         b"", 0, b"")
    entries = ldcache.parse(header + table + strings)
    assert [(e.key, e.path, e.arch) for e in entries] == [
        ("libkeep.so.1", "/lib/libkeep.so.1", "x86-64")]


@pytest.mark.parametrize(("flags", "arch", "bits"), [
    (0x0303, "x86-64", 64), (0x0003, "i386", 32), (0x0803, "x32", 32),
    (0x0A03, "aarch64", 64), (0x0503, "ppc64le", 64), (0x1103, "flags=0x1103", 0),
], ids=["x86-64", "i386", "x32", "aarch64", "ppc64le", "unknown"])
def test_arch_from_flags(flags, arch, bits):
    strings = b"libx.so.1\0/lib/libx.so.1\0"
    header = struct.pack("<17s3sIIB3sI12s", b"glibc-ld.so.cache", b"1.1", 1, len(strings), 2,
                         b"", 0, b"")
    entry = struct.pack("<iIIIQ", flags, 72, 82, 0, 0)
    (parsed,) = ldcache.parse(header + entry + strings)
    assert (parsed.arch, parsed.bits) == (arch, bits)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data):
    for blob in (data, b"glibc-ld.so.cache1.1" + data, b"ld.so-1.7.0\0" + data):
        try:
            entries = ldcache.parse(blob, "fuzz")
        except CacheFormatError as err:
            assert "fuzz" in str(err)
            continue
        assert all(e.key and e.path for e in entries)


@pytest.fixture(scope="module")
def real_caches(tmp_path_factory) -> list[bytes]:
    tmp = tmp_path_factory.mktemp("caches")
    caches = [_real_cache(tmp / fmt, fmt) for fmt in ("new", "compat")]
    system = Path("/etc/ld.so.cache")
    if system.exists():
        caches.append(system.read_bytes())
    return caches


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 2), cut=st.integers(0, 1 << 16),
       edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8))
def test_fuzz_mutated_real_caches(real_caches, which, cut, edits):
    data = bytearray(real_caches[which % len(real_caches)])
    for pos, value in edits:
        data[pos % len(data)] = value
    data = data[: max(1, len(data) - cut % 64)] if cut % 3 == 0 else data
    try:
        entries = ldcache.parse(bytes(data), "mutated")
    except CacheFormatError:
        return
    assert all(e.key and e.path for e in entries)
