"""EACCES under the driver root is a permission problem, not a missing driver.

The hardened unit runs as root without CAP_DAC_OVERRIDE (and a dedicated user has no root at
all): a directory it may not read used to be reported as "no NVIDIA driver found ... install the
driver". The daemon's view is reproduced for real: a child process whose capability bounding
set lacks CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv), so root obeys the mode bits.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.discovery.multilib import need_32bit
from tests.fakehost.build import FakeHost
from tests.requirements import need_root, need_tool

REPO = Path(__file__).resolve().parents[2]


def discover_without_dac_override(root: Path) -> str:
    setpriv = need_tool("setpriv")
    need_root()
    script = textwrap.dedent(f"""
        import logging, sys
        logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")
        from nvplugin.core.errors import NvpluginError
        from nvplugin.driver import discovery
        try:
            manifest = discovery.discover({str(root)!r})
            print("FOUND", manifest.version)
        except NvpluginError as err:
            print("ERROR", err)
    """)
    done = subprocess.run([setpriv, "--bounding-set=-dac_override,-dac_read_search",
                           sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_unreadable_library_directory_is_named_as_a_permission_problem(fake_host_factory):
    host = fake_host_factory(with_32bit=False)
    lib64 = host.path(host.lib64_dir)
    lib64.chmod(0o000)
    try:
        out = discover_without_dac_override(host.root)
    finally:
        lib64.chmod(0o755)
    (error,) = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert error.startswith(f"ERROR cannot read the NVIDIA driver under {host.root}: "
                            f"permission denied on {lib64}")
    assert error.endswith("give the daemon's user read access to the driver root")
    assert "install the driver" not in error


def test_a_partly_unreadable_driver_says_what_it_left_out(fake_host: FakeHost):
    """The 32-bit libraries alone make a driver; the 64-bit ones must not vanish silently."""
    need_32bit(fake_host)
    lib64 = fake_host.path(fake_host.lib64_dir)
    lib64.chmod(0o000)
    try:
        out = discover_without_dac_override(fake_host.root)
    finally:
        lib64.chmod(0o755)
    assert f"FOUND {fake_host.version}" in out
    assert (f"WARNING Cannot read {lib64}: permission denied; driver files there are left out"
            in out)


def test_an_unreadable_version_file_says_so(fake_host: FakeHost):
    proc = fake_host.path("/proc/driver/nvidia/version")
    proc.chmod(0o000)
    try:
        out = discover_without_dac_override(fake_host.root)
    finally:
        proc.chmod(0o644)
    assert f"WARNING Cannot read the kernel module's version: {proc}: Permission denied" in out
    # The libraries still name the version: the driver is found.
    assert f"FOUND {fake_host.version}" in out
