"""A pure parser for glibc's `ld.so.cache` (what `ldconfig -p` prints), free of I/O.

Three shapes exist in the wild:
  * new-only: `glibc-ld.so.cache1.1` header at offset 0 (glibc >= 2.32 default);
  * compat:   the old `ld.so-1.7.0` table first, the new header at the next 8-byte boundary;
  * old-only: libc5-era files with no new table; refused (nothing current writes them).

New header (48 bytes, little-endian): magic 17 + version 3, `u32 nlibs`, `u32 len_strings`,
`u8 flags` (2 = little-endian, 3 = big-endian, 0 = unset), 3 pad, `u32 extension_offset`,
12 unused. Then `nlibs` entries of 24 bytes: `i32 flags, u32 key, u32 value, u32 osversion,
u64 hwcap`. `key` (the SONAME) and `value` (the path) are offsets of NUL-terminated strings,
counted from the start of the new header. Every offset and count is checked; any violation is
one `CacheFormatError` naming the file and the fault, never IndexError or struct.error.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from typing import Any

from nvplugin.core.errors import CacheFormatError

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache"
NEW_VERSION = b"1.1"
_OLD_HEADER = struct.Struct("<12sI")  # magic + NUL, nlibs
_OLD_ENTRY_SIZE = 12  # i32 flags, u32 key, u32 value
_NEW_HEADER = struct.Struct("<17s3sIIB3sI12s")
_NEW_ENTRY = struct.Struct("<iIIIQ")
_ENDIAN_BIG = 3
_FS_ENCODING = sys.getfilesystemencoding()

# Entry flags: low byte is the library type, high byte the architecture (glibc's ldconfig.h).
FLAG_TYPE_MASK = 0x00FF
FLAG_ELF = 0x0001  # set for ELF libc6 (0x03) and plain ELF (0x01); clear for libc4/libc5
FLAG_ARCH_MASK = 0xFF00

# arch byte -> (name, pointer bits). ldconfig -p prints these as "(libc6,<name>)".
ARCHES: dict[int, tuple[str, int]] = {
    0x0000: ("i386", 32),  # no arch byte: the native 32-bit x86 (and 32-bit ARM etc.) flavour
    0x0300: ("x86-64", 64),
    0x0500: ("ppc64le", 64),
    0x0800: ("x32", 32),
    0x0A00: ("aarch64", 64),
}


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One library the dynamic loader knows: `key` is the SONAME, `path` where it lives."""

    key: str
    path: str  # absolute path as seen from the cache's own root
    arch: str  # "x86-64", "i386", "x32", "aarch64", "ppc64le" or "flags=0x...."
    bits: int  # 64 or 32; 0 when the architecture is unknown
    flags: int
    hwcap: int = 0


def parse(data: bytes, filename: str = "ld.so.cache") -> list[CacheEntry]:
    """Every ELF libc6 entry of the cache in file order; libc4/libc5 (non-ELF) entries skipped."""
    start = new_header_offset(data, filename)
    fields = _unpack(_NEW_HEADER, data, start, filename, "the new-format header")
    magic, version, nlibs, _len_strings, flags, _pad, _ext, _unused = fields
    if magic != NEW_MAGIC or version != NEW_VERSION:
        raise _error(filename, f"bad new-format magic {magic + version!r} at offset {start}")
    if flags == _ENDIAN_BIG:
        raise _error(filename, "it is a big-endian cache from another machine")
    table = start + _NEW_HEADER.size
    if nlibs > (len(data) - table) // _NEW_ENTRY.size:
        raise _error(filename, f"header announces {nlibs} entries but the file ends at byte "
                               f"{len(data)} (truncated)")
    entries: list[CacheEntry] = []
    rows = _NEW_ENTRY.iter_unpack(data[table: table + nlibs * _NEW_ENTRY.size])
    find, size, enc = data.find, len(data), _FS_ENCODING
    for index, (eflags, key, value, _osv, hwcap) in enumerate(rows):
        if not eflags & FLAG_ELF:
            continue
        # Inlined string reads (this loop runs for every library on the host); any doubt is
        # handed to _string, which says exactly what is wrong.
        k, v = start + key, start + value
        k_end, v_end = find(b"\0", k), find(b"\0", v)
        if not (k < k_end and v < v_end and k < size and v < size):
            _string(data, start, key, filename, index, "name")
            _string(data, start, value, filename, index, "path")
        arch, bits = ARCHES.get(eflags & FLAG_ARCH_MASK, (f"flags=0x{eflags & 0xFFFF:04x}", 0))
        entries.append(CacheEntry(data[k:k_end].decode(enc, "surrogateescape"),
                                  data[v:v_end].decode(enc, "surrogateescape"),
                                  arch, bits, eflags, hwcap))
    return entries


def new_header_offset(data: bytes, filename: str = "ld.so.cache") -> int:
    """Where the new-format header starts: 0, or after the old table in a compat cache."""
    if data.startswith(NEW_MAGIC):
        return 0
    if not data.startswith(OLD_MAGIC):
        head = data[:17]
        raise _error(filename, f"it starts with {head!r}, not {NEW_MAGIC.decode()!r} or "
                               f"{OLD_MAGIC.decode()!r} (not an ld.so.cache)")
    _magic, nlibs = _unpack(_OLD_HEADER, data, 0, filename, "the old-format header")
    end = _OLD_HEADER.size + nlibs * _OLD_ENTRY_SIZE
    start = (end + 7) & ~7
    if start >= len(data):
        raise _error(filename, f"the old-format table ({nlibs} entries) runs to byte {end} "
                               f"and no new-format table follows (truncated, or a libc5-only "
                               f"cache, which is not supported)")
    return start


def _unpack(fmt: struct.Struct, data: bytes, offset: int, filename: str,
            what: str) -> tuple[Any, ...]:
    if offset + fmt.size > len(data):
        raise _error(filename, f"{what} at byte {offset} needs {fmt.size} bytes but the file "
                               f"has {len(data)} (truncated)")
    return fmt.unpack_from(data, offset)


def _string(data: bytes, base: int, offset: int, filename: str, index: int, what: str) -> str:
    begin = base + offset
    if begin >= len(data):
        raise _error(filename, f"entry {index}: {what} offset {offset} points past the end "
                               f"of the file ({len(data)} bytes)")
    end = data.find(b"\0", begin)
    if end < 0:
        raise _error(filename, f"entry {index}: {what} at offset {offset} is not "
                               f"NUL-terminated (truncated)")
    if end == begin:
        raise _error(filename, f"entry {index}: {what} at offset {offset} is empty")
    return data[begin:end].decode(_FS_ENCODING, "surrogateescape")  # as os.fsdecode


def _error(filename: str, what: str) -> CacheFormatError:
    return CacheFormatError(f"invalid ld.so.cache file {filename}: {what}; regenerate it with "
                            f"'ldconfig' or point --driver-root at the right root")
