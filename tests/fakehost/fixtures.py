"""pytest fixtures for the fake driver host (registered by tests/conftest.py).

    def test_x(fake_host):                       # default host, fresh per test
    def test_y(fake_host_factory):               # fake_host_factory(cache_format="compat", ...)
    def test_z(tmp_path): make_dev_nodes(tmp_path, [0, 1])   # needs root
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakehost.build import FakeHost, build_fake_host
from tests.fakehost.compiler import ObjectCache
from tests.requirements import need_tool

FakeHostFactory = Callable[..., FakeHost]


@pytest.fixture(scope="session")
def fakehost_cache() -> ObjectCache:
    """The compiled objects, shared by every host of the session (and across sessions)."""
    need_tool("gcc")
    need_tool("ldconfig")
    return ObjectCache()


@pytest.fixture
def fake_host_factory(tmp_path: Path, fakehost_cache: ObjectCache) -> FakeHostFactory:
    """Build a fresh, mutable fake host per call; keyword options as `build_fake_host`."""
    counter = itertools.count()

    def make(**options: Any) -> FakeHost:
        root = options.pop("root", None) or tmp_path / f"host{next(counter)}"
        return build_fake_host(Path(root), objects=fakehost_cache, **options)

    return make


@pytest.fixture
def fake_host(fake_host_factory: FakeHostFactory) -> FakeHost:
    """A default fake host: driver 580.159.04, new-format cache, 32-bit libs when gcc -m32 works."""
    return fake_host_factory()
