"""Volume names and what the plugin protocol reports of a volume; pure.

1.0's grammar: `<kind>_<version>`, split at the last `_`; the only kind is `nvidia_driver`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nvplugin.core.errors import VolumeNameError
from nvplugin.core.names import DRIVER_VOLUME_KIND
from nvplugin.core.text import escape_controls

KIND = DRIVER_VOLUME_KIND
NAME_RE = re.compile(r"^([a-zA-Z0-9_.-]+)_([0-9.]+)$")  # 1.0's grammar: greedy, last `_`
VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # refuses `..`, which would leave the kind dir
MAX_NAME = 255
MAX_MOUNT_ID = 256  # Docker's are 64 hex digits


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """A volume as the plugin protocol's List and Get describe it."""

    name: str
    mountpoint: str
    created_at: str | None = None  # RFC 3339, UTC
    mounts: int = 0


def shown(name: str) -> str:
    """A name as echoed in errors and logs: absurd lengths cut, control characters escaped."""
    cut = name if len(name) <= MAX_NAME else name[:64] + f"...({len(name)} characters)"
    return escape_controls(cut)


def parse_name(name: str) -> str:
    """The version in `nvidia_driver_<version>`, or VolumeNameError in 1.0's words."""
    if len(name) > MAX_NAME:
        raise VolumeNameError(f"bad volume format: {shown(name)}")
    match = NAME_RE.fullmatch(name)
    if match is None or not VERSION_RE.fullmatch(match.group(2)):
        raise VolumeNameError(f"bad volume format: {shown(name)}")
    if match.group(1) != KIND:
        raise VolumeNameError(f"unsupported volume: {shown(name)}")
    return match.group(2)
