"""The daemon's settings: flags, their environment variables, defaults and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from nvplugin.core import config
from nvplugin.core.errors import ConfigError


def test_defaults_are_1_0s():
    cfg = config.load([], environ={})
    assert cfg.listen_host_port == ("localhost", 3476)
    assert cfg.socket_path == Path("/run/docker/plugins/nvidia-docker.sock")
    assert cfg.volumes_dir == Path("/var/lib/nvidia-docker/volumes")
    assert cfg.driver_root == Path("/") and cfg.dev_root == Path("/")
    assert not cfg.needs_spec_file


def test_environment_sets_what_flags_do_and_flags_win():
    environ = {"NVP_LISTEN": ":9000", "NVP_SOCKET_DIR": "/var/lib/nvidia-docker",
               "NVP_DRIVER_ROOT": "/host", "NVP_LOG_LEVEL": "DEBUG"}
    cfg = config.load([], environ=environ)
    assert cfg.listen_host_port == ("0.0.0.0", 9000)
    assert cfg.dev_root == Path("/host")  # the driver root, unless told otherwise
    assert cfg.log_level == "debug"
    assert cfg.needs_spec_file and cfg.spec_path == Path("/etc/docker/plugins/nvidia-docker.spec")
    assert config.load(["-l", "127.0.0.1:1"], environ=environ).listen == "127.0.0.1:1"


@pytest.mark.parametrize("socket_dir", ["/run/docker/plugins", "/run/docker/plugins/nvidia-docker"])
def test_docker_finds_these_sockets_without_a_spec_file(socket_dir):
    assert not config.load(["-s", socket_dir], environ={}).needs_spec_file


@pytest.mark.parametrize(("value", "expected"), [
    ("", None), (":3476", ("0.0.0.0", 3476)), ("[::1]:80", ("::1", 80)),
    ("localhost:0", ("localhost", 0)),
], ids=["disabled", "all", "ipv6", "port0"])
def test_listen_addresses(value, expected):
    assert config.parse_listen(value) == expected


@pytest.mark.parametrize("value", ["3476", "host:", "host:99999", "host:http"])
def test_bad_listen_addresses_are_named(value):
    with pytest.raises(ConfigError, match=f"invalid listen address {value!r}"):
        config.parse_listen(value)


def test_empty_paths_are_refused():
    with pytest.raises(ConfigError, match="--volumes-dir must not be empty"):
        config.load(["-d", ""], environ={})


def test_host_root_defaults_to_slash_and_is_read_from_the_environment(tmp_path):
    assert config.load([], environ={}).host_root == Path("/")
    host = tmp_path / "host"
    host.mkdir()
    cfg = config.load([], environ={"NVP_DRIVER_ROOT": str(host), "NVP_HOST_ROOT": str(host)})
    assert cfg.host_root == host and cfg.dev_root == host
    # A driver container's root under the mounted host root, flag over environment.
    driver = host / "run/nvidia/driver"
    cfg = config.load(["--dev-root", str(driver), "--host-root", str(host)],
                      environ={"NVP_HOST_ROOT": "/"})
    assert cfg.host_root == host and cfg.dev_root == driver


def test_host_root_is_in_help():
    assert "--host-root HOST_ROOT" in config.build_parser(environ={}).format_help()
    assert config.ENVIRONMENT["--host-root"] == "NVP_HOST_ROOT"


@pytest.mark.parametrize(("argv", "message"), [
    (["--host-root", ""], "--host-root must not be empty"),
    (["--host-root", "host"], "--host-root 'host' must be an absolute path"),
    (["--host-root", "/nonexistent/host"], "--host-root /nonexistent/host is not a directory"),
    (["--dev-root", "dev"], "--dev-root dev: device path 'dev' is relative"),
])
def test_bad_host_roots_are_named(argv, message):
    with pytest.raises(ConfigError, match=message):
        config.load(argv, environ={})


@pytest.mark.parametrize(("flag", "value", "why"), [
    ("--dev-root", "/run/my driver", "a space"),
    ("--dev-root", "/run/tab\tdriver", "a control character"),
    ("--dev-root", "/run/nvidia/*", "'*'"),
    ("--dev-root", "/run/a:b", "':'"),
    ("--dev-root", "/run/-x", "a path component that starts with '-'"),
    ("--host-root", "/host dir", "a space"),
    ("--host-root", "/--privileged", "a path component that starts with '-'"),
], ids=["space", "tab", "glob", "colon", "dash", "host-space", "host-dash"])
def test_roots_that_would_split_docker_cli_are_refused_at_start(flag, value, why, tmp_path):
    """docker/cli is spliced unquoted into `docker run $(curl ...)`: a space in a device path
    splits it into two words, a glob expands, a ':' is docker's separator."""
    with pytest.raises(ConfigError) as raised:
        config.load([flag, value], environ={})
    assert raised.value.message.startswith(f"{flag} {value!r} cannot be handed to Docker: it "
                                           f"has {why}")


def test_a_dev_root_docker_cannot_see_is_refused_at_start(tmp_path):
    # The plugin container's own /dev (or any path outside the mounted host root) names nodes
    # the Docker host does not have.
    host = tmp_path / "host"
    host.mkdir()
    for dev_root in ("/", "/run/nvidia/driver", f"{host}-other"):
        with pytest.raises(ConfigError, match=f"--dev-root {dev_root}: .* is not under "
                                              f"--host-root {host}, so the Docker host cannot"):
            config.load(["--dev-root", dev_root, "--host-root", str(host)], environ={})
    # The same roots are fine for a daemon on the host.
    assert config.load(["--dev-root", "/run/nvidia/driver"], environ={}).host_root == Path("/")


# --- one parser: subcommands, global flags before or after them --------------------------------

def test_serve_is_the_default_command():
    invocation = config.parse(["-l", ":9000"], environ={})
    assert (invocation.command, invocation.as_json) == ("serve", False)
    assert config.parse(["serve", "-l", ":9000"], environ={}).config == invocation.config


@pytest.mark.parametrize("argv", [
    ["--driver-root", "/x", "list", "--json"],
    ["list", "--driver-root", "/x", "--json"],
    ["list", "--json", "--driver-root=/x"],
], ids=["flags-before", "flags-after", "equals-form"])
def test_global_flags_before_or_after_the_command(argv):
    invocation = config.parse(argv, environ={})
    assert invocation.command == "list" and invocation.as_json
    assert invocation.config.driver_root == Path("/x") == invocation.config.dev_root


def test_a_flag_after_the_command_wins_and_the_environment_still_counts():
    environ = {"NVP_DRIVER_ROOT": "/env", "NVP_LOG_LEVEL": "debug"}
    invocation = config.parse(["--driver-root", "/before", "doctor", "--driver-root", "/after"],
                              environ=environ)
    assert invocation.config.driver_root == Path("/after")
    assert invocation.config.log_level == "debug"
    assert config.parse(["doctor"], environ=environ).config.driver_root == Path("/env")


@pytest.mark.parametrize("argv", [["serve", "--json"], ["--json"], ["nope"]],
                         ids=["serve-has-no-json", "json-is-not-global", "unknown-command"])
def test_what_a_command_does_not_take_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        config.parse(argv, environ={})
    assert exited.value.code == 2
    assert "usage: nvidia-docker-plugin" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["list", "doctor", "serve"])
def test_each_command_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        config.parse([command, "--help"], environ={})
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: nvidia-docker-plugin {command}")
    assert ("--json" in text) == (command != "serve")
    assert config.COMMANDS[command][0] in " ".join(text.split())


def test_top_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        config.parse(["--help"], environ={})
    text = capsys.readouterr().out
    assert all(name in text for name in config.COMMANDS) and "[NVP_LISTEN]" in text


@pytest.mark.parametrize(("argv", "environ", "keep"), [
    ([], {}, False),
    (["--keep-old-volumes"], {}, True),
    ([], {"NVP_KEEP_OLD_VOLUMES": "yes"}, True),
    ([], {"NVP_KEEP_OLD_VOLUMES": "0"}, False),
    (["--keep-old-volumes"], {"NVP_KEEP_OLD_VOLUMES": "false"}, True),  # the flag wins
    (["gc", "--keep-old-volumes"], {}, True),  # after the subcommand too
])
def test_keep_old_volumes(argv, environ, keep):
    assert config.parse(argv, environ=environ).config.keep_old_volumes is keep


def test_a_bad_switch_value_names_the_variable():
    with pytest.raises(ConfigError, match=r"invalid NVP_KEEP_OLD_VOLUMES='maybe': use 1, true"):
        config.load([], environ={"NVP_KEEP_OLD_VOLUMES": "maybe"})
    assert config.ENVIRONMENT["--keep-old-volumes"] == "NVP_KEEP_OLD_VOLUMES"


def test_gc_is_a_command_with_json():
    invocation = config.parse(["gc", "--json"], environ={})
    assert (invocation.command, invocation.as_json) == ("gc", True)


def test_cdi_defaults_environment_and_off():
    cfg = config.load([], environ={})
    assert cfg.cdi_dir == Path("/var/run/cdi") and cfg.cdi_kind == "nvidia.com/gpu"
    assert cfg.cdi_path == Path("/var/run/cdi/nvidia-docker.json")
    cfg = config.load([], environ={"NVP_CDI_DIR": "/etc/cdi", "NVP_CDI_KIND": "example.com/gpu"})
    assert cfg.cdi_path == Path("/etc/cdi/nvidia-docker.json")
    assert cfg.cdi_kind == "example.com/gpu"
    off = config.load([], environ={"NVP_CDI_DIR": ""})
    assert off.cdi_dir is None and off.cdi_path is None
    assert config.load(["--cdi-dir", "/run/cdi"], environ={"NVP_CDI_DIR": ""}).cdi_dir == Path(
        "/run/cdi")


def test_relative_cdi_dir_is_refused():
    with pytest.raises(ConfigError, match="--cdi-dir 'cdi' must be an absolute path"):
        config.load(["--cdi-dir", "cdi"], environ={})


def test_the_cdi_command_and_its_output_option():
    invocation = config.parse(["cdi", "--output", "/etc/cdi/nvidia-docker.json"], environ={})
    assert invocation.command == "cdi"
    assert invocation.output == Path("/etc/cdi/nvidia-docker.json")
    assert config.parse(["cdi"], environ={}).output is None
    with pytest.raises(ConfigError, match="--output must not be empty"):
        config.parse(["cdi", "--output", ""], environ={})
    with pytest.raises(SystemExit):  # argparse's usage line: only `cdi` takes --output
        config.parse(["list", "--output", "x"], environ={})


def test_observe_flags_have_defaults_environment_and_named_errors():
    cfg = config.load([], environ={})
    assert cfg.metrics_host_port is None
    assert cfg.health_ignore_xids == frozenset({13, 31, 43, 45, 68, 109})
    assert cfg.health_recovery_s == 300.0
    cfg = config.load([], environ={"NVP_METRICS_LISTEN": ":9400",
                                   "NVP_HEALTH_IGNORE_XIDS": "13, 43",
                                   "NVP_HEALTH_RECOVERY": "90s"})
    assert cfg.metrics_host_port == ("0.0.0.0", 9400)
    assert cfg.health_ignore_xids == frozenset({13, 43}) and cfg.health_recovery_s == 90.0
    assert config.load(["--health-ignore-xids", ""], environ={}).health_ignore_xids == frozenset()
    for value, seconds in (("300", 300.0), ("2.5", 2.5), ("5m", 300.0), ("1h", 3600.0)):
        assert config.load(["--health-recovery", value], environ={}).health_recovery_s == seconds


@pytest.mark.parametrize(("args", "message"), [
    (["--health-recovery", "0"], "invalid --health-recovery '0'"),
    (["--health-recovery", "5 minutes"], "invalid --health-recovery '5 minutes'"),
    (["--health-recovery", "nan"], "invalid --health-recovery 'nan'"),
    (["--health-ignore-xids", "13,x79"], "invalid --health-ignore-xids item 'x79'"),
    (["--metrics-listen", "9400"], "invalid --metrics-listen listen address '9400'"),
])
def test_bad_observe_values_are_named(args, message):
    with pytest.raises(ConfigError, match=message):
        config.load(args, environ={})


@pytest.mark.parametrize(("argv", "environ", "prebuild"), [
    ([], {}, True),
    (["--no-prebuild"], {}, False),
    (["serve", "--no-prebuild"], {}, False),
    ([], {"NVP_NO_PREBUILD": "1"}, False),
    ([], {"NVP_NO_PREBUILD": "yes"}, False),
    ([], {"NVP_NO_PREBUILD": "0"}, True),
    ([], {"NVP_NO_PREBUILD": ""}, True),
    (["--no-prebuild"], {"NVP_NO_PREBUILD": "0"}, False),  # the flag wins
], ids=["default", "flag", "flag-after-command", "env-1", "env-yes", "env-0", "env-empty",
        "flag-over-env"])
def test_no_prebuild_by_flag_or_environment(argv, environ, prebuild):
    assert config.load(argv, environ=environ).prebuild is prebuild
    assert config.ENVIRONMENT["--no-prebuild"] == "NVP_NO_PREBUILD"


def test_bad_no_prebuild_value_is_named():
    with pytest.raises(ConfigError, match=r"invalid NVP_NO_PREBUILD='maybe': use 1"):
        config.load([], environ={"NVP_NO_PREBUILD": "maybe"})
