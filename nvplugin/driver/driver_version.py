"""NVIDIA driver version strings: reading them where the host shows them, and ordering them; pure.

The kernel module states its version in /proc/driver/nvidia/version; user-space libraries carry
it in their file names (`libcuda.so.580.159.04`). Versions have two or three numeric parts.
"""

from __future__ import annotations

import re

_VERSION = re.compile(r"^\d+\.\d+(?:\.\d+)?$")
_FILE_VERSION = re.compile(r"\.so\.(\d+\.\d+(?:\.\d+)?)$")


def is_version(text: str) -> bool:
    return _VERSION.match(text) is not None


def from_proc(text: str) -> str | None:
    """The version in /proc/driver/nvidia/version, in both the proprietary and open wording."""
    for line in text.splitlines():
        if line.startswith("NVRM version:") and "Module" in line:
            after = line.split("Module", 1)[1].split()
            return next((tok for tok in after if is_version(tok)), None)
    return None


def from_file_name(path: str | None) -> str | None:
    """`580.159.04` from `.../libnvidia-ml.so.580.159.04`; None for `.so.1` or no path."""
    match = _FILE_VERSION.search(path or "")
    return match.group(1) if match else None


def sort_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))
