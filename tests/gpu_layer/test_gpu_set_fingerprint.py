"""The driver watcher's view of the GPU set: what changes the fingerprint, what does not."""

from __future__ import annotations

from pathlib import Path

from nvplugin.gpu.devnodes import gpu_set_fingerprint
from tests.fakehost.build import make_dev_nodes, write_mig_capabilities
from tests.requirements import need_root


def host(tmp_path: Path) -> Path:
    need_root()  # mknod
    make_dev_nodes(tmp_path, [0])
    (tmp_path / "proc/driver/nvidia/gpus/0000:18:00.0").mkdir(parents=True)
    (tmp_path / "dev/console-like").touch()  # not NVIDIA's: never looked at
    return tmp_path


def test_an_unchanged_host_keeps_its_fingerprint(tmp_path):
    root = host(tmp_path)
    first = gpu_set_fingerprint(root, root)
    (root / "dev/unrelated").touch()
    (root / "proc/driver/nvidia/version").parent.mkdir(parents=True, exist_ok=True)
    (root / "proc/driver/nvidia/version").write_text("NVRM version: 1\n")  # the driver's part
    assert gpu_set_fingerprint(root, root) == first


def test_a_gpu_a_node_a_major_and_a_mig_instance_each_change_it(tmp_path):
    root = host(tmp_path)
    seen = [gpu_set_fingerprint(root, root)]
    (root / "proc/driver/nvidia/gpus/0000:28:00.0").mkdir()  # a GPU appears
    seen.append(gpu_set_fingerprint(root, root))
    make_dev_nodes(root, [0, 1])  # its node
    seen.append(gpu_set_fingerprint(root, root))
    make_dev_nodes(root, [0, 1], uvm_major=511)  # a module reload moves nvidia-uvm
    seen.append(gpu_set_fingerprint(root, root))
    write_mig_capabilities(root, root, {(1, 0): (12, 13)})  # a MIG instance is made
    seen.append(gpu_set_fingerprint(root, root))
    assert len(set(map(repr, seen))) == len(seen)


def test_a_host_without_the_driver_has_an_empty_fingerprint(tmp_path):
    assert gpu_set_fingerprint(tmp_path, tmp_path) == ((), (), (), ())
