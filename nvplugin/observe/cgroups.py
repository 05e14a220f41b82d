"""Which container a process runs in, from the text of its `/proc/<pid>/cgroup`. Pure.

Every container runtime puts a container's processes in a cgroup whose path carries the
container's full ID, in one of a few shapes:

    systemd cgroup driver   .../docker-<id>.scope, libpod-<id>.scope (Podman),
                            cri-containerd-<id>.scope, crio-<id>.scope, nerdctl-<id>.scope
    cgroupfs driver         /docker/<id>, /libpod_parent/libpod-<id>,
                            /kubepods/<qos>/pod<uid>/<id> (any CRI runtime)

cgroup v2 has one line (`0::<path>`); v1 has one per hierarchy (`4:memory:<path>`), all naming
the same container. Paths are relative to the reader's cgroup namespace, so a daemon in its own
namespace sees `/../docker-<id>.scope`: the shapes are matched anywhere in the path. With nested
runtimes (Docker in Docker) the outermost container is the host runtime's, and is the one
named. Conmon's own scope (`libpod-conmon-<id>.scope`) is not the container.
"""

from __future__ import annotations

import re

from nvplugin.observe.records import ContainerRef

_ID = r"([0-9a-f]{64})"
_END = r"(?=/|$)"
_SCOPE_RUNTIMES = {"docker": "docker", "libpod": "podman", "cri-containerd": "containerd",
                   "containerd": "containerd", "nerdctl": "containerd", "crio": "cri-o"}
_PATTERNS: tuple[tuple[re.Pattern[str], str | None], ...] = (
    # systemd: <prefix>-<id>.scope; the runtime comes from the prefix (group 1)
    (re.compile(r"(?:^|/)(docker|libpod|cri-containerd|containerd|nerdctl|crio)-" + _ID
                + r"\.scope" + _END), None),
    (re.compile(r"(?:^|/)docker/" + _ID + _END), "docker"),
    (re.compile(r"(?:^|/)libpod-" + _ID + _END), "podman"),
    (re.compile(r"(?:^|/)kubepods[^/]*(?:/[^/]+)*?/pod[0-9a-f_-]+/" + _ID + _END),
     "kubernetes"),
)


def _paths(text: str) -> list[str]:
    paths = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths.append(parts[2].strip())
    return paths


def container_of(cgroup_text: str) -> ContainerRef | None:
    """The container named by a `/proc/<pid>/cgroup` text, or None (a host process)."""
    best: tuple[int, ContainerRef] | None = None
    for path in _paths(cgroup_text):
        for pattern, runtime in _PATTERNS:
            for match in pattern.finditer(path):
                if runtime is None:
                    found = ContainerRef(id=match.group(2),
                                         runtime=_SCOPE_RUNTIMES[match.group(1)])
                else:
                    found = ContainerRef(id=match.group(1), runtime=runtime)
                # outermost first: the earliest match in the path
                if best is None or match.start() < best[0]:
                    best = (match.start(), found)
        if best is not None:
            return best[1]  # one hierarchy is enough: v1's others name the same container
    return None
