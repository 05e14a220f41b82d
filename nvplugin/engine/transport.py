"""The wrapper's HTTP, on the standard library: one keep-alive `http.client` connection per peer.

Two peers use it: the Docker Engine API (`unix://` sockets, `tcp://` with TLS through `ssl`) for
the rewrite path's image inspect and volume create, and nvidia-docker-plugin's REST API.

Why not the docker SDK here: `import docker` costs ~220 ms on the bench host (it pulls in
requests, urllib3, charset_normalizer, certifi) against ~40 ms for `python3 -c pass`, and the
whole wrapper overhead budget is 150 ms, paid before every GPU container. `http.client` costs
~16 ms and the rewrite path needs it anyway for the plugin daemon. The SDK stays for what it does
better and what is rare: pulls (registry auth, credential helpers) and `ssh://` engines.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse

TYPE_CHECKING = False  # as in wrapper/cmdline: no `typing` import at run time
if TYPE_CHECKING:
    import ssl
    from typing import Any

DEFAULT_TCP_PORT = 2375
DEFAULT_TLS_PORT = 2376  # the docker CLI's defaults when `tcp://host` has no port


class Unreachable(Exception):
    """The request got no answer: connecting failed, the connection broke, or it timed out.

    `denied`: the peer's socket exists but refuses this user (a PermissionError: EACCES, EPERM),
    which the caller tells apart from an engine that is not there. Not read from `errno`: an
    `ssl.SSLError` keeps the SSL library's codes there, and its 1 is EPERM's number.
    """

    def __init__(self, reason: str, denied: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.denied = denied


class Reply:
    """A complete HTTP answer (a plain class with slots: see wrapper/cmdline on start-up cost)."""

    __slots__ = ("body", "reason", "status")

    def __init__(self, status: int, reason: str, body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The decoded body; ValueError if it is not JSON."""
        return json.loads(self.body)


def reason(e: BaseException) -> str:
    """The short why of an I/O failure: `Connection refused`, `timed out`, …"""
    if isinstance(e, TimeoutError):
        return "timed out"
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over an AF_UNIX stream socket, like the Engine's `unix:///var/run/docker.sock`."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)  # the Host header the docker CLI sends
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def tcp_connection(
    host: str, port: int, timeout: float, tls: ssl.SSLContext | None = None, https: bool = False
) -> http.client.HTTPConnection:
    """HTTP to host:port; HTTPS with `tls` (or, if only `https`, the default verifying context)."""
    if tls is not None or https:
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=tls)
    return http.client.HTTPConnection(host, port, timeout=timeout)


def engine_connection(
    docker_host: str, timeout: float, tls: ssl.SSLContext | None = None
) -> tuple[http.client.HTTPConnection, str]:
    """`unix:///path` or `tcp://host[:port][/prefix]` → (connection, path prefix for requests).

    ValueError for a form this transport does not speak (the caller falls back to the SDK for
    `ssh://`) or a malformed address.
    """
    scheme, sep, rest = docker_host.partition("://")
    if not sep:
        raise ValueError(f"invalid Docker host {docker_host!r}: no scheme")
    scheme = scheme.lower()
    if scheme == "unix":
        path = rest if rest.startswith("/") else "/" + rest  # unix://x/y is unix:///x/y (SDK)
        if path == "/":
            raise ValueError(f"invalid Docker host {docker_host!r}: no socket path")
        return UnixHTTPConnection(path, timeout), ""
    if scheme != "tcp":
        raise ValueError(f"unsupported Docker host {docker_host!r}: use unix:// or tcp://")
    parsed = urllib.parse.urlsplit(docker_host)
    try:
        port = parsed.port
    except ValueError as e:
        raise ValueError(f"invalid Docker host {docker_host!r}: {e}") from e
    if parsed.query or parsed.fragment or parsed.username:
        raise ValueError(f"invalid Docker host {docker_host!r}")
    host = parsed.hostname or "localhost"
    default_port = DEFAULT_TCP_PORT if tls is None else DEFAULT_TLS_PORT
    prefix = parsed.path.rstrip("/")
    return tcp_connection(host, port or default_port, timeout, tls), prefix


def tls_context(
    verify: bool, ca_cert: str | None, cert: str | None, key: str | None
) -> ssl.SSLContext:
    """The docker CLI's TLS: verify the server against `ca_cert` (else the system store) and its
    name, or verify nothing; present `cert`/`key` when given. ValueError names a bad file.
    """
    import ssl

    try:
        if verify:
            context = ssl.create_default_context(cafile=ca_cert)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    except OSError as e:  # ssl.SSLError included
        raise ValueError(f"cannot load the TLS CA certificate {ca_cert}: {reason(e)}") from e
    if cert:
        try:
            context.load_cert_chain(cert, key)
        except OSError as e:
            raise ValueError(f"cannot load the TLS client certificate {cert} and key {key}: "
                             f"{reason(e)}") from e  # fmt: skip
    return context


class HttpClient:
    """Requests over one keep-alive connection; every transport failure becomes `Unreachable`."""

    def __init__(self, conn: http.client.HTTPConnection, prefix: str = "") -> None:
        self._conn = conn
        self._prefix = prefix
        self._used = False

    def request(self, method: str, path: str, body: Any = None) -> Reply:
        """`body`, if not None, is sent as JSON. A kept-alive connection that the peer closed
        meanwhile is reopened once (both our POSTs are idempotent: volume create is a no-op
        for an existing volume)."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        retry = self._used
        while True:
            try:
                self._conn.request(method, self._prefix + path, body=data, headers=headers)
                response = self._conn.getresponse()
                payload = response.read()
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as e:
                self._conn.close()
                if retry:
                    retry = False
                    continue
                raise Unreachable(reason(e)) from e
            except (OSError, http.client.HTTPException) as e:
                self._conn.close()
                raise Unreachable(reason(e), isinstance(e, PermissionError)) from e
            self._used = True
            return Reply(response.status, response.reason, payload)

    def connect(self) -> None:
        """Open the connection now (the next request uses it), so that a refusal is known before
        any request is made; `Unreachable` on failure. Costs nothing extra: `request` would open
        the same connection."""
        try:
            self._conn.connect()
        except OSError as e:
            self._conn.close()
            raise Unreachable(reason(e), isinstance(e, PermissionError)) from e

    def close(self) -> None:
        self._conn.close()
