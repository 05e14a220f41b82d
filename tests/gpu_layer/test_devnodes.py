from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nvplugin.core.errors import DeviceAccessError
from nvplugin.gpu.devnodes import control_nodes, mig_access, selection_nodes
from nvplugin.gpu.records import DeviceNode, MigDevice
from nvplugin.gpu.selection import Selection
from tests.gpu_layer.test_selection import make_gpu


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / "dev" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "dev" / name).touch()


def test_control_nodes_that_exist_in_1_0_order(tmp_path):
    touch(tmp_path, "nvidia-uvm-tools", "nvidia-uvm", "nvidiactl")
    assert control_nodes(tmp_path, tmp_path) == (
        DeviceNode(str(tmp_path / "dev/nvidiactl"), "/dev/nvidiactl"),
        DeviceNode(str(tmp_path / "dev/nvidia-uvm"), "/dev/nvidia-uvm"),
        DeviceNode(str(tmp_path / "dev/nvidia-uvm-tools"), "/dev/nvidia-uvm-tools"),
    )
    touch(tmp_path, "nvidia-modeset")
    assert control_nodes(tmp_path, tmp_path)[-1].path == "/dev/nvidia-modeset"


def test_modprobe_absence_is_no_error_and_missing_nodes_warn(tmp_path, caplog):
    calls: list[list[str]] = []
    touch(tmp_path, "nvidiactl")
    (tmp_path / "proc/driver/nvidia").mkdir(parents=True)  # the kernel module is loaded
    assert [n.path for n in control_nodes(tmp_path, tmp_path, run=calls.append)] == [
        "/dev/nvidiactl"]
    assert calls == []  # a dev root other than / never runs nvidia-modprobe
    assert "nvidia-uvm is missing" in caplog.text


def test_modprobe_runs_only_for_the_real_dev_when_uvm_is_missing(tmp_path):
    calls: list[list[str]] = []
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/nvidia-modprobe").touch()
    nodes = control_nodes(Path("/"), tmp_path, run=calls.append)
    uvm_present = Path("/dev/nvidia-uvm").exists()
    assert calls == ([] if uvm_present else [[str(tmp_path / "usr/bin/nvidia-modprobe"),
                                               "-u", "-c=0"]])
    assert all(Path(n.host_path).exists() for n in nodes)


def test_a_failing_modprobe_is_logged(tmp_path, caplog, monkeypatch):
    def fail(argv: list[str]) -> None:
        raise subprocess.CalledProcessError(1, argv)

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/nvidia-modprobe").touch()
    if not Path("/dev/nvidia-uvm").exists():
        control_nodes(Path("/"), tmp_path, run=fail)
        assert "Could not load nvidia-uvm" in caplog.text


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
    assert control_nodes(tmp_path, tmp_path) == ()
    assert caplog.text == ""
