"""The systemd unit: systemd accepts it, the daemon accepts its command line, and the ordering,
restart, stop and sandbox settings are the ones the docs promise."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nvplugin.core import config
from tests.packaging.units import DROP_IN_DIR, REPO, UNIT, command_argv, environment, parse
from tests.requirements import need_tool

INSTALLED_PATH = "/usr/local/bin/nvidia-docker-plugin"
MAX_EXPOSURE = 2.6  # systemd-analyze security: 0 (locked down) .. 10 (unprotected)


def units_in(tmp_path: Path, drop_in: str | None = None) -> Path:
    """A copy of the unit whose ExecStart names a runnable console script here (systemd-analyze
    verify insists on an executable); with the drop-in example installed when asked."""
    script = tmp_path / "bin" / "nvidia-docker-plugin"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m nvplugin "
                      '"$@"\n')
    script.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    (units / UNIT.name).write_text(UNIT.read_text().replace(INSTALLED_PATH, str(script)))
    if drop_in:
        (units / f"{UNIT.name}.d").mkdir()
        shutil.copy(DROP_IN_DIR / drop_in, units / f"{UNIT.name}.d" / "user.conf")
    return units


def verify(units: Path) -> subprocess.CompletedProcess[str]:
    tool = need_tool("systemd-analyze")
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:", "SYSTEMD_LOG_LEVEL": "notice"}
    return subprocess.run([tool, "verify", str(units / UNIT.name)], capture_output=True,
                          text=True, env=env, timeout=60)


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    done = verify(units_in(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""


def test_systemd_analyze_verify_accepts_the_user_drop_in(tmp_path):
    done = verify(units_in(tmp_path, drop_in="user.conf.example"))
    assert done.returncode == 0, done.stderr
    # Unknown keys are only warnings: any output at all is a mistake in our files.
    assert done.stderr.strip() == ""


def test_verify_would_catch_a_typo(tmp_path):
    units = units_in(tmp_path)
    unit = units / UNIT.name
    unit.write_text(unit.read_text().replace("ProtectHome=", "ProtectHomes="))
    assert "Unknown key 'ProtectHomes'" in verify(units).stderr


def test_exposure_score_stays_low(tmp_path):
    tool = need_tool("systemd-analyze")
    done = subprocess.run([tool, "security", "--offline=yes", "--no-pager",
                           str(units_in(tmp_path) / UNIT.name)],
                          capture_output=True, text=True, timeout=60)
    print(done.stdout)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout[-2000:] + done.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, done.stdout


@pytest.mark.parametrize("drop_in", [None, "user.conf.example"], ids=["root", "user"])
def test_exec_start_is_accepted_by_the_daemon_and_its_dirs_are_writable(drop_in):
    paths = [UNIT] + ([DROP_IN_DIR / drop_in] if drop_in else [])
    unit = parse(*paths)
    env = environment(unit)
    (exec_start,) = unit["Service"]["ExecStart"]
    argv = command_argv(exec_start, env)
    assert argv[0] == INSTALLED_PATH
    # The real parser, with an empty environment: the unit's flags alone must be valid.
    cfg = config.load(argv[1:], environ={})
    assert str(cfg.socket_dir) == env["NVP_SOCKET_DIR"]
    assert str(cfg.volumes_dir) == env["NVP_VOLUMES_DIR"]
    assert cfg.listen_host_port == ("localhost", 3476)
    state_dirs = state_directories(unit)
    writable = writable_paths(unit) + state_dirs
    for needed in (cfg.socket_dir, cfg.volumes_dir):
        assert any(needed == w or w in needed.parents for w in writable), needed
    if cfg.needs_spec_file:
        assert any(cfg.spec_dir == w or w in cfg.spec_dir.parents for w in writable)
    # Each directory exists before systemd builds the sandbox (a missing ReadWritePaths= entry is
    # skipped, '-', and would stay read-only): systemd makes the StateDirectory=, an
    # ExecStartPre= the others (named literally, or through their variable in a shell line).
    created = " ".join(" ".join(command_argv(c, env)) for c in unit["Service"]["ExecStartPre"])
    for needed, variable in ((cfg.socket_dir, "NVP_SOCKET_DIR"),
                             (cfg.volumes_dir, "NVP_VOLUMES_DIR")):
        assert (str(needed) in created or f'"${variable}"' in created
                or any(needed == d or d in needed.parents for d in state_dirs)), needed


def state_directories(unit: dict[str, dict[str, list[str]]]) -> list[Path]:
    return [Path("/var/lib") / d for line in unit["Service"].get("StateDirectory", [])
            for d in line.split()]


def writable_paths(unit: dict[str, dict[str, list[str]]]) -> list[Path]:
    return [Path(p.lstrip("-")) for line in unit["Service"].get("ReadWritePaths", [])
            for p in line.split()]


def test_the_cdi_spec_directory_is_created_and_writable():
    # A later feature writes /var/run/cdi/nvidia-docker.json (/var/run is /run). /run/cdi is
    # shared with every other CDI producer: created, never owned (no RuntimeDirectory=, which
    # systemd deletes on stop).
    service = parse(UNIT)["Service"]
    assert Path("/run/cdi") in writable_paths(parse(UNIT))
    assert any("/run/cdi" in command_argv(c, {}) for c in service["ExecStartPre"])
    assert "RuntimeDirectory" not in service


def test_the_daemons_cdi_spec_goes_where_the_unit_lets_it_and_the_user_drop_in_writes_none():
    unit = parse(UNIT)
    env = environment(unit)
    (exec_start,) = unit["Service"]["ExecStart"]
    cfg = config.load(command_argv(exec_start, env)[1:], environ=env)
    assert str(cfg.cdi_dir) in ("/var/run/cdi", "/run/cdi")  # /var/run is /run
    assert Path("/run/cdi") in writable_paths(unit)
    # As its own user, the daemon may not replace files in /run/cdi, shared with other vendors.
    user = parse(UNIT, DROP_IN_DIR / "user.conf.example")
    env = environment(user)
    (exec_start,) = user["Service"]["ExecStart"]
    assert config.load(command_argv(exec_start, env)[1:], environ=env).cdi_dir is None


def test_the_user_drop_in_never_hands_the_state_directory_over():
    # StateDirectory= with User= chowns the directory recursively, every volume file included.
    service = parse(UNIT, DROP_IN_DIR / "user.conf.example")["Service"]
    assert service["User"] == ["nvidia-docker"]
    assert state_directories({"Service": service}) == []
    assert Path("/var/lib/nvidia-docker") in writable_paths({"Service": service})
    assert not [c for c in service["ExecStartPre"] if "chown -R" in c or " -R " in c]


def test_started_before_docker_without_binding_docker_to_it():
    unit = parse(UNIT)
    assert "docker.service" in " ".join(unit["Unit"]["Before"])
    wanted_by = " ".join(unit["Install"]["WantedBy"]).split()
    assert {"multi-user.target", "docker.service"} <= set(wanted_by)
    # A stop or restart of the plugin must never stop Docker.
    for strong in ("Requires", "BindsTo", "PartOf", "Requisite"):
        assert strong not in unit["Unit"]
    assert "RequiredBy" not in unit["Install"]


def test_restart_and_stop_settings():
    service = parse(UNIT)["Service"]
    assert service["Restart"] == ["on-failure"]
    assert service["KillSignal"] == ["SIGTERM"]
    (reload,) = service["ExecReload"]
    argv = command_argv(reload, {})
    assert argv[:2] == ["/bin/sh", "-c"] and argv[2] == 'kill -HUP "$MAINPID"'
    # Longer than the daemon's own drain (SHUTDOWN_TIMEOUT_S), so systemd never SIGKILLs it.
    from nvplugin.cli.serve import SHUTDOWN_TIMEOUT_S

    assert int(service["TimeoutStopSec"][0]) > SHUTDOWN_TIMEOUT_S


def test_capabilities_are_only_those_linking_and_copying_need():
    for paths in ([UNIT], [UNIT, DROP_IN_DIR / "user.conf.example"]):
        service = parse(*paths)["Service"]
        caps = set(" ".join(service["CapabilityBoundingSet"]).split())
        assert caps <= {"CAP_FOWNER", "CAP_CHOWN"}
        assert set(" ".join(service.get("AmbientCapabilities", [])).split()) <= caps
    service = parse(UNIT)["Service"]
    assert service["NoNewPrivileges"] == ["yes"] and service["ProtectSystem"] == ["strict"]
    assert "PrivateDevices" not in service  # it would hide /dev/nvidia* from NVML
    assert service["DeviceAllow"] == ["char-nvidia* rw"]


def test_readiness_wait_returns_once_the_socket_exists(tmp_path):
    service = parse(UNIT)["Service"]
    (post,) = service["ExecStartPost"]
    argv = command_argv(post, {})
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "nvidia-docker.sock"))
        done = subprocess.run(argv, env={"NVP_SOCKET_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
                              timeout=30)
    assert done.returncode == 0


def test_other_users_processes_stay_visible():
    # gpu/status names each GPU's processes from /proc/<pid> (NVML reads it too, and the daemon
    # falls back to <driver-root>/proc/<pid>/comm). ProtectProc=invisible, ptraceable or noaccess
    # mount /proc with hidepid, hiding every process the daemon may not ptrace: without
    # CAP_SYS_PTRACE, every other user's GPU job. ProcSubset=pid would hide /proc/driver/nvidia.
    for paths in ([UNIT], [UNIT, DROP_IN_DIR / "user.conf.example"]):
        service = parse(*paths)["Service"]
        assert service.get("ProtectProc", ["default"])[-1] == "default"
        assert service.get("ProcSubset", ["all"])[-1] == "all"
        assert "CAP_SYS_PTRACE" not in " ".join(service["CapabilityBoundingSet"])
