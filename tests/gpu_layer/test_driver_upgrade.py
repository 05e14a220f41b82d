"""NVML follows a driver upgrade: the old library is shut down and unloaded, the new file loaded.

The upgrade is a real one on a driver root: two fake NVML builds whose nvmlSystemGetDriverVersion
reports the version of the file actually loaded (build_fake_nvml(version=...)); the new file is
installed, the old one deleted, `ldconfig -r` re-run and the kernel module's version file
changed, as a package manager and a module reload do. Every assertion reads what NVML reports
or what this process has mapped.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvplugin.gpu.service import GpuService
from tests.fakehost.build import write_ld_cache
from tests.fakenvml.build import build_fake_nvml, link_soname, make_config, write_config
from tests.requirements import need_tool

OLD, NEW = "580.159.04", "590.10.01"
LIBDIR = "usr/lib/x86_64-linux-gnu"
PROC = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {v}  Release Build\n"


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    gcc = need_tool("gcc")
    return {v: build_fake_nvml(tmp_path_factory.mktemp(f"nvml-{v}"), version=v, gcc=gcc)
            for v in (OLD, NEW)}


@pytest.fixture
def root(tmp_path: Path, builds: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    need_tool("ldconfig")
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    install(root, builds[OLD], OLD)
    config = make_config(2)
    del config["driver_version"]  # the version is the loaded file's own
    monkeypatch.setenv("FAKE_NVML_CONFIG", str(write_config(tmp_path / "nvml.json", config)))
    return root


def install(root: Path, build: Path, version: str) -> Path:
    """What the driver package and a module (re)load do: the versioned file, the soname link,
    ldconfig, the kernel module's version file."""
    lib = root / LIBDIR / build.name
    lib.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(build, lib)
    link_soname(lib)
    write_ld_cache(root, [f"/{LIBDIR}"])
    proc = root / "proc/driver/nvidia/version"
    proc.parent.mkdir(parents=True, exist_ok=True)
    proc.write_text(PROC.format(v=version))
    return lib


def upgrade(root: Path, builds: dict[str, Path]) -> None:
    old = root / LIBDIR / f"libnvidia-ml.so.{OLD}"
    install(root, builds[NEW], NEW)
    old.unlink()
    write_ld_cache(root, [f"/{LIBDIR}"])  # ldconfig again, without the old file


def mapped_nvml(root: Path) -> list[str]:
    """The libnvidia-ml files under `root` this process has mapped (other tests' may be too)."""
    return sorted({line.split(None, 5)[-1] for line in Path("/proc/self/maps").read_text()
                   .splitlines() if "libnvidia-ml.so." in line and str(root) in line})


@pytest.fixture
async def service(root: Path) -> Iterator[GpuService]:
    service = await GpuService.start(driver_root=root, dev_root=root)
    yield service
    await service.close()


async def test_a_refresh_after_an_upgrade_loads_the_new_library(service: GpuService, root: Path,
                                                                builds: dict[str, Path]):
    assert service.available, service.reason
    assert await service.driver_version() == OLD
    assert any(path.endswith(f"libnvidia-ml.so.{OLD}") for path in mapped_nvml(root))
    upgrade(root, builds)
    await service.refresh()
    assert service.available, service.reason
    assert await service.driver_version() == NEW
    assert (await service.inventory()).versions.driver == NEW
    assert len((await service.inventory()).gpus) == 2
    mapped = mapped_nvml(root)
    # The old library is unloaded, not left mapped as "(deleted)".
    assert not any(OLD in path for path in mapped), mapped
    assert any(path.endswith(f"libnvidia-ml.so.{NEW}") for path in mapped), mapped


async def test_the_old_library_is_shut_down_before_the_new_one_loads(service: GpuService,
                                                                     root: Path,
                                                                     builds: dict[str, Path]):
    # Mid-upgrade: the new library is there, the kernel module is still the old one, and the
    # old file is gone. The fake NVML cannot tell a mismatch, so the only way to fail here is
    # to keep using the old session; reads after a refresh come from the file now installed.
    status_before = await service.status()
    upgrade(root, builds)
    await service.refresh()
    assert await service.driver_version() == NEW
    assert [s.index for s in await service.status()] == [s.index for s in status_before]


async def test_sighup_without_a_change_reloads_the_same_file(service: GpuService, root: Path):
    before = mapped_nvml(root)
    for _ in range(3):
        await service.refresh()
    assert await service.driver_version() == OLD
    assert mapped_nvml(root) == before
