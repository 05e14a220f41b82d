"""Which of the driver's library files go into the volume, and why the others do not.

Pure: candidates (real files already read as ELF) in; entries, links and rejections out.
1.0's blacklist applies first (Mesa look-alike GL loaders, classic-TLS libnvidia-tls); then
exactly one file per SONAME and ELF class is kept, preferring the one named after the running
driver version. A versioned library with no copy of that version is an older driver's leftover;
an unversioned one (GLVND, egl-wayland) keeps the first copy in cache order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nvplugin.driver import catalog, driver_version, elfinfo
from nvplugin.driver.catalog import Component
from nvplugin.driver.manifest import Entry, Link, Rejected

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class Candidate:
    """A library found under the driver root, read as ELF, before the choice."""

    inner: str  # real file, in-root path (symlinks resolved)
    source: str  # the same file's host path
    found: str  # how it was found, for the reasons
    component: Component
    facts: elfinfo.ElfFacts
    ident: tuple[int, int]  # (st_dev, st_ino) of the file read

    @property
    def name(self) -> str:
        return self.inner.rsplit("/", 1)[-1]


def choose_libraries(candidates: list[Candidate], version: str, rejected: list[Rejected],
                     ) -> tuple[list[Entry], list[Link]]:
    """1.0's blacklist, then one file per (SONAME, ELF class), the running version first."""
    groups: dict[tuple[str, int], list[Candidate]] = {}
    for cand in candidates:
        why = catalog.blacklisted(cand.component, cand.facts)
        if why:
            log.debug("Skipping %s: %s", cand.source, why)
            rejected.append(Rejected(cand.source, why))
            continue
        groups.setdefault((cand.facts.soname or cand.name, cand.facts.bits), []).append(cand)
    entries: list[Entry] = []
    links: dict[str, Link] = {}
    dests: dict[str, str] = {}
    for (soname, bits), group in groups.items():
        current = [c for c in group if c.name.endswith(f".so.{version}")]
        if current:
            winner: Candidate | None = current[0]
        elif group[0].component.versioned:
            winner = None  # every copy belongs to another driver version
        else:
            winner = group[0]  # carries its own version (GLVND, egl-wayland): cache order wins
        for cand in group:
            if cand is not winner:
                rejected.append(Rejected(cand.source, _loser(cand, winner, version)))
        if winner is None:
            continue
        directory = "lib64" if bits == 64 else "lib"
        dest = f"{directory}/{winner.name}"
        if dest in dests:
            rejected.append(Rejected(winner.source, f"{dest} holds {dests[dest]}"))
            continue
        dests[dest] = winner.source
        comp = winner.component
        note = f", named for driver {version}" if winner in current else ""
        entries.append(Entry(
            source=winner.source, dest=dest, kind="lib",
            capability=comp.capability if bits == 64 else "compat32",
            reason=f"{comp.reason} ({winner.found}{note})",
            arch=winner.facts.arch, soname=winner.facts.soname, ident=winner.ident))
        for link in catalog.library_links(directory, comp.pattern, winner.name, soname):
            links.setdefault(link[0], Link(*link))
    entries.sort(key=lambda e: e.dest)
    return entries, sorted(links.values(), key=lambda x: x.path)


def _loser(cand: Candidate, winner: Candidate | None, version: str) -> str:
    other = driver_version.from_file_name(cand.name)
    if cand.component.versioned and other and other != version:
        return f"left over from driver {other}; the running driver is {version}"
    if winner is None:
        return f"no copy of {cand.facts.soname or cand.name} is named for driver {version}"
    return (f"duplicate of {winner.inner} (same SONAME {cand.facts.soname or cand.name}, "
            f"{cand.facts.bits}-bit); one copy per SONAME")
