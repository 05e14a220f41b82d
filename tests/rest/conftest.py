"""Fixtures for the live REST tests: a fake driver host with device nodes and the fake NVML."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvplugin.driver import discovery
from tests.fakehost.build import build_fake_host, make_dev_nodes
from tests.fakehost.compiler import ObjectCache
from tests.fakenvml.build import make_config, write_config
from tests.requirements import need_root
from tests.rest.live import LiveRest

N_GPUS = 2


@pytest.fixture(scope="module")
def live_rest(tmp_path_factory: pytest.TempPathFactory, fakehost_cache: ObjectCache,
              ) -> Iterator[LiveRest]:
    """The REST app on a real port over a 2-GPU fake host (driver 580.159.04, CUDA 13.0); the
    host's own libnvidia-ml.so.1 is the fake NVML, found through its ld.so.cache."""
    need_root()  # device nodes are made with mknod
    base = tmp_path_factory.mktemp("rest-host")
    host = build_fake_host(base / "root", objects=fakehost_cache)
    make_dev_nodes(host.root, list(range(N_GPUS)))
    with serving(host.root, write_config(base / "fakenvml.json", make_config(N_GPUS))) as server:
        yield server


@contextlib.contextmanager
def serving(root: Path, nvml_config: Path, host_root: Path = Path("/")) -> Iterator[LiveRest]:
    """The REST app over the fake host at `root`, its own libnvidia-ml (the fake NVML, found
    through its ld.so.cache) reading `nvml_config`, for as long as the block runs."""
    previous = os.environ.get("FAKE_NVML_CONFIG")
    os.environ["FAKE_NVML_CONFIG"] = str(nvml_config)
    library = discovery.find_nvml_library(root)
    server = LiveRest(root, root, str(library) if library else None, host_root=host_root).start()
    try:
        yield server
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("FAKE_NVML_CONFIG", None)
        else:
            os.environ["FAKE_NVML_CONFIG"] = previous
