"""Shared fixtures: the fake driver host, the fake NVML, the real Docker Engine and Podman."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent
# Fixture modules are registered as plugins so every test directory can use them.
pytest_plugins = [
    module
    for module in ("tests.fakehost.fixtures", "tests.fakenvml.fixtures", "tests.dockerenv",
                   "tests.web.browser", "tests.web.firefox", "tests.podmanenv")
    if (_HERE.parent / (module.replace(".", "/") + ".py")).exists()
]
