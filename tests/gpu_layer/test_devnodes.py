from __future__ import annotations

import os
from pathlib import Path

import pytest

from nvplugin.core.errors import DeviceAccessError
from nvplugin.gpu.devnodes import control_nodes, load_uvm, mig_access, selection_nodes
from nvplugin.gpu.records import DeviceNode, MigDevice
from nvplugin.gpu.selection import Selection
from nvplugin.gpu.service import GpuService
from tests.gpu_layer.test_selection import make_gpu
from tests.requirements import need_root


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / "dev" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "dev" / name).touch()


def test_control_nodes_that_exist_in_1_0_order(tmp_path):
    touch(tmp_path, "nvidia-uvm-tools", "nvidia-uvm", "nvidiactl")
    assert control_nodes(tmp_path) == (
        DeviceNode(str(tmp_path / "dev/nvidiactl"), "/dev/nvidiactl"),
        DeviceNode(str(tmp_path / "dev/nvidia-uvm"), "/dev/nvidia-uvm"),
        DeviceNode(str(tmp_path / "dev/nvidia-uvm-tools"), "/dev/nvidia-uvm-tools"),
    )
    touch(tmp_path, "nvidia-modeset")
    assert control_nodes(tmp_path)[-1].path == "/dev/nvidia-modeset"


def modprobe_script(driver_root: Path, marker: Path, directory: str = "usr/bin",
                    mode: int = 0o755) -> Path:
    """A stand-in nvidia-modprobe that records how it was run."""
    path = driver_root / directory / "nvidia-modprobe"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "$@" >> {marker}\n')
    path.chmod(mode)
    return path


UVM_PRESENT = Path("/dev/nvidia-uvm").exists()


def test_modprobe_absence_is_no_error_and_missing_nodes_warn(tmp_path, caplog):
    calls: list[list[str]] = []
    touch(tmp_path, "nvidiactl")
    (tmp_path / "proc/driver/nvidia").mkdir(parents=True)  # the kernel module is loaded
    load_uvm(tmp_path, tmp_path, run=lambda argv, fds: calls.append(argv))
    assert calls == []  # a dev root other than / never runs nvidia-modprobe
    assert "nvidia-uvm is missing" in caplog.text


@pytest.mark.skipif(UVM_PRESENT, reason="this host has /dev/nvidia-uvm: nothing to load")
def test_the_trusted_modprobe_runs_from_its_open_file(tmp_path):
    need_root()  # a trusted nvidia-modprobe is root's
    marker = tmp_path / "ran"
    modprobe_script(tmp_path / "root", marker)
    load_uvm(Path("/"), tmp_path / "root")
    assert marker.read_text() == "-u -c=0\n"


@pytest.mark.skipif(UVM_PRESENT, reason="this host has /dev/nvidia-uvm: nothing to load")
@pytest.mark.parametrize(("change", "why"), [
    (lambda p: p.chmod(0o775), "writable by its group or others (mode 775)"),
    (lambda p: p.chmod(0o757), "writable by its group or others (mode 757)"),
    (lambda p: os.chown(p, 1000, 0), "owned by uid 1000, not root"),
    (lambda p: p.chmod(0o644), "not executable"),
], ids=["group-writable", "world-writable", "not-root", "not-executable"])
def test_an_untrusted_modprobe_is_never_run(tmp_path, caplog, change, why):
    need_root()
    marker = tmp_path / "ran"
    path = modprobe_script(tmp_path / "root", marker)
    change(path)
    load_uvm(Path("/"), tmp_path / "root")
    assert not marker.exists()
    assert f"Not running {path}: {why}" in caplog.text


@pytest.mark.skipif(UVM_PRESENT, reason="this host has /dev/nvidia-uvm: nothing to load")
def test_a_modprobe_linked_out_of_the_driver_root_is_not_followed(tmp_path):
    need_root()
    marker = tmp_path / "ran"
    outside = modprobe_script(tmp_path / "elsewhere", marker)
    (tmp_path / "root/usr/bin").mkdir(parents=True)
    os.symlink(outside, tmp_path / "root/usr/bin/nvidia-modprobe")
    load_uvm(Path("/"), tmp_path / "root")
    assert not marker.exists()


@pytest.mark.skipif(UVM_PRESENT, reason="this host has /dev/nvidia-uvm: nothing to load")
def test_a_failing_modprobe_is_logged(tmp_path, caplog):
    need_root()
    path = tmp_path / "bin/nvidia-modprobe"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\nexit 3\n")
    path.chmod(0o755)
    load_uvm(Path("/"), tmp_path)
    assert f"Could not load nvidia-uvm with {path}" in caplog.text


async def test_requests_never_run_modprobe(tmp_path, fake_nvml, host_root):
    """docker/cli asks for the control nodes on every request: that once spawned nvidia-modprobe
    every second while /dev/nvidia-uvm was missing."""
    need_root()
    marker = tmp_path / "ran"
    modprobe_script(host_root, marker)
    clock = [0.0]
    service = await GpuService.start(driver_root=host_root, dev_root=Path("/"),
                                     nvml_library=str(fake_nvml.library), clock=lambda: clock[0])
    try:
        for _ in range(3):
            await service.control_nodes()
            clock[0] += 2.0  # past the 1 s the nodes are kept: looked for again
    finally:
        await service.close()
    assert not marker.exists()


def test_selection_nodes_are_gpus_in_index_order_then_mig_access_nodes(tmp_path):
    caps = (DeviceNode(str(tmp_path / "dev/nvidia-caps/nvidia-cap12"),
                       "/dev/nvidia-caps/nvidia-cap12"),
            DeviceNode(str(tmp_path / "dev/nvidia-caps/nvidia-cap13"),
                       "/dev/nvidia-caps/nvidia-cap13"))
    mig = MigDevice(0, "MIG-1", gpu_instance=1, compute_instance=0, caps=caps)
    gpu0, gpu1 = make_gpu(0, "GPU-a"), make_gpu(1, "GPU-b", mig_mode=True, mig_devices=(mig,))
    nodes = selection_nodes(Selection(gpus=(gpu1, gpu0), mig_devices=((gpu1, mig), (gpu1, mig))))
    assert [n.path for n in nodes] == ["/dev/nvidia3", "/dev/nvidia4",
                                       "/dev/nvidia-caps/nvidia-cap12",
                                       "/dev/nvidia-caps/nvidia-cap13"]
    assert nodes[2] == caps[0]


def test_a_mig_device_without_access_nodes_is_refused_with_the_reason():
    mig = MigDevice(2, "MIG-2", gpu_instance=5, compute_instance=0,
                    access_problem="/x/dev/nvidia-caps/nvidia-cap50 is missing; ...")
    gpu = make_gpu(0, "GPU-a", mig_mode=True, mig_devices=(mig,))
    with pytest.raises(DeviceAccessError) as raised:
        selection_nodes(Selection(gpus=(gpu,), mig_devices=((gpu, mig),)))
    assert raised.value.message == ("MIG device 0:2 (MIG-2) cannot be given to a container: "
                                    "/x/dev/nvidia-caps/nvidia-cap50 is missing; ...")


@pytest.mark.parametrize(("files", "problem"), [
    ({}, "gpu3/mig/gi4/access cannot be read (No such file or directory)"),
    ({"gi4/access": "DeviceFileMode: 292\n"}, "gpu3/mig/gi4/access names no DeviceFileMinor"),
    ({"gi4/access": "DeviceFileMinor: 40\n", "gi4/ci1/access": "DeviceFileMinor: 41\n"},
     "nvidia-caps/nvidia-cap40 is missing; create it with 'nvidia-modprobe -f "
     "/proc/driver/nvidia/capabilities/gpu3/mig/gi4/access'"),
], ids=["no-file", "no-minor", "no-node"])
def test_mig_access_says_why_it_found_no_nodes(tmp_path, files, problem):
    for name, text in files.items():
        path = tmp_path / "proc/driver/nvidia/capabilities/gpu3/mig" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    found = mig_access(tmp_path, tmp_path, 3, MigDevice(0, "MIG-x", gpu_instance=4,
                                                        compute_instance=1))
    assert found.caps == () and problem in (found.access_problem or "")
    unknown = mig_access(tmp_path, tmp_path, 3, MigDevice(0, "MIG-x"))
    assert unknown.caps == () and "instance ids" in (unknown.access_problem or "")


def test_without_the_kernel_module_missing_nodes_are_not_warned_about(tmp_path, caplog):
    # The daemon's "NVIDIA driver not found" line already says why; one line, not three.
    load_uvm(tmp_path, tmp_path)
    assert control_nodes(tmp_path) == ()
    assert caplog.text == ""
