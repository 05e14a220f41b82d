"""`nvidia-docker` as a real process, against the real Docker Engine and the real plugin daemon on
a fake GPU host: what the container sees, exit codes, and the user's volumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.dockerenv import DockerEngine, ImageFactory, PluginDaemon
from tests.wrapper.images import GPU_LABELS

REPO = Path(__file__).resolve().parents[2]
StartPlugin = Callable[..., PluginDaemon]


def nvidia_docker(
    *argv: str, nv_host: str, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the wrapper the way the console script does: a new process that execs docker."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("NV_", "DOCKER_"))}
    environ.update(PYTHONPATH=str(REPO), NV_HOST=nv_host, **env)
    return subprocess.run([sys.executable, "-m", "nvplugin.wrapper", *argv], env=environ,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)  # fmt: skip


@pytest.fixture
def plugin(running_plugin: StartPlugin) -> PluginDaemon:
    return running_plugin(n_gpus=2)


def nodes_in(output: str) -> set[str]:
    return {line for line in output.split() if line.startswith("nvidia")}


def test_labelled_image_gets_devices_and_driver_volume(plugin: PluginDaemon, gpu_image: str):
    done = nvidia_docker("run", "--rm", "--net=none", gpu_image, "sh", "-c",
                         "ls /usr/local/nvidia/lib64; echo ---; ls /dev", nv_host=plugin.url)
    assert done.returncode == 0, done.stderr
    libs, _, dev = done.stdout.partition("---")
    assert "libcuda.so.1" in libs.split()
    assert "libnvidia-ml.so.1" in libs.split()
    assert nodes_in(dev) == {"nvidiactl", "nvidia-uvm", "nvidia0", "nvidia1"} | (
        {"nvidia-uvm-tools"} & nodes_in(dev)
    )


def test_unlabelled_image_is_untouched_unless_nv_gpu(plugin: PluginDaemon, plain_image: str):
    plain = nvidia_docker("run", "--rm", "--net=none", plain_image, "ls", "/dev", "/usr/local",
                          nv_host=plugin.url)
    assert plain.returncode == 0, plain.stderr
    assert nodes_in(plain.stdout) == set()
    chosen = nvidia_docker("run", "--rm", "--net=none", plain_image, "ls", "/dev",
                           nv_host=plugin.url, NV_GPU="1")
    assert chosen.returncode == 0, chosen.stderr
    assert "nvidia1" in nodes_in(chosen.stdout)
    assert "nvidia0" not in nodes_in(chosen.stdout)


@pytest.mark.parametrize("by", ["index", "uuid-prefix"])
def test_nv_gpu_selects_devices(plugin: PluginDaemon, gpu_image: str, by: str) -> None:
    uuids = plugin.host.uuids  # type: ignore[attr-defined]
    nv_gpu = "0,1" if by == "index" else f"{uuids[1][:12]} {uuids[0][:12]}"
    done = nvidia_docker("run", "--rm", "--net=none", gpu_image, "ls", "/dev",
                         nv_host=plugin.url, NV_GPU=nv_gpu)
    assert done.returncode == 0, done.stderr
    assert {"nvidia0", "nvidia1"} <= nodes_in(done.stdout)
    only = nvidia_docker("run", "--rm", "--net=none", gpu_image, "ls", "/dev",
                         nv_host=plugin.url, NV_GPU="1" if by == "index" else uuids[1][:12])
    assert "nvidia0" not in nodes_in(only.stdout) and "nvidia1" in nodes_in(only.stdout)


def test_nv_gpu_names_a_mig_device(running_plugin: StartPlugin, gpu_image: str) -> None:
    plugin = running_plugin(n_gpus=2, mig={(1, 0): (12, 13), (2, 0): (21, 22)})
    for nv_gpu in ("0:0", "MIG-00010000"):
        done = nvidia_docker("run", "--rm", "--net=none", gpu_image, "sh", "-c",
                             "ls /dev; echo ---; ls /dev/nvidia-caps", nv_host=plugin.url,
                             NV_GPU=nv_gpu)
        assert done.returncode == 0, done.stderr
        dev, caps = done.stdout.split("---")
        assert "nvidia0" in nodes_in(dev) and "nvidia1" not in nodes_in(dev)
        assert caps.split() == ["nvidia-cap12", "nvidia-cap13"]


def test_unknown_volume_kinds_in_the_label_are_ignored(
    plugin: PluginDaemon, make_image: ImageFactory
) -> None:
    # 1.0 (§8.4): a volume for each known kind, other kinds ignored; devices whenever labelled.
    image = make_image(labels={"com.nvidia.volumes.needed": '"nvidia_driver extra_kind"'})
    done = nvidia_docker("run", "--rm", "--net=none", image, "sh", "-c",
                         "ls /usr/local/nvidia/lib64; echo ---; ls /dev", nv_host=plugin.url)
    assert done.returncode == 0, done.stderr
    libs, _, dev = done.stdout.partition("---")
    assert "libcuda.so.1" in libs.split()
    assert {"nvidiactl", "nvidia0", "nvidia1"} <= nodes_in(dev)
    only_unknown = make_image(labels={"com.nvidia.volumes.needed": "extra_kind"})
    done = nvidia_docker("run", "--rm", "--net=none", only_unknown, "sh", "-c",
                         "ls /dev; test -e /usr/local/nvidia || echo no-volume",
                         nv_host=plugin.url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {"nvidiactl", "nvidia0", "nvidia1"} <= nodes_in(done.stdout)
    assert done.stdout.split()[-1] == "no-volume"


def test_invalid_device(plugin: PluginDaemon, gpu_image: str) -> None:
    done = nvidia_docker("run", "--rm", "--net=none", gpu_image, "true", nv_host=plugin.url,
                         NV_GPU="0,5")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.endswith(" Error: invalid device: 5\n")
    assert done.stderr.startswith("nvidia-docker | ")


def test_cuda_label_too_new(plugin: PluginDaemon, make_image: ImageFactory) -> None:
    with urllib.request.urlopen(plugin.url + "/v1.0/gpu/info/json") as response:
        cuda = json.load(response)["Version"]["CUDA"]
    major, minor = (int(x) for x in cuda.split(".")[:2])
    image = make_image(labels={**GPU_LABELS, "com.nvidia.cuda.version": f"{major}.{minor + 1}.0"})
    done = nvidia_docker("run", "--rm", "--net=none", image, "true", nv_host=plugin.url)
    assert done.returncode == 1
    assert done.stderr.endswith(
        f" Error: unsupported CUDA version: driver {cuda} < image {major}.{minor + 1}.0\n"
    )


@pytest.mark.parametrize(
    ("argv", "code"),
    [(["run", "--rm", "--net=none", "IMAGE", "false"], 1),
     (["run", "--rm", "--net=none", "IMAGE", "sh", "-c", "exit 3"], 3),
     (["inspect", "nvplugin-test/no-such-thing"], 1)],
    ids=["false", "exit-3", "inspect-missing"],
)  # fmt: skip
def test_exit_codes_are_dockers(
    plugin: PluginDaemon, gpu_image: str, argv: list[str], code: int
) -> None:
    argv = [gpu_image if a == "IMAGE" else a for a in argv]
    done = nvidia_docker(*argv, nv_host=plugin.url)
    direct = subprocess.run(["docker", *argv], capture_output=True, text=True)
    assert done.returncode == direct.returncode == code


@pytest.fixture
def user_volume(docker_engine: DockerEngine) -> Iterator[str]:
    name = f"nvtest_user_{uuid.uuid4().hex[:8]}"
    yield name
    # Through the local driver only: see test_wrapper.py's clean-up.
    for volume in docker_engine.client.volumes.list(filters={"name": name, "driver": "local"}):
        volume.remove(force=True)


def test_user_volume_stays_on_the_local_driver(
    plugin: PluginDaemon, gpu_image: str, user_volume: str, docker_engine: DockerEngine
) -> None:
    done = nvidia_docker("run", "--rm", "--net=none", "-v", f"{user_volume}:/data", gpu_image,
                         "ls", "/usr/local/nvidia/lib64", nv_host=plugin.url)
    assert done.returncode == 0, done.stderr
    assert docker_engine.api.inspect_volume(user_volume)["Driver"] == "local"
    ours = [v for v in docker_engine.api.volumes()["Volumes"] or ()
            if v["Name"].startswith("nvidia_driver_")]  # fmt: skip
    assert ours and all(v["Driver"] == "nvidia-docker" for v in ours)


def test_daemon_unreachable_is_one_clear_line(gpu_image: str, tmp_path: Path) -> None:
    # 1.0 left this to Docker, which waits 15 s for the volume plugin. The behaviour proved here
    # (no wall-clock bound: speed lives in bench/) is that docker never runs: NV_DOCKER, which
    # the wrapper execs, is never called.
    log = tmp_path / "nv_docker.log"
    nv_docker = tmp_path / "nv-docker"
    nv_docker.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec docker "$@"\n')
    nv_docker.chmod(0o755)
    done = nvidia_docker("run", "--rm", "--net=none", gpu_image, "true",
                         nv_host="http://127.0.0.1:1", NV_DOCKER=str(nv_docker))
    assert not log.exists()
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert "cannot reach nvidia-docker-plugin at http://127.0.0.1:1" in done.stderr
    assert "systemctl start nvidia-docker" in done.stderr


def test_missing_unpullable_image_exits_125(docker_engine: DockerEngine) -> None:
    done = nvidia_docker("run", "--rm", "--net=none", "nvplugin-test/not-here:1", "true",
                         nv_host="http://127.0.0.1:1")
    assert done.returncode == 125
    lines = done.stderr.splitlines()
    assert lines[0] == "Unable to find image 'nvplugin-test/not-here:1' locally"
    assert "Error: cannot pull image 'nvplugin-test/not-here:1': " in lines[-1]


def test_pass_through_imports_neither_sdk_nor_aiohttp() -> None:
    code = (
        "import sys; from nvplugin.wrapper import nvidia_docker; "
        "nvidia_docker.main(['ps'], {}, lambda *a: None); "
        "print(sorted(m for m in ('docker', 'aiohttp', 'requests') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.stdout.strip() == "[]", done.stderr
