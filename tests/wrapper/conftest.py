"""Fixtures of the wrapper's tests: the fake REST daemon and the test images."""

from __future__ import annotations

import pytest

from tests.dockerenv import ImageFactory
from tests.wrapper.fakeplugin import fake_plugin
from tests.wrapper.images import GPU_LABELS

__all__ = ["fake_plugin", "gpu_image", "plain_image"]


@pytest.fixture
def gpu_image(make_image: ImageFactory) -> str:
    """A fresh image labelled for the driver volume (and so for the GPU devices)."""
    return make_image(labels=GPU_LABELS)


@pytest.fixture
def plain_image(make_image: ImageFactory) -> str:
    """A fresh image without the label."""
    return make_image()
