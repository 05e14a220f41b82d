"""A real consumer of the spec: Podman from Debian, on the fake driver host, with the daemon
keeping the spec. What a container gets by `--device nvidia.com/gpu=<name>`: exactly its GPU's
node and the control nodes, the driver's own bytes under the names programs look up (in an
image with 1.0's PATH/LD_LIBRARY_PATH and in one with neither, through a real C library's
loader), the host's nvidia-smi; and a driver that changes under the running daemon is what the
next container sees."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.dockerenv import GPU_IMAGE_ENV
from tests.fakehost.compiler import ObjectCache
from tests.podmanenv import IsolatedDaemon, Podman, PodmanImages, ldd_closure

KIND = "nvidia.com/gpu"
WATCH_TIMEOUT_S = 30.0  # the daemon's watcher looks every 5 s
# dlopen() each name given and print where the loader found it, and whether it is a CUDA driver.
DLPROBE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        void *h = dlopen(argv[i], RTLD_NOW);
        if (!h) { printf("%s NOT-FOUND %s\n", argv[i], dlerror()); return 1; }
        struct link_map *map = 0;
        printf("%s %s %s\n", argv[i],
               dlinfo(h, RTLD_DI_LINKMAP, &map) == 0 && map ? map->l_name : "?",
               dlsym(h, "cuInit") ? "cuInit" : "-");
    }
    return 0;
}
"""


def nodes(podman: Podman, daemon: IsolatedDaemon, device: str, image: str) -> dict[str, str]:
    """The NVIDIA nodes a container given `device` sees, with their major:minor."""
    out = podman.run_text(daemon.cdi_path.parent, "--device", f"{KIND}={device}", image,
                          "sh", "-c",
                          "for n in /dev/nvidia* /dev/nvidia-caps/*; do [ -c $n ] && "
                          "stat -c '%n %t:%T' $n; done; true")
    found = {}
    for line in out.splitlines():
        name, numbers = line.split()
        major, minor = (int(x, 16) for x in numbers.split(":"))
        found[name] = f"{major}:{minor}"
    return found


# The fake host's control nodes (tests/fakehost/build.py's make_dev_nodes).
CONTROL = {"/dev/nvidiactl": "195:255", "/dev/nvidia-uvm": "238:0",
           "/dev/nvidia-uvm-tools": "238:1"}


@pytest.fixture
def plain(podman_image: PodmanImages) -> str:
    """Busybox with no environment at all: podman's default PATH, no LD_LIBRARY_PATH."""
    return podman_image()


def wait_for_spec(daemon: IsolatedDaemon, predicate: Callable[[dict], bool]) -> dict:
    deadline = time.monotonic() + WATCH_TIMEOUT_S
    body: dict = {}
    while time.monotonic() < deadline:
        try:
            body = json.loads(daemon.cdi_path.read_text())
        except (OSError, ValueError):
            body = {}
        if predicate(body):
            return body
        time.sleep(0.2)
    raise AssertionError(f"the spec never changed as expected:\n{daemon.log()[-3000:]}")


def host_bytes(daemon: IsolatedDaemon, inner: str) -> bytes:
    return (daemon.driver_root / inner.lstrip("/")).resolve().read_bytes()


@pytest.fixture
def daemon(cdi_daemon: Callable[..., IsolatedDaemon]) -> IsolatedDaemon:
    # GPU 1's node is /dev/nvidia5: a device is given by its minor, never its index.
    return cdi_daemon(n_gpus=2, minors=[0, 5])


def test_a_gpu_by_index_gets_exactly_its_node_and_the_control_nodes(
        podman: Podman, daemon: IsolatedDaemon, plain: str):
    assert nodes(podman, daemon, "1", plain) == {"/dev/nvidia5": "195:5", **CONTROL}
    assert nodes(podman, daemon, "0", plain) == {"/dev/nvidia0": "195:0", **CONTROL}


def test_by_uuid_and_all(podman: Podman, daemon: IsolatedDaemon, plain: str):
    assert daemon.host is not None
    assert nodes(podman, daemon, daemon.host.uuids[1], plain) == {"/dev/nvidia5": "195:5",
                                                                  **CONTROL}
    assert nodes(podman, daemon, "all", plain) == {"/dev/nvidia0": "195:0",
                                                   "/dev/nvidia5": "195:5", **CONTROL}


def test_the_drivers_own_bytes_and_nvidia_smi_in_both_kinds_of_image(
        podman: Podman, podman_image: PodmanImages, daemon: IsolatedDaemon, plain: str):
    spec_dir = daemon.cdi_path.parent
    cuda = host_bytes(daemon, "/usr/lib/x86_64-linux-gnu/libcuda.so.1")
    legacy = podman_image(env=GPU_IMAGE_ENV)  # 1.0's PATH and LD_LIBRARY_PATH
    for image, smi in ((legacy, "/usr/local/nvidia/bin/nvidia-smi"),
                       (plain, "/usr/bin/nvidia-smi")):
        for name in ("/usr/local/nvidia/lib64/libcuda.so.1", "/usr/lib64/libcuda.so.1",
                     "/usr/lib/x86_64-linux-gnu/libcuda.so.1"):
            got = podman.run(spec_dir, "--device", f"{KIND}=0", image, "cat", name)
            assert got.returncode == 0 and got.stdout == cuda, name
        out = podman.run_text(spec_dir, "--device", f"{KIND}=0", image, "sh", "-c",
                              "command -v nvidia-smi; nvidia-smi")
        assert out.splitlines() == [smi, "nvidia-smi (fake NVIDIA driver 580.159.04)"]
    mounts = podman.run_text(spec_dir, "--device", f"{KIND}=0", legacy, "cat",
                             "/proc/self/mountinfo")
    line = next(x for x in mounts.splitlines() if " /usr/local/nvidia/lib64/libcuda.so.1 " in x)
    # A bind mount of the host's file (its path is the mount's root), never a copy.
    assert f" {daemon.driver_root}/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04 " in line
    options = line.split()[5].split(",")
    assert {"ro", "nosuid", "nodev"} <= set(options)


def test_a_c_library_finds_libcuda_and_nvml_with_and_without_1_0s_environment(
        podman: Podman, podman_image: PodmanImages, daemon: IsolatedDaemon,
        fakehost_cache: ObjectCache):
    probe = fakehost_cache.build(DLPROBE, ["-O2"], name="dlprobe")
    files = {"/bin/dlprobe": probe.read_bytes(), **ldd_closure(probe)}
    spec_dir = daemon.cdi_path.parent
    names = ("libcuda.so.1", "libnvidia-ml.so.1", "libcuda.so")
    for env, where in (({"LD_LIBRARY_PATH": GPU_IMAGE_ENV["LD_LIBRARY_PATH"]},
                        "/usr/local/nvidia/lib64"), ({}, "/usr/lib/x86_64-linux-gnu")):
        image = podman_image(env=env, extra_files=files)
        # One process per name: a loader that has a file open answers its first name again.
        out = podman.run_text(spec_dir, "--device", f"{KIND}=0", image, "sh", "-c",
                              f"for n in {' '.join(names)}; do /bin/dlprobe $n || exit 1; done")
        lines = [line.split() for line in out.splitlines()]
        assert [(name, path) for name, path, *_ in lines] == [
            (name, f"{where}/{name}") for name in names], out
        assert lines[0][2:] == ["cuInit"] and lines[1][2:] == ["-"]
    # And no GPU asked for: the C library finds no driver at all.
    bare = podman.run(spec_dir, podman_image(extra_files=files), "/bin/dlprobe", "libcuda.so.1")
    assert bare.returncode == 1 and b"libcuda.so.1 NOT-FOUND" in bare.stdout


def test_a_mig_device_gets_its_parent_and_its_access_nodes(
        podman: Podman, cdi_daemon: Callable[..., IsolatedDaemon], plain: str):
    daemon = cdi_daemon(n_gpus=2, mig={(1, 0): (12, 13)})
    mig = {"/dev/nvidia0": "195:0", "/dev/nvidia-caps/nvidia-cap12": "241:12",
           "/dev/nvidia-caps/nvidia-cap13": "241:13", **CONTROL}
    assert nodes(podman, daemon, "0:0", plain) == mig
    assert daemon.host is not None
    assert nodes(podman, daemon, "MIG-00010000-0000-0000-0000-000000000000", plain) == mig


def test_a_library_removed_and_the_cache_rebuilt_is_seen_without_a_restart(
        podman: Podman, daemon: IsolatedDaemon, plain: str):
    from tests.fakehost.build import write_ld_cache

    lib = daemon.driver_root / "usr/lib/x86_64-linux-gnu"
    assert b"libnvidia-opticalflow.so.1" in podman.run(
        daemon.cdi_path.parent, "--device", f"{KIND}=0", plain, "ls",
        "/usr/local/nvidia/lib64").stdout
    for name in [n.name for n in lib.iterdir() if n.name.startswith("libnvidia-opticalflow")]:
        (lib / name).unlink()
    write_ld_cache(daemon.driver_root, ["/usr/lib/x86_64-linux-gnu", "/usr/lib/i386-linux-gnu"])
    wait_for_spec(daemon, lambda b: "opticalflow" not in json.dumps(b) and "devices" in b)
    listing = podman.run_text(daemon.cdi_path.parent, "--device", f"{KIND}=0", plain, "ls",
                              "/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu")
    assert "opticalflow" not in listing and "libcuda.so.1" in listing
    assert "Wrote CDI spec" in daemon.log() and "mounts removed" in daemon.log()
    assert daemon.proc is not None and daemon.proc.poll() is None  # never restarted


def test_a_driver_upgrade_is_what_the_next_container_sees(
        podman: Podman, daemon: IsolatedDaemon, fake_host_factory: Any, plain: str):
    assert daemon.host is not None
    fake_host_factory(root=daemon.driver_root, version="590.10.01")
    config = json.loads(daemon.host.nvml_config.read_text())
    daemon.host.nvml_config.write_text(json.dumps({**config, "driver_version": "590.10.01"}))
    wait_for_spec(daemon, lambda b: "libcuda.so.590.10.01" in json.dumps(b)
                  and "580.159.04" not in json.dumps(b))
    mounts = podman.run_text(daemon.cdi_path.parent, "--device", f"{KIND}=1", plain, "cat",
                             "/proc/self/mountinfo")
    cuda = [line.split()[3] for line in mounts.splitlines()
            if line.split()[4] == "/usr/lib/x86_64-linux-gnu/libcuda.so.1"]
    assert cuda == [f"{daemon.driver_root}/usr/lib/x86_64-linux-gnu/libcuda.so.590.10.01"]
    smi = podman.run_text(daemon.cdi_path.parent, "--device", f"{KIND}=1", plain,
                          "nvidia-smi")
    assert smi.strip() == "nvidia-smi (fake NVIDIA driver 590.10.01)"


def test_a_driver_gone_is_unresolvable_not_cannot_stat(podman: Podman, daemon: IsolatedDaemon,
                                                       plain: str):
    assert daemon.host is not None
    config = json.loads(daemon.host.nvml_config.read_text())
    daemon.host.nvml_config.write_text(json.dumps({**config, "init_error": "DRIVER_NOT_LOADED"}))
    # What a driver's removal changes on disk: the kernel module's version file goes.
    (daemon.driver_root / "proc/driver/nvidia/version").unlink()
    deadline = time.monotonic() + WATCH_TIMEOUT_S
    while daemon.cdi_path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not daemon.cdi_path.exists(), daemon.log()[-3000:]
    gone = podman.run(daemon.cdi_path.parent, "--device", f"{KIND}=0", plain, "true")
    assert gone.returncode != 0
    assert f"unresolvable CDI devices {KIND}=0".encode() in gone.stderr


def test_a_gpu_that_appears_is_added_without_a_restart(daemon: IsolatedDaemon):
    from tests.fakehost.build import make_dev_nodes
    from tests.fakenvml.build import gpu

    assert daemon.host is not None
    config = json.loads(daemon.host.nvml_config.read_text())
    config["gpus"].append(gpu(2, minor=7))
    daemon.host.nvml_config.write_text(json.dumps(config))
    make_dev_nodes(daemon.dev_root, [0, 5, 7])
    body = wait_for_spec(daemon, lambda b: "2" in [d["name"] for d in b.get("devices", [])])
    two = next(d for d in body["devices"] if d["name"] == "2")
    assert two["containerEdits"]["deviceNodes"][0]["path"] == "/dev/nvidia7"
    assert "GPU devices changed" in daemon.log()


def test_the_spec_stays_at_a_clean_stop(daemon: IsolatedDaemon):
    before = daemon.cdi_path.read_bytes()
    assert daemon.stop() == 0
    assert daemon.cdi_path.read_bytes() == before
    assert daemon.log().rstrip().endswith("Successfully terminated")




def test_a_mig_instance_made_is_added_without_a_restart(cdi_daemon: Callable[..., Any]):
    from tests.fakehost.build import write_mig_capabilities

    daemon = cdi_daemon(n_gpus=1, mig={(1, 0): (12, 13)})
    assert daemon.host is not None
    before = json.loads(daemon.cdi_path.read_text())
    assert "0:1" not in [d["name"] for d in before["devices"]]
    config = json.loads(daemon.host.nvml_config.read_text())
    config["gpus"][0]["mig_devices"].append(
        {"uuid": "MIG-00020000-0000-0000-0000-000000000000", "gpu_instance_id": 2,
         "compute_instance_id": 0})
    daemon.host.nvml_config.write_text(json.dumps(config))
    # What making an instance changes on the host: its capability files appear, and the
    # nvidia-caps nodes nvidia-modprobe makes for them; the GPU nodes stay as they were.
    write_mig_capabilities(daemon.driver_root, daemon.dev_root, {(2, 0): (21, 22)})
    body = wait_for_spec(daemon, lambda b: "0:1" in [d["name"] for d in b.get("devices", [])])
    mig = next(d for d in body["devices"] if d["name"].startswith("MIG-00020000"))
    assert [n["path"] for n in mig["containerEdits"]["deviceNodes"]] == [
        "/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap21", "/dev/nvidia-caps/nvidia-cap22"]
