"""`engine_http` and `docker_client.Engine` over it: the real Docker Engine on its unix socket, a
scripted HTTP server on a unix socket (statuses Docker will not produce on demand), and a TLS
server with certificates made by `openssl` (verification, client certificates, host names)."""

from __future__ import annotations

import http.client
import json
import socket
import socketserver
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from nvplugin.core.errors import DockerError, PluginDaemonError
from nvplugin.engine import transport
from nvplugin.engine.client import CliEngine, Engine, EngineLike, open_engine
from nvplugin.engine.endpoint import DEFAULT_HOST, Endpoint
from tests.dockerenv import DockerEngine, ImageFactory
from tests.requirements import need_tool

IMAGE_JSON = {"Id": "sha256:feed", "Config": {"Labels": {"a": "1"}, "Env": ["X=1", "Y=a=b"]}}


@dataclass
class Script:
    """What the scripted server answers, and what it saw."""

    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # path → status, body
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    connections: int = 0
    close_after_each: bool = False  # drop kept-alive connections silently, as an idle timeout
    peer_cert: dict[str, Any] | None = None


def _handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            script.connections += 1
            if isinstance(self.connection, ssl.SSLSocket):
                script.peer_cert = self.connection.getpeercert()

        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            script.seen.append((self.command, self.path, dict(self.headers), body))
            status, data = script.answers.get(self.path, (200, json.dumps(IMAGE_JSON).encode()))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            self.close_connection = script.close_after_each

        do_GET = do_POST = answer

        def address_string(self) -> str:
            return "peer"  # unix sockets have no address

        def log_message(self, *args: object) -> None:
            return

    return Handler


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _serve(server: socketserver.BaseServer) -> None:
    threading.Thread(target=server.serve_forever, daemon=True).start()


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[tuple[str, Script]]:
    script = Script()
    path = tmp_path / "engine.sock"
    server = _UnixServer(str(path), _handler(script))
    _serve(server)
    yield f"unix://{path}", script
    server.shutdown()
    server.server_close()


# --- the transport ------------------------------------------------------------------------------

def test_requests_share_one_kept_alive_unix_connection(unix_server: tuple[str, Script]) -> None:
    host, script = unix_server
    conn, prefix = transport.engine_connection(host, timeout=5)
    client = transport.HttpClient(conn, prefix)
    first = client.request("GET", "/images/x/json")
    second = client.request("POST", "/volumes/create", {"Name": "v", "Driver": "d"})
    client.close()
    assert (first.status, first.json()) == (200, IMAGE_JSON)
    assert second.status == 200
    assert script.connections == 1
    method, path, headers, body = script.seen[1]
    assert (method, path) == ("POST", "/volumes/create")
    assert json.loads(body) == {"Name": "v", "Driver": "d"}
    assert headers["Content-Type"] == "application/json"
    assert headers["Host"] == "localhost"
    assert "Content-Type" not in script.seen[0][2]


def test_a_connection_the_peer_dropped_is_reopened_once(unix_server: tuple[str, Script]) -> None:
    host, script = unix_server
    script.close_after_each = True
    client = transport.HttpClient(*transport.engine_connection(host, timeout=5))
    assert [client.request("GET", f"/images/{i}/json").status for i in range(3)] == [200] * 3
    assert script.connections == 3


def test_the_first_request_is_not_retried(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "mute.sock"))
    listener.listen(4)
    accepted: list[socket.socket] = []

    def hang_up() -> None:
        while len(accepted) < 2:
            peer, _ = listener.accept()
            accepted.append(peer)
            peer.recv(65536)
            peer.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    client = transport.HttpClient(*transport.engine_connection(
        f"unix://{tmp_path / 'mute.sock'}", timeout=5))  # fmt: skip
    with pytest.raises(transport.Unreachable, match="Remote end closed connection"):
        client.request("GET", "/_ping")
    listener.close()
    assert len(accepted) == 1


@pytest.mark.parametrize(
    ("host", "tls", "expected"),
    [("unix:///var/run/docker.sock", False, ("unix", "/var/run/docker.sock", None, "")),
     ("unix://run/x.sock", False, ("unix", "/run/x.sock", None, "")),
     ("tcp://10.0.0.1:2375", False, ("tcp", "10.0.0.1", 2375, "")),
     ("TCP://gpu-box", False, ("tcp", "gpu-box", 2375, "")),
     ("tcp://gpu-box", True, ("tcps", "gpu-box", 2376, "")),
     ("tcp://[::1]:9/api/", False, ("tcp", "::1", 9, "/api"))],
    ids=["unix", "unix-legacy-relative", "tcp", "tcp-default-port", "tls-default-port",
         "ipv6-and-prefix"],
)  # fmt: skip
def test_engine_connection_forms(host: str, tls: bool, expected: tuple[Any, ...]) -> None:
    context = ssl.create_default_context() if tls else None
    conn, prefix = transport.engine_connection(host, 5, context)
    if isinstance(conn, transport.UnixHTTPConnection):
        got = ("unix", conn.socket_path, None, prefix)
    else:
        kind = "tcps" if isinstance(conn, http.client.HTTPSConnection) else "tcp"
        got = (kind, conn.host, conn.port, prefix)
    assert got == expected


@pytest.mark.parametrize(
    ("host", "message"),
    [("ssh://me@box", "unsupported Docker host"), ("/var/run/docker.sock", "no scheme"),
     ("unix://", "no socket path"), ("tcp://box:port", "invalid Docker host"),
     ("tcp://box:1?x=1", "invalid Docker host")],
)  # fmt: skip
def test_engine_connection_refuses(host: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        transport.engine_connection(host, 5)


# --- Engine against the real Docker Engine ----------------------------------------------------

# An `ssh://` engine is reached through the docker CLI (open_engine's choice); here the CLI is
# pointed at the local engine, so both transports answer the same questions about one engine.
SSH_HOST = "ssh://gpu-box"
LOCAL_CLI = ["docker", "-H", DEFAULT_HOST]


@pytest.fixture(params=["api", "cli"], ids=["engine_api", "ssh_through_cli"])
def engine(request: pytest.FixtureRequest, docker_engine: DockerEngine) -> Iterator[EngineLike]:
    if request.param == "api":
        engine: EngineLike = open_engine(Endpoint(DEFAULT_HOST), LOCAL_CLI)
        assert isinstance(engine, Engine)
    else:
        engine = open_engine(Endpoint(SSH_HOST), LOCAL_CLI)
        assert isinstance(engine, CliEngine)
    yield engine
    engine.close()


def test_ssh_without_a_docker_cli_is_a_clear_error() -> None:
    with pytest.raises(DockerError, match=r"^cannot reach the Docker daemon at ssh://gpu-box: "
                       r"only the docker CLI speaks this transport$"):
        open_engine(Endpoint(SSH_HOST))


def test_the_api_engine_reads_version_info_and_volumes(docker_engine: DockerEngine) -> None:
    engine = Engine(Endpoint(DEFAULT_HOST))
    try:
        assert engine.version()["ApiVersion"] == docker_engine.api.version()["ApiVersion"]
        assert "Plugins" in engine.info()
        name = f"nvtest_ls_{uuid.uuid4().hex[:8]}"
        engine.ensure_volume(name, "local")
        try:
            assert name in {v["Name"] for v in engine.volumes("local")}
            assert name not in {v["Name"] for v in engine.volumes("nvidia-docker-none")}
        finally:
            docker_engine.api.remove_volume(name, force=True)
        running = {c["Id"] for c in docker_engine.client.api.containers()}
        assert {c["Id"] for c in engine.containers()} == running
    finally:
        engine.close()


def test_inspect_and_volume_on_the_real_engine(
    engine: EngineLike, make_image: ImageFactory, docker_engine: DockerEngine
) -> None:
    image = make_image(labels={"com.example.x": "1"}, env={"NVPLUGIN_T": "a=b"})
    facts = engine.inspect_image(image)
    assert facts is not None
    assert facts.id == docker_engine.api.inspect_image(image)["Id"]
    assert facts.labels == {"com.example.x": "1"}
    assert facts.env["NVPLUGIN_T"] == "a=b"
    assert engine.inspect_image("nvplugin-test/does-not-exist:1") is None
    name = f"nvtest_http_{uuid.uuid4().hex[:8]}"
    try:
        engine.ensure_volume(name, "local")
        engine.ensure_volume(name, "local")  # exists already: a no-op, as `docker volume create`
        assert docker_engine.api.inspect_volume(name)["Driver"] == "local"
    finally:
        docker_engine.api.remove_volume(name, force=True)


def test_real_engine_errors_carry_its_message(docker_engine: DockerEngine) -> None:
    engine = Engine(Endpoint(DEFAULT_HOST))
    with pytest.raises(DockerError) as bad_ref:
        engine.inspect_image("Bad Ref")
    assert str(bad_ref.value).startswith("cannot inspect image 'Bad Ref': no such image: Bad Ref: ")
    assert "invalid reference format" in str(bad_ref.value)
    with pytest.raises(PluginDaemonError) as bad_name:
        engine.ensure_volume("bad/name", "local")
    assert str(bad_name.value).startswith(
        "cannot create volume 'bad/name': create bad/name: \"bad/name\" includes invalid characters"
    )


@pytest.mark.parametrize(
    ("ref", "path"),
    [("busybox", "/images/busybox/json"),
     ("reg:5000/a/b:1", "/images/reg:5000/a/b:1/json"),
     ("a@sha256:0123", "/images/a@sha256:0123/json"),
     ("x?y=1#z %", "/images/x%3Fy%3D1%23z%20%25/json")],
    ids=["name", "registry-port-tag", "digest", "url-metacharacters"],
)  # fmt: skip
def test_the_reference_is_quoted_into_the_path(
    unix_server: tuple[str, Script], ref: str, path: str
) -> None:
    host, script = unix_server
    Engine(Endpoint(host)).inspect_image(ref)
    assert script.seen[0][:2] == ("GET", path)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [(500, b'{"message": "boom"}', "cannot inspect image 'img': boom"),
     (500, b"plain words\n", "cannot inspect image 'img': plain words"),
     (502, b"", "cannot inspect image 'img': HTTP 502 Bad Gateway"),
     (200, b"[not json", "cannot inspect image 'img': unexpected answer (")],
    ids=["json-message", "text", "empty", "bad-json"],
)  # fmt: skip
def test_inspect_error_mapping(
    unix_server: tuple[str, Script], status: int, body: bytes, error: str
) -> None:
    host, script = unix_server
    script.answers["/images/img/json"] = (status, body)
    with pytest.raises(DockerError) as caught:
        Engine(Endpoint(host)).inspect_image("img")
    assert str(caught.value).startswith(error)


def test_missing_volume_plugin_gets_the_start_hint(unix_server: tuple[str, Script]) -> None:
    host, script = unix_server
    message = 'create v: error looking up volume plugin nvidia-docker: plugin "nvidia-docker" '
    message += "not found"
    script.answers["/volumes/create"] = (404, json.dumps({"message": message}).encode())
    with pytest.raises(PluginDaemonError) as caught:
        Engine(Endpoint(host)).ensure_volume("v", "nvidia-docker")
    assert str(caught.value) == (
        f"cannot create volume 'v': {message}; Docker does not see the nvidia-docker volume "
        f"plugin: start it with: systemctl start nvidia-docker"
    )


@pytest.mark.parametrize(
    ("host", "why"),
    [("unix:///nonexistent.sock", "No such file or directory"),
     ("tcp://127.0.0.1:1", "Connection refused")],
    ids=["unix", "tcp"],
)  # fmt: skip
def test_unreachable_engine(host: str, why: str) -> None:
    with pytest.raises(DockerError) as caught:
        Engine(Endpoint(host)).inspect_image("img")
    message = str(caught.value)
    assert message.startswith(f"cannot connect to the Docker daemon at {host}: {why}")
    assert message.endswith("; is the docker daemon running, and may this user use it?")


# --- TLS ----------------------------------------------------------------------------------------

def _openssl(*args: str | Path) -> None:
    subprocess.run([need_tool("openssl"), *map(str, args)], check=True, capture_output=True)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}-key.pem", directory / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", key, "-out", cert)  # fmt: skip
    return cert, key


def _signed(directory: Path, ca: tuple[Path, Path], name: str, ext: str) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}{s}.pem" for s in ("-key", "-csr", ""))
    extfile = directory / f"{name}.ext"
    extfile.write_text(ext + "\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", key,
             "-out", csr)  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-days", "2", "-extfile", extfile, "-out", cert)  # fmt: skip
    return cert, key


@dataclass
class TlsEngine:
    port: int
    script: Script
    ca: Path
    other_ca: Path
    client: tuple[Path, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("pki")
    ca = _ca(directory, "ca")
    return {
        "ca": ca,
        "other_ca": _ca(directory, "other-ca"),
        "server": _signed(directory, ca, "server", "subjectAltName=DNS:localhost"),
        "client": _signed(directory, ca, "client", "extendedKeyUsage=clientAuth"),
    }


@pytest.fixture
def tls_engine(pki: dict[str, tuple[Path, Path]]) -> Iterator[TlsEngine]:
    """An engine stand-in on 127.0.0.1 with a `localhost` certificate that wants client certs."""
    script = Script()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"][0]))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(*map(str, pki["server"]))

    class Server(_TcpServer):
        def get_request(self) -> tuple[socket.socket, Any]:
            sock, address = self.socket.accept()
            return context.wrap_socket(sock, server_side=True), address

        def handle_error(self, request: Any, client_address: Any) -> None:
            return  # failed handshakes are what some tests provoke

    server = Server(("127.0.0.1", 0), _handler(script))
    _serve(server)
    yield TlsEngine(server.server_address[1], script, pki["ca"][0], pki["other_ca"][0],
                    pki["client"])  # fmt: skip
    server.shutdown()
    server.server_close()


TlsEndpoint = Callable[..., Endpoint]


@pytest.fixture
def endpoint(tls_engine: TlsEngine) -> TlsEndpoint:
    def make(host: str = "localhost", verify: bool = True, ca: Path | None = None,
             client: tuple[Path, Path] | None = None) -> Endpoint:  # fmt: skip
        cert, key = client or tls_engine.client
        return Endpoint(f"tcp://{host}:{tls_engine.port}", tls=True, tls_verify=verify,
                        ca_cert=str(ca or tls_engine.ca), cert=str(cert), key=str(key))  # fmt: skip

    return make


def test_tls_verifies_the_engine_and_presents_the_client_certificate(
    tls_engine: TlsEngine, endpoint: TlsEndpoint
) -> None:
    facts = Engine(endpoint()).inspect_image("img")
    assert facts is not None and facts.labels == {"a": "1"}
    assert tls_engine.script.peer_cert is not None
    assert dict(x[0] for x in tls_engine.script.peer_cert["subject"]) == {"commonName": "client"}


def test_tls_refuses_an_engine_signed_by_another_ca(
    tls_engine: TlsEngine, endpoint: TlsEndpoint
) -> None:
    with pytest.raises(DockerError, match=r"cannot connect to the Docker daemon at tcp://localhost:"
                       r".*CERTIFICATE_VERIFY_FAILED"):  # fmt: skip
        Engine(endpoint(ca=tls_engine.other_ca)).inspect_image("img")
    assert tls_engine.script.seen == []


def test_tls_checks_the_host_name(endpoint: TlsEndpoint) -> None:
    with pytest.raises(DockerError, match=r"CERTIFICATE_VERIFY_FAILED.*IP address mismatch"):
        Engine(endpoint(host="127.0.0.1")).inspect_image("img")


def test_tls_without_verify_accepts_any_engine(tls_engine: TlsEngine, endpoint: TlsEndpoint):
    # --tls without --tlsverify: encrypted, the engine's certificate and name unchecked.
    unchecked = endpoint(host="127.0.0.1", verify=False, ca=tls_engine.other_ca)
    facts = Engine(unchecked).inspect_image("img")
    assert facts is not None and tls_engine.script.connections == 1


def test_missing_client_key_names_the_files(endpoint: TlsEndpoint, tmp_path: Path) -> None:
    cert = Path(endpoint().cert or "")
    missing = tmp_path / "nokey.pem"
    with pytest.raises(DockerError, match=f"cannot load the TLS client certificate {cert} and key "
                       f"{missing}: No such file or directory"):  # fmt: skip
        Engine(endpoint(client=(cert, missing)))


def test_absent_default_client_certificate_is_not_sent(
    tls_engine: TlsEngine, endpoint: TlsEndpoint, tmp_path: Path
) -> None:
    # resolve_endpoint names ~/.docker/cert.pem even when there is none: then none is sent
    # (as the SDK did), and this engine, which requires one, ends the handshake.
    absent = endpoint(client=(tmp_path / "cert.pem", tmp_path / "key.pem"))
    with pytest.raises(DockerError, match="cannot connect to the Docker daemon at tcp://localhost"):
        Engine(absent).inspect_image("img")
    assert tls_engine.script.peer_cert is None
