"""`nvidia_docker.main` in-process: the final argv it would exec, against the real Docker Engine
(image inspection, pull, volume creation) and the fake REST daemon (statuses, query encoding)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nvplugin import __version__
from nvplugin.engine.endpoint import DEFAULT_HOST
from nvplugin.wrapper import nvidia_docker
from tests.dockerenv import DockerEngine, ImageFactory
from tests.wrapper.fakeplugin import FakePlugin
from tests.wrapper.images import GPU_LABELS
from tests.wrapper.shims import ENGINE_SOCKET, relaying

REPO = Path(__file__).resolve().parents[2]
ERROR_LINE = re.compile(r"^nvidia-docker \| \d{4}/\d\d/\d\d \d\d:\d\d:\d\d Error: (.*)$")


@dataclass
class Exec:
    """Records the exec instead of doing it."""

    calls: list[tuple[str, list[str], Mapping[str, str]]] = field(default_factory=list)

    def __call__(self, file: str, args: Sequence[str], env: Mapping[str, str]) -> None:
        self.calls.append((file, list(args), env))

    @property
    def argv(self) -> list[str]:
        assert len(self.calls) == 1, self.calls
        return self.calls[0][1]


@dataclass
class Run:
    code: int
    exec: Exec
    out: str
    err: str

    @property
    def error(self) -> str:
        lines = self.err.strip().splitlines()
        m = ERROR_LINE.match(lines[-1]) if lines else None
        assert m, self.err
        return m.group(1)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], fake_plugin: FakePlugin) -> Any:
    def call(*argv: str, **env: str) -> Run:
        environ = {"PATH": "/usr/bin:/bin", "HOME": "/root", "NV_HOST": fake_plugin.url, **env}
        recorder = Exec()
        code = nvidia_docker.main(list(argv), environ, recorder)
        captured = capsys.readouterr()
        return Run(code, recorder, captured.out, captured.err)

    return call


@pytest.fixture(autouse=True)
def _remove_test_volume(request: pytest.FixtureRequest, fake_plugin: FakePlugin) -> Iterator[None]:
    yield
    if "docker_engine" in request.fixturenames or "make_image" in request.fixturenames:
        engine: DockerEngine = request.getfixturevalue("docker_engine")
        # The stand-in daemon's volumes use the local driver. Ask that driver alone: an unknown
        # name, or an unfiltered listing, makes Docker ask every volume plugin it has ever
        # seen, 15 s for one that is no longer running.
        local = engine.api.volumes(filters={"driver": "local"}).get("Volumes") or []
        if any(volume["Name"] == fake_plugin.volume for volume in local):
            engine.api.remove_volume(fake_plugin.volume, force=True)


def expected_gpu_args(plugin: FakePlugin, gpus: Sequence[int] = (0, 1)) -> list[str]:
    nodes = ["/dev/null:/dev/nvidiactl", "/dev/zero:/dev/nvidia-uvm"]
    nodes += [{0: "/dev/full:/dev/nvidia0", 1: "/dev/random:/dev/nvidia1"}[g] for g in gpus]
    return [*(f"--device={n}" for n in nodes), f"--volume={plugin.volume}:/usr/local/nvidia:ro"]


# --- pass-through ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "argv",
    [["ps", "-a"], ["inspect", "nosuch"], ["-H", "unix:///nowhere", "ps"], [], ["--version"],
     ["run"], ["run", "--rm", ""], ["container", "ls"], ["image", "inspect", "x"]],
    ids=["ps", "inspect", "global-H", "nothing", "--version", "run-no-image", "empty-image",
         "container-ls", "image-inspect"],
)  # fmt: skip
def test_pass_through_is_an_unchanged_exec(run: Any, fake_plugin: FakePlugin, argv: list[str]):
    result = run(*argv)
    assert result.code == 0
    file, args, env = result.exec.calls[0]
    assert (file, args) == ("docker", ["docker", *argv])
    assert env["NV_HOST"] == fake_plugin.url  # the same environment, untouched
    assert fake_plugin.requests == []


def test_version_prints_ours_first(run: Any) -> None:
    result = run("version")
    assert result.out == f"NVIDIA Docker: {__version__}\n\n"
    assert result.exec.argv == ["docker", "version"]


def test_nv_docker_is_split_on_whitespace(run: Any) -> None:
    result = run("ps", NV_DOCKER="  sudo   docker -D ")
    assert result.exec.calls[0][0] == "sudo"
    assert result.exec.argv == ["sudo", "docker", "-D", "ps"]


def test_unlabelled_image_is_untouched(run: Any, plain_image: str, fake_plugin: FakePlugin):
    result = run("run", "--rm", plain_image, "true")
    assert result.exec.argv == ["docker", "run", "--rm", plain_image, "true"]
    assert fake_plugin.requests == []


def test_missing_exec_target_is_reported(fake_plugin: FakePlugin, capsys: Any) -> None:
    code = nvidia_docker.main(["ps"], {"NV_DOCKER": "/nonexistent/docker"})
    assert code == 127
    assert "cannot run '/nonexistent/docker'" in capsys.readouterr().err


# --- rewrite -----------------------------------------------------------------------------------

def test_labelled_image_gets_devices_and_volume(
    run: Any, gpu_image: str, fake_plugin: FakePlugin, docker_engine: DockerEngine
) -> None:
    result = run("run", "--rm", "-v", "x:/x", gpu_image, "ls", "-l")
    assert result.exec.argv == [
        "docker", "run", "--rm", "-v", "x:/x", *expected_gpu_args(fake_plugin), gpu_image, "ls",
        "-l",
    ]  # fmt: skip
    assert "--volume-driver" not in " ".join(result.exec.argv)
    assert fake_plugin.requests == [
        "/v1.0/gpu/info/json", "/v1.0/docker/cli/json?vol=nvidia_driver"
    ]
    volume = docker_engine.api.inspect_volume(fake_plugin.volume)
    assert volume["Driver"] == fake_plugin.volume_driver


@pytest.mark.parametrize(
    ("argv_before", "argv_after"),
    [(["container", "create", "--name=c"], []), (["-D", "run", "-dit", "--"], ["sh"])],
    ids=["container-create", "global-and-dashdash"],
)
def test_rewrite_keeps_the_users_arguments(
    run: Any, gpu_image: str, fake_plugin: FakePlugin, argv_before: list[str],
    argv_after: list[str],
) -> None:
    result = run(*argv_before, gpu_image, *argv_after)
    final = result.exec.argv
    dashdash = ["--"] if argv_before[-1] == "--" else []
    before = argv_before[: len(argv_before) - len(dashdash)]
    assert final == [
        "docker", *before, *expected_gpu_args(fake_plugin), *dashdash, gpu_image, *argv_after
    ]


@pytest.mark.parametrize(
    ("nv_gpu", "query", "gpus"),
    [("0,1", "dev=0+1", (0, 1)), ("1", "dev=1", (1,)), (" 1 , 0 ", "dev=1+0", (0, 1)),
     ("GPU-b78a,GPU-d10c", "dev=GPU-b78a+GPU-d10c", (0, 1)), ("GPU-b78a 1", "dev=GPU-b78a+1", (1,)),
     ("all", "", (0, 1))],
    ids=["indices", "one", "spaces", "uuid-prefixes", "mixed", "all"],
)  # fmt: skip
def test_nv_gpu_selection(
    run: Any, gpu_image: str, fake_plugin: FakePlugin, nv_gpu: str, query: str,
    gpus: tuple[int, ...],
) -> None:
    result = run("run", gpu_image, NV_GPU=nv_gpu)
    sep = "&" if query else ""
    assert fake_plugin.requests[1] == f"/v1.0/docker/cli/json?{query}{sep}vol=nvidia_driver"
    assert result.exec.argv == ["docker", "run", *expected_gpu_args(fake_plugin, gpus), gpu_image]


def test_nv_gpu_on_an_unlabelled_image_injects(run: Any, plain_image: str, fake_plugin: FakePlugin):
    result = run("run", plain_image, NV_GPU="0")
    assert fake_plugin.requests[1] == "/v1.0/docker/cli/json?dev=0"
    assert result.exec.argv == ["docker", "run", *expected_gpu_args(fake_plugin, (0,)), plain_image]


@pytest.mark.parametrize(
    ("nv_gpu", "message"),
    [("5", "invalid device: 5"), ("0,GPU-ffff", "invalid device: GPU-ffff"),
     ("0&vol=x", "invalid device: 0&vol=x")],
    ids=["index", "uuid", "url-metacharacters-are-encoded"],
)  # fmt: skip
def test_invalid_device(run: Any, gpu_image: str, nv_gpu: str, message: str) -> None:
    result = run("run", gpu_image, NV_GPU=nv_gpu)
    assert (result.code, result.error, result.exec.calls) == (1, message, [])


@pytest.mark.parametrize(
    ("label", "kinds", "want_volumes"),
    [("nvidia_driver", ["nvidia_driver"], True),
     ("nvidia_fancy nvidia_driver nvidia_driver", ["nvidia_driver"], True),
     ("nvidia_fancy", [], False), ("", [], True)],
    ids=["known", "unknown-and-repeated", "only-unknown", "unlabelled-with-NV_GPU"],
)  # fmt: skip
def test_volume_kinds(label: str, kinds: list[str], want_volumes: bool) -> None:
    assert nvidia_docker.volume_kinds(label) == (kinds, want_volumes)


def test_unknown_volume_kinds_are_ignored(
    run: Any, make_image: ImageFactory, fake_plugin: FakePlugin
) -> None:
    # Quoted: the image factory writes a Dockerfile-style `LABEL k=v`.
    image = make_image(labels={"com.nvidia.volumes.needed": '"nvidia_driver nvidia_fancy"'})
    result = run("run", image)
    assert fake_plugin.requests[1] == "/v1.0/docker/cli/json?vol=nvidia_driver"
    assert result.exec.argv == ["docker", "run", *expected_gpu_args(fake_plugin), image]


def test_only_unknown_volume_kinds_get_devices_but_no_volume(
    run: Any, make_image: ImageFactory, fake_plugin: FakePlugin, tcp_engine: EngineRelay
) -> None:
    image = make_image(labels={"com.nvidia.volumes.needed": "nvidia_fancy"})
    result = run("run", image, DOCKER_HOST=tcp_engine.host)
    assert fake_plugin.requests[1] == "/v1.0/docker/cli/json"
    assert result.exec.argv == ["docker", "run", *expected_gpu_args(fake_plugin)[:-1], image]
    assert tcp_engine.requests == [("GET", f"/images/{image}/json")]  # no volume created


def test_daemon_503_reason(run: Any, gpu_image: str, fake_plugin: FakePlugin) -> None:
    fake_plugin.fail = (503, "no NVIDIA driver: libnvidia-ml.so.1 not found under /\n")
    result = run("run", gpu_image)
    reason = "no NVIDIA driver: libnvidia-ml.so.1 not found under /"
    assert (result.code, result.error) == (1, reason)


def test_daemon_unreachable_is_one_line_before_docker_runs(
    run: Any, gpu_image: str, tcp_engine: EngineRelay
) -> None:
    # 1.0 left this to Docker, which waits 15 s for the volume plugin. The behaviour proved here
    # (no wall-clock bound: speed lives in bench/) is that nothing reaches Docker's plugin path:
    # the engine saw only the image inspect, no volume create, and docker is never exec'd.
    result = run("run", gpu_image, NV_HOST="http://127.0.0.1:1", DOCKER_HOST=tcp_engine.host)
    assert result.code == 1 and result.exec.calls == []
    assert tcp_engine.requests == [("GET", f"/images/{gpu_image}/json")]
    assert len(result.err.strip().splitlines()) == 1
    assert result.error == (
        "cannot reach nvidia-docker-plugin at http://127.0.0.1:1 (Connection refused); start it "
        "with: systemctl start nvidia-docker (or set NV_HOST to where it listens)"
    )


def test_cuda_label_too_new(run: Any, make_image: ImageFactory, fake_plugin: FakePlugin) -> None:
    image = make_image(labels={**GPU_LABELS, "com.nvidia.cuda.version": "13.1.0"})
    result = run("run", image)
    message = "unsupported CUDA version: driver 13.0 < image 13.1.0"
    assert (result.code, result.error) == (1, message)
    fake_plugin.cuda = "13.1"
    assert run("run", image).code == 0


def test_require_cuda_and_disable_require(run: Any, make_image: ImageFactory) -> None:
    image = make_image(labels=GPU_LABELS, env={"NVIDIA_REQUIRE_CUDA": '"cuda>=14.0 driver>=999"'})
    refused = run("run", image)
    assert refused.code == 1
    assert refused.error.startswith("unsatisfied condition: cuda>=14.0 (or one of 1 other")
    assert run("run", "-e", "NVIDIA_DISABLE_REQUIRE=1", image).code == 0
    assert run("run", "--env=NVIDIA_REQUIRE_CUDA=cuda>=12.0", image).code == 0
    assert run("run", "-e", "NVIDIA_REQUIRE_CUDA", image, NVIDIA_REQUIRE_CUDA="cuda>=13").code == 0


def test_missing_unpullable_image(run: Any, fake_plugin: FakePlugin) -> None:
    result = run("run", "--rm", "nvplugin-test/does-not-exist:1")
    assert result.code == 125
    assert result.err.startswith("Unable to find image 'nvplugin-test/does-not-exist:1' locally\n")
    assert result.error.startswith("cannot pull image 'nvplugin-test/does-not-exist:1': ")
    assert result.exec.calls == [] and fake_plugin.requests == []


def test_missing_image_with_pull_never_is_left_to_docker(run: Any) -> None:
    result = run("run", "--pull=never", "nvplugin-test/does-not-exist:1")
    assert result.exec.argv == ["docker", "run", "--pull=never", "nvplugin-test/does-not-exist:1"]


# --- which engine ------------------------------------------------------------------------------

def test_global_host_option_picks_the_engine(run: Any, gpu_image: str) -> None:
    ok = run("-H", "unix:///var/run/docker.sock", "run", gpu_image)
    assert ok.code == 0
    bad = run("-H", "unix:///nonexistent.sock", "run", gpu_image)
    assert bad.code == 1
    assert bad.error.startswith("cannot connect to the Docker daemon at unix:///nonexistent.sock")
    via_env = run("run", gpu_image, DOCKER_HOST="unix:///nonexistent.sock")
    assert "unix:///nonexistent.sock" in via_env.error
    via_nv_docker = run("run", gpu_image, NV_DOCKER="docker -H unix:///nonexistent.sock")
    assert "unix:///nonexistent.sock" in via_nv_docker.error


# --- reporting ---------------------------------------------------------------------------------

def test_nv_debug_adds_the_traceback(run: Any, gpu_image: str) -> None:
    quiet = run("run", gpu_image, NV_GPU="9")
    assert "Traceback" not in quiet.err
    loud = run("run", gpu_image, NV_GPU="9", NV_DEBUG="1")
    assert "Traceback (most recent call last)" in loud.err
    assert "PluginDaemonError: invalid device: 9" in loud.err
    assert loud.error == "invalid device: 9"


def test_unexpected_errors_are_one_line(
    run: Any, gpu_image: str, fake_plugin: FakePlugin
) -> None:
    fake_plugin.fail = (200, "not json at all\n")
    result = run("run", gpu_image)
    assert (result.code, result.error) == (
        1, f"nvidia-docker-plugin sent invalid JSON for {fake_plugin.url}/v1.0/gpu/info/json"
    )


def test_plain_bad_status_names_the_url(run: Any, gpu_image: str, fake_plugin: FakePlugin):
    fake_plugin.fail = (500, "boom\n")
    result = run("run", gpu_image)
    assert result.error == (
        f"nvidia-docker-plugin answered {fake_plugin.url}/v1.0/gpu/info/json with HTTP 500 "
        "Internal Server Error: boom"
    )


# --- start-up cost ----------------------------------------------------------------------------

@dataclass
class EngineRelay:
    host: str  # tcp://127.0.0.1:PORT
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) seen


REQUEST_LINE = re.compile(rb"^(GET|HEAD|POST|PUT|DELETE) (\S+) HTTP/1\.[01]\r$", re.MULTILINE)


@pytest.fixture
def tcp_engine(docker_engine: DockerEngine) -> Iterator[EngineRelay]:
    """The real engine's unix socket, relayed to a TCP port: a `tcp://` engine without TLS, which
    records the request lines it relays."""
    listener = socket.create_server(("127.0.0.1", 0))
    relay = EngineRelay(f"tcp://127.0.0.1:{listener.getsockname()[1]}")

    def record(data: bytes) -> None:
        relay.requests += [(m.decode(), p.decode()) for m, p in REQUEST_LINE.findall(data)]

    with relaying(listener, ENGINE_SOCKET, on_request=record):
        yield relay


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_rewrite_of_a_local_image_imports_no_sdk(
    transport: str, gpu_image: str, fake_plugin: FakePlugin, request: pytest.FixtureRequest
) -> None:
    host = DEFAULT_HOST if transport == "unix" else request.getfixturevalue("tcp_engine").host
    code = (
        "import json, sys; from nvplugin.wrapper import nvidia_docker; seen = []; "
        f"code = nvidia_docker.main(['run', {gpu_image!r}], "
        f"{{'NV_HOST': {fake_plugin.url!r}, 'DOCKER_HOST': {host!r}, 'HOME': '/root'}}, "
        "lambda _f, args, _e: seen.append(args)); "
        "heavy = [m for m in ('docker', 'requests', 'urllib3', 'aiohttp') if m in sys.modules]; "
        "print(json.dumps([code, seen, heavy]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    code_, seen, heavy = json.loads(done.stdout)
    assert (code_, heavy) == (0, [])
    assert seen == [["docker", "run", *expected_gpu_args(fake_plugin), gpu_image]]
