"""`nvidia-docker-plugin cdi` as users run it: the console entry point in a child process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from nvplugin.cdi.spec import Spec
from tests.dockerenv import GpuHost

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvplugin", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_prints_the_spec_for_the_driver_root(gpu_host_factory):
    host: GpuHost = gpu_host_factory(n_gpus=2, minors=[0, 5])
    done = run("--driver-root", str(host.root), "cdi", env=host.env())
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    spec = Spec.from_json(json.loads(done.stdout))
    assert [d.name for d in spec.devices] == ["0", "1", *host.uuids, "all"]
    one = spec.device("1")
    assert one is not None and one.edits.nodes[0].host_path == f"{host.root}/dev/nvidia5"
    assert done.stdout.encode() == spec.render()


def test_global_flags_after_the_command_and_the_kind(gpu_host_factory):
    host: GpuHost = gpu_host_factory()
    done = run("cdi", "--driver-root", str(host.root), "--cdi-kind", "example.com/gpu",
               env=host.env())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kind"] == "example.com/gpu"


def test_output_is_written_atomically_with_mode_0644(gpu_host_factory, tmp_path):
    host: GpuHost = gpu_host_factory()
    target = tmp_path / "etc-cdi" / "nvidia-docker.json"
    done = run("--driver-root", str(host.root), "cdi", "--output", str(target),
               env={**host.env(), "NVP_CDI_DIR": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert Spec.from_json(json.loads(target.read_text())).device("0") is not None
    assert sorted(p.name for p in target.parent.iterdir()) == ["nvidia-docker.json"]


def test_no_driver_is_one_line_and_exit_1(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run("--driver-root", str(empty), "cdi")
    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("nvidia-docker-plugin | Error: ")
    assert "Traceback" not in done.stderr


def test_an_unwritable_output_is_one_line_and_exit_1(gpu_host_factory, tmp_path):
    host: GpuHost = gpu_host_factory()
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = run("--driver-root", str(host.root), "cdi", "--output", str(blocker / "spec.json"),
               env=host.env())
    assert done.returncode == 1
    assert done.stderr.strip() == (f"nvidia-docker-plugin | Error: cannot write "
                                   f"{blocker / 'spec.json'}: Not a directory")


def test_bad_kinds_and_dirs_are_refused_like_any_bad_flag():
    for args, message in ((("--cdi-kind", "nvidia.com/gpu.x", "cdi"), "invalid CDI kind"),
                          (("--cdi-kind", "gpu", "cdi"), "expected vendor/class"),
                          (("--cdi-dir", "run/cdi"), "--cdi-dir 'run/cdi' must be an absolute"),
                          (("cdi", "--output", ""), "--output must not be empty")):
        done = run(*args)
        assert done.returncode == 2, args
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
