"""The `nvidia-docker` wrapper's Docker Engine client: which engine, and the calls it makes.

Which engine it talks to follows the docker CLI's own precedence (`resolve_endpoint`), so the
wrapper inspects the image on the engine that will run it. The common path (image inspect, volume
create) goes over `engine_http`; the docker SDK, ~200 ms to import, is imported only to pull a
missing image or to reach an engine that `engine_http` does not speak (`ssh://`).

When the engine's socket refuses the calling user and `NV_DOCKER` is set (`sudo docker`), the same
three calls go through that command instead, as 1.0 made every call (`CliEngine`); `open_engine`
picks one of the two, so the wrapper has a single code path.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from nvplugin.core.errors import DockerError, ImagePullError, PluginDaemonError
from nvplugin.engine import transport
from nvplugin.engine.transport import HttpClient, Reply, Unreachable
from nvplugin.wrapper.cmdline import Invocation

DEFAULT_HOST = "unix:///var/run/docker.sock"
API_TIMEOUT_S = 60


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the Docker Engine is and how to speak TLS to it (the CLI's rules)."""

    host: str
    tls: bool = False
    tls_verify: bool = False
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    config_dir: str | None = None


@dataclass(frozen=True, slots=True)
class ImageFacts:
    id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)


def config_dir(inv: Invocation, environ: Mapping[str, str]) -> Path:
    given = inv.global_values("config")
    if given:
        return Path(given[-1])
    if environ.get("DOCKER_CONFIG"):
        return Path(environ["DOCKER_CONFIG"])
    return Path(environ.get("HOME", "/root")) / ".docker"


def context_name(inv: Invocation, environ: Mapping[str, str], cfg: Path) -> str:
    """The docker CLI's order: --context, -H, DOCKER_HOST, DOCKER_CONTEXT, config, default."""
    if inv.global_values("context"):
        if inv.global_values("host"):
            raise DockerError("conflicting options: either specify --host or --context, not both")
        return inv.global_values("context")[-1]
    if inv.global_values("host") or environ.get("DOCKER_HOST"):
        return "default"
    if environ.get("DOCKER_CONTEXT"):
        return environ["DOCKER_CONTEXT"]
    try:
        current = json.loads((cfg / "config.json").read_text()).get("currentContext")
    except (OSError, ValueError, AttributeError):
        current = None
    return current or "default"


def resolve_endpoint(inv: Invocation, environ: Mapping[str, str]) -> Endpoint:
    """The engine the docker CLI would use for these global options and environment.

    Named contexts are read from the CLI's own store (`contexts/meta/<sha256(name)>/meta.json`),
    which is what `docker context inspect` prints, without the cost of running it.
    """
    cfg = config_dir(inv, environ)
    name = context_name(inv, environ, cfg)
    if name != "default":
        return _context_endpoint(cfg, name)
    hosts = inv.global_values("host")
    host = hosts[-1] if hosts else environ.get("DOCKER_HOST") or DEFAULT_HOST
    verify = inv.global_flag("tlsverify") or bool(environ.get("DOCKER_TLS_VERIFY"))
    tls = verify or inv.global_flag("tls")
    certs = Path(environ.get("DOCKER_CERT_PATH") or cfg)

    def pick(option: str, default: str) -> str:
        values = inv.global_values(option)
        return values[-1] if values else str(certs / default)

    return Endpoint(
        host=host if "://" in host else f"tcp://{host}",
        tls=tls,
        tls_verify=verify,
        ca_cert=pick("tlscacert", "ca.pem") if tls else None,
        cert=pick("tlscert", "cert.pem") if tls else None,
        key=pick("tlskey", "key.pem") if tls else None,
        config_dir=str(cfg),
    )


def _context_endpoint(cfg: Path, name: str) -> Endpoint:
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = cfg / "contexts" / "meta" / digest / "meta.json"
    try:
        docker = json.loads(meta.read_text())["Endpoints"]["docker"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DockerError(f'context "{name}" not found ({meta}: {e})') from e
    tls_dir = cfg / "contexts" / "tls" / digest / "docker"
    files = {f: tls_dir / f for f in ("ca.pem", "cert.pem", "key.pem")}
    has = {f: str(p) if p.is_file() else None for f, p in files.items()}
    tls = any(has.values())
    return Endpoint(
        host=docker.get("Host") or DEFAULT_HOST,
        tls=tls,
        tls_verify=tls and not docker.get("SkipTLSVerify", False),
        ca_cert=has["ca.pem"],
        cert=has["cert.pem"],
        key=has["key.pem"],
        config_dir=str(cfg),
    )


class EngineAccessDenied(DockerError):
    """The engine's socket exists but refuses this user (EACCES/EPERM on connect)."""


class EngineLike(Protocol):
    """What the wrapper asks of an engine: `Engine` (the API) or `CliEngine` (NV_DOCKER)."""

    def inspect_image(self, ref: str) -> ImageFacts | None: ...
    def pull(self, ref: str, out: TextIO, platform: str | None = None,
             quiet: bool = False) -> None: ...  # fmt: skip
    def ensure_volume(self, name: str, driver: str) -> None: ...
    def close(self) -> None: ...


def open_engine(endpoint: Endpoint, fallback: Sequence[str] | None = None) -> EngineLike:
    """The engine at `endpoint`: its API, connected now, as the calling user; or, when its socket
    refuses that user and `fallback` (NV_DOCKER with the user's global options) is given, the
    docker CLI through `fallback`, as 1.0 ran every call (`NV_DOCKER='sudo docker'`).

    Connecting first costs nothing (the first request reuses the connection) and decides the
    transport before any request. Without `fallback`, a refusal is an `EngineAccessDenied` naming
    both fixes.
    """
    engine = Engine(endpoint)
    try:
        engine.connect()
    except EngineAccessDenied:
        engine.close()
        if fallback:
            return CliEngine(fallback)
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

    Image inspect and volume create go over `engine_http` (standard library) for `unix://` and
    `tcp://` engines; the docker SDK is imported only to pull, or for other schemes (`ssh://`).
    Paths are unversioned: the engine answers them at its own API version, which works from
    20.10 (API 1.41) to 29+ (which refuses any version below 1.44); the fields used here are
    the same in all of them.
    """

    def __init__(self, endpoint: Endpoint, timeout: int = API_TIMEOUT_S) -> None:
        self.endpoint = endpoint
        self._timeout = timeout
        self._api: Any = None
        self._http: HttpClient | _SdkTransport
        if endpoint.host.partition("://")[0].lower() not in ("unix", "tcp"):
            self._http = _SdkTransport(lambda: self.api)  # ssh:// and the like
            return
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

    @property
    def api(self) -> Any:
        """The SDK's APIClient, imported and connected on first use, with the CLI's auth."""
        if self._api is None:
            self._api = self._sdk_client()
        return self._api

    def _sdk_client(self) -> Any:
        import docker  # lazy: ~200 ms, paid only to pull or for engines engine_http cannot reach

        endpoint = self.endpoint
        tls: Any = False
        if endpoint.tls:
            client_cert = (endpoint.cert, endpoint.key) if endpoint.cert and endpoint.key else None
            tls = docker.tls.TLSConfig(
                client_cert=client_cert if client_cert and os.path.isfile(client_cert[0]) else None,
                ca_cert=endpoint.ca_cert if endpoint.tls_verify else None,
                verify=endpoint.tls_verify,
            )
        try:
            api = docker.APIClient(
                base_url=endpoint.host,
                version="auto",
                timeout=self._timeout,
                tls=tls,
                use_ssh_client=endpoint.host.startswith("ssh://"),
            )
        except docker.errors.DockerException as e:
            raise self._cannot_connect(_reason(e)) from e
        if endpoint.config_dir:
            config = Path(endpoint.config_dir) / "config.json"
            if config.is_file():
                api.reload_config(str(config))
        return api

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
        socket refuses this user, DockerError if the engine cannot be reached. Engines only the
        SDK speaks connect on first use instead."""
        if isinstance(self._http, HttpClient):
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
        """Pull as `docker run` does, progress on `out` (stderr); ImagePullError on failure."""
        shown = display_reference(ref)
        if not quiet:
            print(f"Unable to find image '{shown}' locally", file=out, flush=True)
        api = self.api  # the SDK: registry auth from config.json, credential helpers included
        import docker  # already imported by `api`

        try:
            stream = api.pull(ref, stream=True, decode=True, platform=platform)
            error = render_progress(stream, out, quiet=quiet)
        except docker.errors.DockerException as e:
            raise ImagePullError(f"cannot pull image '{shown}': {_reason(e)}") from e
        if error is not None:
            raise ImagePullError(f"cannot pull image '{shown}': {error}")

    def ensure_volume(self, name: str, driver: str) -> None:
        """Create `name` with `driver` (the plugin builds it); a no-op if it already exists."""
        reply = self._request("POST", "/volumes/create", {"Name": name, "Driver": driver})
        if reply.status in (200, 201):
            return
        raise volume_error(name, driver, api_message(reply))

    def close(self) -> None:
        self._http.close()
        if self._api is not None:
            self._api.close()


class CliEngine:
    """The engine through the docker CLI: `<NV_DOCKER> image inspect|pull|volume create`.

    1.0 ran every docker call through NV_DOCKER, so `NV_DOCKER='sudo docker'` let a user without
    access to the socket use nvidia-docker; `open_engine` falls back to this when the socket
    refuses the user. `command` is an argv list (NV_DOCKER split on whitespace, plus the user's
    global options), never a shell string. No timeouts: sudo may be asking for a password.
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


class _SdkTransport:
    """`HttpClient`'s interface over the SDK's session, for engines only the SDK speaks."""

    def __init__(self, api: Callable[[], Any]) -> None:
        self._api = api

    def request(self, method: str, path: str, body: Any = None) -> Reply:
        api = self._api()
        import requests  # the SDK's own transport, imported by it already

        try:
            response = api.request(
                method, api.base_url + path,
                data=None if body is None else json.dumps(body),
                headers=None if body is None else {"Content-Type": "application/json"},
            )  # fmt: skip
        except requests.RequestException as e:
            raise Unreachable(str(e)) from e
        return Reply(response.status_code, response.reason or "", response.content)

    def close(self) -> None:
        return  # the session is the Engine's `api`, closed by Engine.close


def api_message(reply: Reply) -> str:
    """The engine's `{"message": …}` error text, else the body, else the HTTP status."""
    try:
        message = reply.json().get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or reply.text.strip() or f"HTTP {reply.status} {reply.reason}").strip()


def render_progress(stream: Any, out: TextIO, quiet: bool = False) -> str | None:
    """Write pull messages as the docker CLI does (progress bars only on a terminal).

    Returns the error a message reported mid-stream, if any (the pull then stopped).
    """
    tty = out.isatty()
    bar_open = False
    for msg in stream:
        if msg.get("error"):
            if bar_open:
                out.write("\n")
            detail = msg.get("errorDetail") or {}
            return str(detail.get("message") or msg["error"])
        if quiet:
            continue
        head = f"{msg['id']}: " if msg.get("id") else ""
        progress = msg.get("progress") or ""
        if progress:
            if tty:
                out.write(f"\r\x1b[2K{head}{msg.get('status', '')} {progress}")
                bar_open = True
            continue  # docker drops progress bars when stderr is not a terminal
        if bar_open:
            out.write("\n")
            bar_open = False
        out.write(f"{head}{msg.get('status') or msg.get('stream') or ''}\n")
        out.flush()
    if bar_open:
        out.write("\n")
    out.flush()
    return None


def _reason(e: Exception) -> str:
    explanation = getattr(e, "explanation", None)
    text = explanation.decode() if isinstance(explanation, bytes) else explanation
    return str(text or e).strip()
