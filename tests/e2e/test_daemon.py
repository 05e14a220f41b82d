"""The daemon as users run it: start-up, a host without a driver, signals, conflicts, upgrades."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nvplugin import __version__
from tests.dockerenv import PluginDaemon, free_port, wait_for
from tests.fakehost.build import write_ld_cache
from tests.requirements import need_root
from tests.unixhttp import unix_post

REPO = Path(__file__).resolve().parents[2]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvplugin", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def test_version_uses_1_0_wording():
    result = run_cli("-v")
    assert result.returncode == 0
    assert result.stdout.strip() == f"NVIDIA Docker plugin: {__version__}"


def test_help_lists_every_flag_with_its_environment_variable():
    out = run_cli("--help").stdout
    for flag, env in (("--listen", "NVP_LISTEN"), ("--socket-dir", "NVP_SOCKET_DIR"),
                      ("--volumes-dir", "NVP_VOLUMES_DIR"), ("--driver-root", "NVP_DRIVER_ROOT"),
                      ("--dev-root", "NVP_DEV_ROOT"), ("--log-level", "NVP_LOG_LEVEL")):
        assert flag in out and env in out


@pytest.mark.parametrize(("args", "message"), [
    (("-l", "nowhere"), "invalid listen address 'nowhere'"),
    (("--log-level", "loud"), "invalid log level 'loud'"),
], ids=["listen", "log-level"])
def test_bad_flags_are_named(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_host_without_a_driver_starts_and_answers_503(plugin_daemon_factory, tmp_path):
    empty_root = tmp_path / "no-driver"
    empty_root.mkdir()
    daemon: PluginDaemon = plugin_daemon_factory(
        driver_root=empty_root, dev_root=empty_root, volumes_dir=tmp_path / "volumes", env={})
    daemon.start()
    for route in ("/v1.0/gpu/info", "/v1.0/gpu/status/json", "/v1.0/docker/cli", "/gpu/info/json"):
        status, body = http_get(daemon.url + route)
        assert status == 503, route
        assert body.strip() and "Traceback" not in body and len(body.strip().splitlines()) == 1
    # Logged by start-up's background half, before the first GPU request is answered.
    log = daemon.log()
    assert "NVIDIA driver not found: " in log and "GPU endpoints will answer 503" in log
    # One line says it; nothing else warns about the same missing driver.
    assert [line for line in log.splitlines() if "WARN" in line or "unavailable" in line] == []
    reply = unix_post(daemon.socket_path, "/Plugin.Activate")
    assert reply is not None and b'"VolumeDriver"' in reply
    created = _plugin_call(daemon.socket_path, "/VolumeDriver.Create",
                           {"Name": "nvidia_driver_580.159.04"})
    assert created["Err"] and "internal error" not in created["Err"]
    assert daemon.stop() == 0


def test_sigterm_removes_the_socket_and_says_so(running_plugin):
    daemon = running_plugin()
    assert daemon.socket_path.exists()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not daemon.socket_path.exists()
    assert daemon.log().rstrip().endswith("Successfully terminated")


def test_sigint_also_terminates_cleanly(running_plugin):
    daemon = running_plugin()
    assert daemon.stop(signal.SIGINT) == 0
    assert not daemon.socket_path.exists()


def test_start_up_lines_come_in_1_0_order(running_plugin):
    daemon = running_plugin(n_gpus=2)
    lines = [line.split(" ", 4)[-1] for line in daemon.log().splitlines()]
    order = ["Loading NVIDIA unified memory", "Loading NVIDIA management library",
             "Discovering GPU devices",
             f"Provisioning volumes at {daemon.volumes_dir}",
             f"Serving plugin API at {daemon.socket_dir}",
             f"Serving remote API at 127.0.0.1:{daemon.port}"]
    positions = [next(i for i, line in enumerate(lines) if line.startswith(want))
                 for want in order]
    assert positions == sorted(positions)


def test_second_daemon_on_the_same_socket_is_refused(running_plugin, plugin_daemon_factory,
                                                      tmp_path):
    first = running_plugin()
    second = plugin_daemon_factory(driver_root=first.driver_root, dev_root=first.dev_root,
                                   volumes_dir=tmp_path / "other", env=dict(first.env))
    with pytest.raises(RuntimeError, match="exited 1"):
        second.start()
    assert "nvidia-docker.sock" in second.log() and "Traceback" not in second.log()
    assert first.ready()  # the first one is untouched


def test_taken_port_is_a_clear_start_up_error(running_plugin, plugin_daemon_factory, tmp_path):
    need_root()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        root = tmp_path / "empty"
        root.mkdir()
        daemon = plugin_daemon_factory(driver_root=root, dev_root=root,
                                       volumes_dir=tmp_path / "v", env={}, port=port)
        with pytest.raises(RuntimeError, match="exited 1"):
            daemon.start()
    assert f"cannot serve the remote API at 127.0.0.1:{port}" in daemon.log()
    assert not daemon.socket_path.exists()  # the plugin socket is not left behind
    # Nor was it ever published: readiness (an answering socket) was once announced for a
    # daemon about to exit, and start() raced the port's failure.
    assert "Serving plugin API" not in daemon.log()


def test_empty_listen_address_disables_the_rest_api(plugin_daemon_factory, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    port = free_port()
    daemon = plugin_daemon_factory(driver_root=root, dev_root=root, volumes_dir=tmp_path / "v",
                                   env={}, port=port)
    argv = daemon.argv()
    argv[argv.index("-l") + 1] = ""
    log = open(tmp_path / "log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=REPO)
    try:
        assert wait_for(lambda: unix_post(daemon.socket_path, "/Plugin.Activate") is not None)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert "Remote API disabled" in (tmp_path / "log").read_text()


def test_sighup_rediscovers_and_logs_the_result(running_plugin):
    daemon = running_plugin()
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "Driver unchanged (version" in daemon.log())
    assert daemon.ready()


def test_gpu_info_has_1_0_memory_sizes_from_the_drivers_libcuda(running_plugin):
    daemon = running_plugin(n_gpus=2)
    page = http_get(daemon.url + "/v1.0/gpu/info")[1]
    # The fake host's libcuda.so.<version>, found through its ld.so.cache, answers the H200's.
    assert page.count("    Constant:   64 KiB\n    Shared:     228 KiB\n"
                      "    L2 Cache:   61440 KiB\n") == 2
    assert "Read CUDA memory sizes of 2 GPU(s) from " in daemon.log()
    assert daemon.proc is not None
    maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
    assert "libcuda" not in maps and "libnvidia-ml" in maps  # cuInit ran in the child only


def test_fifos_where_driver_files_belong_neither_block_nor_kill_the_daemon(
        gpu_host_factory, plugin_daemon_factory, tmp_path):
    """A FIFO at etc/ld.so.cache or the kernel module's version file blocked start-up forever
    (no socket, no error), and SIGTERM then left the process alive."""
    host = gpu_host_factory()
    for inner in ("etc/ld.so.cache", "proc/driver/nvidia/version"):
        (host.root / inner).unlink()
        os.mkfifo(host.root / inner)
    daemon = plugin_daemon_factory(driver_root=host.root, dev_root=host.root,
                                   volumes_dir=tmp_path / "volumes", env=host.env())
    try:
        daemon.start(timeout=30)
        log = daemon.log()
        assert f"{host.root}/etc/ld.so.cache is a FIFO, not a regular file" in log
        assert ("Ignoring the kernel module's version file: "
                f"{host.root}/proc/driver/nvidia/version is a FIFO, not a regular file") in log
        # Still serving: the libraries were found by scanning the usual directories.
        assert http_get(daemon.url + "/v1.0/docker/cli")[0] == 200
    finally:
        for inner in ("etc/ld.so.cache", "proc/driver/nvidia/version"):
            with contextlib.suppress(OSError):  # release anything still blocked on them
                os.close(os.open(host.root / inner, os.O_WRONLY | os.O_NONBLOCK))
    assert daemon.stop(timeout=20) == 0
    assert daemon.log().rstrip().endswith("Successfully terminated")


def test_driver_upgrade_is_seen_without_a_restart(running_plugin, fake_host_factory, make_image,
                                                  docker_engine):
    """A package-manager upgrade and a module reload: new files, the old ones deleted, ldconfig,
    a new kernel module version. NVML must come from the new library (1.0's most reported
    failure was `nvidia_driver_<old>` missing after one), while a container keeps the old
    volume until it stops."""
    daemon = running_plugin()
    host = daemon.host
    assert host is not None and daemon.proc is not None
    root, old, new = daemon.driver_root, host.version, "590.10.01"
    # The fake NVML reports the version of the library file it was loaded from, as NVIDIA's
    # does: no override in its config.
    config = json.loads(host.nvml_config.read_text())
    del config["driver_version"]
    host.nvml_config.write_text(json.dumps(config))
    assert f"Driver version:          {old}\n" in http_get(daemon.url + "/v1.0/gpu/info")[1]
    holder = docker_engine.client.containers.run(
        make_image(), ["sleep", "600"], detach=True, network_mode="none",
        volume_driver="nvidia-docker", volumes={f"nvidia_driver_{old}": {
            "bind": "/usr/local/nvidia", "mode": "ro"}})
    try:
        fake_host_factory(root=root, version=new)  # new files, links, ldconfig, module version
        for path in sorted(root.rglob(f"*{old}*"), key=lambda p: -len(p.parts)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        write_ld_cache(root, (root / "etc/ld.so.conf").read_text().split())  # ldconfig again
        # The new libcuda answers other sizes: it must be asked again.
        config["gpus"][0]["cuda_attributes"]["l2_cache_size"] = 40 << 20
        host.nvml_config.write_text(json.dumps(config))

        # The new driver's volume is built in the background, before anyone asks for it.
        assert wait_for(lambda: f"Built volume nvidia_driver_{new} from" in daemon.log(),
                        timeout=30), daemon.log()[-3000:]
        answer = _plugin_call(daemon.socket_path, "/VolumeDriver.Get",
                              {"Name": f"nvidia_driver_{new}"})
        assert new in answer["Volume"]["Mountpoint"]
        log = daemon.log()
        built = [line for line in log.splitlines() if "Built volume" in line]
        assert [line.endswith("in the background") for line in built] == [True, True]
        assert f"NVIDIA driver changed from {old} to {new}" in log
        assert "Driver volume unavailable" not in log
        info = http_get(daemon.url + "/v1.0/gpu/info")[1]
        assert f"Driver version:          {new}\n" in info  # what NVML reports now
        assert "    L2 Cache:   40960 KiB\n" in info
        assert log.count("Read CUDA memory sizes of 1 GPU(s) from ") == 2
        cli = http_get(daemon.url + "/v1.0/docker/cli")[1]
        assert f"nvidia_driver_{new}:" in cli and old not in cli
        maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
        assert f"libnvidia-ml.so.{new}" in maps and f"libnvidia-ml.so.{old}" not in maps
        # The running container keeps the old driver's files, and its volume stays while held.
        listing = holder.exec_run(["ls", "/usr/local/nvidia/lib64"]).output.decode().split()
        assert f"libcuda.so.{old}" in listing and f"libcuda.so.{new}" not in listing
        removed = _plugin_call(daemon.socket_path, "/VolumeDriver.Remove",
                               {"Name": f"nvidia_driver_{old}"})
        assert removed["Err"] == f"volume nvidia_driver_{old} is in use by 1 container(s)"
    finally:
        holder.remove(force=True)


def _plugin_call(path: Path, route: str, body: dict) -> dict:
    payload = json.dumps(body).encode()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(f"POST {route} HTTP/1.0\r\nAccept: application/vnd.docker.plugins.v1.2+json"
                     f"\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1] or b"{}")


def test_refused_second_daemon_leaves_the_first_ones_spec_file(plugin_daemon_factory, tmp_path):
    """Same port, another socket dir: the second one fails on the port before it writes the spec
    file that would point Docker away from the first."""
    root = tmp_path / "empty"
    root.mkdir()
    spec = Path("/etc/docker/plugins/nvidia-docker.spec")
    first = plugin_daemon_factory(driver_root=root, dev_root=root, volumes_dir=tmp_path / "v1",
                                  env={}, socket_dir=tmp_path / "s1")
    first.start()
    # Written last, once both listeners are up: a moment after the port first answers.
    assert wait_for(lambda: spec.exists() and spec.read_text() == f"unix://{first.socket_path}\n")
    second = plugin_daemon_factory(driver_root=root, dev_root=root, volumes_dir=tmp_path / "v2",
                                   env={}, socket_dir=tmp_path / "s2", port=first.port)
    with pytest.raises(RuntimeError, match="exited 1"):
        second.start()
    assert spec.read_text() == f"unix://{first.socket_path}\n"
    assert first.ready()
    assert first.stop() == 0
    assert not spec.exists()


def test_second_daemon_on_the_same_volumes_dir_touches_nothing(running_plugin,
                                                               plugin_daemon_factory, tmp_path):
    first = running_plugin()
    build_in_progress = first.volumes_dir / "nvidia_driver" / ".580.159.04.tmp-deadbeef"
    build_in_progress.mkdir()
    second = plugin_daemon_factory(driver_root=first.driver_root, dev_root=first.dev_root,
                                   volumes_dir=first.volumes_dir, env=dict(first.env),
                                   socket_dir=tmp_path / "other-socket")
    with pytest.raises(RuntimeError, match="exited 1"):
        second.start()
    assert f"another nvidia-docker-plugin is using the volumes directory {first.volumes_dir}" \
        in second.log()
    assert build_in_progress.is_dir()
    assert first.ready()


@pytest.mark.parametrize("keep", [False, True], ids=["removed", "kept"])
def test_old_volumes_found_at_start_go_unless_kept(running_plugin, tmp_path, keep):
    volumes = tmp_path / "volumes"
    old = volumes / "nvidia_driver" / "570.86.15"
    (old / "lib64").mkdir(parents=True)
    (old / "lib64/libcuda.so.570.86.15").write_bytes(b"\0" * 4096)
    daemon = running_plugin(volumes_dir=volumes,
                            extra_args=("--keep-old-volumes",) if keep else ())
    removed = [line for line in daemon.log().splitlines() if "Removed volume" in line]
    if keep:
        assert removed == [] and old.is_dir()
    else:
        assert len(removed) == 1 and not old.exists()
        assert removed[0].endswith(
            "Removed volume nvidia_driver_570.86.15 of driver 570.86.15 (now 580.159.04), "
            "mounted by no container: 0.0 MiB, 0.0 MiB of them freed by removal")
