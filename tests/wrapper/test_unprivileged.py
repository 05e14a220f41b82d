"""`nvidia-docker` as a user the Docker Engine's socket refuses (`nvptest`, not in the docker
group), against the real engine: the error that names both fixes, and 1.0's
`NV_DOCKER='sudo docker'` — image inspect, pull and volume create through NV_DOCKER — with the
real plugin daemon on a fake GPU host. `shims` explains the stand-in for sudo."""

from __future__ import annotations

import pwd
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.dockerenv import DockerEngine, ImageFactory, PluginDaemon
from tests.wrapper.images import GPU_LABELS
from tests.wrapper.shims import (
    UserHome,
    ensure_test_user,
    private_engine_socket,
    run_as,
    sudo_docker,
    user_home,
    user_python,
)

REPO = Path(__file__).resolve().parents[2]
WrapperRun = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def user() -> pwd.struct_passwd:
    return ensure_test_user()


@pytest.fixture(scope="module")
def python(user: pwd.struct_passwd) -> str:
    return user_python(user, REPO)


@pytest.fixture
def home(user: pwd.struct_passwd) -> Iterator[UserHome]:
    with user_home(user) as home:
        yield home


@pytest.fixture
def engine_socket(home: UserHome) -> Iterator[Path]:
    with private_engine_socket(home) as path:
        yield path


@pytest.fixture
def wrapper_as_user(
    user: pwd.struct_passwd, home: UserHome, python: str
) -> WrapperRun:
    def run(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        env = {"PYTHONPATH": str(REPO), "NV_HOST": "http://127.0.0.1:1", **env}
        return run_as(user, home, [python, "-m", "nvplugin.wrapper", *argv], env)

    return run


def error_of(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("nvidia-docker | "), stderr
    return lines[0].partition(" Error: ")[2]


def test_the_user_really_is_refused(user: pwd.struct_passwd, home: UserHome, python: str):
    code = "import socket; socket.socket(socket.AF_UNIX).connect('/var/run/docker.sock')"
    done = run_as(user, home, [python, "-c", code], {})
    assert done.returncode == 1 and "PermissionError" in done.stderr


def test_refused_without_nv_docker_names_both_fixes(
    wrapper_as_user: WrapperRun, make_image: ImageFactory
) -> None:
    done = wrapper_as_user("run", "--rm", "--net=none", make_image(labels=GPU_LABELS), "true")
    assert done.returncode == 1
    error = error_of(done.stderr)
    assert error.startswith("permission denied while trying to connect to the Docker daemon at "
                            "unix:///var/run/docker.sock as user nvptest: ")  # fmt: skip
    assert "add the user to the docker group" in error
    assert "NV_DOCKER='sudo docker'" in error


def test_nv_docker_that_cannot_reach_the_engine_either_says_why(
    wrapper_as_user: WrapperRun, make_image: ImageFactory
) -> None:
    image = make_image(labels=GPU_LABELS)
    done = wrapper_as_user("run", "--rm", "--net=none", image, "true", NV_DOCKER="docker")
    assert done.returncode == 1
    error = error_of(done.stderr)
    assert error.startswith(f"cannot inspect image '{image}': ")
    assert "permission denied" in error and error.endswith(f"(ran: docker image inspect {image})")


def test_nv_docker_fallback_runs_the_gpu_container(
    running_plugin: Callable[..., PluginDaemon], make_image: ImageFactory,
    wrapper_as_user: WrapperRun, home: UserHome, engine_socket: Path,
) -> None:
    plugin = running_plugin(n_gpus=2)
    image = make_image(labels=GPU_LABELS)
    nv_docker = sudo_docker(home, engine_socket)
    done = wrapper_as_user("run", "--rm", "--net=none", image, "sh", "-c",
                           "ls /usr/local/nvidia/lib64; echo ---; ls /dev",
                           NV_DOCKER=str(nv_docker), NV_HOST=plugin.url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    libs, _, dev = done.stdout.partition("---")
    assert "libcuda.so.1" in libs.split()
    assert {"nvidiactl", "nvidia-uvm", "nvidia0", "nvidia1"} <= set(dev.split())
    volume = f"nvidia_driver_{plugin.host.version}"  # type: ignore[union-attr]
    inspect, create, run = home.calls()
    assert inspect == f"image inspect {image}"
    assert create == f"volume create -d nvidia-docker {volume}"
    assert run.startswith("run --rm --net=none --device=")
    assert f" --volume={volume}:/usr/local/nvidia:ro {image} sh -c " in run


@pytest.fixture
def pulled_ref(docker_engine: DockerEngine) -> Iterator[str]:
    ref = f"nvplugin-test/pulled:{uuid.uuid4().hex[:12]}"
    yield ref
    docker_engine.api.remove_image(ref, force=True)


def test_nv_docker_fallback_pulls_with_progress_on_stderr(
    make_image: ImageFactory, wrapper_as_user: WrapperRun, home: UserHome,
    engine_socket: Path, pulled_ref: str,
) -> None:
    nv_docker = sudo_docker(home, engine_socket, pull_from=make_image())
    done = wrapper_as_user("run", "--rm", "--net=none", pulled_ref, "echo", "container says hi",
                           NV_DOCKER=str(nv_docker))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "container says hi\n"
    assert done.stderr.splitlines() == [
        f"Unable to find image '{pulled_ref}' locally",
        f"latest: Pulling from {pulled_ref}",
        f"Status: Downloaded newer image for {pulled_ref}",
    ]  # pull's stdout went to stderr (1.0's #310): the container's output stays clean
    assert home.calls() == [
        f"image inspect {pulled_ref}", f"pull {pulled_ref}", f"image inspect {pulled_ref}",
        f"run --rm --net=none {pulled_ref} echo container says hi",
    ]  # fmt: skip


def test_nv_docker_fallback_unpullable_image_exits_125(
    wrapper_as_user: WrapperRun, home: UserHome, engine_socket: Path,
    docker_engine: DockerEngine,
) -> None:
    nv_docker = sudo_docker(home, engine_socket)
    done = wrapper_as_user("run", "--rm", "--net=none", "nvplugin-test/not-here:1", "true",
                           NV_DOCKER=str(nv_docker))  # fmt: skip
    assert done.returncode == 125, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "Unable to find image 'nvplugin-test/not-here:1' locally"
    assert "Error: cannot pull image 'nvplugin-test/not-here:1': " in lines[-1]
    assert lines[-1].endswith(f"(ran: {nv_docker} pull nvplugin-test/not-here:1)")
    assert home.calls() == ["image inspect nvplugin-test/not-here:1",
                            "pull nvplugin-test/not-here:1"]  # fmt: skip
