"""Every read under the driver root stays inside it, reads only regular files, and is bounded.

Each test runs twice: with openat2(RESOLVE_IN_ROOT) where the kernel has it, and with the
O_NOFOLLOW walk used where it does not (old kernels, Docker's older seccomp profile).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nvplugin.core.errors import CacheFormatError, RootEscapeError, UnsafeFileError
from nvplugin.driver import discovery, hostroot
from nvplugin.driver.hostroot import HostRoot
from tests.fakehost.build import FakeHost

OUTSIDE_VERSION = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  999.99.99  Thu Jan 1 2099\n"


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "openat2":
        if hostroot._openat2() is None:
            pytest.skip("this kernel has no openat2; the walk covers it")
    else:
        monkeypatch.setattr(hostroot, "_openat2", lambda: None)
    yield request.param


def promptly(fn: Callable[[], Any], unblock: Path | None = None, timeout: float = 10) -> Any:
    """fn() in a thread; fails (after unblocking a FIFO reader) when it does not return."""
    result: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as err:  # handed to the test thread
            error.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if unblock is not None:  # a writer releases the blocked open(); the test still fails
            os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"{fn} blocked for {timeout} s")
    if error:
        raise error[0]
    return result[0]


def test_the_version_file_as_a_link_out_of_the_root_is_not_followed(fake_host: FakeHost,
                                                                    tmp_path: Path, resolver):
    outside = tmp_path / "elsewhere" / "version"
    outside.parent.mkdir()
    outside.write_text(OUTSIDE_VERSION)
    proc = fake_host.path("/proc/driver/nvidia/version")
    proc.unlink()
    os.symlink(outside, proc)  # absolute: re-rooted, so <root>/<tmp>/elsewhere/version
    assert discovery.kernel_version(fake_host.root) is None
    os.symlink("../../../../" + str(outside.relative_to("/")), fake_host.path("/etc/escape"))
    with pytest.raises((OSError, RootEscapeError)):  # clamped to the root, or refused
        HostRoot(fake_host.root).read_bytes("/etc/escape")


def test_a_parent_directory_swapped_for_a_link_out_is_not_followed(fake_host: FakeHost,
                                                                   tmp_path: Path, resolver):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "nvidia").mkdir(parents=True)
    (elsewhere / "nvidia" / "version").write_text(OUTSIDE_VERSION)
    proc = fake_host.path("/proc/driver")
    os.rename(proc, tmp_path / "moved")
    os.symlink(elsewhere, proc)
    assert discovery.kernel_version(fake_host.root) is None


@pytest.mark.parametrize("inner", [discovery.PROC_VERSION, discovery.LD_CACHE])
def test_a_fifo_is_refused_at_once_with_its_kind(fake_host: FakeHost, resolver, inner: str,
                                                 caplog: pytest.LogCaptureFixture):
    path = fake_host.path(inner)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(UnsafeFileError, match="is a FIFO, not a regular file"):
        promptly(lambda: HostRoot(fake_host.root).read_bytes(inner), unblock=path)
    # Discovery goes on without it and says why.
    manifest = promptly(lambda: discovery.discover(fake_host.root, fake_host.version),
                        unblock=path)
    assert manifest.version == fake_host.version
    fingerprint = promptly(lambda: discovery.driver_fingerprint(fake_host.root), unblock=path)
    assert fingerprint == discovery.driver_fingerprint(fake_host.root)  # stable: no re-discovery
    if inner == discovery.LD_CACHE:
        assert any("is a FIFO" in r.reason for r in manifest.rejected)
    else:
        assert promptly(lambda: discovery.kernel_version(fake_host.root), unblock=path) is None
        assert f"{path} is a FIFO, not a regular file" in caplog.text


def test_a_device_node_is_refused_without_reading_it(tmp_path: Path, resolver):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/dev/zero", root / "etc/ld.so.cache")  # re-rooted: <root>/dev/zero is missing
    with pytest.raises(FileNotFoundError):
        HostRoot(root).read_bytes(discovery.LD_CACHE)
    # The real root's /dev/zero would be read forever; it is a character device: refused.
    with pytest.raises(UnsafeFileError, match="/dev/zero is a character device"):
        HostRoot("/").read_bytes("/dev/zero")


def test_a_huge_file_is_refused_not_read(fake_host: FakeHost, resolver):
    cache = fake_host.cache_path
    with open(cache, "r+b") as f:
        f.truncate(discovery.MAX_CACHE + 1)  # sparse: costs no disk
    with pytest.raises(CacheFormatError, match=f"larger than {discovery.MAX_CACHE} bytes"):
        discovery.read_cache(HostRoot(fake_host.root))


def test_identify_and_expect(fake_host: FakeHost, resolver):
    root = HostRoot(fake_host.root)
    inner = f"{fake_host.lib64_dir}/libcuda.so.{fake_host.version}"
    ident = root.identify(inner)
    with root.open_file(inner, expect=ident) as f:
        assert os.read(f.fd, 4) == b"\x7fELF"
    path = fake_host.path(inner)
    copy = path.with_name("copy")
    copy.write_bytes(path.read_bytes())
    os.replace(copy, path)
    with (pytest.raises(UnsafeFileError, match="is not the file discovery inspected"),
          root.open_file(inner, expect=ident)):
        pass
