"""Fixtures of the wrapper's tests: the fake REST daemon."""

from __future__ import annotations

from tests.wrapper.fakeplugin import fake_plugin

__all__ = ["fake_plugin"]
