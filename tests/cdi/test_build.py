"""The spec a real discovery of the fake host gives, with GPU records: where every driver file goes
in the container, by which names, with which options, and the devices by index, UUID and MIG."""

from __future__ import annotations

import dataclasses
import posixpath

import pytest

from nvplugin.cdi.build import IMAGE_LOADERS, build_spec, device_arguments
from nvplugin.cdi.spec import Spec, validate
from nvplugin.core.errors import CdiError, DeviceAccessError
from nvplugin.driver import catalog, discovery
from nvplugin.driver.manifest import Manifest
from nvplugin.gpu.records import DeviceNode, Gpu, MigDevice
from nvplugin.gpu.selection import select
from tests.fakehost.build import FakeHost
from tests.rest.records import gpu

KIND = "nvidia.com/gpu"


def nodes(dev_root: str, *names: str) -> tuple[DeviceNode, ...]:
    return tuple(DeviceNode(f"{dev_root}/dev/{name}", f"/dev/{name}") for name in names)


def gpus(dev_root: str, minors: list[int]) -> list[Gpu]:
    return [gpu(i, minor=m, path=f"/dev/nvidia{m}", host_path=f"{dev_root}/dev/nvidia{m}")
            for i, m in enumerate(minors)]


@pytest.fixture
def manifest(fake_host: FakeHost) -> Manifest:
    return discovery.discover(fake_host.root)


@pytest.fixture
def built(fake_host: FakeHost, manifest: Manifest) -> Spec:
    root = str(fake_host.root)
    return build_spec(manifest, gpus(root, [0, 5]), nodes(root, "nvidiactl", "nvidia-uvm"),
                      kind=KIND, host_root="/").spec


def mounts(spec: Spec) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {m.container_path: (m.host_path, m.options) for m in spec.edits.mounts}


def test_the_fake_hosts_spec_is_valid_and_needs_cdi_0_5_0(built: Spec):
    validate(built)
    assert built.version == "0.5.0"


def test_every_file_is_the_one_discovery_chose_and_nothing_else(built: Spec, manifest: Manifest):
    sources = {e.source for e in manifest.entries}
    placed = mounts(built)
    assert {host for host, _ in placed.values()} == sources  # every file, and only those
    for host, options in placed.values():
        assert {"ro", "nosuid", "nodev", "bind"} <= set(options), host


def test_1_0s_layout_holds_every_file_and_link_of_the_volume(built: Spec, manifest: Manifest):
    placed = mounts(built)
    files = {e.dest: e.source for e in manifest.entries}
    for entry in manifest.entries:
        if entry.kind in ("lib", "bin"):
            assert placed[f"/usr/local/nvidia/{entry.dest}"][0] == entry.source
    for link in manifest.links:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(link.path), link.target))
        while target not in files:  # libnvidia-opticalflow.so -> .so.1 -> the file
            target = posixpath.join(posixpath.dirname(target), next(
                x.target for x in manifest.links if x.path == target))
        assert placed[f"/usr/local/nvidia/{link.path}"][0] == files[target], link.path
    version = manifest.version
    cuda = placed["/usr/local/nvidia/lib64/libcuda.so.1"][0]
    assert cuda.endswith(f"/libcuda.so.{version}")
    assert placed["/usr/local/nvidia/lib64/libcuda.so"][0] == cuda
    assert placed[f"/usr/local/nvidia/lib64/libcuda.so.{version}"][0] == cuda


def test_the_system_directories_hold_the_names_programs_look_up(built: Spec,
                                                                fake_host: FakeHost):
    placed = mounts(built)
    version = fake_host.version
    for directory in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64"):
        for name in ("libcuda.so.1", "libcuda.so", "libnvidia-ml.so.1", "libnvidia-nvvm.so.4",
                     f"libnvidia-glcore.so.{version}", "libGLX_indirect.so.0"):
            assert f"{directory}/{name}" in placed, f"{directory}/{name}"
        # The versioned file is only reached through its SONAME, which is mounted itself.
        assert f"{directory}/libcuda.so.{version}" not in placed
        for loader in ("libGL.so.1", "libEGL.so.1", "libGLdispatch.so.0"):  # the image's own
            assert f"{directory}/{loader}" not in placed
            assert f"/usr/local/nvidia/lib64/{loader}" in placed
    if fake_host.with_32bit:
        assert placed["/usr/lib/i386-linux-gnu/libcuda.so.1"][0].startswith(
            str(fake_host.path(fake_host.lib32_dir)))
        assert "/usr/lib/libcuda.so.1" in placed
        assert "/usr/local/nvidia/lib/libcuda.so.1" in placed
    assert {c.pattern for c in catalog.LIBRARIES} >= IMAGE_LOADERS


def test_binaries_data_files_and_firmware(built: Spec, fake_host: FakeHost):
    placed = mounts(built)
    smi = str(fake_host.path("/usr/bin/nvidia-smi"))
    assert placed["/usr/bin/nvidia-smi"][0] == smi
    assert placed["/usr/local/nvidia/bin/nvidia-smi"][0] == smi
    icd = placed["/usr/share/vulkan/icd.d/nvidia_icd.json"]
    assert icd[0] == str(fake_host.path("/usr/share/vulkan/icd.d/nvidia_icd.json"))
    firmware = placed[f"/lib/firmware/nvidia/{fake_host.version}/gsp_ga10x.bin"]
    for data in (icd, firmware):
        assert "noexec" in data[1]  # never run
    assert "noexec" not in placed["/usr/bin/nvidia-smi"][1]


def test_devices_by_index_uuid_and_all_with_each_gpus_own_node(built: Spec,
                                                               fake_host: FakeHost):
    root = str(fake_host.root)
    uuids = [gpu(i).uuid for i in range(2)]
    assert [d.name for d in built.devices] == ["0", "1", *uuids, "all"]
    one = built.device("1")
    assert one is not None and built.device(uuids[1]) is not None
    assert [(n.path, n.host_path) for n in one.edits.nodes] == [("/dev/nvidia5",
                                                                 f"{root}/dev/nvidia5")]
    assert built.device(uuids[1]).edits == one.edits  # type: ignore[union-attr]
    every = built.device("all")
    assert every is not None and [n.path for n in every.edits.nodes] == ["/dev/nvidia0",
                                                                          "/dev/nvidia5"]
    assert [n.path for n in built.edits.nodes] == ["/dev/nvidiactl", "/dev/nvidia-uvm"]
    assert not any(d.edits.mounts for d in built.devices)  # the files are for every device


def test_paths_are_given_as_the_engines_host_sees_them(fake_host: FakeHost, manifest: Manifest):
    # The daemon in a container: the host's / (here the fake host) mounted at --host-root.
    root = str(fake_host.root)
    spec = build_spec(manifest, gpus(root, [0]), nodes(root, "nvidiactl"), kind=KIND,
                      host_root=root).spec
    assert [(n.path, n.host_path) for n in spec.edits.nodes] == [("/dev/nvidiactl",
                                                                  "/dev/nvidiactl")]
    smi = mounts(spec)["/usr/bin/nvidia-smi"][0]
    assert smi == "/usr/bin/nvidia-smi"
    assert all(not m.host_path.startswith(root) for m in spec.edits.mounts)
    validate(spec)
    with pytest.raises(CdiError, match="is not under --host-root"):
        build_spec(manifest, gpus("/elsewhere", [0]), nodes(root, "nvidiactl"), kind=KIND,
                   host_root=root)


def test_without_nvidiactl_no_spec_is_made(fake_host: FakeHost, manifest: Manifest):
    root = str(fake_host.root)
    with pytest.raises(CdiError, match="no /dev/nvidiactl"):
        build_spec(manifest, gpus(root, [0]), nodes(root, "nvidia-uvm"), kind=KIND,
                   host_root="/")


def mig_gpus(root: str) -> list[Gpu]:
    caps = nodes(root, "nvidia-caps/nvidia-cap12", "nvidia-caps/nvidia-cap13")
    good = MigDevice(index=0, uuid="MIG-aaaa", gpu_instance=1, compute_instance=0, caps=caps)
    lost = MigDevice(index=1, uuid="MIG-bbbb", gpu_instance=2, compute_instance=0,
                     access_problem="/proc/... cannot be read")
    first, second = gpus(root, [0, 1])
    return [dataclasses.replace(first, mig_mode=True, mig_devices=(good, lost)), second]


def test_mig_devices_are_named_and_one_without_access_nodes_is_left_out(manifest: Manifest):
    built = build_spec(manifest, mig_gpus("/r"), nodes("/r", "nvidiactl"), kind=KIND,
                       host_root="/")
    names = [d.name for d in built.spec.devices]
    assert names[-3:] == ["0:0", "MIG-aaaa", "all"] and "0:1" not in names
    mig = built.spec.device("0:0")
    assert mig is not None and [n.path for n in mig.edits.nodes] == [
        "/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap12", "/dev/nvidia-caps/nvidia-cap13"]
    assert built.spec.device("MIG-aaaa") == dataclasses.replace(mig, name="MIG-aaaa")
    every = built.spec.device("all")
    assert every is not None and [n.path for n in every.edits.nodes] == [
        "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia-caps/nvidia-cap12",
        "/dev/nvidia-caps/nvidia-cap13"]
    assert built.left_out == ("MIG device 0:1 (MIG-bbbb): /proc/... cannot be read",)


def test_device_arguments_use_uuids_or_all_and_docker_clis_errors():
    records = mig_gpus("/r")
    assert device_arguments(KIND, select(records, None), True) == (f"{KIND}=all",)
    assert device_arguments(KIND, select(records, "1"), False) == (f"{KIND}={records[1].uuid}",)
    assert device_arguments("example.com/gpu", select(records, "0:0 1"), False) == (
        f"example.com/gpu={records[0].uuid}", f"example.com/gpu={records[1].uuid}",
        "example.com/gpu=MIG-aaaa")
    with pytest.raises(DeviceAccessError, match="MIG device 0:1"):
        device_arguments(KIND, select(records, "0:1"), False)


def test_a_link_to_nothing_selected_is_refused(manifest: Manifest):
    broken = dataclasses.replace(manifest, links=(*manifest.links, dataclasses.replace(
        manifest.links[0], path="lib64/libdangling.so.1", target="libnothing.so.1")))
    with pytest.raises(CdiError, match=r"lib64/libdangling\.so\.1 leads to no selected file"):
        build_spec(broken, gpus("/r", [0]), nodes("/r", "nvidiactl"), kind=KIND,
                   host_root="/")


def test_dest_paths_stay_inside_their_layout(built: Spec):
    roots = ("/usr/local/nvidia/", "/usr/lib/", "/usr/lib64/", "/usr/bin/", "/usr/share/",
             "/lib/firmware/nvidia/")
    for mount in built.edits.mounts:
        assert mount.container_path.startswith(roots), mount.container_path
        assert posixpath.normpath(mount.container_path) == mount.container_path


def test_all_holds_the_healthy_gpus_and_a_named_gpu_stays(fake_host: FakeHost,
                                                          manifest: Manifest):
    """docker/cli's rule: every GPU means every healthy one; a GPU named is given as asked."""
    root = str(fake_host.root)
    sick = gpu(1).uuid
    built = build_spec(manifest, gpus(root, [0, 5]), nodes(root, "nvidiactl"), kind=KIND,
                       host_root="/", healthy=lambda uuid: uuid != sick)
    every = built.spec.device("all")
    assert every is not None and [n.path for n in every.edits.nodes] == ["/dev/nvidia0"]
    assert built.spec.device("1") is not None and built.spec.device(sick) is not None
    assert built.left_out == (f"GPU 1 ({sick}) from all: unhealthy",)
    validate(built.spec)
    none = build_spec(manifest, gpus(root, [0, 5]), nodes(root, "nvidiactl"), kind=KIND,
                      host_root="/", healthy=lambda _uuid: False)
    assert none.spec.device("all") is None and none.spec.device("0") is not None
    validate(none.spec)
