"""Container IDs from real-looking /proc/<pid>/cgroup texts: cgroup v1 and v2; Docker, Podman,
containerd, CRI-O and Kubernetes; systemd and cgroupfs drivers; host processes."""

from __future__ import annotations

import pytest

from nvplugin.observe.cgroups import container_of
from nvplugin.observe.records import ContainerRef

ID = "4f1c2b7d9e0a8f3c6b5d4e2a1f0c9b8a7d6e5f4c3b2a1908f7e6d5c4b3a29180"
OTHER = "a" * 64
POD = "pod8d3c4b2a-1f0e-4d5c-9b8a-7f6e5d4c3b2a"

V1_DOCKER_CGROUPFS = f"""12:freezer:/docker/{ID}
11:pids:/docker/{ID}
10:memory:/docker/{ID}
9:devices:/docker/{ID}
8:hugetlb:/docker/{ID}
7:cpu,cpuacct:/docker/{ID}
6:blkio:/docker/{ID}
5:net_cls,net_prio:/docker/{ID}
4:perf_event:/docker/{ID}
3:cpuset:/docker/{ID}
2:rdma:/
1:name=systemd:/docker/{ID}
0::/system.slice/containerd.service
"""

V1_DOCKER_SYSTEMD = f"""12:memory:/system.slice/docker-{ID}.scope
11:devices:/system.slice/docker-{ID}.scope
1:name=systemd:/system.slice/docker-{ID}.scope
0::/
"""


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param(f"0::/system.slice/docker-{ID}.scope\n", ContainerRef(ID, "docker"),
                 id="v2-docker-systemd"),
    pytest.param(f"0::/docker/{ID}\n", ContainerRef(ID, "docker"), id="v2-docker-cgroupfs"),
    pytest.param(V1_DOCKER_CGROUPFS, ContainerRef(ID, "docker"), id="v1-docker-cgroupfs"),
    pytest.param(V1_DOCKER_SYSTEMD, ContainerRef(ID, "docker"), id="v1-docker-systemd"),
    pytest.param(f"0::/machine.slice/libpod-{ID}.scope/container\n", ContainerRef(ID, "podman"),
                 id="v2-podman-root"),
    pytest.param(f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/"
                 f"libpod-{ID}.scope/container\n", ContainerRef(ID, "podman"),
                 id="v2-podman-rootless"),
    pytest.param(f"11:memory:/libpod_parent/libpod-{ID}\n1:name=systemd:/libpod_parent/"
                 f"libpod-{ID}\n", ContainerRef(ID, "podman"), id="v1-podman-cgroupfs"),
    pytest.param(f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-"
                 f"{POD.replace('-', '_')}.slice/cri-containerd-{ID}.scope\n",
                 ContainerRef(ID, "containerd"), id="v2-cri-containerd-systemd"),
    pytest.param(f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-"
                 f"{POD.replace('-', '_')}.slice/crio-{ID}.scope\n", ContainerRef(ID, "cri-o"),
                 id="v2-crio-systemd"),
    pytest.param(f"10:memory:/kubepods/besteffort/{POD}/{ID}\n"
                 f"1:name=systemd:/kubepods/besteffort/{POD}/{ID}\n",
                 ContainerRef(ID, "kubernetes"), id="v1-kubepods-cgroupfs"),
    pytest.param(f"0::/kubepods/{POD}/{ID}\n", ContainerRef(ID, "kubernetes"),
                 id="v2-kubepods-guaranteed"),
    pytest.param(f"0::/system.slice/nerdctl-{ID}.scope\n", ContainerRef(ID, "containerd"),
                 id="v2-nerdctl"),
    pytest.param(f"0::/../../system.slice/docker-{ID}.scope\n", ContainerRef(ID, "docker"),
                 id="v2-seen-from-another-cgroup-namespace"),
    pytest.param(f"0::/system.slice/docker-{ID}.scope/docker/{OTHER}\n",
                 ContainerRef(ID, "docker"), id="docker-in-docker-outermost"),
])
def test_a_container_is_named_by_its_cgroup(text, expected):
    assert container_of(text) == expected


@pytest.mark.parametrize("text", [
    pytest.param("0::/user.slice/user-1000.slice/session-3.scope\n", id="v2-login-session"),
    pytest.param("0::/system.slice/nvidia-persistenced.service\n", id="v2-system-service"),
    pytest.param("12:memory:/user.slice\n1:name=systemd:/user.slice/user-0.slice/"
                 "session-1.scope\n0::/\n", id="v1-host"),
    pytest.param(f"0::/machine.slice/libpod-conmon-{ID}.scope\n", id="podman-conmon"),
    pytest.param(f"0::/docker/{ID[:12]}\n", id="short-id-is-not-a-container-cgroup"),
    pytest.param(f"0::/system.slice/docker-{ID}.scopex\n", id="not-a-scope"),
    pytest.param("", id="empty"),
    pytest.param("garbage without colons\n", id="garbage"),
])
def test_host_processes_have_no_container(text):
    assert container_of(text) is None
