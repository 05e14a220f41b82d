"""The systemd service for real: `./scripts/install-and-run` on a fresh Debian 12 host whose PID 1
is systemd (a container: tests/packaging/systemd_host.py), checked as a user would check it.

One container serves every test of this module, in order: the fresh install (the unit active,
its directories, 1.0's start-up lines in the journal, `systemd-analyze security`), the socket
and the REST API, a volume built from a fake driver host under the unit's hardening (copied,
owners and modes kept; set-id files; the device policy NVML meets), `systemctl reload`, a
`kill -9` that Restart=on-failure repairs, `systemctl stop`, the unprivileged-user drop-in, and
`./scripts/uninstall` (then `--purge`). A second, systemd-less container checks that uninstall
stops the background daemon install-and-run starts there.

Nothing inside reaches a network (`--net=none`): install-and-run installs from wheels fetched on
this machine (PIP_NO_INDEX/PIP_FIND_LINKS, which pip reads itself). The image (debootstrap, ~1
min the first time) and the wheels are cached in /var/cache/nvplugin-ci.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.packaging import image
from tests.packaging.systemd_host import UNIT, CommandFailed, SystemdHost
from tests.requirements import need, need_root

pytestmark = [pytest.mark.docker, pytest.mark.root]

SRC = "/src/nvplugin"  # the clean checkout inside the container
FAKE_ROOT = "/fakehost"
SOCKET = "/run/docker/plugins/nvidia-docker.sock"
USER_SOCKET = "/run/docker/plugins/nvidia-docker/nvidia-docker.sock"
VOLUMES = "/var/lib/nvidia-docker/volumes"
MAX_EXPOSURE = 2.6  # systemd-analyze security, as rated before this test existed
# 1.0's log line: `<program> | YYYY/MM/DD HH:MM:SS <message>` (journald adds its own prefix).
LINE_1_0 = re.compile(r"^nvidia-docker-plugin \| \d{4}/\d\d/\d\d \d\d:\d\d:\d\d (.*)$")
# The nodes of a 2-GPU host, made with NVIDIA's real majors (238: our fake hosts' uvm major).
NODES = (("nvidiactl", 195, 255), ("nvidia0", 195, 0), ("nvidia1", 195, 1),
         ("nvidia-uvm", 238, 0), ("nvidia-uvm-tools", 238, 1))
# Opens each node read-write, as NVML opens /dev/nvidiactl and /dev/nvidia<N>, and says how the
# kernel answered: EPERM is the device cgroup saying no; ENXIO means the open got past it to a
# major with no driver behind it (this host has none).
DEVICE_PROBE = """#!/usr/bin/python3
import errno, os, sys
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        answer = "opened"
    except OSError as err:
        answer = errno.errorcode.get(err.errno, str(err.errno))
    print(f"device-probe {path}: {answer}", flush=True)
"""
PROBE_PATH = "/usr/local/libexec/nvp-device-probe"


@dataclass
class PluginHost(SystemdHost):
    """The container after install-and-run, with what the tests compare against."""

    version: str = ""  # the fake driver's
    expected_dests: tuple[str, ...] = ()  # files discovery must put in its volume
    before_install: str = ""  # which of our paths existed before install-and-run
    install_output: str = ""


def daemon_messages(lines: list[str]) -> list[str]:
    """The daemon's own messages among journal lines (`-o cat`), without 1.0's prefix."""
    return [m.group(1) for line in lines if (m := LINE_1_0.match(line))]


def in_order(lines: list[str], wanted: list[str]) -> bool:
    """Whether each of `wanted` starts some line, in this order."""
    rest = iter(lines)
    return all(any(line.startswith(w) for line in rest) for w in wanted)


def plugin(host: SystemdHost, route: str, body: dict[str, str] | None = None,
           socket: str = SOCKET) -> dict[str, object]:
    """A Docker volume-plugin call through the socket, as Docker makes it."""
    out = host.sh(f"curl -sS --max-time 60 --unix-socket {socket} -X POST "
                  f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body or {}))}"
                  f" http://localhost{route}", timeout=90).stdout
    return json.loads(out)


def rest(host: SystemdHost, path: str) -> tuple[int, str]:
    out = host.sh(f"curl -sS --max-time 30 -w '\\n%{{http_code}}' http://localhost:3476{path}"
                  ).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


def stat(host: SystemdHost, path: str) -> str:
    """`mode owner:group type` of a path, e.g. `660 root:docker socket`."""
    return host.sh(f"stat -c '%a %U:%G %F' {path}").stdout.strip()


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def systemd_image(docker_engine) -> str:
    need_root()
    debootstrap = shutil.which("debootstrap") or shutil.which("/usr/sbin/debootstrap")
    need(image.image_exists(image.SYSTEMD_TAG) or debootstrap is not None
         or image.rootfs_tar_path(image.SYSTEMD_PACKAGES).exists(),
         "debootstrap (apt-get install debootstrap) to make the systemd image")
    return image.ensure_systemd_image(debootstrap)


@pytest.fixture(scope="module")
def offline_wheels(systemd_image, tmp_path_factory) -> Path:
    wheels = tmp_path_factory.mktemp("wheels")
    image.download_install_wheels(wheels, image.python_of(systemd_image))
    return wheels


@pytest.fixture(scope="module")
def fake_driver(fakehost_cache, tmp_path_factory):
    """A 2-GPU fake driver host (real ELF files, ld.so.cache, the fake NVML and its config)."""
    from tests.fakehost.build import build_fake_host
    from tests.fakenvml.build import gpu, make_config, write_config

    root = tmp_path_factory.mktemp("fakehost")
    host = build_fake_host(root, objects=fakehost_cache)
    write_config(root / "fakenvml.json", make_config(
        gpus=[gpu(0, minor=0), gpu(1, minor=1)], driver_version=host.version))
    return host


def install_and_run(host: SystemdHost) -> str:
    return host.sh("./scripts/install-and-run", workdir=SRC, timeout=300,
                   env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels"}).stdout


@pytest.fixture(scope="module")
def host(docker_engine, systemd_image, offline_wheels, fake_driver) -> Iterator[PluginHost]:
    """The container, with the checkout, the fake driver host and its device nodes, after
    `./scripts/install-and-run`."""
    host = PluginHost.start(docker_engine.client, systemd_image, f"nvplugin-systemd-{os.getpid()}",
                            {str(offline_wheels): {"bind": "/wheels", "mode": "ro"}})
    try:
        host.put(SRC, image.checkout_tar())
        host.put_tree(fake_driver.root, FAKE_ROOT)
        firmware = f"{FAKE_ROOT}/lib/firmware/nvidia/{fake_driver.version}/gsp_ga10x.bin"
        host.sh(
            # A driver file that root does not own: a copy must keep its owner (CAP_CHOWN) and
            # then its mode and times (CAP_FOWNER). The NVML config is readable by any user.
            f"chown 1000:1000 {firmware} && chmod 0644 {FAKE_ROOT}/fakenvml.json && "
            + " && ".join(f"mknod -m 0666 /dev/{n} c {major} {minor}"
                          for n, major, minor in NODES))
        host.write(PROBE_PATH, DEVICE_PROBE)
        host.sh(f"chmod 0755 {PROBE_PATH}")
        host.before_install = host.sh(
            "for p in /var/lib/nvidia-docker /run/docker /run/cdi /etc/systemd/system/"
            f"{UNIT}; do [ -e $p ] && echo $p; done; getent group docker; true").stdout
        host.version = fake_driver.version
        host.expected_dests = tuple(sorted(fake_driver.expected_dests))
        try:
            host.install_output = install_and_run(host)
        except CommandFailed:
            print(f"--- {UNIT} after install-and-run failed ---\n{host.diagnostics()}")
            raise
        yield host
    finally:
        host.remove()


@pytest.fixture(autouse=True)
def _journal_on_failure(request) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    used = request.node.funcargs.get("host")
    if report is not None and report.failed and isinstance(used, SystemdHost):
        print(f"--- {UNIT} after the failure ---\n{used.diagnostics()}")
        print("--- the test's last commands ---\n" + "\n".join(used.log[-8:]))


FAKE_DRIVER_DROP_IN = f"""[Service]
Environment=NVP_DRIVER_ROOT={FAKE_ROOT} NVP_DEV_ROOT=/ FAKE_NVML_CONFIG={FAKE_ROOT}/fakenvml.json
Environment=NVP_LOG_LEVEL=debug
"""


def serving(host: SystemdHost, cursor: str | None) -> list[str]:
    """The journal after `cursor` up to the line that says what NVML found: the daemon serves
    first (1.0's start-up lines end with 'Serving remote API') and then says it (the socket
    exists, and so the unit is active, a little before all that)."""
    return host.wait_journal(
        cursor, lambda line: " GPU(s), driver " in line or "GPU endpoints will answer 503" in line,
        "'Found N GPU(s)' or 'NVIDIA driver not found'")


def restart_serving(host: SystemdHost) -> list[str]:
    return serving(host, host.restart())


def use_fake_driver(host: SystemdHost) -> list[str]:
    """Point the service at the fake driver host (a drop-in, as an admin would) and restart it;
    the journal of that start."""
    host.drop_in("fakehost", FAKE_DRIVER_DROP_IN)
    return restart_serving(host)


def ensure_volume(host: PluginHost) -> str:
    """Create and mount nvidia_driver_<version> through the plugin socket; its mountpoint."""
    name = f"nvidia_driver_{host.version}"
    answer = plugin(host, "/VolumeDriver.Create", {"Name": name})
    assert answer.get("Err") in (None, ""), answer
    answer = plugin(host, "/VolumeDriver.Mount", {"Name": name, "ID": "systemd-real"})
    assert answer.get("Err") in (None, ""), answer
    return str(answer["Mountpoint"])


# --- the tests, in the order a user meets these things -----------------------------------------


def test_install_and_run_starts_the_service_on_a_fresh_host(host):
    # A fresh host: neither Docker's nor our directories, no unit, no docker group.
    assert host.before_install.strip() == "", host.before_install
    assert "Installed NVIDIA Docker plugin: " in host.install_output
    assert "Active: active (running)" in host.install_output, host.install_output
    assert host.prop("ActiveState") == "active"
    assert host.prop("UnitFileState") == "enabled"
    # Enabled for both: starting Docker pulls the plugin in first.
    host.sh(f"test -L /etc/systemd/system/multi-user.target.wants/{UNIT} && "
            f"test -L /etc/systemd/system/docker.service.wants/{UNIT}")
    # StateDirectory= made ours; Docker's /run/docker/plugins with Docker's own mode (0700);
    # /run/cdi, shared by CDI spec producers, readable by all.
    assert stat(host, "/var/lib/nvidia-docker") == "755 root:root directory"
    assert stat(host, VOLUMES) == "755 root:root directory"
    assert stat(host, "/run/docker") == "700 root:root directory"
    assert stat(host, "/run/docker/plugins") == "700 root:root directory"
    assert stat(host, "/run/cdi") == "755 root:root directory"
    # In the daemon's namespace: all read-only but the directories it writes (the CDI spec's
    # too, for the feature that will write it).
    mountinfo = host.sh(f"cat /proc/{host.prop('MainPID')}/mountinfo").stdout
    options = {f[4]: f[5].split(",")[0] for f in (line.split() for line in mountinfo.splitlines())}
    assert options["/"] == "ro", mountinfo
    for writable in ("/var/lib/nvidia-docker", "/run/docker/plugins", "/run/cdi"):
        assert options.get(writable) == "rw", (writable, mountinfo)

    lines = serving(host, None)
    print("\n".join(lines))
    messages = daemon_messages(lines)
    # 1.0's start-up lines in 1.0's order; this host has no NVIDIA driver, which is one line,
    # once the daemon serves (NVML loads while it starts to).
    assert in_order(messages, [
        "Loading NVIDIA unified memory", "Loading NVIDIA management library",
        "Discovering GPU devices", "Provisioning volumes at /var/lib/nvidia-docker/volumes",
        "Serving plugin API at /run/docker/plugins", "Serving remote API at localhost:3476",
        "NVIDIA driver not found: ",
    ]), messages
    assert any(m.endswith("; GPU endpoints will answer 503") for m in messages), messages
    everything = host.journal()
    assert any(line.startswith("Started nvidia-docker.service") for line in everything)
    assert not [m for m in messages if m.startswith("Error")], messages


def test_security_exposure_stays_low(host):
    # The unit as installed, rated by the systemd that runs it (the drop-ins of later tests
    # are not there yet).
    assert host.prop("DropInPaths") == ""
    out = host.sh(f"systemd-analyze security --no-pager {UNIT}").stdout
    print(out)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert match, out
    assert float(match.group(1)) <= MAX_EXPOSURE


def test_socket_and_rest_api_answer_and_the_socket_group(host):
    assert plugin(host, "/Plugin.Activate") == {"Implements": ["VolumeDriver"]}
    # No driver on this host: GPU routes answer 503 and say why.
    code, body = rest(host, "/v1.0/gpu/info")
    assert code == 503, body
    assert body.startswith("NVML could not be loaded"), body
    # No docker group on a fresh host (Docker is not installed yet): the socket stays root's.
    # The daemon says nothing about it today (the group lookup's KeyError is suppressed).
    assert stat(host, SOCKET) == "660 root:root socket"
    host.sh("groupadd --system docker")
    restart_serving(host)
    # With the group, root hands the socket to it (CAP_CHOWN: root is not in group docker).
    assert stat(host, SOCKET) == "660 root:docker socket"
    assert plugin(host, "/Plugin.Activate") == {"Implements": ["VolumeDriver"]}


def test_a_volume_builds_from_the_fake_driver_under_the_hardening(host):
    version = host.version
    # From before the restart: the daemon prebuilds the volume right after it starts, and that
    # first build is the one that meets the cross-device link (the copier remembers it).
    cursor = host.cursor()
    started = daemon_messages(use_fake_driver(host))
    assert f"Found 2 GPU(s), driver {version}" in started, started
    plugin(host, "/VolumeDriver.Remove", {"Name": f"nvidia_driver_{version}"})
    mountpoint = ensure_volume(host)
    assert mountpoint == f"{VOLUMES}/nvidia_driver/{version}"

    # Every file discovery must select is there.
    listing = host.sh(f"cd {mountpoint} && find . ! -type d -printf '%P\\t%y\\t%n\\t%U:%G\\t%m\\n'"
                      ).stdout
    entries = {path: rest for path, _, rest in
               (line.partition("\t") for line in listing.splitlines())}
    missing = [d for d in host.expected_dests if d not in entries]
    assert not missing, f"missing from the volume: {missing}\n{listing}"
    # Copies, never hard links: under ProtectSystem=strict the volumes directory is a mount of
    # its own in the daemon's namespace, and link() across mounts fails with EXDEV.
    files = {p: r.split("\t") for p, r in entries.items() if r.startswith("f")}
    assert all(nlink == "1" for _, nlink, _, _ in files.values()), listing
    ino = host.sh(f"stat -c %i {FAKE_ROOT}/usr/bin/nvidia-smi {mountpoint}/bin/nvidia-smi"
                  ).stdout.split()
    assert ino[0] != ino[1]
    pid = host.prop("MainPID")
    assert host.sh(f"awk '$5 == \"/var/lib/nvidia-docker\"' /proc/{pid}/mountinfo").stdout, \
        "the volumes directory is not a mount point in the daemon's namespace"
    messages = daemon_messages(host.journal(cursor))
    assert any("link failed (Invalid cross-device link)" in m for m in messages), messages
    assert any(m.startswith(f"Built volume nvidia_driver_{version} from ") for m in messages)
    # Owners and modes kept: root's binaries, and a file of uid 1000 (CAP_CHOWN + CAP_FOWNER).
    assert files["bin/nvidia-smi"][1:] == ["1", "0:0", "755"]
    firmware = f"firmware/nvidia/{version}/gsp_ga10x.bin"
    assert files[firmware][1:] == ["1", "1000:1000", "644"]
    # The copy works: the fake nvidia-smi runs from the volume.
    assert host.sh(f"{mountpoint}/bin/nvidia-smi").stdout.strip() == \
        f"nvidia-smi (fake NVIDIA driver {version})"

    code, body = rest(host, "/v1.0/gpu/info")
    assert code == 200 and "Device #1" in body, body
    code, cli = rest(host, "/v1.0/docker/cli")
    assert code == 200, cli
    assert f"--volume=nvidia_driver_{version}:/usr/local/nvidia:ro" in cli
    assert "--device=/dev/nvidiactl" in cli and "--device=/dev/nvidia1" in cli


def test_a_set_id_driver_file_is_copied_without_its_set_id_bit(host):
    """RestrictSUIDSGID=yes makes the kernel refuse any chmod that sets S_ISUID/S_ISGID. The
    volume must still build, and must not hand containers a setuid binary."""
    use_fake_driver(host)
    version, name = host.version, f"nvidia_driver_{host.version}"
    source = f"{FAKE_ROOT}/usr/bin/nvidia-persistenced"
    plugin(host, "/VolumeDriver.Unmount", {"Name": name, "ID": "systemd-real"})
    assert plugin(host, "/VolumeDriver.Remove", {"Name": name}).get("Err") in (None, "")
    host.sh(f"chmod 4755 {source}")
    try:
        answer = plugin(host, "/VolumeDriver.Create", {"Name": name})
        assert answer.get("Err") in (None, ""), answer
        mode = host.sh(f"stat -c %a {VOLUMES}/nvidia_driver/{version}/bin/nvidia-persistenced"
                       ).stdout.strip()
        assert mode == "755"
    finally:
        host.sh(f"chmod 0755 {source}")
        ensure_volume(host)


def test_nvml_reaches_only_the_devices_device_allow_grants(host):
    """DevicePolicy=closed + DeviceAllow=char-nvidia* rw: systemd resolves the pattern through
    /proc/devices when the unit starts. A host with the driver loaded lists `195 nvidia`,
    `195 nvidiactl`, `238 nvidia-uvm`, `241 nvidia-caps`, ... (our H200 does); this container's
    kernel has no NVIDIA driver, so the pattern grants nothing and the nodes made with the real
    major 195 are refused. Allowing them by path, as the pattern does on a GPU host, lets them
    through. The probe runs as an ExecStartPost= of the unit: same cgroup, namespaces, seccomp
    filter and capabilities as the daemon."""
    use_fake_driver(host)
    registered = host.sh("cat /proc/devices").stdout
    nvidia_majors = {int(m) for m, name in re.findall(r"^\s*(\d+) (\S+)$", registered, re.M)
                     if name.startswith("nvidia")}
    print(f"nvidia* groups in /proc/devices: {sorted(nvidia_majors) or 'none'}")
    nodes = ["/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia1"]
    probe = f"[Service]\nExecStartPost=-{PROBE_PATH} {' '.join(nodes)} /dev/null\n"

    def probe_answers() -> dict[str, str]:
        host.drop_in("probe", probe)
        cursor = host.restart()
        lines = host.wait_journal(cursor, lambda line: line.startswith("device-probe /dev/null"),
                                  "from the device probe")
        return dict(re.findall(r"^device-probe (\S+): (\S+)$", "\n".join(lines), re.M))

    def reached(answers: dict[str, str]) -> dict[str, bool]:
        # Anything but EPERM got past the device cgroup: ENXIO here (no driver behind major
        # 195), "opened" on a host whose driver has these GPUs.
        return {node: answers[node] != "EPERM" for node in nodes}

    try:
        answers = probe_answers()
        assert answers["/dev/null"] == "opened", answers  # the pseudo devices stay allowed
        granted = 195 in nvidia_majors
        assert reached(answers) == dict.fromkeys(nodes, granted), (
            f"{answers}: DevicePolicy= is not enforced here as on a real host")
        host.drop_in("allow", "[Service]\n" + "".join(f"DeviceAllow={n} rw\n" for n in nodes))
        answers = probe_answers()
        assert reached(answers) == dict.fromkeys(nodes, True), answers
    finally:
        host.drop_in("probe", None)
        host.drop_in("allow", None)
        host.restart()


def test_reload_rediscovers_the_driver_once(host):
    use_fake_driver(host)
    pid = host.prop("MainPID")
    cursor = host.cursor()
    host.sh(f"systemctl reload {UNIT}")
    outcome = ("Driver unchanged", "Driver files changed", "NVIDIA driver changed")
    host.wait_journal(cursor, lambda line: any(o in line for o in outcome),
                      "with the re-discovery's outcome")
    # A later request fences the log: everything the reload caused came before it.
    plugin(host, "/Plugin.Activate")
    lines = host.wait_journal(cursor, lambda line: "Received activate request" in line,
                              "'Received activate request'")
    messages = daemon_messages(lines)
    print("\n".join(lines))
    assert messages.count("Discovering NVIDIA driver again: SIGHUP") == 1, messages
    assert [m for m in messages if m.startswith(outcome)] == \
        [f"Driver unchanged (version {host.version})"], messages
    assert host.prop("MainPID") == pid  # reloaded, not restarted


def test_a_killed_daemon_is_restarted(host):
    pid, restarts = host.prop("MainPID"), int(host.prop("NRestarts"))
    cursor = host.cursor()
    host.sh(f"kill -9 {pid}")
    host.wait_for(f"[ \"$(systemctl show -p MainPID --value {UNIT})\" != {pid} ] && "
                  f"[ \"$(systemctl show -p MainPID --value {UNIT})\" != 0 ] && "
                  f"systemctl is-active -q {UNIT}", "a new daemon, active", timeout=60)
    lines = serving(host, cursor)
    print("\n".join(lines))
    assert any("Main process exited, code=killed, status=9/KILL" in line for line in lines)
    assert int(host.prop("NRestarts")) == restarts + 1
    # The killed daemon could not remove its socket; the new one replaces it.
    assert f"Replacing stale socket {SOCKET}" in daemon_messages(lines), lines
    assert plugin(host, "/Plugin.Activate") == {"Implements": ["VolumeDriver"]}


def test_stop_terminates_cleanly_and_removes_the_socket(host):
    cursor = host.cursor()
    host.sh(f"systemctl stop {UNIT}", timeout=90)
    try:
        lines = host.wait_journal(cursor, lambda line: line.endswith("Successfully terminated"),
                                  "'Successfully terminated'")
        print("\n".join(lines))
        host.sh(f"test ! -e {SOCKET}")
        assert host.prop("ActiveState") == "inactive"
        assert host.prop("Result") == "success"
        assert host.prop("ExecMainStatus") == "0"
    finally:
        host.sh(f"systemctl start {UNIT}", timeout=120)
    assert plugin(host, "/Plugin.Activate") == {"Implements": ["VolumeDriver"]}


def test_the_unprivileged_user_drop_in(host):
    """systemd/nvidia-docker.service.d/user.conf.example, installed as docs/running.md says."""
    use_fake_driver(host)
    host.sh("getent group docker || groupadd --system docker")
    host.sh("useradd --system --no-create-home --home-dir /var/lib/nvidia-docker "
            "--shell /usr/sbin/nologin nvidia-docker")
    # Volumes built as root stay root's: the documented switch starts from an empty directory.
    host.sh(f"systemctl stop {UNIT} && rm -rf {VOLUMES}")
    host.sh(f"install -m 0644 {SRC}/systemd/nvidia-docker.service.d/user.conf.example "
            f"/etc/systemd/system/{UNIT}.d/user.conf && systemctl daemon-reload")
    try:
        host.sh(f"systemctl start {UNIT}", timeout=120)
        pid = host.prop("MainPID")
        status = host.sh(f"cat /proc/{pid}/status").stdout
        assert re.search(r"^CapEff:\s+0+$", status, re.M), status
        assert re.search(r"^CapBnd:\s+0+$", status, re.M), status
        assert stat(host, USER_SOCKET) == "660 nvidia-docker:docker socket"
        assert stat(host, "/run/docker/plugins/nvidia-docker") == \
            "750 nvidia-docker:docker directory"
        # Docker's directories: search only for others, never listed or written.
        assert stat(host, "/run/docker") == "701 root:root directory"
        assert stat(host, "/run/docker/plugins") == "701 root:root directory"
        # The state directory is not handed over (StateDirectory= would, recursively).
        assert stat(host, "/var/lib/nvidia-docker") == "755 root:root directory"
        assert plugin(host, "/Plugin.Activate", socket=USER_SOCKET) == \
            {"Implements": ["VolumeDriver"]}
        name = f"nvidia_driver_{host.version}"
        answer = plugin(host, "/VolumeDriver.Create", {"Name": name}, socket=USER_SOCKET)
        assert answer.get("Err") in (None, ""), answer
        owners = set(host.sh(f"find {VOLUMES}/nvidia_driver/{host.version} -type f "
                             "-printf '%u:%g\\n'").stdout.split())
        assert owners == {"nvidia-docker:nvidia-docker"}
        out = host.sh(f"systemd-analyze security --no-pager {UNIT}").stdout
        score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
        print(out[-300:])
        assert score and float(score.group(1)) <= MAX_EXPOSURE, out
    finally:
        host.sh(f"systemctl stop {UNIT}; rm -f /etc/systemd/system/{UNIT}.d/user.conf; "
                f"rm -rf {VOLUMES}; systemctl daemon-reload; systemctl reset-failed {UNIT}; "
                f"systemctl start {UNIT}", timeout=120)


def test_uninstall_keeps_the_volumes_and_purge_removes_them(host):
    use_fake_driver(host)
    mountpoint = ensure_volume(host)
    host.sh("mkdir -p /run/cdi && echo '{}' > /run/cdi/nvidia-docker.json && "
            "echo other > /run/cdi/other-vendor.yaml")
    # This host has no Docker; a stand-in CLI answers `docker volume ls` as an engine that still
    # knows the volume would, and records how it was asked.
    host.write("/usr/local/sbin/docker", "#!/bin/sh\necho \"$*\" >> /tmp/docker-calls\n"
               f"echo nvidia_driver_{host.version}\n")
    host.sh("chmod 0755 /usr/local/sbin/docker")

    out = host.sh("./scripts/uninstall", workdir=SRC, timeout=120).stdout
    print(out)
    assert f"Stopped {UNIT}" in out and "nvplugin is uninstalled" in out
    assert host.sh("cat /tmp/docker-calls && rm /usr/local/sbin/docker").stdout == \
        "volume ls -q --filter driver=nvidia-docker\n"
    assert f"docker volume rm -f nvidia_driver_{host.version}" in out
    assert host.prop("LoadState") == "not-found"
    # Nothing of the service is left but the admin's drop-ins; no daemon runs.
    left = host.sh("find /etc/systemd/system -name 'nvidia-docker*'").stdout.split()
    assert left == [f"/etc/systemd/system/{UNIT}.d"], left
    host.sh("! grep -qs 'nvidia-docker-plugi[n]' /proc/[0-9]*/cmdline")  # [n]: not grep itself
    host.sh(f"test ! -e {SOCKET} && test ! -e /opt/nvplugin && "
            "test ! -e /usr/local/bin/nvidia-docker-plugin && "
            "test ! -e /usr/local/bin/nvidia-docker")
    # The volumes and the CDI spec stay.
    host.sh(f"test -x {mountpoint}/bin/nvidia-smi && test -f /run/cdi/nvidia-docker.json")

    again = host.sh("./scripts/uninstall", workdir=SRC, timeout=120).stdout
    assert "Nothing to remove: nvplugin is not installed" in again, again

    purged = host.sh("./scripts/uninstall --purge", workdir=SRC, timeout=120).stdout
    print(purged)
    host.sh("test ! -e /var/lib/nvidia-docker && test ! -e /run/cdi/nvidia-docker.json && "
            f"test ! -e /etc/systemd/system/{UNIT}.d")
    # Another vendor's CDI spec is not ours to remove.
    host.sh("test -f /run/cdi/other-vendor.yaml")
    again = host.sh("./scripts/uninstall --purge", workdir=SRC, timeout=120).stdout
    assert "Nothing to remove: nvplugin is not installed" in again, again


def test_uninstall_stops_the_background_daemon_where_systemd_does_not_run(
        docker_engine, systemd_image, offline_wheels):
    """Without systemd, install-and-run starts the daemon in the background (pid file, log);
    uninstall stops it gracefully and removes the installation."""
    container = docker_engine.client.containers.run(
        systemd_image, ["sleep", "infinity"], name=f"nvplugin-nosystemd-{os.getpid()}",
        detach=True, network_mode="none", init=True, labels={"nvplugin-test": "systemd-real"},
        volumes={str(offline_wheels): {"bind": "/wheels", "mode": "ro"}})
    plain = SystemdHost(container=container, name=container.name)
    try:
        plain.put(SRC, image.checkout_tar())
        out = install_and_run(plain)
        assert "nvidia-docker-plugin is running (pid " in out, out
        pid = plain.sh("cat /run/nvidia-docker-plugin.pid").stdout.strip()
        out = plain.sh("./scripts/uninstall", workdir=SRC, timeout=120).stdout
        print(out)
        assert f"Stopped nvidia-docker-plugin (pid {pid})" in out
        plain.sh(f"! kill -0 {pid} 2>/dev/null && test ! -e /run/nvidia-docker-plugin.pid && "
                 "test ! -e /opt/nvplugin && test ! -e /usr/local/bin/nvidia-docker-plugin")
        log = plain.sh("cat /var/log/nvidia-docker-plugin.log").stdout
        assert log.rstrip().endswith("Successfully terminated"), log
        assert "Nothing to remove" in plain.sh("./scripts/uninstall", workdir=SRC).stdout
    except CommandFailed:
        print("\n".join(plain.log[-6:]))
        raise
    finally:
        plain.remove()
