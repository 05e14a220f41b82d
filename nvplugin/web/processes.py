"""When each GPU process started, for the page's "since" column: the host's /proc/<pid>/stat
(field 22, clock ticks after boot) plus the boot time in /proc/stat. Blocking: callers run it in
a thread. Read under the host root (`--host-root`, the host's / in the image) through `HostRoot`,
as attribution reads /proc/<pid>/cgroup, so the PIDs are the ones NVML reports."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from nvplugin.core.errors import NvpluginError
from nvplugin.driver.hostroot import HostRoot

STAT_LIMIT = 4096  # /proc/<pid>/stat is one line of a few hundred bytes
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def boot_time(root: HostRoot) -> float | None:
    try:
        text = root.read_bytes("/proc/stat", 1 << 16).decode(errors="replace")
    except (OSError, NvpluginError):
        return None
    for line in text.splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return None


def start_ticks(stat_line: str) -> int | None:
    """Field 22 of a /proc/<pid>/stat line; the command name (field 2) may hold spaces and
    parentheses, so fields are counted after its last ')'."""
    fields = stat_line.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])  # field 22 is the 20th after the name
    except (IndexError, ValueError):
        return None


def start_times(host_root: Path, pids: Iterable[int]) -> dict[int, float]:
    """UNIX start time of each PID that still exists and could be read."""
    root = HostRoot(host_root)
    booted = boot_time(root)
    if booted is None:
        return {}
    found: dict[int, float] = {}
    for pid in pids:
        try:
            line = root.read_bytes(f"/proc/{pid}/stat", STAT_LIMIT).decode(errors="replace")
        except (OSError, NvpluginError):  # exited, or not in this PID namespace
            continue
        ticks = start_ticks(line)
        if ticks is not None:
            found[pid] = booted + ticks / CLOCK_TICKS
    return found
