"""A fresh Debian 12 host in a container, with systemd as PID 1, for the real-systemd test.

Started with the flags systemd needs in a container (`--cap-add SYS_ADMIN`, no seccomp or
AppArmor profile, a private cgroup namespace, tmpfs on /run and /run/lock) and `--net=none`.
On a cgroup v1 (hybrid) engine, Docker mounts the v1 hierarchies read-only: systemd then cannot
make its own cgroups, and DevicePolicy= is silently not enforced (a "closed" unit opens any
node). So PID 1 starts as a shell that mounts the container's own `devices` and `name=systemd`
hierarchies read-write, then execs systemd. Device nodes with NVIDIA's majors (195, and 238 as
the uvm major of our fake hosts) are allowed by the container's own device cgroup, so systemd's
policy inside is what decides.

Every command runs through `docker exec` with a timeout; the journal is read by cursor.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import docker

UNIT = "nvidia-docker.service"
DROP_IN_DIR = f"/etc/systemd/system/{UNIT}.d"
DEVICE_MAJORS = (195, 238)
# PID 1: read-write cgroup hierarchies for systemd (see the module docstring), then systemd.
INIT = """
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    mount -o remount,rw /sys/fs/cgroup 2>/dev/null \\
        || { umount /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup; }
else
    for hierarchy in devices systemd; do
        if mountpoint -q /sys/fs/cgroup/$hierarchy; then
            umount /sys/fs/cgroup/$hierarchy
            if [ $hierarchy = systemd ]; then options=none,name=systemd; else options=devices; fi
            mount -t cgroup -o $options cgroup /sys/fs/cgroup/$hierarchy
        fi
    done
fi
exec /sbin/init
"""
CURSOR = re.compile(r"^-- cursor: (\S+)$", re.MULTILINE)


class CommandFailed(AssertionError):
    pass


@dataclass
class SystemdHost:
    container: docker.models.containers.Container
    name: str
    log: list[str] = field(default_factory=list)  # every command and its output, for failures

    @classmethod
    def start(cls, client: docker.DockerClient, image: str, name: str,
              volumes: dict[str, dict[str, str]]) -> Self:
        container = client.containers.run(
            image, ["-c", INIT], entrypoint=["/bin/sh"], name=name, detach=True,
            network_mode="none", cap_add=["SYS_ADMIN"], cgroupns="private",
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            tmpfs={"/run": "", "/run/lock": ""}, volumes=volumes,
            device_cgroup_rules=[f"c {major}:* rwm" for major in DEVICE_MAJORS],
            labels={"nvplugin-test": "systemd-real"}, stop_signal="SIGRTMIN+3",
        )
        host = cls(container=container, name=name)
        # Until systemd is PID 1 and answers, then until its start-up is over (`--wait`):
        # running, or degraded when some unit failed.
        try:
            host.wait_for("state=$(timeout 60 systemctl is-system-running --wait 2>&1); "
                          'echo "$state"; [ "$state" = running ] || [ "$state" = degraded ]',
                          "systemd up", timeout=120)
        except CommandFailed as err:
            logs = host.sh("journalctl -b --no-pager | tail -50", check=False).stdout
            host.remove()
            raise CommandFailed(f"{err}\n{logs}") from None
        return host

    def remove(self) -> None:
        with contextlib.suppress(docker.errors.APIError):
            self.container.remove(force=True)

    def sh(self, script: str, *, check: bool = True, timeout: float = 60,
           env: dict[str, str] | None = None, workdir: str | None = None,
           ) -> subprocess.CompletedProcess[str]:
        """`sh -c script` in the container; raises CommandFailed (with the output) on a non-zero
        exit when `check`."""
        argv = ["docker", "exec"]
        for key, value in (env or {}).items():
            argv += ["-e", f"{key}={value}"]
        if workdir:
            argv += ["-w", workdir]
        argv += [self.name, "sh", "-c", script]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise CommandFailed(f"timed out after {timeout} s: {script}\n{err.stdout or ''}"
                                f"{err.stderr or ''}") from err
        self.log.append(f"$ {script}\n[{done.returncode}] {done.stdout}{done.stderr}")
        if check and done.returncode != 0:
            raise CommandFailed(f"exit {done.returncode}: {script}\n{done.stdout}{done.stderr}")
        return done

    def put(self, directory: str, tar_bytes: bytes) -> None:
        self.sh(f"mkdir -p {shlex.quote(directory)}")
        if not self.container.put_archive(directory, tar_bytes):
            raise CommandFailed(f"could not copy into {directory}")

    def put_tree(self, source: Path, directory: str) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(str(source), arcname=".")
        self.put(directory, buffer.getvalue())

    def write(self, path: str, text: str) -> None:
        self.sh(f"mkdir -p \"$(dirname {shlex.quote(path)})\" && "
                f"cat > {shlex.quote(path)} <<'NVPLUGIN_EOF'\n{text}NVPLUGIN_EOF")

    # --- the service -------------------------------------------------------------------------

    def prop(self, name: str) -> str:
        return self.sh(f"systemctl show -p {name} --value {UNIT}").stdout.strip()

    def drop_in(self, name: str, text: str | None) -> None:
        """Install (or with None remove) /etc/systemd/system/nvidia-docker.service.d/<name>.conf
        and reload systemd's view of the unit."""
        path = f"{DROP_IN_DIR}/{name}.conf"
        if text is None:
            self.sh(f"rm -f {path}")
        else:
            self.write(path, text)
        self.sh("systemctl daemon-reload")

    def restart(self) -> str:
        """Restart the service; returns the journal cursor from just before."""
        cursor = self.cursor()
        self.sh(f"systemctl restart {UNIT}", timeout=120)
        return cursor

    # --- the journal -------------------------------------------------------------------------

    def cursor(self) -> str:
        out = self.sh("journalctl --no-pager -q -n 1 -o cat --show-cursor").stdout
        match = CURSOR.search(out)
        if match is None:
            raise CommandFailed(f"no journal cursor in {out!r}")
        return match.group(1)

    def journal(self, after: str | None = None, unit: str | None = UNIT) -> list[str]:
        """The journal's messages (`-o cat`) after `after`, of `unit` (None: all)."""
        argv = "journalctl --no-pager -q -o cat"
        if unit:
            argv += f" -u {unit}"
        if after:
            argv += f" --after-cursor={shlex.quote(after)}"
        return self.sh(argv).stdout.splitlines()

    def wait_journal(self, after: str | None, matches: Callable[[str], bool], what: str,
                     timeout: float = 60, unit: str | None = UNIT) -> list[str]:
        """The journal after `after` (None: all of it) up to and including the first line that
        `matches`."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.journal(after, unit)
            for index, line in enumerate(lines):
                if matches(line):
                    return lines[: index + 1]
            if time.monotonic() > deadline:
                raise CommandFailed(f"no journal line {what} within {timeout} s; journal since:\n"
                                    + "\n".join(lines[-60:]))
            time.sleep(0.2)

    def wait_for(self, script: str, what: str, timeout: float = 60) -> str:
        """Run `script` until it exits 0; its output."""
        deadline = time.monotonic() + timeout
        while True:
            done = self.sh(script, check=False)
            if done.returncode == 0:
                return done.stdout
            if time.monotonic() > deadline:
                raise CommandFailed(f"{what}: not within {timeout} s; last: "
                                    f"{done.stdout}{done.stderr}")
            time.sleep(0.2)

    def diagnostics(self) -> str:
        """The unit's status and journal, for a failing test."""
        return self.sh(f"systemctl --no-pager status {UNIT}; journalctl --no-pager -u {UNIT} "
                       "| tail -150; ls -la /run/docker/plugins /var/lib/nvidia-docker",
                       check=False, timeout=60).stdout
