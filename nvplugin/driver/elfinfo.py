"""ELF facts discovery needs: class, machine, SONAME, NEEDED, ABI tag.

`inspect(path)` is the only function that touches the file; everything else is a pure predicate
over `ElfFacts`. A file that is not ELF or is damaged raises `ElfError` naming it, so discovery
can skip it with a reason instead of aborting (1.0 failed the whole volume on one bad file).

Ordinary driver files (program headers, the dynamic table, the GNU ABI note) are read directly;
pyelftools reads the unusual ones and words the damage reports. It is imported only then: it
costs the daemon about 20 ms of start-up and 3-5 MB of memory (it pulls in `pdb` and its
`construct` copy), and no file of the fake host or the H200's driver needs it.
"""

from __future__ import annotations

import os
import re
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from nvplugin.core.errors import ElfError, RootEscapeError, UnsafeFileError
from nvplugin.driver.hostroot import HostRoot

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

# e_machine -> (arch name, as in ldcache.ARCHES)
MACHINES: dict[str, str] = {
    "EM_X86_64": "x86-64",
    "EM_386": "i386",
    "EM_AARCH64": "aarch64",
    "EM_PPC64": "ppc64le",
}
# NVIDIA's new-TLS libnvidia-tls carries the ABI tag Linux 2.3.99; the classic-TLS build does not.
NEW_TLS_ABI = (0, 2, 3, 99)
_GL_LOADER_NEEDS = re.compile(r"^(libnvidia-e?glcore\.so|libGLdispatch\.so)")


@dataclass(frozen=True, slots=True)
class ElfFacts:
    """What discovery needs of one ELF file's headers."""

    path: str
    bits: int  # 32 or 64
    machine: str  # pyelftools' e_machine name, e.g. EM_X86_64
    arch: str  # "x86-64", "i386", ...; x32 objects are ELFCLASS32 + EM_X86_64
    elf_type: str  # ET_DYN, ET_EXEC
    soname: str | None
    needed: tuple[str, ...]
    abi_tag: tuple[int, int, int, int] | None  # (os, major, minor, patch) of .note.ABI-tag


def inspect(path: str, *, abi_tag: bool = False, fd: int | None = None) -> ElfFacts:
    """Read one file's ELF facts; the ABI note only when asked.

    With `fd`, the facts come from that open file (discovery opens it inside the driver root)
    and `path` only names it; without, `path` is opened (tests, tools).

    The program headers, dynamic table and notes of an ordinary library are read directly
    (pyelftools builds its parsers per file, about 1 ms each, and discovery reads dozens of
    files); anything unusual goes through pyelftools, which also words the damage reports.
    """
    try:
        with _reader(path, fd) as f:
            return _inspect_fast(path, f, abi_tag)
    except _Unusual:
        pass
    except OSError as err:
        raise ElfError(f"{path}: cannot read: {err.strerror or err}") from err
    return _inspect_pyelftools(path, abi_tag, fd)


def _not_elf(path: str, magic: bytes) -> ElfError:
    return ElfError(f"{path}: not an ELF file (starts with {magic!r})")


def _reader(path: str, fd: int | None) -> BinaryIO:
    """A binary reader from the start of `fd` (left open: its owner closes it), else of `path`."""
    if fd is None:
        return open(path, "rb")
    f = os.fdopen(os.dup(fd), "rb")
    f.seek(0)
    return f


def _inspect_pyelftools(path: str, abi_tag: bool, fd: int | None = None) -> ElfFacts:
    from elftools.common.exceptions import ELFError as PyElfError  # see the module docstring
    from elftools.elf.elffile import ELFFile

    try:
        with _reader(path, fd) as f:
            magic = f.read(4)
            if magic != b"\x7fELF":
                raise _not_elf(path, magic)
            f.seek(0)
            elf = ELFFile(f)
            bits = elf.elfclass
            machine = str(elf["e_machine"])
            elf_type = str(elf["e_type"])
            soname, needed = _dynamic(elf)
            abi = _abi_tag(elf, path) if abi_tag else None
    except ElfError:
        raise
    except (PyElfError, struct.error, ValueError, OSError, EOFError, UnicodeDecodeError,
            KeyError, IndexError, AttributeError, TypeError) as err:
        # pyelftools reports damage through several exception types; all mean "unusable".
        raise ElfError(f"{path}: damaged ELF file ({type(err).__name__}: {err})") from err
    return _facts(path, bits, machine, elf_type, soname, needed, abi)


def _facts(path: str, bits: int, machine: str, elf_type: str, soname: str | None,
           needed: tuple[str, ...], abi: tuple[int, int, int, int] | None) -> ElfFacts:
    arch = MACHINES.get(machine, machine.removeprefix("EM_").lower())
    if machine == "EM_X86_64" and bits == 32:
        arch = "x32"
    return ElfFacts(path=path, bits=bits, machine=machine, arch=arch, elf_type=elf_type,
                    soname=soname, needed=needed, abi_tag=abi)


class _Unusual(Exception):
    """The direct reader met something it does not handle; pyelftools takes over."""


_E_MACHINE = {62: "EM_X86_64", 3: "EM_386", 183: "EM_AARCH64", 21: "EM_PPC64"}
_E_TYPE = {2: "ET_EXEC", 3: "ET_DYN"}
# (header fields: e_type, e_machine, e_phoff, e_phentsize, e_phnum; phdr; dyn entry)
_LAYOUT = {
    (2, "<"): ("<16xHHI8xQ14xHH", "<IIQQQQQQ", "<qQ", (0, 2, 3, 5)),
    (1, "<"): ("<16xHHI4xI10xHH", "<IIIIIIII", "<iI", (0, 1, 2, 4)),
    (2, ">"): (">16xHHI8xQ14xHH", ">IIQQQQQQ", ">qQ", (0, 2, 3, 5)),
    (1, ">"): (">16xHHI4xI10xHH", ">IIIIIIII", ">iI", (0, 1, 2, 4)),
}


def _inspect_fast(path: str, f: BinaryIO, abi_tag: bool) -> ElfFacts:
    ident = f.read(64)
    if ident[:4] != b"\x7fELF":
        raise _not_elf(path, ident[:4])
    if len(ident) < 52 or ident[4] not in (1, 2):
        raise _Unusual
    bits = 32 * ident[4]
    endian = "<" if ident[5] == 1 else ">"
    header, phdr, dyn, (i_type, i_off, i_vaddr, i_filesz) = _LAYOUT[(ident[4], endian)]
    e_type, e_machine, _version, e_phoff, e_phentsize, e_phnum = struct.unpack_from(
        header, ident)
    if e_type not in _E_TYPE or e_machine not in _E_MACHINE:
        raise _Unusual
    size = struct.calcsize(phdr)
    f.seek(e_phoff)
    table = f.read(e_phnum * e_phentsize)
    if e_phentsize < size or len(table) != e_phnum * e_phentsize or e_phnum > 256:
        raise _Unusual
    loads, dynamic, notes = [], None, []
    for i in range(e_phnum):
        ph = struct.unpack_from(phdr, table, i * e_phentsize)
        if ph[i_type] == 1:
            loads.append((ph[i_vaddr], ph[i_off], ph[i_filesz]))
        elif ph[i_type] == 2:
            dynamic = (ph[i_off], ph[i_filesz])
        elif ph[i_type] == 4:
            notes.append((ph[i_off], ph[i_filesz], ph[_P_ALIGN]))
    soname, needed = (_dynamic_fast(f, dyn, dynamic, loads) if dynamic else (None, ()))
    abi = _abi_note_fast(f, endian, notes) if abi_tag else None
    return _facts(path, bits, _E_MACHINE[e_machine], _E_TYPE[e_type], soname, needed, abi)


_P_ALIGN = 7  # p_align's place in both classes' program header
_NT_GNU_ABI_TAG = 1


def _abi_note_fast(f: BinaryIO, endian: str, notes: list[tuple[int, int, int]],
                   ) -> tuple[int, int, int, int] | None:
    """The GNU ABI note from the PT_NOTE segments (the linker puts .note.ABI-tag in one)."""
    if not notes:
        raise _Unusual  # no note segment: let pyelftools look for the section
    for offset, filesz, align in notes:
        if filesz > 1 << 16:
            raise _Unusual
        f.seek(offset)
        raw = f.read(filesz)
        pad = 8 if align == 8 else 4
        at = 0
        while at + 12 <= len(raw):
            namesz, descsz, note_type = struct.unpack_from(f"{endian}III", raw, at)
            name_at = at + 12
            desc_at = name_at + -(-namesz // pad) * pad
            at = desc_at + -(-descsz // pad) * pad
            if at > len(raw):
                raise _Unusual
            if raw[name_at:name_at + namesz] == b"GNU\0" and note_type == _NT_GNU_ABI_TAG:
                if descsz < 16:
                    raise _Unusual  # pyelftools words what is wrong with it
                os_, major, minor, patch = struct.unpack_from(f"{endian}IIII", raw, desc_at)
                return (os_, major, minor, patch)
    return None


def _dynamic_fast(f: BinaryIO, dyn: str, dynamic: tuple[int, int],
                  loads: list[tuple[int, int, int]]) -> tuple[str | None, tuple[str, ...]]:
    f.seek(dynamic[0])
    raw = f.read(dynamic[1])
    if len(raw) != dynamic[1]:
        raise _Unusual
    strtab, soname_at, needed_at = None, None, []
    for tag, value in struct.iter_unpack(dyn, raw[: len(raw) - len(raw) % struct.calcsize(dyn)]):
        if tag == 0:
            break
        if tag == 5:
            strtab = value
        elif tag == 14:
            soname_at = value
        elif tag == 1:
            needed_at.append(value)
    if strtab is None:
        raise _Unusual
    base = next((off + strtab - vaddr for vaddr, off, filesz in loads
                 if vaddr <= strtab < vaddr + filesz), None)
    if base is None:
        raise _Unusual

    def string(at: int) -> str:
        f.seek(base + at)
        chunk = f.read(256)
        end = chunk.find(b"\0")
        if end < 0:
            raise _Unusual
        return chunk[:end].decode()

    soname = string(soname_at) if soname_at is not None else None
    return soname, tuple(string(at) for at in needed_at)


def _dynamic(elf: ELFFile) -> tuple[str | None, tuple[str, ...]]:
    from elftools.elf.dynamic import DynamicSegment

    # The PT_DYNAMIC segment, not the .dynamic section: a program header walk is a few entries,
    # a section lookup parses every section header (3-5x slower on driver libraries).
    dynamic = next((s for s in elf.iter_segments() if isinstance(s, DynamicSegment)), None)
    if dynamic is None:
        return None, ()  # static executable
    soname: str | None = None
    needed: list[str] = []
    for tag in dynamic.iter_tags():
        if tag.entry.d_tag == "DT_SONAME":
            soname = str(tag.soname)  # type: ignore[attr-defined]  # set per tag kind
        elif tag.entry.d_tag == "DT_NEEDED":
            needed.append(str(tag.needed))  # type: ignore[attr-defined]
    return soname, tuple(needed)


def _abi_tag(elf: ELFFile, path: str) -> tuple[int, int, int, int] | None:
    section = elf.get_section_by_name(".note.ABI-tag")
    if section is None:
        return None
    data = section.data()
    if len(data) < 32:
        raise ElfError(f"{path}: .note.ABI-tag is {len(data)} bytes, expected 32")
    endian = "<" if elf.little_endian else ">"
    namesz, descsz, _type = struct.unpack_from(f"{endian}III", data, 0)
    if namesz != 4 or descsz < 16 or data[12:16] != b"GNU\0":
        raise ElfError(f"{path}: .note.ABI-tag is not a GNU ABI note")
    os_, major, minor, patch = struct.unpack_from(f"{endian}IIII", data, 16)
    return (os_, major, minor, patch)


def is_nvidia_gl_loader(facts: ElfFacts) -> bool:
    """GL/EGL/GLES loaders are NVIDIA's (legacy) or GLVND's only if they need glcore/GLdispatch."""
    return any(_GL_LOADER_NEEDS.match(n) for n in facts.needed)


def is_new_tls(facts: ElfFacts) -> bool:
    return facts.abi_tag is not None and facts.abi_tag[1:] == NEW_TLS_ABI[1:]


def describe_abi(facts: ElfFacts) -> str:
    if facts.abi_tag is None:
        return "no .note.ABI-tag"
    return "ABI tag " + ".".join(str(x) for x in facts.abi_tag[1:])


class ElfMemo:
    """`inspect` results by file identity, so re-discovery after a driver change re-reads only
    the files that changed. Owned by whoever re-runs discovery (the daemon's DriverState)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._facts: dict[tuple[object, ...], ElfFacts] = {}
        self._max_entries = max_entries
        self.reads = 0  # files read, and the seconds that took: for discovery's debug line
        self.read_seconds = 0.0

    def __len__(self) -> int:
        return len(self._facts)

    def inspect(self, root: HostRoot, inner: str, *, abi_tag: bool = False,
                ) -> tuple[ElfFacts, tuple[int, int]]:
        """`inspect` of the regular file at `inner`, opened inside `root`, with its (device,
        inode); remembered while the file's inode, size and mtime stay the same. ElfError for
        a file that is not usable ELF or cannot be opened (UnsafeFileError's reason kept)."""
        host = root.host(inner)
        try:
            with root.open_file(inner) as f:
                st = f.st
                key = (host, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, abi_tag)
                facts = self._facts.get(key)
                if facts is None:
                    if len(self._facts) >= self._max_entries:
                        self._facts.clear()
                    started = time.perf_counter()
                    try:
                        facts = self._facts[key] = inspect(host, abi_tag=abi_tag, fd=f.fd)
                    finally:
                        self.reads += 1
                        self.read_seconds += time.perf_counter() - started
        except UnsafeFileError as err:
            raise ElfError(err.message) from err
        except (OSError, RootEscapeError) as err:
            raise ElfError(f"{host}: cannot read: {getattr(err, 'strerror', None) or err}"
                           ) from err
        return facts, (st.st_dev, st.st_ino)

