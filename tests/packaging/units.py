"""Reading systemd unit files as systemd does, for the few things the tests need."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "nvidia-docker.service"
DROP_IN_DIR = REPO / "systemd" / "nvidia-docker.service.d"

Unit = dict[str, dict[str, list[str]]]


def parse(*paths: Path) -> Unit:
    """Sections -> key -> values in order; an empty assignment resets the list (drop-in rule)."""
    unit: Unit = {}
    for path in paths:
        section = None
        logical = ""
        for raw in path.read_text().splitlines():
            line = logical + raw.strip()
            if line.endswith("\\"):
                logical = line[:-1] + " "
                continue
            logical = ""
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                unit.setdefault(section, {})
                continue
            if section is None:
                raise ValueError(f"{path}: {line!r} outside a section")
            key, _, value = line.partition("=")
            values = unit[section].setdefault(key.strip(), [])
            if value.strip() == "":
                values.clear()
            else:
                values.append(value.strip())
    return unit


def environment(unit: Unit) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in unit.get("Service", {}).get("Environment", []):
        for item in shlex.split(line):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def command_argv(command: str, env: Mapping[str, str]) -> list[str]:
    """An Exec*= line as argv: prefixes dropped, `${VAR}` words replaced by one argument each."""
    command = command.lstrip("-+!@:")
    argv = []
    for word in shlex.split(command):
        whole = re.fullmatch(r"\$\{(\w+)\}", word)
        if whole:
            argv.append(env.get(whole.group(1), ""))
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return argv
