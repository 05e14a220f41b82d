"""Skip a test when a host dependency is missing, except in CI, where that is a failure."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, what: str) -> None:
    """Skip (locally) or fail (in CI) when `condition` is false; `what` names the dependency."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"{what} is required in CI but missing", pytrace=False)
    pytest.skip(f"{what} is missing")


def need_tool(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"the tool {name!r}")
    return str(path)


def need_root() -> None:
    need(os.geteuid() == 0, "root")
