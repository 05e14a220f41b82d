"""Path resolution under a driver root: re-rooted absolute links, refused escapes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from nvplugin.core.errors import RootEscapeError
from nvplugin.driver.hostroot import HostRoot


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "usr/local/nvidia/lib64").mkdir(parents=True)
    (root / "usr/local/nvidia/lib64/libcuda.so.580.1").write_bytes(b"x")
    os.symlink("lib64", root / "usr/local/nvidia/lib")
    os.symlink("/usr/local/nvidia/lib64/libcuda.so.580.1", root / "usr/local/nvidia/lib64/abs")
    os.symlink("libcuda.so.580.1", root / "usr/local/nvidia/lib64/rel")
    os.symlink("../../../../../../../etc/passwd", root / "usr/local/nvidia/lib64/escape")
    os.symlink("/", root / "usr/local/nvidia/lib64/slash")
    os.symlink("loop2", root / "usr/local/nvidia/lib64/loop1")
    os.symlink("loop1", root / "usr/local/nvidia/lib64/loop2")
    os.symlink("missing", root / "usr/local/nvidia/lib64/dangling")
    (tmp_path / "outside").write_bytes(b"secret")
    return root


@pytest.mark.parametrize(("inner", "expected"), [
    ("/usr/local/nvidia/lib64/libcuda.so.580.1", "/usr/local/nvidia/lib64/libcuda.so.580.1"),
    ("/usr/local/nvidia/lib/libcuda.so.580.1", "/usr/local/nvidia/lib64/libcuda.so.580.1"),
    ("/usr/local/nvidia/lib/rel", "/usr/local/nvidia/lib64/libcuda.so.580.1"),
    ("/usr/local/nvidia/lib/abs", "/usr/local/nvidia/lib64/libcuda.so.580.1"),
    ("/usr/local/nvidia/lib64/slash", "/"),
    ("/usr/local/nvidia/lib64/slash/usr/local/nvidia/lib/abs",
     "/usr/local/nvidia/lib64/libcuda.so.580.1"),
    ("/usr/local/nvidia/./lib64/../lib/rel", "/usr/local/nvidia/lib64/libcuda.so.580.1"),
    ("/", "/"),
], ids=["plain", "symlinked-dir", "relative-link", "absolute-link-rerooted", "link-to-slash",
        "through-slash", "dot-dotdot", "root"])
def test_resolve(tree, inner, expected):
    root = HostRoot(tree)
    assert root.resolve(inner) == expected
    assert Path(root.host(expected)).exists()


@pytest.mark.parametrize("inner", ["/usr/local/nvidia/lib64/escape", "/../outside",
                                   "/usr/../../outside"], ids=["link", "path", "nested"])
def test_escape_is_refused(tree, inner):
    with pytest.raises(RootEscapeError, match="leaves the driver root"):
        HostRoot(tree).resolve(inner)


def test_dotdot_at_real_root_stays_there():
    assert HostRoot("/").resolve("/../../etc") == os.path.realpath("/etc")


@pytest.mark.parametrize(("inner", "code"), [
    ("/usr/local/nvidia/lib64/loop1", errno.ELOOP),
    ("/usr/local/nvidia/lib64/dangling", errno.ENOENT),
], ids=["loop", "dangling"])
def test_broken_links_raise_oserror(tree, inner, code):
    with pytest.raises(OSError) as info:
        HostRoot(tree).resolve(inner)
    assert info.value.errno == code


def test_host_inner_round_trip_and_dev_root(tree, tmp_path):
    root = HostRoot(tree, tmp_path / "dev")
    host = root.host("/usr/local/nvidia/lib64")
    assert host == f"{tree}/usr/local/nvidia/lib64"
    assert root.inner(host) == "/usr/local/nvidia/lib64"
    assert root.dev("/dev/nvidia0") == f"{tmp_path}/dev/dev/nvidia0"
    assert HostRoot(tree).dev_root == str(tree)
    with pytest.raises(RootEscapeError):
        root.inner(str(tmp_path / "outside"))


def test_reads_go_through_the_root(tree):
    root = HostRoot(tree)
    assert root.listdir("/usr/local/nvidia/lib")[:2] == ["abs", "dangling"]
    assert root.listdir("/nowhere") == []
    assert root.is_file("/usr/local/nvidia/lib/abs")
    assert not root.is_file("/usr/local/nvidia/lib64/escape")
    assert root.is_dir("/usr/local/nvidia/lib")
    assert root.read_bytes("/usr/local/nvidia/lib64/libcuda.so.580.1") == b"x"
