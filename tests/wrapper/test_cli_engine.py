"""`CliEngine` (1.0's way: every engine call through NV_DOCKER) with the real docker CLI and the
real engine, `open_engine`'s choice, and the NV_DOCKER command line the fallback uses. The
fallback as a refused user is in test_unprivileged."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import pytest

from nvplugin.core.errors import DockerError, ImagePullError, PluginDaemonError
from nvplugin.engine.client import CliEngine, Engine, open_engine
from nvplugin.engine.endpoint import DEFAULT_HOST, Endpoint
from nvplugin.wrapper import nvidia_docker
from nvplugin.wrapper.cmdline import split
from tests.dockerenv import DockerEngine, ImageFactory
from tests.requirements import need_tool


@pytest.fixture
def cli(docker_engine: DockerEngine) -> CliEngine:
    return CliEngine([need_tool("docker")])


@pytest.fixture
def volume_name(docker_engine: DockerEngine) -> Iterator[str]:
    name = f"nvtest_cli_{uuid.uuid4().hex[:8]}"
    yield name
    # By name, not by listing: a list asks every volume driver Docker has seen, and waits 15 s
    # on a plugin that is gone.
    docker_engine.api.remove_volume(name, force=True)


def test_inspect_reads_what_the_api_reads(cli: CliEngine, make_image: ImageFactory) -> None:
    image = make_image(labels={"com.nvidia.volumes.needed": '"nvidia_driver x"'},
                       env={"NVIDIA_REQUIRE_CUDA": '"cuda>=12.0 brand=tesla"'})  # fmt: skip
    facts = cli.inspect_image(image)
    assert facts is not None
    assert facts == Engine(Endpoint(DEFAULT_HOST)).inspect_image(image)
    assert facts.labels["com.nvidia.volumes.needed"] == "nvidia_driver x"
    assert facts.env["NVIDIA_REQUIRE_CUDA"] == "cuda>=12.0 brand=tesla"
    assert facts.id.startswith("sha256:")


def test_inspect_of_a_missing_image_is_none(cli: CliEngine) -> None:
    assert cli.inspect_image("nvplugin-test/no-such-image:1") is None


def test_other_inspect_failures_carry_dockers_words(docker_engine: DockerEngine) -> None:
    cli = CliEngine([need_tool("docker"), "-H", "unix:///nonexistent.sock"])
    with pytest.raises(DockerError, match=r"^cannot inspect image 'x': .*nonexistent\.sock.*"
                                          r"\(ran: .* image inspect x\)$"):  # fmt: skip
        cli.inspect_image("x")


def test_pull_failure(cli: CliEngine) -> None:
    out = io.StringIO()
    with pytest.raises(ImagePullError, match=r"^cannot pull image 'nvplugin-test/nope:1': "):
        cli.pull("nvplugin-test/nope:1", out)
    assert out.getvalue().startswith("Unable to find image 'nvplugin-test/nope:1' locally\n")
    quiet = io.StringIO()
    with pytest.raises(ImagePullError, match=r"\(ran: .* pull --quiet nvplugin-test/nope:1\)$"):
        cli.pull("nvplugin-test/nope:1", quiet, quiet=True)
    assert quiet.getvalue() == ""


def test_ensure_volume_creates_once(
    cli: CliEngine, volume_name: str, docker_engine: DockerEngine
) -> None:
    cli.ensure_volume(volume_name, "local")
    cli.ensure_volume(volume_name, "local")  # already there: a no-op, as through the API
    assert docker_engine.api.inspect_volume(volume_name)["Driver"] == "local"


def test_ensure_volume_failure_carries_dockers_words(cli: CliEngine) -> None:
    # Not an absent plugin: Docker looks for one for 15 s. The hint for that case is shared with
    # `Engine` (`volume_error`) and tested there.
    with pytest.raises(PluginDaemonError) as caught:
        cli.ensure_volume("bad/name", "local")
    message = str(caught.value)
    assert message.startswith("cannot create volume 'bad/name': ")
    assert "invalid characters for a local volume name" in message
    assert message.endswith("volume create -d local bad/name)")


def test_missing_nv_docker_program() -> None:
    with pytest.raises(DockerError, match=r"^cannot run '/nonexistent/sudo' \(from NV_DOCKER\): "):
        CliEngine(["/nonexistent/sudo", "docker"]).inspect_image("x")


def test_open_engine_keeps_the_api_when_the_socket_admits_the_user(
    docker_engine: DockerEngine,
) -> None:
    engine = open_engine(Endpoint(DEFAULT_HOST), ["sudo", "docker"], fall_back_when_denied=True)
    assert isinstance(engine, Engine)
    engine.close()
    with pytest.raises(DockerError, match=r"^cannot connect to the Docker daemon at unix:///nowhere"):
        open_engine(Endpoint("unix:///nowhere"), ["sudo", "docker"],
                    fall_back_when_denied=True)  # absent is not refused


@pytest.mark.parametrize(
    ("nv_docker", "argv", "expected"),
    [("", ["run", "img"], ["docker"]), ("  ", ["run", "img"], ["docker"]),
     ("", ["-H", "ssh://gpu", "run", "img"], ["docker", "-H", "ssh://gpu"]),
     ("sudo docker", ["run", "img"], ["sudo", "docker"]),
     ("sudo docker -D", ["--config", "/c", "-l", "info", "container", "run", "-it", "img"],
      ["sudo", "docker", "-D", "--config", "/c", "-l", "info"]),
     ("sudo docker", ["-c", "container", "run", "img"], ["sudo", "docker", "-c", "container"])],
    ids=["unset", "blank", "ssh-host", "plain", "user-globals", "context-named-container"],
)  # fmt: skip
def test_docker_cli_command(nv_docker: str, argv: list[str], expected: list[str]):
    """The docker CLI the engine falls back to (NV_DOCKER) or pulls with: the user's command and
    global options, so it reaches the same engine as the run itself."""
    environ = {"NV_DOCKER": nv_docker} if nv_docker else {}
    command = nvidia_docker.docker_command(environ)
    assert nvidia_docker.docker_cli(command, split(argv)) == expected
