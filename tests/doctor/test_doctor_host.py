"""`nvidia-docker-plugin doctor` on a fake GPU host, healthy and with one fault injected per test.

Doctor runs as users run it: the console entry point in a child process, with --json.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from nvplugin.cli import doctor
from tests.dockerenv import PluginDaemon, free_port, wait_for
from tests.fakenvml.build import append_event, write_config
from tests.requirements import need_tool
from tests.volumes.conftest import mounted

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


def run_doctor(driver_root: Path, *, socket_dir: Path, volumes_dir: Path, listen: str,
               env: dict[str, str] | None = None, prefix: tuple[str, ...] = (),
               cdi_dir: Path | str | None = None, extra: tuple[str, ...] = (),
               ) -> tuple[int, dict[str, dict[str, Any]]]:
    argv = [*prefix, sys.executable, "-m", "nvplugin", "doctor", "--json",
            "--driver-root", str(driver_root), "--dev-root", str(driver_root),
            "-s", str(socket_dir), "-d", str(volumes_dir), "-l", listen,
            "--cdi-dir", str(cdi_dir if cdi_dir is not None else volumes_dir.parent / "cdi"),
            *extra]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    assert "Traceback" not in done.stderr, done.stderr
    records = json.loads(done.stdout)
    assert all(set(r) == {"check", "status", "detail", "fix"} for r in records)
    return done.returncode, {r["check"]: r for r in records}


def doctor_for(daemon: PluginDaemon, **overrides: Any) -> tuple[int, dict[str, dict[str, Any]]]:
    options: dict[str, Any] = {
        "socket_dir": daemon.socket_dir, "volumes_dir": daemon.volumes_dir,
        "listen": f"127.0.0.1:{daemon.port}", "env": daemon.env,
        "cdi_dir": daemon.cdi_path.parent}
    options.update(overrides)
    return run_doctor(daemon.driver_root, **options)


def driver_modes(root: Path) -> None:
    """The driver makes its nodes 0666 (NVreg_DeviceFileMode); mknod under a umask does not."""
    for node in (root / "dev").glob("nvidia*"):
        node.chmod(0o666)


@pytest.fixture
def daemon(running_plugin) -> PluginDaemon:
    # No background build: these tests change the driver's files and the volumes directory
    # under a running daemon, and a build in progress would race them.
    started = running_plugin(extra_args=("--no-prebuild",))
    driver_modes(started.driver_root)
    return started


def test_a_healthy_host_passes_every_check(daemon, docker_engine):
    volume = docker_engine.client.volumes.create(f"nvidia_driver_{daemon.host.version}",
                                                 driver="nvidia-docker")
    try:
        rc, checks = doctor_for(daemon)
    finally:
        volume.remove(force=True)
    problems = {k: v for k, v in checks.items() if v["status"] != "PASS"}
    assert problems == {}, json.dumps(problems, indent=1)
    assert rc == 0
    assert daemon.host.version in checks["driver-module"]["detail"]
    assert "1 GPU(s)" in checks["nvml"]["detail"]
    assert f"nvidia_driver_{daemon.host.version}" in checks["docker-volume-driver"]["detail"]
    assert "hard-linked" in checks["volumes-dir"]["detail"]


def test_text_output_is_one_line_per_check_with_a_summary(daemon):
    argv = [sys.executable, "-m", "nvplugin", "doctor", "--driver-root",
            str(daemon.driver_root), "-s", str(daemon.socket_dir), "-d", str(daemon.volumes_dir),
            "-l", f"127.0.0.1:{daemon.port}", "--cdi-dir", str(daemon.cdi_path.parent)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **daemon.env})
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout
    assert [line.split()[0] for line in lines[:-1]] == ["PASS"] * (len(lines) - 1)
    assert lines[-1].startswith(f"{len(lines) - 1} passed, 0 warning(s), 0 failed")


def test_no_driver(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, checks = run_doctor(empty, socket_dir=tmp_path / "s", volumes_dir=tmp_path / "v",
                            listen=f"127.0.0.1:{free_port()}")
    assert rc == 1
    assert checks["driver-module"]["status"] == "FAIL"
    assert "not loaded" in checks["driver-module"]["detail"]
    assert checks["driver-libraries"]["status"] == "FAIL"
    assert checks["nvml"]["status"] == "FAIL"
    assert checks["device-nodes"]["status"] == "FAIL"
    assert all(checks[name]["fix"] for name in ("driver-module", "driver-libraries", "nvml"))


def test_kernel_module_and_libraries_of_different_versions(gpu_host_factory, tmp_path):
    host = gpu_host_factory()
    proc = host.root / "proc/driver/nvidia/version"
    proc.write_text(proc.read_text().replace(host.version, "575.51.02"))
    rc, checks = run_doctor(host.root, socket_dir=tmp_path / "s", volumes_dir=tmp_path / "v",
                            listen="", env=host.env())
    assert rc == 1
    libraries = checks["driver-libraries"]
    assert libraries["status"] == "FAIL"
    assert f"kernel module 575.51.02, libraries {host.version}" in libraries["detail"]
    assert "Driver/library version mismatch" in libraries["detail"]
    assert checks["driver-module"]["status"] == "PASS"


def test_missing_nvidia_uvm_node(daemon):
    (daemon.driver_root / "dev/nvidia-uvm").unlink()
    rc, checks = doctor_for(daemon)
    assert rc == 1
    assert checks["nvidia-uvm"]["status"] == "FAIL"
    assert "nvidia-modprobe -u -c=0" in checks["nvidia-uvm"]["fix"]
    assert checks["device-nodes"]["status"] == "PASS"


def test_node_closed_to_other_users_warns(daemon):
    node = daemon.driver_root / "dev/nvidia0"
    node.chmod(0o600)
    rc, checks = doctor_for(daemon)
    assert checks["device-nodes"]["status"] == "WARN"
    detail = checks["device-nodes"]["detail"]
    assert str(node) in detail and "0600" in detail
    assert rc == 0  # a warning alone is not a failure


def test_node_unreadable_under_the_units_capabilities_fails(daemon):
    """As systemd runs it: root, but without CAP_DAC_OVERRIDE (the unit's bounding set)."""
    setpriv = need_tool("setpriv")
    node = daemon.driver_root / "dev/nvidia0"
    os.chown(node, NOBODY, NOBODY)
    node.chmod(0o600)
    rc, checks = doctor_for(daemon, prefix=(setpriv, "--bounding-set=-all,+fowner,+chown", "--"))
    nodes = checks["device-nodes"]
    assert rc == 1 and nodes["status"] == "FAIL"
    assert f"{node} cannot be opened read-write here" in nodes["detail"]


def test_docker_unreachable(daemon, tmp_path):
    dead = tmp_path / "dead.sock"
    rc, checks = doctor_for(daemon, env={**daemon.env, "DOCKER_HOST": f"unix://{dead}"})
    assert rc == 1
    assert checks["docker"]["status"] == "FAIL"
    assert str(dead) in checks["docker"]["detail"]
    assert "DOCKER_HOST" in checks["docker"]["fix"]
    assert checks["docker-volume-driver"]["status"] == "SKIP"


def test_doctor_checks_the_engine_of_the_current_docker_context(daemon, tmp_path):
    """doctor and the wrapper resolve the engine alike: the CLI's current context counts."""
    config = tmp_path / "docker-config"
    digest = hashlib.sha256(b"gpu").hexdigest()
    meta = config / "contexts" / "meta" / digest / "meta.json"
    meta.parent.mkdir(parents=True)
    dead = tmp_path / "context-engine.sock"
    meta.write_text(json.dumps({"Name": "gpu", "Endpoints": {"docker": {"Host": f"unix://{dead}"}}}))
    (config / "config.json").write_text(json.dumps({"currentContext": "gpu"}))
    env = {k: v for k, v in daemon.env.items() if k != "DOCKER_HOST"}
    env["DOCKER_CONFIG"] = str(config)
    rc, checks = doctor_for(daemon, env={**env, "DOCKER_HOST": ""})
    assert rc == 1 and checks["docker"]["status"] == "FAIL"
    assert f"unix://{dead}" in checks["docker"]["detail"]
    rc, checks = doctor_for(daemon, env={**env, "DOCKER_HOST": "", "DOCKER_CONTEXT": "default"})
    assert checks["docker"]["status"] == "PASS", checks["docker"]


def test_placement_follows_the_running_daemons_own_mounts(running_plugin, tmp_path):
    """Under systemd's ReadWritePaths= the volumes dir is a mount of its own in the daemon's
    namespace, so its builds copy even where doctor itself could hard-link: doctor asks the
    daemon behind the socket (SO_PEERCRED) and reads its mountinfo."""
    unshare = need_tool("unshare")
    volumes = tmp_path / "sandboxed-volumes"
    volumes.mkdir()
    bind_self = 'mount --bind "$0" "$0" && exec "$@"'
    prefix = (unshare, "--mount", "--propagation", "private", "sh", "-c", bind_self, str(volumes))
    daemon = running_plugin(volumes_dir=volumes, prefix=prefix)
    driver_modes(daemon.driver_root)
    assert daemon.proc is not None
    _rc, checks = doctor_for(daemon)
    detail = checks["volumes-dir"]["detail"]
    assert checks["volumes-dir"]["status"] == "PASS"
    assert f"will be copied (reflinked where supported): the running daemon (pid " \
           f"{daemon.proc.pid}) sees {volumes} as a mount of its own" in detail
    # Outside that namespace the same directory takes hard links: the old answer was wrong.
    probe = volumes / "probe-link"
    os.link(daemon.host.root / "etc/ld.so.cache", probe)
    probe.unlink()


def test_placement_on_another_filesystem_says_so_not_sandbox(running_plugin, tmp_path):
    """A volumes dir on another filesystem (as the H200's squashfs driver against its disk) is on
    another mount for everyone: the link's own failure explains the copy, not a sandbox."""
    volumes = tmp_path / "tmpfs-volumes"
    volumes.mkdir()
    with mounted("-t", "tmpfs", "tmpfs", str(volumes)):
        daemon = running_plugin(volumes_dir=volumes)
        driver_modes(daemon.driver_root)
        _rc, checks = doctor_for(daemon)
        daemon.stop()
    detail = checks["volumes-dir"]["detail"]
    assert "will be copied (reflinked where supported): hard link from another " \
           "filesystem failed (Invalid cross-device link)" in detail, detail
    assert "a mount of its own" not in detail


def test_mount_of_a_path_in_mountinfo():
    mountinfo = (
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "40 22 8:1 /var/lib/x /var/lib/x rw - ext4 /dev/sda1 rw\n"
        "41 22 0:5 / /var/lib/with\\040space rw - tmpfs tmpfs rw\n"
        "42 40 8:1 /var/lib/x /var/lib/x rw - ext4 /dev/sda1 rw\n"
    )
    assert doctor._mount_id(mountinfo, Path("/usr/lib/libcuda.so.1")) == "22"
    assert doctor._mount_id(mountinfo, Path("/var/lib/x/volumes")) == "42"  # the later one wins
    assert doctor._mount_id(mountinfo, Path("/var/lib/with space/v")) == "41"
    assert doctor._mount_id("", Path("/x")) is None


def test_plugin_socket_absent(daemon, tmp_path):
    rc, checks = doctor_for(daemon, socket_dir=tmp_path / "nowhere")
    assert rc == 1
    assert checks["plugin-socket"]["status"] == "FAIL"
    assert "absent" in checks["plugin-socket"]["detail"]


def test_plugin_socket_stale(daemon, tmp_path):
    socket_dir = tmp_path / "stale"
    socket_dir.mkdir()
    with socket.socket(socket.AF_UNIX) as sock:  # bound, never listening: connections refused
        sock.bind(str(socket_dir / "nvidia-docker.sock"))
    rc, checks = doctor_for(daemon, socket_dir=socket_dir)
    assert rc == 1
    assert checks["plugin-socket"]["status"] == "FAIL"
    assert "stale socket" in checks["plugin-socket"]["detail"]
    assert "restart" in checks["plugin-socket"]["fix"]


def test_volumes_dir_not_writable(daemon):
    need_tool("mount")
    volumes = daemon.volumes_dir
    subprocess.run(["mount", "--bind", str(volumes), str(volumes)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(volumes)], check=True)
        rc, checks = doctor_for(daemon)
    finally:
        subprocess.run(["umount", str(volumes)], check=True)
    assert rc == 1
    assert checks["volumes-dir"]["status"] == "FAIL"
    assert "Read-only file system" in checks["volumes-dir"]["detail"]
    assert "ReadWritePaths" in checks["volumes-dir"]["fix"]


def test_stale_volume_of_an_old_driver(daemon):
    lib64 = daemon.volumes_dir / "nvidia_driver" / "570.86.15" / "lib64"
    lib64.mkdir(parents=True)
    (lib64 / "libcuda.so.570.86.15").write_bytes(b"\0" * (2 << 20))  # the old driver is gone
    rc, checks = doctor_for(daemon)
    stale = checks["stale-volumes"]
    assert stale["status"] == "WARN"
    assert stale["detail"] == (
        "volumes of old drivers: 570.86.15 (2.0 MiB, 2.0 MiB of them freed by removal); 2.0 "
        f"MiB, 2.0 MiB of them freed by removal in all (current {daemon.host.version})")
    assert stale["fix"] == "nvidia-docker-plugin gc removes those no container mounts"
    assert rc == 0


def test_rest_port_closed(daemon):
    port = free_port()
    rc, checks = doctor_for(daemon, listen=f"127.0.0.1:{port}")
    assert rc == 1
    assert checks["rest-api"]["status"] == "FAIL"
    assert f"127.0.0.1:{port}" in checks["rest-api"]["detail"]


def test_rest_api_disabled_is_skipped(daemon):
    rc, checks = doctor_for(daemon, listen="")
    assert checks["rest-api"]["status"] == "SKIP"
    assert rc == 0


def test_an_unhealthy_gpu_is_a_warning_with_its_reason(daemon):
    """The daemon watches NVML's events; doctor reports what it saw, from gpu/status/json."""
    events = daemon.host.nvml_config.with_name("doctor-events.jsonl")
    config = json.loads(daemon.host.nvml_config.read_text())
    write_config(daemon.host.nvml_config, {**config, "events_file": str(events)})

    def unhealthy() -> bool:
        append_event(events, {"gpu": 0, "type": "xid", "data": 79})  # until the set has it
        with urllib.request.urlopen(daemon.url + "/v1.0/gpu/status/json", timeout=10) as answer:
            return json.loads(answer.read())["Devices"][0]["Health"]["Status"] == "unhealthy"

    assert wait_for(unhealthy, timeout=30)
    rc, checks = doctor_for(daemon)
    health = checks["gpu-health"]
    # The daemon's CDI spec leaves the GPU out of `all`; cdi-spec knows and still passes.
    others = {k: v for k, v in checks.items() if v["status"] != "PASS" and k != "gpu-health"}
    assert others == {}, json.dumps(others, indent=1)
    assert health["status"] == "WARN" and rc == 0
    assert health["detail"].startswith("GPU 0 unhealthy since ")
    assert health["detail"].endswith(": Xid 79: GPU has fallen off the bus")
    assert "nvidia-smi -r" in health["fix"]


def test_gpu_health_needs_the_rest_api(daemon):
    rc, checks = doctor_for(daemon, listen="")
    assert checks["gpu-health"]["status"] == "SKIP" and rc == 0


def test_the_daemons_cdi_spec_passes(daemon):
    _rc, checks = doctor_for(daemon)
    assert checks["cdi-spec"]["status"] == "PASS", checks["cdi-spec"]
    assert f"{daemon.cdi_path} matches the driver and GPUs now: 3 devices" in \
        checks["cdi-spec"]["detail"]
    assert checks["cdi-conflicts"]["status"] == "PASS", checks["cdi-conflicts"]


def test_a_stale_cdi_spec_fails(daemon):
    body = json.loads(daemon.cdi_path.read_text())
    body["devices"] = [d for d in body["devices"] if d["name"] != "0"]
    daemon.cdi_path.write_text(json.dumps(body))
    rc, checks = doctor_for(daemon)
    spec = checks["cdi-spec"]
    assert rc == 1 and spec["status"] == "FAIL"
    assert f"{daemon.cdi_path} is stale, the driver now gives: devices added: 0" in spec["detail"]
    assert "systemctl reload nvidia-docker" in spec["fix"]


def test_a_missing_cdi_spec_fails_and_a_disabled_one_is_skipped(daemon, tmp_path):
    rc, checks = doctor_for(daemon, cdi_dir=tmp_path / "empty-cdi")
    assert rc == 1 and checks["cdi-spec"]["status"] == "FAIL"
    assert "the daemon is not running, or cannot write there" in checks["cdi-spec"]["detail"]
    rc, checks = doctor_for(daemon, cdi_dir="")
    assert checks["cdi-spec"]["status"] == "SKIP"
    assert rc == 0


def test_another_spec_claiming_the_kind_is_a_conflict(daemon):
    other = daemon.cdi_path.parent / "nvidia.yaml"
    other.write_text("---\ncdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: \"0\"\n")
    (daemon.cdi_path.parent / "fpga.json").write_text('{"kind": "example.com/fpga"}')
    rc, checks = doctor_for(daemon)
    conflicts = checks["cdi-conflicts"]
    assert rc == 1 and conflicts["status"] == "FAIL"
    assert f"{other} also claim nvidia.com/gpu as {daemon.cdi_path} does" in conflicts["detail"]
    assert "fpga" not in conflicts["detail"]
    assert "nvidia-cdi-refresh.path" in conflicts["fix"]
    rc, checks = doctor_for(daemon, extra=("--cdi-kind", "example.com/gpu"))
    assert checks["cdi-conflicts"]["status"] == "PASS"
