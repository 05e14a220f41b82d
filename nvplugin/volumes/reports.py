"""What the volume store reports of its work: a build (for /metrics) and an old driver's volume
collected (for the log and `CollectOldVolumes`).

Apart from store.py because both come after the daemon answers (the first build is the prebuild,
the first collection follows the first discovery): these records load with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nvplugin.volumes.usage import DiskUsage


@dataclass(frozen=True, slots=True)
class BuildReport:
    """One build attempt, for /metrics: how long it took and the bytes of files it placed."""

    name: str
    seconds: float
    size: int  # bytes of the driver files in the volume (0 when the build failed)
    ok: bool


@dataclass(frozen=True, slots=True)
class OldVolume:
    """A volume of another driver version, as `collect_old` left it."""

    name: str
    removed: bool
    mounts: int = 0  # containers mounting it (why it was kept)
    usage: DiskUsage | None = None  # what it held, when removed
