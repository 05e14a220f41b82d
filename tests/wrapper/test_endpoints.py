"""Which engine and which daemon the wrapper talks to: -H, DOCKER_HOST, contexts, NV_HOST."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nvplugin.core.errors import ConfigError, DockerError
from nvplugin.engine.client import display_reference
from nvplugin.engine.endpoint import DEFAULT_HOST, resolve_endpoint
from nvplugin.wrapper.cmdline import split
from nvplugin.wrapper.nvidia_docker import (
    PluginAddress,
    container_path,
    docker_globals,
    gpu_items,
    plugin_address,
)


@pytest.mark.parametrize(
    ("nv_host", "engine", "url"),
    [(None, DEFAULT_HOST, "http://localhost:3476"),
     ("", DEFAULT_HOST, "http://localhost:3476"),
     ("http://10.0.0.1:4000", DEFAULT_HOST, "http://10.0.0.1:4000"),
     ("http://10.0.0.1:4000/", DEFAULT_HOST, "http://10.0.0.1:4000"),
     ("tcp://gpu-host:3476", DEFAULT_HOST, "http://gpu-host:3476"),
     ("gpu-host:5000", DEFAULT_HOST, "http://gpu-host:5000"),
     ("gpu-host:", DEFAULT_HOST, "http://gpu-host:3476"),
     (":5000", DEFAULT_HOST, "http://localhost:5000"),
     ("gpu-host", DEFAULT_HOST, "http://gpu-host:3476"),
     ("[::1]:5000", DEFAULT_HOST, "http://[::1]:5000"),
     ("https://gpu-host:443", DEFAULT_HOST, "https://gpu-host:443"),
     ("unix:///run/x.sock", DEFAULT_HOST, "http://localhost:3476"),
     (None, "tcp://10.0.0.1:2376", "http://10.0.0.1:3476"),
     (None, "ssh://me@10.0.0.1", "http://localhost:3476")],
    ids=["default", "empty", "http", "trailing-slash", "tcp", "host-port", "host-colon",
         "colon-port", "bare-host", "ipv6", "https", "unix-is-local", "from-tcp-engine",
         "ssh-engine-is-local"],
)  # fmt: skip
def test_plugin_address(nv_host: str | None, engine: str, url: str) -> None:
    assert plugin_address(nv_host, engine).url == url


@pytest.mark.parametrize("bad", ["ftp://x:1", "http://a b:1", "x:port"])
def test_invalid_nv_host(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid remote host URI"):
        plugin_address(bad, DEFAULT_HOST)


def test_ssh_nv_host_explains_the_tunnel() -> None:
    with pytest.raises(ConfigError, match="ssh -NL 3476:localhost:3476"):
        plugin_address("ssh://10.0.0.1:", DEFAULT_HOST)


def test_plugin_address_equality() -> None:
    assert PluginAddress("http", "h", 1) == PluginAddress("http", "h", 1)
    assert PluginAddress("http", "h", 1) != PluginAddress("http", "h", 2)


@pytest.mark.parametrize(
    ("nv_gpu", "items"),
    [(None, []), ("", []), ("0,1", ["0", "1"]), (" 0 ,, 1 ", ["0", "1"]),
     ("GPU-836c0c09,GPU-b78a60a", ["GPU-836c0c09", "GPU-b78a60a"]), ("0 1\t2", ["0", "1", "2"]),
     ("all", []), ("*", [])],
    ids=["unset", "empty", "commas", "empty-items", "uuids", "whitespace", "all", "star"],
)  # fmt: skip
def test_gpu_items(nv_gpu: str | None, items: list[str]) -> None:
    assert gpu_items(nv_gpu) == items


@pytest.mark.parametrize(
    ("device", "path"),
    [("/dev/nvidia0", "/dev/nvidia0"), ("/r/dev/nvidia0:/dev/nvidia0", "/dev/nvidia0"),
     ("/r/dev/nvidia0:/dev/nvidia0:rwm", "/dev/nvidia0")],
)  # fmt: skip
def test_container_path(device: str, path: str) -> None:
    assert container_path(device) == path


@pytest.mark.parametrize(
    ("command", "globals_"),
    [(["docker"], []), (["sudo", "docker", "-D"], ["-D"]),
     (["/usr/bin/docker", "-H", "x"], ["-H", "x"]), (["podman"], [])],
)  # fmt: skip
def test_docker_globals_from_nv_docker(command: list[str], globals_: list[str]) -> None:
    assert docker_globals(command) == globals_


@pytest.mark.parametrize(
    ("ref", "shown"),
    [("busybox", "busybox:latest"), ("reg:5000/a/b", "reg:5000/a/b:latest"),
     ("a/b:1", "a/b:1"), ("a@sha256:abc", "a@sha256:abc")],
)  # fmt: skip
def test_display_reference(ref: str, shown: str) -> None:
    assert display_reference(ref) == shown


def test_engine_host_precedence(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    assert resolve_endpoint(split(["ps"]), env).host == DEFAULT_HOST
    env_host = {**env, "DOCKER_HOST": "tcp://e:2375"}
    assert resolve_endpoint(split(["ps"]), env_host).host == "tcp://e:2375"
    assert resolve_endpoint(split(["-H", "h:1", "ps"]), env_host).host == "tcp://h:1"
    with pytest.raises(DockerError, match="conflicting options"):
        resolve_endpoint(split(["-H", "x", "--context", "c", "ps"]), env)


def test_tls_options(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "DOCKER_CERT_PATH": "/certs"}
    ep = resolve_endpoint(split(["--tlsverify", "-H", "tcp://h:2376", "--tlskey=/k", "ps"]), env)
    assert (ep.tls, ep.tls_verify) == (True, True)
    assert (ep.ca_cert, ep.cert, ep.key) == ("/certs/ca.pem", "/certs/cert.pem", "/k")
    plain = resolve_endpoint(split(["-H", "tcp://h:2375", "ps"]), env)
    assert (plain.tls, plain.ca_cert) == (False, None)


def _write_context(config: Path, name: str, host: str) -> None:
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = config / "contexts" / "meta" / digest / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"Name": name, "Endpoints": {"docker": {"Host": host}}}))


def test_contexts_are_read_from_the_cli_store(tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    _write_context(config, "gpu", "tcp://gpu-box:2375")
    _write_context(config, "other", "unix:///other.sock")
    env = {"HOME": str(tmp_path), "DOCKER_CONFIG": str(config)}
    assert resolve_endpoint(split(["--context", "gpu", "ps"]), env).host == "tcp://gpu-box:2375"
    assert resolve_endpoint(split(["-c", "other", "ps"]), env).host == "unix:///other.sock"
    assert resolve_endpoint(split(["ps"]), {**env, "DOCKER_CONTEXT": "gpu"}).host.endswith("2375")
    (config / "config.json").write_text(json.dumps({"currentContext": "other"}))
    assert resolve_endpoint(split(["ps"]), env).host == "unix:///other.sock"
    # DOCKER_HOST beats the current context, as in the CLI
    assert resolve_endpoint(split(["ps"]), {**env, "DOCKER_HOST": "unix:///h"}).host == "unix:///h"
    explicit = split(["--config", str(config), "--context", "gpu", "ps"])
    assert resolve_endpoint(explicit, {"HOME": str(tmp_path)}).host == "tcp://gpu-box:2375"
    with pytest.raises(DockerError, match='context "nope" not found'):
        resolve_endpoint(split(["--context", "nope", "ps"]), env)
