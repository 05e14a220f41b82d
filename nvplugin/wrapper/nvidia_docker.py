"""`nvidia-docker`: docker, plus GPUs and the driver volume for images that ask for them.

Only `run`/`create` (also under `container`) of an image labelled `com.nvidia.volumes.needed`, or
with `NV_GPU` set, are rewritten; everything else is exec'd unchanged, so docker keeps the terminal,
signals and exit status. The rewrite asks the nvidia-docker-plugin daemon's REST API which devices
and volume to add (so its --driver-root/--dev-root apply), checks CUDA compatibility, creates the
volume through the Docker API (never `--volume-driver`, which captured the user's own volumes in
1.0, #112) and inserts `--device=…`/`--volume=…` right before the image.

Start-up cost is paid before every container, so the pass-through path imports only `os`, `sys`
and the pure argv parser: HTTP, JSON, regexes and the docker SDK are imported where first used.

The wrapper talks to the engine's API as the calling user; when the socket refuses that user and
`NV_DOCKER` is set (`sudo docker`), its image inspect, pull and volume create go through NV_DOCKER
instead, as all of 1.0's docker calls did (`engine.client.open_engine`).

Limits: NVIDIA_* variables from `--env-file` are not seen by the CUDA check.
"""

from __future__ import annotations

import os
import sys

from nvplugin import __version__
from nvplugin.core.errors import ConfigError, DockerError, NvpluginError, PluginDaemonError
from nvplugin.core.names import PLUGIN_NAME, VOLUME_KINDS
from nvplugin.wrapper import cmdline
from nvplugin.wrapper.cmdline import Invocation, insert_before_image, split

TYPE_CHECKING = False  # as in wrapper/cmdline: no `typing` import at run time
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, TextIO

    from nvplugin.engine.client import EngineLike, ImageFacts

    ExecFn = Callable[[str, Sequence[str], Mapping[str, str]], Any]

NEEDED_LABEL = "com.nvidia.volumes.needed"
DEFAULT_PLUGIN_PORT = 3476
PLUGIN_TIMEOUT_S = 5.0
START_HINT = "start it with: systemctl start nvidia-docker (or set NV_HOST to where it listens)"
_NV_HOST = r"^(?:\[(?P<ip6>[0-9A-Fa-f.:]+)\]|(?P<host>[0-9A-Za-z.\-_]*))(?::(?P<port>\d*))?$"


class PluginAddress:
    """Where the daemon's REST API listens (a plain class: see wrapper/cmdline on start-up cost)."""

    __slots__ = ("host", "port", "scheme")

    def __init__(self, scheme: str, host: str, port: int) -> None:
        self.scheme = scheme  # http or https
        self.host = host
        self.port = port

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PluginAddress) and self.url == other.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __repr__(self) -> str:
        return f"PluginAddress({self.url!r})"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def plugin_address(nv_host: str | None, engine_host: str) -> PluginAddress:
    """Where the daemon's REST API is: NV_HOST, else the engine's TCP host on port 3476, else local.

    NV_HOST takes `http://host:port`, `tcp://host:port`, and 1.0's `host:port`, `host:`, `:port`.
    Without NV_HOST, a TCP engine (`-H`, DOCKER_HOST, context) means the GPUs are on that host, so
    1.0's rule applies: same host, port 3476.
    """
    import re
    import urllib.parse

    if nv_host and nv_host.strip():
        value = nv_host.strip()
        scheme, sep, rest = value.partition("://")
        if not sep:
            scheme, rest = "http", value
        scheme = scheme.lower()
        if scheme == "unix":
            return PluginAddress("http", "localhost", DEFAULT_PLUGIN_PORT)
        if scheme == "ssh":
            raise ConfigError(
                f"NV_HOST={value}: ssh:// is not supported; forward the port instead "
                f"(ssh -NL 3476:localhost:3476 <host>) and set NV_HOST=localhost:3476"
            )
        if scheme not in ("http", "https", "tcp"):
            raise ConfigError(f"invalid remote host URI NV_HOST={value}: use http://HOST:PORT")
        m = re.match(_NV_HOST, rest.rstrip("/"))
        if m is None:
            raise ConfigError(f"invalid remote host URI NV_HOST={value}: use http://HOST:PORT")
        host = m.group("ip6") or m.group("host") or "localhost"
        port = int(m.group("port") or DEFAULT_PLUGIN_PORT)
        return PluginAddress("https" if scheme == "https" else "http", host, port)
    if engine_host.startswith("tcp://"):
        parsed = urllib.parse.urlsplit(engine_host)
        return PluginAddress("http", parsed.hostname or "localhost", DEFAULT_PLUGIN_PORT)
    return PluginAddress("http", "localhost", DEFAULT_PLUGIN_PORT)


def gpu_items(nv_gpu: str | None) -> list[str]:
    """NV_GPU items (indices, UUIDs or `GPU-` prefixes, MIG devices as `<gpu>:<mig>` or `MIG-`
    prefixes; commas and/or spaces); [] means all. The daemon resolves them (docker/cli)."""
    items = (nv_gpu or "").replace(",", " ").split()
    return [] if items in (["all"], ["*"]) else items


class PluginClient:
    """The two REST calls to nvidia-docker-plugin, over one keep-alive connection."""

    def __init__(self, address: PluginAddress, timeout: float = PLUGIN_TIMEOUT_S) -> None:
        from nvplugin.engine import transport  # lazy: http.client is for the rewrite path only

        self._unreachable = transport.Unreachable
        self.address = address
        conn = transport.tcp_connection(
            address.host, address.port, timeout, https=address.scheme == "https"
        )
        self._client = transport.HttpClient(conn)

    def get_json(self, path: str) -> Any:
        url = self.address.url + path
        try:
            reply = self._client.request("GET", path)
        except self._unreachable as e:
            raise PluginDaemonError(
                f"cannot reach nvidia-docker-plugin at {self.address.url} ({e.reason}); "
                f"{START_HINT}"
            ) from e
        body = reply.text
        if reply.status in (400, 503):
            # 400: `invalid device: <x>` / `invalid volume: <x>`; 503: why there is no driver.
            raise PluginDaemonError(body.strip() or f"{url}: HTTP {reply.status}")
        if reply.status != 200:
            raise PluginDaemonError(
                f"nvidia-docker-plugin answered {url} with HTTP {reply.status} "
                f"{reply.reason}: {body.strip()[:200]}"
            )
        try:
            return reply.json()
        except ValueError as e:
            raise PluginDaemonError(f"nvidia-docker-plugin sent invalid JSON for {url}") from e

    def gpu_info(self) -> dict[str, Any]:
        return self.get_json("/v1.0/gpu/info/json")

    def docker_cli(self, devices: Sequence[str], kinds: Sequence[str]) -> dict[str, Any]:
        import urllib.parse

        query = {k: " ".join(v) for k, v in (("dev", devices), ("vol", kinds)) if v}
        suffix = "?" + urllib.parse.urlencode(query) if query else ""  # items joined by `+`
        return self.get_json("/v1.0/docker/cli/json" + suffix)

    def close(self) -> None:
        self._client.close()


def container_env(
    image_env: Mapping[str, str], inv: Invocation, environ: Mapping[str, str]
) -> dict[str, str]:
    """The image's environment with the user's `-e`/`--env` applied (`-e VAR` copies ours)."""
    env = dict(image_env)
    for item in inv.run_values("env"):
        name, eq, value = item.partition("=")
        if eq:
            env[name] = value
        elif name in environ:
            env[name] = environ[name]
    return env


def container_path(device: str) -> str:
    """`/dev/nvidia0`, `/root/dev/nvidia0:/dev/nvidia0` or `…:/dev/nvidia0:rwm` → `/dev/nvidia0`."""
    parts = device.split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def docker_command(environ: Mapping[str, str]) -> list[str]:
    return environ.get("NV_DOCKER", "").split() or ["docker"]


def docker_globals(command: Sequence[str]) -> list[str]:
    """Global options given in NV_DOCKER (`sudo docker -H x` → `-H x`); they pick the engine too."""
    for i, word in enumerate(command):
        if os.path.basename(word).startswith("docker"):
            return list(command[i + 1 :])
    return []


def docker_cli(command: Sequence[str], inv: Invocation) -> list[str]:
    """The docker command (NV_DOCKER, else `docker`) and the user's global options (`-H`,
    `--context`, …): what pulls, and what the engine calls fall back to when the socket refuses
    the user and NV_DOCKER is set, so they reach the same engine as the run itself."""
    top = cmdline.scan(
        inv.args, 0, cmdline.GLOBAL_VALUE_LONG, cmdline.GLOBAL_VALUE_SHORT,
        cmdline.GLOBAL_SHORT_NAMES,
    )  # fmt: skip
    return [*command, *inv.args[: top.positional]]


def volume_kinds(label: str) -> tuple[list[str], bool]:
    """The label's kinds this daemon knows (deduplicated, in label order), and whether the volume
    answer is wanted at all.

    1.0 (§8.4) added a volume for each known kind in the label and silently skipped the others;
    devices were added whenever the label was non-empty. So `nvidia_driver extra_kind` asks for
    `vol=nvidia_driver` only, and a label of unknown kinds only gets devices, no volume. The
    daemon reads an absent `vol=` as "all kinds", so that last case cannot be asked for: the
    answer's volumes are dropped instead. An unlabelled image with NV_GPU set gets all kinds.
    """
    given = label.split()
    known = [k for k in dict.fromkeys(given) if k in VOLUME_KINDS]  # 1.0 ignored other kinds (§8.4)
    return known, bool(known) or not given


def image_facts(engine: EngineLike, inv: Invocation, err: TextIO) -> ImageFacts | None:
    """Inspect the image, pulling it first as `docker run` would; None if pulling is refused."""
    image = inv.image or ""
    facts = engine.inspect_image(image)
    if facts is None:
        if "never" in inv.run_values("pull"):
            return None
        platforms = inv.run_values("platform")
        platform = platforms[-1] if platforms else None
        quiet = any(o.name == "quiet" for o in inv.run_options)
        engine.pull(image, err, platform=platform, quiet=quiet)
        facts = engine.inspect_image(image)
        if facts is None:
            raise DockerError(f"image '{image}' is still missing after a successful pull")
    return facts


def rewrite(
    inv: Invocation, environ: Mapping[str, str], command: Sequence[str], err: TextIO
) -> list[str]:
    """The docker arguments to exec for a run/create: the originals, or with GPUs added."""
    from nvplugin.engine.client import open_engine
    from nvplugin.engine.endpoint import resolve_endpoint
    from nvplugin.wrapper import cuda_compat  # lazy: pass-through stays light

    engine_inv = split([*docker_globals(command), *inv.args])
    endpoint = resolve_endpoint(engine_inv, environ)
    engine = open_engine(endpoint, docker_cli(command, inv),
                         fall_back_when_denied=bool(environ.get("NV_DOCKER", "").split()))
    facts = image_facts(engine, inv, err)
    if facts is None:
        return list(inv.args)  # `--pull=never` of a missing image: docker reports it
    label = facts.labels.get(NEEDED_LABEL, "")
    nv_gpu = environ.get("NV_GPU", "")
    if not label.strip() and not nv_gpu.strip():
        return list(inv.args)  # not a GPU image, and no GPU asked for
    kinds, want_volumes = volume_kinds(label)

    daemon = PluginClient(plugin_address(environ.get("NV_HOST"), endpoint.host))
    try:
        info = daemon.gpu_info()
        cli = daemon.docker_cli(gpu_items(nv_gpu), kinds)
    finally:
        daemon.close()
    version = info.get("Version") or {}
    selected = {container_path(d) for d in cli.get("Devices") or ()}
    gpus = [
        cuda_compat.HostFacts(None, None, d.get("Arch"), d.get("Brand"))
        for d in info.get("Devices") or ()
        if d.get("Path") in selected
    ]
    host = cuda_compat.HostFacts(version.get("CUDA"), version.get("Driver"))
    cuda_compat.check_image(facts.labels, container_env(facts.env, inv, environ), host, gpus)

    volumes = list(cli.get("Volumes") or ()) if want_volumes else []
    for spec in volumes:
        engine.ensure_volume(spec.partition(":")[0], cli.get("VolumeDriver") or PLUGIN_NAME)
    extra = [f"--device={d}" for d in cli.get("Devices") or ()]
    extra += [f"--volume={v}" for v in volumes]
    return insert_before_image(inv, extra)


def plan(argv: Sequence[str], environ: Mapping[str, str], out: TextIO, err: TextIO) -> list[str]:
    """The full command line to exec (NV_DOCKER + docker arguments)."""
    command = docker_command(environ)
    inv = split(argv)
    if inv.command == "version":
        print(f"NVIDIA Docker: {__version__}\n", file=out, flush=True)
    if not inv.rewritable:
        return [*command, *argv]
    return [*command, *rewrite(inv, environ, command, err)]


def report(error: BaseException, environ: Mapping[str, str], err: TextIO) -> None:
    import time
    import traceback

    if environ.get("NV_DEBUG"):
        traceback.print_exception(error, file=err)
    message = (
        str(error)
        if isinstance(error, NvpluginError)
        else (f"unexpected {type(error).__name__}: {error} (set NV_DEBUG=1 for a traceback)")
    )
    stamp = time.strftime("%Y/%m/%d %H:%M:%S")
    print(f"nvidia-docker | {stamp} Error: {message}", file=err, flush=True)


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    exec_fn: ExecFn = os.execvpe,  # type: ignore[assignment]  # typeshed: bytes and paths too
) -> int:
    """Run `nvidia-docker ARGS`: returns only on failure (or when `exec_fn` returns, in tests)."""
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    try:
        final = plan(args, env, sys.stdout, sys.stderr)
    except Exception as e:  # every failure becomes one line and an exit code, never a traceback
        report(e, env, sys.stderr)
        return getattr(e, "exit_code", 1)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        exec_fn(final[0], final, env)
    except OSError as e:
        from nvplugin.engine.transport import reason  # a failure path: the import cost is moot

        report(DockerError(f"cannot run {final[0]!r}: {reason(e)}"), env, sys.stderr)
        return 127 if isinstance(e, FileNotFoundError) else 126
    return 0


if __name__ == "__main__":
    sys.exit(main())
