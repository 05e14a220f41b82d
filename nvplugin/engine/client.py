"""The Docker Engine client: the one way nvplugin talks to an engine (wrapper, doctor, daemon).

Design: the Engine API over the standard library's `http.client` (`transport`) for `unix://` and
`tcp://` (TLS) engines, found by the docker CLI's own rules (`endpoint`); and the docker CLI itself
(`CliEngine`) for what only the CLI does well: pulls (registry auth, credential helpers and
progress bars exactly as `docker run` shows them, as 1.0 pulled), engines the API client does not
speak (`ssh://`), and `NV_DOCKER='sudo docker'` when the socket refuses the user (1.0 ran every
call through NV_DOCKER). `open_engine` picks one; callers see one interface, `EngineLike`.

Why not the docker SDK (measured on this project's 2-core bench host, warm cache): `import docker`
costs 115 ms over `python3 -c pass` (23 ms), because it brings requests, urllib3 and certifi; the
wrapper's whole overhead budget over `docker run` is 150 ms, paid before every GPU container, and
the daemon's memory target leaves no room for it either. `http.client` is already loaded for the
REST API. The SDK remains a test-only dependency, where it drives containers for the e2e tests.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from nvplugin.core.errors import DockerError, ImagePullError, PluginDaemonError
from nvplugin.engine import transport
from nvplugin.engine.endpoint import Endpoint
from nvplugin.engine.transport import HttpClient, Reply, Unreachable

API_TIMEOUT_S = 60


class EngineAccessDenied(DockerError):
    """The engine's socket exists but refuses this user (EACCES/EPERM on connect)."""


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """What the wrapper needs of an image: its ID, labels and environment."""

    id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)


class EngineLike(Protocol):
    """What the wrapper asks of an engine: `Engine` (the API) or `CliEngine` (the docker CLI)."""

    def inspect_image(self, ref: str) -> ImageFacts | None: ...
    def pull(self, ref: str, out: TextIO, platform: str | None = None,
             quiet: bool = False) -> None: ...  # fmt: skip
    def ensure_volume(self, name: str, driver: str) -> None: ...
    def close(self) -> None: ...


def speaks_api(endpoint: Endpoint) -> bool:
    """Whether `Engine` reaches this endpoint itself (`unix://`, `tcp://`); `ssh://` and other
    schemes are the docker CLI's."""
    return endpoint.host.partition("://")[0].lower() in ("unix", "tcp")


def open_engine(endpoint: Endpoint, cli: Sequence[str] | None = None,
                fall_back_when_denied: bool = False) -> EngineLike:
    """The engine at `endpoint`: its API, connected now, as the calling user; the docker CLI
    `cli` (the docker command with the user's global options) for schemes the API client does
    not speak, and, with `fall_back_when_denied` (NV_DOCKER set), when the socket refuses the
    user, as 1.0 ran every call (`NV_DOCKER='sudo docker'`). `cli` also pulls for `Engine`.

    Connecting first costs nothing (the first request reuses the connection) and decides the
    transport before any request. A refusal without the fallback is an `EngineAccessDenied`
    naming both fixes.
    """
    if not speaks_api(endpoint):
        if not cli:
            raise DockerError(f"cannot reach the Docker daemon at {endpoint.host}: only the "
                              "docker CLI speaks this transport")
        return CliEngine(cli)
    engine = Engine(endpoint, cli=cli)
    try:
        engine.connect()
    except EngineAccessDenied:
        engine.close()
        if cli and fall_back_when_denied:
            return CliEngine(cli)
        raise
    return engine


def access_denied_message(host: str) -> str:
    import pwd  # a failure path only

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    return (
        f"permission denied while trying to connect to the Docker daemon at {host} as user "
        f"{user}: add the user to the docker group (sudo usermod -aG docker {user}, then log in "
        f"again), or set NV_DOCKER='sudo docker' to run nvidia-docker's docker calls through sudo"
    )


def image_facts_from(data: Any) -> ImageFacts:
    """ImageFacts from one image-inspect document; TypeError/AttributeError if malformed."""
    config = data.get("Config") or {}
    env = dict(item.partition("=")[::2] for item in config.get("Env") or ())
    return ImageFacts(data.get("Id", ""), dict(config.get("Labels") or {}), env)


def volume_error(name: str, driver: str, reason: str) -> PluginDaemonError:
    hint = ""
    if "plugin" in reason and "not found" in reason:
        hint = (
            f"; Docker does not see the {driver} volume plugin: "
            f"start it with: systemctl start nvidia-docker"
        )
    return PluginDaemonError(f"cannot create volume '{name}': {reason}{hint}")


def display_reference(ref: str) -> str:
    """`busybox` → `busybox:latest` as `docker run` prints it; digests and tags unchanged."""
    if "@" in ref:
        return ref
    last = ref.rsplit("/", 1)[-1]
    return ref if ":" in last else f"{ref}:latest"


class Engine:
    """One connection to the Docker Engine; every failure becomes a DockerError.

    Requests go over `transport` (standard library) to `unix://` and `tcp://` engines; a pull
    runs the docker CLI `cli` (see the module docstring). Paths are unversioned: the engine
    answers them at its own API version, which works from 20.10 (API 1.41) to 29+ (which refuses
    any version below 1.44); the fields used here are the same in all of them.
    """

    def __init__(self, endpoint: Endpoint, timeout: float = API_TIMEOUT_S,
                 cli: Sequence[str] | None = None) -> None:
        self.endpoint = endpoint
        self._cli = list(cli) if cli else ["docker"]
        try:
            tls = None
            if endpoint.tls:
                usable = endpoint.cert and endpoint.key and os.path.isfile(endpoint.cert)
                tls = transport.tls_context(
                    endpoint.tls_verify,
                    endpoint.ca_cert if endpoint.tls_verify else None,
                    endpoint.cert if usable else None,
                    endpoint.key if usable else None,
                )
            conn, prefix = transport.engine_connection(endpoint.host, timeout, tls)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise self._cannot_connect(transport.reason(e)) from e
        self._http = HttpClient(conn, prefix)

    def _cannot_connect(self, why: str) -> DockerError:
        return DockerError(
            f"cannot connect to the Docker daemon at {self.endpoint.host}: {why}; "
            f"is the docker daemon running, and may this user use it?"
        )

    def _unreachable(self, e: Unreachable) -> DockerError:
        if e.denied:
            return EngineAccessDenied(access_denied_message(self.endpoint.host))
        return self._cannot_connect(e.reason)

    def connect(self) -> None:
        """Connect now (the first request reuses the connection): EngineAccessDenied if the
        socket refuses this user, DockerError if the engine cannot be reached."""
        try:
            self._http.connect()
        except Unreachable as e:
            raise self._unreachable(e) from e

    def _request(self, method: str, path: str, body: Any = None) -> Reply:
        try:
            return self._http.request(method, path, body)
        except Unreachable as e:
            raise self._unreachable(e) from e

    def inspect_image(self, ref: str) -> ImageFacts | None:
        """The image's labels and environment; None if the engine does not have it."""
        reply = self._request("GET", f"/images/{urllib.parse.quote(ref, safe='/:@')}/json")
        if reply.status == 404:
            return None
        if reply.status != 200:
            raise DockerError(f"cannot inspect image '{ref}': {api_message(reply)}")
        try:
            return image_facts_from(reply.json())
        except (ValueError, AttributeError, TypeError) as e:
            raise DockerError(f"cannot inspect image '{ref}': unexpected answer ({e})") from e

    def pull(self, ref: str, out: TextIO, platform: str | None = None, quiet: bool = False) -> None:
        """Pull as `docker run` does, through the docker CLI (registry auth, credential helpers,
        progress as docker draws it); ImagePullError on failure."""
        CliEngine(self._cli).pull(ref, out, platform=platform, quiet=quiet)

    def ensure_volume(self, name: str, driver: str) -> None:
        """Create `name` with `driver` (the plugin builds it); a no-op if it already exists."""
        reply = self._request("POST", "/volumes/create", {"Name": name, "Driver": driver})
        if reply.status in (200, 201):
            return
        raise volume_error(name, driver, api_message(reply))

    def version(self) -> dict[str, Any]:
        """`GET /version`: the engine's version document."""
        return self._get_json("/version", "read the engine's version")

    def info(self) -> dict[str, Any]:
        """`GET /info`: plugins, drivers, the engine's settings."""
        return self._get_json("/info", "read the engine's info")

    def volumes(self, driver: str | None = None) -> list[dict[str, Any]]:
        """`GET /volumes`, only those of `driver` when given."""
        query = ""
        if driver:
            query = "?filters=" + urllib.parse.quote(json.dumps({"driver": [driver]}))
        body = self._get_json(f"/volumes{query}", "list volumes")
        return list(body.get("Volumes") or [])

    def containers(self) -> list[dict[str, Any]]:
        """`GET /containers/json`: the running containers (Id, Names, State, ...)."""
        reply = self._request("GET", "/containers/json")
        if reply.status != 200:
            raise DockerError(f"cannot list containers: {api_message(reply)}")
        try:
            found = reply.json()
        except ValueError as e:
            raise DockerError(f"cannot list containers: unexpected answer ({e})") from e
        return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []

    def _get_json(self, path: str, what: str) -> dict[str, Any]:
        reply = self._request("GET", path)
        if reply.status != 200:
            raise DockerError(f"cannot {what}: {api_message(reply)}")
        try:
            body = reply.json()
        except ValueError as e:
            raise DockerError(f"cannot {what}: unexpected answer ({e})") from e
        return body if isinstance(body, dict) else {}

    def close(self) -> None:
        self._http.close()


class CliEngine:
    """The engine through the docker CLI: `<docker> image inspect|pull|volume create`.

    1.0 ran every docker call through NV_DOCKER, so `NV_DOCKER='sudo docker'` let a user without
    access to the socket use nvidia-docker; `open_engine` falls back to this when the socket
    refuses the user, and uses it for `ssh://` engines; `Engine` pulls through it. `command` is
    an argv list (NV_DOCKER split on whitespace, plus the user's global options), never a shell
    string. No timeouts: sudo may be asking for a password.
    """

    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)

    def _run(self, args: Sequence[str], stdout: Any = None) -> Any:
        import subprocess  # this path runs docker processes anyway

        argv = [*self.command, *args]
        try:
            return subprocess.run(argv, stdout=subprocess.PIPE if stdout is None else stdout,
                                  stderr=subprocess.PIPE, check=False)  # fmt: skip
        except OSError as e:
            raise DockerError(
                f"cannot run {argv[0]!r} (from NV_DOCKER): {transport.reason(e)}"
            ) from e

    def _why(self, args: Sequence[str], stderr: bytes) -> str:
        """1.0's message: docker's stderr without its leading `Error: `, else a generic line."""
        text = stderr.decode("utf-8", "replace").strip()
        text = text.removeprefix("Error: ").strip()
        ran = " ".join([*self.command, *args])
        return f"{text or 'failed to run docker command'} (ran: {ran})"

    def inspect_image(self, ref: str) -> ImageFacts | None:
        """The image's labels and environment; None if docker says there is no such image."""
        args = ["image", "inspect", ref]
        done = self._run(args)
        if done.returncode != 0:
            if done.returncode == 1 and b"no such image" in done.stderr.lower():
                return None
            raise DockerError(f"cannot inspect image '{ref}': {self._why(args, done.stderr)}")
        try:
            return image_facts_from(json.loads(done.stdout)[0])
        except (ValueError, AttributeError, TypeError, IndexError, KeyError) as e:
            raise DockerError(f"cannot inspect image '{ref}': unexpected answer ({e})") from e

    def pull(self, ref: str, out: TextIO, platform: str | None = None, quiet: bool = False) -> None:
        """`<NV_DOCKER> pull` with its stdout sent to `out` (stderr), as 1.0 did (#310), so the
        progress never mixes with the container's output; ImagePullError on failure."""
        import subprocess

        shown = display_reference(ref)
        if not quiet:
            print(f"Unable to find image '{shown}' locally", file=out, flush=True)
        args = ["pull", *(["--platform", platform] if platform else []),
                *(["--quiet"] if quiet else []), ref]  # fmt: skip
        out.flush()
        try:
            target: Any = out.fileno()  # docker then sees the terminal and draws progress bars
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: not a file
            target = subprocess.PIPE
        done = self._run(args, stdout=target)
        if target is subprocess.PIPE and done.stdout:
            out.write(done.stdout.decode("utf-8", "replace"))
            out.flush()
        if done.returncode != 0:
            raise ImagePullError(f"cannot pull image '{shown}': {self._why(args, done.stderr)}")

    def ensure_volume(self, name: str, driver: str) -> None:
        """`<NV_DOCKER> volume create -d <driver> <name>`: a no-op if it already exists."""
        import subprocess

        args = ["volume", "create", "-d", driver, name]
        done = self._run(args, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise volume_error(name, driver, self._why(args, done.stderr))

    def close(self) -> None:
        return  # nothing held: every call is its own process


def api_message(reply: Reply) -> str:
    """The engine's `{"message": …}` error text, else the body, else the HTTP status."""
    try:
        message = reply.json().get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or reply.text.strip() or f"HTTP {reply.status} {reply.reason}").strip()
