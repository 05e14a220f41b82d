"""32-bit fake driver libraries: built where `gcc -m32` works, which on amd64 means gcc-multilib.

CI installs gcc-multilib on amd64, so there a host without 32-bit libraries is a failure; other
architectures have no i386 multilib to install, and only there are the 32-bit checks skipped.
"""

from __future__ import annotations

import platform

import pytest

from tests.fakehost.build import FakeHost
from tests.requirements import in_ci, need

AMD64 = platform.machine() in ("x86_64", "amd64")


def has_32bit(host: FakeHost) -> bool:
    """Whether `host` has 32-bit libraries; none is a failure in CI on amd64 (elsewhere the
    caller checks the rest and leaves the 32-bit part out)."""
    if AMD64 and in_ci():
        need(host.with_32bit, "gcc -m32 (gcc-multilib), for the 32-bit driver libraries")
    return host.with_32bit


def need_32bit(host: FakeHost) -> None:
    """For a test about 32-bit libraries only: fails in CI on amd64, skips otherwise."""
    if not has_32bit(host):
        pytest.skip("gcc -m32 (gcc-multilib) is missing" if AMD64
                    else f"no 32-bit x86 libraries on this {platform.machine()} machine")
