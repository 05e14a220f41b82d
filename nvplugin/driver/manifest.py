"""What a driver volume holds: the records discovery produces and the volume builder consumes.

Pure data; no I/O. Paths in `dest` and `Link.path` are relative to the volume's root
(`bin/nvidia-smi`, `lib64/libcuda.so.580.159.04`, `lib64/libcuda.so.1`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["lib", "bin", "firmware", "config"]
CAPABILITIES = ("compute", "utility", "video", "graphics", "display", "ngx", "compat32")


@dataclass(frozen=True, slots=True)
class Entry:
    """One file copied or linked into the volume."""

    source: str  # absolute host path of the real file (symlinks resolved, under the driver root)
    dest: str  # relative path inside the volume
    kind: Kind
    capability: str  # one of CAPABILITIES
    reason: str  # why it was chosen, for `list` and /driver/files
    arch: str | None = None  # "x86-64", "i386", "aarch64", ... for ELF files
    soname: str | None = None
    # (st_dev, st_ino) of the file discovery inspected: the build copies or links that file and
    # no other (a file replaced, or swapped for a link, since is refused). None: not vetted.
    ident: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Link:
    """A relative symlink inside the volume (SONAME links, libcuda.so, libGLX_indirect.so.0)."""

    path: str  # relative path inside the volume
    target: str  # what the link points to, relative to the link's directory
    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A candidate discovery looked at and left out."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """The driver's files for one version: what the volume and the CDI spec are made of."""

    version: str  # driver version, e.g. 580.159.04
    entries: tuple[Entry, ...] = ()
    links: tuple[Link, ...] = ()
    rejected: tuple[Rejected, ...] = ()
    # Directories the volume always has, even when empty (1.0 created all three).
    dirs: tuple[str, ...] = field(default=("bin", "lib", "lib64"))
    root: str = "/"  # the driver root the entries' sources lie under; builds open them inside it

    def to_json(self) -> dict[str, Any]:
        return {
            "Version": self.version,
            "Files": [{k: v for k, v in asdict(e).items() if k != "ident"}
                      for e in self.entries],
            "Links": [asdict(link) for link in self.links],
            "Rejected": [asdict(r) for r in self.rejected],
        }

    def digest(self) -> str:
        """Identifies the selection, so a volume can tell whether it was built from it."""
        # The files' identities too: a driver reinstalled over itself (same names, new inodes)
        # is a change, and the old identities would no longer build.
        body = json.dumps(
            [[(e.source, e.dest, e.ident) for e in self.entries],
             [(x.path, x.target) for x in self.links]],
            sort_keys=True,
        )
        return hashlib.sha256(body.encode()).hexdigest()
