"""CDI's name rules, as engines apply them when they load a spec (the reference Go library's
parser, which Podman, Docker, containerd and CRI-O all use).

    kind    := vendor "/" class                      nvidia.com/gpu
    vendor  := letter [A-Za-z0-9_.-]* alnum          (at least 2 characters, see below)
    class   := letter [A-Za-z0-9_-]* alnum           (a "." needs cdiVersion 0.6.0)
    device  := alnum ([A-Za-z0-9_.:-]* alnum)?        0, GPU-<uuid>, 0:1, MIG-<uuid>, all
    qualified device := kind "=" device              nvidia.com/gpu=0

The library checks a vendor or class's middle as `name[1:len(name)-1]`, which panics on a
one-character name in some releases: one-character vendors and classes are refused here. Dots
in the class are refused too: they need cdiVersion 0.6.0, which Debian 12's Podman 4.3 does not
read (`spec.MAX_VERSION`). Pure.
"""

from __future__ import annotations

import re

from nvplugin.core.errors import CdiError
from nvplugin.core.text import quote_untrusted

_VENDOR = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*[A-Za-z0-9]")
_CLASS = re.compile(r"[A-Za-z][A-Za-z0-9_-]*[A-Za-z0-9]")
_DEVICE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?")
QUOTE_LIMIT = 64


def split_kind(kind: str) -> tuple[str, str]:
    """`vendor/class` as (vendor, class); CdiError naming the rule a part breaks."""
    vendor, sep, cls = kind.partition("/")
    shown = quote_untrusted(kind, QUOTE_LIMIT)
    if not sep:
        raise CdiError(f"invalid CDI kind {shown!r}: expected vendor/class, e.g. nvidia.com/gpu")
    if not _VENDOR.fullmatch(vendor):
        raise CdiError(f"invalid CDI kind {shown!r}: the vendor must start with a letter, end "
                       "with a letter or digit, have at least 2 characters and hold only "
                       "letters, digits, '_', '-' and '.'")
    if not _CLASS.fullmatch(cls):
        raise CdiError(f"invalid CDI kind {shown!r}: the class must start with a letter, end "
                       "with a letter or digit, have at least 2 characters and hold only "
                       "letters, digits, '_' and '-' (a '.' needs cdiVersion 0.6.0, which "
                       "Podman 4.3 refuses)")
    return vendor, cls


def check_device_name(name: str) -> str:
    """`name` when CDI accepts it as a device name, else CdiError."""
    if not _DEVICE.fullmatch(name):
        raise CdiError(f"invalid CDI device name {quote_untrusted(name, QUOTE_LIMIT)!r}: it must "
                       "start and end with a letter or digit and hold only letters, digits, "
                       "'_', '-', '.' and ':'")
    return name


def qualified(kind: str, name: str) -> str:
    """`nvidia.com/gpu=0`: what `--device` takes."""
    return f"{kind}={name}"
