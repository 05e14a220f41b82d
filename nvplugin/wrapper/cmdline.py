"""Pure parsing of a `docker` command line: global options, command, and run/create's image.

Docker's CLI uses cobra/pflag, so this follows pflag's rules exactly:
- `--name=value` is one token; `--name value` consumes the next argument whatever it looks like
  (even `-x` or ''), unless the option is boolean;
- `-abc` is a cluster of short options; the first letter that takes a value swallows the rest of
  the cluster (`-p8080:80`, `-itv x:y` → v takes `x:y`); `-d=true` gives `d` the value `true`;
- `--` ends the options: the next argument is the image; `-` and '' are positionals.

One table of value-taking options for current Docker (28, from `docker run --help` plus the hidden
aliases in docker/cli's `opts.go`) replaces 1.0's per-version boolean tables. Boolean options are
listed too, only so that the choice for *unknown* options is explicit.

Unknown `--long` options are treated as boolean unless written `--long=value`. Why: every value
option Docker added since 1.13 is in the table, so an unknown option is most likely a new boolean
(pflag booleans never consume the next argument); mistaking a boolean for a value option would
swallow the image — the exact 1.0 bug behind #917 (`create --rm`). A user of a newer value option
can always write `--opt=value`, which is unambiguous.
"""

from __future__ import annotations

# Not `from typing import TYPE_CHECKING`: `typing` alone costs ~10 ms without site's imports.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

# Global options (before the command), docker 28 `docker --help`.
GLOBAL_VALUE_LONG = frozenset(
    {"config", "context", "host", "log-level", "tlscacert", "tlscert", "tlskey"}
)
GLOBAL_BOOL_LONG = frozenset({"debug", "tls", "tlsverify", "version", "help"})
GLOBAL_VALUE_SHORT = frozenset("cHl")
GLOBAL_BOOL_SHORT = frozenset("Dvh")

# `docker run`/`docker create` options that take a value (docker 28, incl. hidden aliases `net`,
# `net-alias`, `dns-opt`, Windows-only ones and API-gated ones like `annotation`). One table serves
# both commands: an option valid for only one of them makes docker itself fail anyway.
RUN_VALUE_LONG = frozenset(
    {
        "add-host", "annotation", "attach", "blkio-weight", "blkio-weight-device", "cap-add",
        "cap-drop", "cgroup-parent", "cgroupns", "cidfile", "cpu-count", "cpu-percent",
        "cpu-period", "cpu-quota", "cpu-rt-period", "cpu-rt-runtime", "cpu-shares", "cpus",
        "cpuset-cpus", "cpuset-mems", "credential-spec", "detach-keys", "device",
        "device-cgroup-rule", "device-read-bps", "device-read-iops", "device-write-bps",
        "device-write-iops", "dns", "dns-opt", "dns-option", "dns-search", "domainname",
        "entrypoint", "env", "env-file", "expose", "gpus", "group-add", "health-cmd",
        "health-interval", "health-retries", "health-start-interval", "health-start-period",
        "health-timeout", "hostname", "io-maxbandwidth", "io-maxiops", "ip", "ip6", "ipc",
        "isolation", "kernel-memory", "label", "label-file", "link", "link-local-ip",
        "log-driver", "log-opt", "mac-address", "memory", "memory-reservation", "memory-swap",
        "memory-swappiness", "mount", "name", "net", "net-alias", "network", "network-alias",
        "oom-score-adj", "pid", "pids-limit", "platform", "publish", "pull", "restart",
        "runtime", "security-opt", "shm-size", "stop-signal", "stop-timeout", "storage-opt",
        "sysctl", "tmpfs", "ulimit", "user", "userns", "uts", "volume", "volume-driver",
        "volumes-from", "workdir",
    }
)  # fmt: skip
RUN_BOOL_LONG = frozenset(
    {
        "detach", "disable-content-trust", "help", "init", "interactive", "no-healthcheck",
        "oom-kill-disable", "privileged", "publish-all", "quiet", "read-only", "rm", "sig-proxy",
        "tty", "use-api-socket",
    }
)  # fmt: skip
RUN_VALUE_SHORT = frozenset("acehlmpuvw")
RUN_BOOL_SHORT = frozenset("diPqt")
# Short letters to long names, so callers can ask for `env` whichever spelling was used.
RUN_SHORT_NAMES = {
    "a": "attach", "c": "cpu-shares", "e": "env", "h": "hostname", "l": "label", "m": "memory",
    "p": "publish", "u": "user", "v": "volume", "w": "workdir", "d": "detach",
    "i": "interactive", "P": "publish-all", "q": "quiet", "t": "tty",
}  # fmt: skip
GLOBAL_SHORT_NAMES = {
    "c": "context", "H": "host", "l": "log-level", "D": "debug", "v": "version", "h": "help",
}  # fmt: skip

REWRITTEN = frozenset({"run", "create"})

# The records below are plain slotted classes, not dataclasses: this module is imported on every
# `nvidia-docker` call, and `dataclasses` (with `inspect`) costs ~8 ms of start-up.


class Option:
    """One parsed option: its long name (short letters mapped), value (None for booleans)."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: str | None) -> None:
        self.name = name
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Option) and (self.name, self.value) == (other.name, other.value)

    def __hash__(self) -> int:
        return hash((self.name, self.value))

    def __repr__(self) -> str:
        return f"Option({self.name!r}, {self.value!r})"


class Scan:
    """Options up to the first positional, and that positional's index (None when absent)."""

    __slots__ = ("after_dashdash", "options", "positional")

    def __init__(
        self, options: tuple[Option, ...], positional: int | None, after_dashdash: bool = False
    ) -> None:
        self.options = options
        self.positional = positional
        self.after_dashdash = after_dashdash  # the positional follows a `--` ending the options


class Invocation:
    """A docker command line split into its parts; indices refer to `args`."""

    __slots__ = (
        "args", "command", "command_index", "global_options", "image_after_dashdash",
        "image_index", "run_options",
    )  # fmt: skip

    def __init__(
        self,
        args: tuple[str, ...],
        global_options: tuple[Option, ...],
        command: str | None,  # `run` for both `run` and `container run`
        command_index: int | None,
        run_options: tuple[Option, ...] = (),
        image_index: int | None = None,
        image_after_dashdash: bool = False,
    ) -> None:
        self.args = args
        self.global_options = global_options
        self.command = command
        self.command_index = command_index
        self.run_options = run_options
        self.image_index = image_index
        self.image_after_dashdash = image_after_dashdash

    def __repr__(self) -> str:
        return f"Invocation({self.args!r}, command={self.command!r}, image={self.image!r})"

    @property
    def rewritable(self) -> bool:
        """True for run/create (plain or under `container`) with a non-empty image argument."""
        return self.command in REWRITTEN and bool(self.image)

    @property
    def image(self) -> str | None:
        return None if self.image_index is None else self.args[self.image_index]

    def global_values(self, name: str) -> list[str]:
        return [o.value for o in self.global_options if o.name == name and o.value is not None]

    def global_flag(self, name: str) -> bool:
        """A boolean global option's final value (`--tls`, `--tls=false`)."""
        result = False
        for o in self.global_options:
            if o.name == name:
                result = o.value is None or o.value.lower() in ("1", "t", "true")
        return result

    def run_values(self, name: str) -> list[str]:
        return [o.value for o in self.run_options if o.name == name and o.value is not None]


def scan(
    args: Sequence[str],
    start: int,
    value_long: frozenset[str],
    value_short: frozenset[str],
    short_names: dict[str, str],
) -> Scan:
    """Parse options from `args[start:]` as pflag does, stopping at the first positional."""
    options: list[Option] = []
    i = start
    while i < len(args):
        arg = args[i]
        if arg == "--":
            nxt = i + 1
            return Scan(tuple(options), nxt if nxt < len(args) else None, True)
        if len(arg) < 2 or not arg.startswith("-"):
            return Scan(tuple(options), i)  # '', '-' and plain words are positionals
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if eq:
                options.append(Option(name, value))
            elif name in value_long and i + 1 < len(args):
                i += 1
                options.append(Option(name, args[i]))
            else:
                options.append(Option(name, None))
            i += 1
            continue
        cluster = arg[1:]
        consumed_next = False
        for pos, letter in enumerate(cluster):
            name = short_names.get(letter, letter)
            rest = cluster[pos + 1 :]
            if rest.startswith("="):
                options.append(Option(name, rest[1:]))
                break
            if letter in value_short:
                if rest:
                    options.append(Option(name, rest))
                elif i + 1 < len(args):
                    options.append(Option(name, args[i + 1]))
                    consumed_next = True
                else:
                    options.append(Option(name, None))
                break
            options.append(Option(name, None))
        i += 2 if consumed_next else 1
    return Scan(tuple(options), None)


def split(args: Sequence[str]) -> Invocation:
    """Split `docker` arguments (without the program name) into globals, command and image."""
    args = tuple(args)
    top = scan(args, 0, GLOBAL_VALUE_LONG, GLOBAL_VALUE_SHORT, GLOBAL_SHORT_NAMES)
    if top.positional is None:
        return Invocation(args, top.options, None, None)
    index = top.positional
    command = args[index]
    if command == "container" and index + 1 < len(args) and args[index + 1] in REWRITTEN:
        index += 1
        command = args[index]
    if command not in REWRITTEN:
        return Invocation(args, top.options, command, index)
    sub = scan(args, index + 1, RUN_VALUE_LONG, RUN_VALUE_SHORT, RUN_SHORT_NAMES)
    image_index = sub.positional
    if any(o.name == "help" for o in sub.options):
        image_index = None  # docker prints help and ignores the rest
    return Invocation(
        args, top.options, command, index, sub.options, image_index, sub.after_dashdash
    )


def insert_before_image(inv: Invocation, extra: Sequence[str]) -> list[str]:
    """The arguments with `extra` inserted right before the image (after `--` if one was used)."""
    if inv.image_index is None:
        raise ValueError("no image argument to insert before")
    args = list(inv.args)
    at = inv.image_index
    if inv.image_after_dashdash:
        at -= 1  # `--` ended the options: ours go before it to stay options
    return [*args[:at], *extra, *args[at:]]
