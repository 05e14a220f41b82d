"""library_choice over hand-made candidates: no files, only the choice and its reasons."""

from __future__ import annotations

from nvplugin.driver import catalog
from nvplugin.driver.elfinfo import ElfFacts
from nvplugin.driver.library_choice import Candidate, choose_libraries
from nvplugin.driver.manifest import Rejected

LIB64 = "/usr/lib/x86_64-linux-gnu"


def candidate(name: str, soname: str | None, bits: int = 64) -> Candidate:
    component = catalog.library(name)
    assert component is not None, name
    inner = f"{LIB64}/{name}"
    facts = ElfFacts(path=inner, bits=bits, machine="EM_X86_64", arch="x86-64",
                     elf_type="ET_DYN", soname=soname, needed=(), abi_tag=None)
    return Candidate(inner=inner, source="/host" + inner, found="ld.so.cache",
                     component=component, facts=facts, ident=(1, hash(inner) & 0xFFFF))


def test_the_running_version_wins_and_leftovers_say_why() -> None:
    rejected: list[Rejected] = []
    entries, links = choose_libraries([candidate("libcuda.so.570.86.15", "libcuda.so.1"),
                                       candidate("libcuda.so.580.159.04", "libcuda.so.1")],
                                      "580.159.04", rejected)
    assert [(e.source, e.dest) for e in entries] == [
        (f"/host{LIB64}/libcuda.so.580.159.04", "lib64/libcuda.so.580.159.04")]
    assert "named for driver 580.159.04" in entries[0].reason
    assert rejected == [Rejected(f"/host{LIB64}/libcuda.so.570.86.15",
                                 "left over from driver 570.86.15; the running driver is "
                                 "580.159.04")]
    assert {link.path for link in links} >= {"lib64/libcuda.so.1", "lib64/libcuda.so"}


def test_no_copy_of_the_running_version_keeps_nothing() -> None:
    rejected: list[Rejected] = []
    entries, _ = choose_libraries([candidate("libcuda.so.570.86.15", "libcuda.so.1")],
                                  "580.159.04", rejected)
    assert entries == [] and "left over from driver 570.86.15" in rejected[0].reason


def test_one_copy_per_soname_and_class() -> None:
    rejected: list[Rejected] = []
    # egl-gbm carries its own version, so the first copy in cache order wins
    first = candidate("libnvidia-egl-gbm.so.1.1.2", "libnvidia-egl-gbm.so.1")
    second = Candidate(inner="/usr/lib64/libnvidia-egl-gbm.so.1.1.2", source="/host/x",
                       found="found in /usr/lib64", component=first.component, facts=first.facts,
                       ident=(1, 2))
    i386 = candidate("libnvidia-egl-gbm.so.1.1.2", "libnvidia-egl-gbm.so.1", bits=32)
    entries, _ = choose_libraries([first, second, i386], "580.159.04", rejected)
    assert [(e.dest, e.capability) for e in entries] == [
        ("lib/libnvidia-egl-gbm.so.1.1.2", "compat32"),
        ("lib64/libnvidia-egl-gbm.so.1.1.2", "display")]
    assert [r.reason.split(" (")[0] for r in rejected] == [f"duplicate of {first.inner}"]
