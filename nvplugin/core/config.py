"""The daemon's settings: every default lives here, read from argv and the environment."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nvplugin import __version__
from nvplugin.core.errors import ConfigError
from nvplugin.core.hostpath import docker_host_path
from nvplugin.core.names import CDI_SPEC_FILE, DAEMON_PROGRAM, PLUGIN_NAME

DEFAULT_LISTEN = "localhost:3476"
DEFAULT_SOCKET_DIR = "/run/docker/plugins"
DEFAULT_VOLUMES_DIR = "/var/lib/nvidia-docker/volumes"
DEFAULT_DRIVER_ROOT = "/"
DEFAULT_HOST_ROOT = "/"
# Where engines look for CDI specs: /etc/cdi (static) and /var/run/cdi (dynamic, read last, so
# it wins a clash). A daemon keeps its spec fresh, so the dynamic one.
DEFAULT_CDI_DIR = "/var/run/cdi"
DEFAULT_CDI_KIND = "nvidia.com/gpu"
SPEC_DIR = "/etc/docker/plugins"
LOG_LEVELS = ("debug", "info", "warning", "error")
# Xids a CUDA program causes in its own context (a bad kernel, a page fault, a watchdog): the GPU
# is fine for the next program, so they do not make it unhealthy. The Kubernetes device plugin
# ignores the same set.
DEFAULT_HEALTH_IGNORE_XIDS = "13,31,43,45,68,109"
DEFAULT_HEALTH_RECOVERY = "5m"
DEFAULT_HEALTH_RECOVERY_S = 300.0
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Config:
    """Where the daemon listens, keeps volumes and finds the driver."""

    listen: str = DEFAULT_LISTEN
    socket_dir: Path = Path(DEFAULT_SOCKET_DIR)
    volumes_dir: Path = Path(DEFAULT_VOLUMES_DIR)
    driver_root: Path = Path(DEFAULT_DRIVER_ROOT)
    dev_root: Path = Path(DEFAULT_DRIVER_ROOT)
    # Where the Docker host's / appears to the daemon: device paths given to Docker are made
    # relative to it (`/host` in the image, whose --dev-root is the host's / mounted there).
    host_root: Path = Path(DEFAULT_HOST_ROOT)
    log_level: str = "info"
    # Build the running driver's volume in the background after start-up and driver changes.
    prebuild: bool = True
    # Where Docker looks for plugin spec files; only used when socket_dir is not Docker's default.
    spec_dir: Path = Path(SPEC_DIR)
    plugin_name: str = PLUGIN_NAME
    # After a driver upgrade, volumes of older versions go once no container mounts them;
    # True keeps them until `docker volume rm` or `gc`.
    keep_old_volumes: bool = False
    # `/metrics` alone on its own address ('' : only on the REST listener)
    metrics_listen: str = ""
    health_ignore_xids: frozenset[int] = frozenset(
        int(xid) for xid in DEFAULT_HEALTH_IGNORE_XIDS.split(","))
    health_recovery_s: float = DEFAULT_HEALTH_RECOVERY_S  # DEFAULT_HEALTH_RECOVERY, parsed
    # The CDI spec the daemon keeps true (None: `--cdi-dir ''`, not written) and its kind.
    cdi_dir: Path | None = Path(DEFAULT_CDI_DIR)
    cdi_kind: str = DEFAULT_CDI_KIND

    @property
    def cdi_path(self) -> Path | None:
        return self.cdi_dir / CDI_SPEC_FILE if self.cdi_dir is not None else None

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / f"{self.plugin_name}.sock"

    @property
    def spec_path(self) -> Path:
        return self.spec_dir / f"{self.plugin_name}.spec"

    @property
    def needs_spec_file(self) -> bool:
        # Docker finds `<dir>/<name>.sock` and `<dir>/<name>/<name>.sock` in its plugin dir on
        # its own; anywhere else it needs a spec file pointing at the socket.
        default = Path(DEFAULT_SOCKET_DIR)
        return self.socket_dir not in (default, default / self.plugin_name)

    @property
    def listen_host_port(self) -> tuple[str, int] | None:
        """The REST API's address, or None when `-l ''` disabled it."""
        return parse_listen(self.listen)

    @property
    def metrics_host_port(self) -> tuple[str, int] | None:
        """`--metrics-listen`'s address, or None when it is off."""
        return parse_listen(self.metrics_listen, flag="--metrics-listen")


def parse_listen(value: str, flag: str = "") -> tuple[str, int] | None:
    """`host:port`, `:port` (all interfaces, as 1.0's wiki documents) or '' (disabled)."""
    if value == "":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"invalid {flag + ' ' if flag else ''}listen address {value!r}: expected HOST:PORT, "
            ":PORT or '' to disable"
        )
    host = host.strip("[]")
    return (host or "0.0.0.0", int(port))


# Each flag: (short, long, env var, default, help). 1.0's short forms are kept.
_FLAGS: tuple[tuple[str | None, str, str, str, str], ...] = (
    ("-l", "--listen", "NVP_LISTEN", DEFAULT_LISTEN,
     "REST API listen address (HOST:PORT, :PORT for all interfaces, '' to disable)"),
    ("-s", "--socket-dir", "NVP_SOCKET_DIR", DEFAULT_SOCKET_DIR,
     "directory of the plugin socket nvidia-docker.sock"),
    ("-d", "--volumes-dir", "NVP_VOLUMES_DIR", DEFAULT_VOLUMES_DIR,
     "path where to store the volumes"),
    (None, "--driver-root", "NVP_DRIVER_ROOT", DEFAULT_DRIVER_ROOT,
     "root under which the driver's files are found (ld.so.cache, libraries, binaries, /proc)"),
    (None, "--dev-root", "NVP_DEV_ROOT", "",
     "root under which the device nodes are found (default: the driver root)"),
    (None, "--host-root", "NVP_HOST_ROOT", DEFAULT_HOST_ROOT,
     "where the Docker host's / is mounted for this daemon (/host in the image); device paths "
     "are given to Docker as that host sees them, so --dev-root must lie under it"),
    (None, "--cdi-dir", "NVP_CDI_DIR", DEFAULT_CDI_DIR,
     f"directory of the CDI spec {CDI_SPEC_FILE} the daemon keeps true for Podman, Docker >= 25, "
     "containerd and CRI-O ('' to write none)"),
    (None, "--cdi-kind", "NVP_CDI_KIND", DEFAULT_CDI_KIND,
     "the CDI kind (vendor/class) of the spec's devices, as in --device nvidia.com/gpu=0"),
    (None, "--log-level", "NVP_LOG_LEVEL", "info", "one of " + ", ".join(LOG_LEVELS)),
    (None, "--metrics-listen", "NVP_METRICS_LISTEN", "",
     "also serve /metrics alone at HOST:PORT (or :PORT), for a Prometheus elsewhere; /metrics "
     "is always on the REST listener"),
    (None, "--health-ignore-xids", "NVP_HEALTH_IGNORE_XIDS", DEFAULT_HEALTH_IGNORE_XIDS,
     "Xids that do not make a GPU unhealthy (application errors), separated by commas; '' for "
     "none"),
    (None, "--health-recovery", "NVP_HEALTH_RECOVERY", DEFAULT_HEALTH_RECOVERY,
     "an unhealthy GPU is healthy again after this long without critical events while NVML "
     "reads it fine (seconds, or with s, m or h)"),
)
# How a default is shown in --help when the value itself would say nothing.
_SHOWN_DEFAULTS = {"--dev-root": "driver root", "--metrics-listen": "off"}

# Switches: (long, env var, help). The variable takes 1/true/yes/on or 0/false/no/off.
_SWITCHES: tuple[tuple[str, str, str], ...] = (
    ("--keep-old-volumes", "NVP_KEEP_OLD_VOLUMES",
     "keep the volumes of older drivers after an upgrade (default: each is removed once no "
     "container mounts it)"),
    ("--no-prebuild", "NVP_NO_PREBUILD",
     "do not build the running driver's volume in the background after start-up and after a "
     "driver change (the first container that needs it builds it)"),
)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")

ENVIRONMENT = {long: env for _short, long, env, _default, _help in _FLAGS}
ENVIRONMENT.update({long: env for long, env, _help in _SWITCHES})

# Subcommands: name -> (help, whether it takes --json). `serve` is the default.
COMMANDS: dict[str, tuple[str, bool]] = {
    "serve": ("run the daemon: the plugin socket and the REST API (the default)", False),
    "list": ("print every file a driver volume would hold, and why", True),
    "doctor": ("check this host and explain each problem with a one-line fix", True),
    "gc": ("remove the volumes of older drivers that no container mounts (asks the running "
           "daemon when there is one)", True),
    "cdi": ("print the CDI spec for this host's driver and GPUs (JSON), as the daemon writes it",
            False),
}
# Options a subcommand takes besides --json: name -> ((flag, metavar, help), ...).
COMMAND_OPTIONS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "cdi": (("--output", "FILE", "write the spec to FILE atomically (mode 0644) instead of "
             "printing it"),),
}


@dataclass(frozen=True, slots=True)
class Invocation:
    """What `nvidia-docker-plugin ARGS` asks for: a subcommand, the settings, its options."""

    command: str
    config: Config
    as_json: bool = False
    output: Path | None = None  # `cdi --output FILE`


def _add_flags(parser: argparse.ArgumentParser, environ: Mapping[str, str], *, top: bool) -> None:
    for short, long, env, default, help_text in _FLAGS:
        names = [n for n in (short, long) if n]
        if top:
            parser.add_argument(*names, default=environ.get(env, default),
                                help=f"{help_text} [{env}] (default: "
                                f"{_SHOWN_DEFAULTS.get(long, default)!s})")
        else:  # after the subcommand too; SUPPRESS keeps a value given before it
            parser.add_argument(*names, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for long, env, help_text in _SWITCHES:
        if top:  # the variable's text is read (and checked) by config_from_namespace
            parser.add_argument(long, action="store_true", default=environ.get(env, ""),
                                help=f"{help_text} [{env}]")
        else:
            parser.add_argument(long, action="store_true", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)


def build_parser(prog: str = DAEMON_PROGRAM, environ: Mapping[str, str] | None = None,
                 ) -> argparse.ArgumentParser:
    """One parser for every invocation: global flags before or after the subcommand."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog=prog,
        description="NVIDIA Docker plugin: serves nvidia_driver_<version> volumes to Docker "
        "and GPU information and docker arguments over a REST API.",
        epilog="Every flag can also be set with the environment variable shown in brackets, "
        "and given before or after the command. '%(prog)s COMMAND --help' describes a command.",
    )
    _add_flags(parser, environ, top=True)
    parser.add_argument("-v", "--version", action="version",
                        version=f"NVIDIA Docker plugin: {__version__}",
                        help="show the plugin version information")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     title="commands (default: serve)")
    for name, (help_text, has_json) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _add_flags(sub, environ, top=False)
        if has_json:
            sub.add_argument("--json", action="store_true", help="print JSON instead of text")
        for flag, metavar, option_help in COMMAND_OPTIONS.get(name, ()):
            sub.add_argument(flag, metavar=metavar, help=option_help)
    return parser


def parse(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Invocation:
    """argv (without the program name) as an Invocation; ConfigError for a bad value.

    argparse itself exits 2 with its usage line for an unknown flag or command."""
    ns = build_parser(environ=environ).parse_args(list(argv))
    output = getattr(ns, "output", None)
    if output == "":
        raise ConfigError("--output must not be empty: name the file to write")
    return Invocation(command=ns.command or "serve", config=config_from_namespace(ns),
                      as_json=bool(getattr(ns, "json", False)),
                      output=Path(output) if output else None)


def config_from_namespace(ns: argparse.Namespace) -> Config:
    level = str(ns.log_level).lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"invalid log level {ns.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    parse_listen(ns.listen)
    parse_listen(ns.metrics_listen, flag="--metrics-listen")
    for flag in ("socket_dir", "volumes_dir", "driver_root", "host_root"):
        if not getattr(ns, flag):
            raise ConfigError(f"--{flag.replace('_', '-')} must not be empty")
    if ns.cdi_dir and not ns.cdi_dir.startswith("/"):
        raise ConfigError(f"--cdi-dir {ns.cdi_dir!r} must be an absolute path (engines read "
                          f"{DEFAULT_CDI_DIR} and /etc/cdi), or '' to write no CDI spec")
    driver_root = Path(ns.driver_root)
    dev_root = Path(ns.dev_root) if ns.dev_root else driver_root
    return Config(
        listen=ns.listen,
        socket_dir=Path(ns.socket_dir),
        volumes_dir=Path(ns.volumes_dir),
        driver_root=driver_root,
        dev_root=dev_root,
        host_root=check_host_root(ns.host_root, dev_root),
        log_level=level,
        keep_old_volumes=_switch(ns.keep_old_volumes, ENVIRONMENT["--keep-old-volumes"]),
        metrics_listen=ns.metrics_listen,
        health_ignore_xids=parse_xids(ns.health_ignore_xids),
        health_recovery_s=parse_duration(ns.health_recovery, "--health-recovery"),
        cdi_dir=Path(ns.cdi_dir) if ns.cdi_dir else None,
        cdi_kind=ns.cdi_kind,
        prebuild=not _switch(ns.no_prebuild, ENVIRONMENT["--no-prebuild"]),
    )


def _switch(value: bool | str, env: str) -> bool:
    """A switch given as a flag (True) or through its environment variable's text."""
    if isinstance(value, bool):
        return value
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise ConfigError(f"invalid {env}={value!r}: use 1, true, yes or on (or 0, false, no, off)")


def parse_xids(value: str) -> frozenset[int]:
    """`--health-ignore-xids`: Xid numbers separated by commas or spaces; '' ignores none."""
    found: set[int] = set()
    for item in value.replace(",", " ").split():
        if not item.isdigit() or len(item) > 6:
            raise ConfigError(f"invalid --health-ignore-xids item {item[:32]!r}: expected Xid "
                              "numbers separated by commas, e.g. 13,31,43")
        found.add(int(item))
    return frozenset(found)


def parse_duration(value: str, flag: str) -> float:
    """Seconds, or a number with s, m or h (`300`, `90s`, `5m`, `1h`); more than zero."""
    text = value.strip().lower()
    number, unit = text.rstrip("smh"), text[len(text.rstrip("smh")):]
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except (ValueError, KeyError):
        seconds = -1.0
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ConfigError(f"invalid {flag} {value[:32]!r}: expected a duration such as 300, "
                          "90s, 5m or 1h")
    return seconds


def check_docker_words(flag: str, value: str) -> None:
    """A root whose paths reach docker/cli, which users splice unquoted into `docker run
    $(curl ...)`: whitespace would split a --device into two words, a glob would expand, a ':'
    is docker's own separator, and a word starting with '-' reads as a flag."""
    why = None
    if any(not c.isprintable() for c in value):  # tabs, newlines, other spaces, escapes
        why = "a control character"
    elif " " in value:
        why = "a space"
    elif bad := next((c for c in value if c in "*?[]:"), None):
        why = f"{bad!r}"
    elif any(part.startswith("-") for part in value.split("/")):
        why = "a path component that starts with '-'"
    if why is not None:
        raise ConfigError(f"{flag} {value!r} cannot be handed to Docker: it has {why}, which "
                          "would split or change the docker/cli arguments; use a path without "
                          "it (a symlink to it will do)")


def check_host_root(value: str, dev_root: Path) -> Path:
    """--host-root: an absolute, existing directory with --dev-root under it, or the device paths
    the daemon gives Docker would name nodes the Docker host does not have."""
    check_docker_words("--host-root", value)
    check_docker_words("--dev-root", str(dev_root))
    if not value.startswith("/"):
        raise ConfigError(f"--host-root {value!r} must be an absolute path")
    host_root = Path(value)
    if not host_root.is_dir():
        raise ConfigError(
            f"--host-root {value} is not a directory: mount the Docker host's / there "
            "(docker run -v /:/host:ro,rslave ...), or leave it at / when the daemon runs on "
            "the host"
        )
    try:
        docker_host_path(str(dev_root), value)
    except ConfigError as err:
        raise ConfigError(f"--dev-root {dev_root}: {err.message}") from None
    return host_root


def load(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """The settings of an invocation (its subcommand aside)."""
    return parse(argv, environ).config


def log_level_number(name: str) -> int:
    return int(getattr(logging, name.upper()))
