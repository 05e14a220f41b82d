"""MIG selections over the REST API, on a fake MIG-enabled GPU: exactly the MIG device's nodes.

GPU 0 is in MIG mode with two MIG devices (GPU instances 1 and 2, compute instance 0 each);
GPU 1 is a whole GPU. The access nodes come from the driver's capability files, as NVIDIA's
toolkit finds them: `proc/driver/nvidia/capabilities/gpu0/mig/gi<G>/access` and
`.../gi<G>/ci<C>/access`, whose `DeviceFileMinor` names `/dev/nvidia-caps/nvidia-cap<minor>`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests

from tests.fakehost.build import build_fake_host, make_dev_nodes, write_mig_capabilities
from tests.fakehost.compiler import ObjectCache
from tests.fakenvml.build import gpu, make_config, write_config
from tests.requirements import need_root
from tests.rest.conftest import serving
from tests.rest.live import LiveRest

MIG_UUIDS = ("MIG-aaaa1111-0000-0000-0000-000000000000", "MIG-bbbb2222-0000-0000-0000-000000000000")
# (GI, CI) -> (GI access minor, CI access minor), as the driver numbers them for gpu0.
MINORS = {(1, 0): (12, 13), (2, 0): (21, 22)}


def mig_gpu_config() -> dict:
    migs = [{"uuid": MIG_UUIDS[0], "gpu_instance_id": 1, "compute_instance_id": 0},
            {"uuid": MIG_UUIDS[1], "gpu_instance_id": 2, "compute_instance_id": 0}]
    return make_config(gpus=[gpu(0, mig_mode=True, mig_devices=migs), gpu(1)])


@pytest.fixture(scope="module")
def mig_rest(tmp_path_factory: pytest.TempPathFactory, fakehost_cache: ObjectCache,
             ) -> Iterator[LiveRest]:
    need_root()  # mknod
    base = tmp_path_factory.mktemp("mig-host")
    host = build_fake_host(base / "root", objects=fakehost_cache)
    make_dev_nodes(host.root, [0, 1])
    write_mig_capabilities(host.root, host.root, MINORS)
    with serving(host.root, write_config(base / "fakenvml.json", mig_gpu_config()),
                 host_root=host.root) as server:
        yield server


def devices(server: LiveRest, dev: str) -> list[str]:
    response = requests.get(f"{server.url}/docker/cli/json", params={"dev": dev}, timeout=10)
    assert response.status_code == 200, response.text
    return [d for d in response.json()["Devices"]
            if d not in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")]


@pytest.mark.parametrize("dev", ["0:1", MIG_UUIDS[1], MIG_UUIDS[1][:8].lower()])
def test_a_mig_device_gets_its_parent_and_its_access_nodes_only(mig_rest: LiveRest, dev: str):
    assert devices(mig_rest, dev) == ["/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap21",
                                      "/dev/nvidia-caps/nvidia-cap22"]


def test_mig_devices_and_whole_gpus_together(mig_rest: LiveRest):
    assert devices(mig_rest, "1,0:0,0:1") == [
        "/dev/nvidia0", "/dev/nvidia1",
        "/dev/nvidia-caps/nvidia-cap12", "/dev/nvidia-caps/nvidia-cap13",
        "/dev/nvidia-caps/nvidia-cap21", "/dev/nvidia-caps/nvidia-cap22"]
    # The text form carries the same nodes.
    text = requests.get(f"{mig_rest.url}/docker/cli?dev=0:0", timeout=10).text
    assert text.endswith("--device=/dev/nvidia0 --device=/dev/nvidia-caps/nvidia-cap12 "
                         "--device=/dev/nvidia-caps/nvidia-cap13")


def test_a_mig_device_without_its_access_nodes_is_refused(mig_rest: LiveRest):
    node = mig_rest.dev_root / "dev/nvidia-caps/nvidia-cap13"
    saved = node.stat()
    node.unlink()
    try:
        mig_rest.run(mig_rest.gpus.refresh())  # type: ignore[union-attr]
        response = requests.get(f"{mig_rest.url}/docker/cli?dev=0:0", timeout=10)
        assert response.status_code == 503
        assert response.text == (
            f"MIG device 0:0 ({MIG_UUIDS[0]}) cannot be given to a container: {node} is "
            "missing; create it with 'nvidia-modprobe -f "
            "/proc/driver/nvidia/capabilities/gpu0/mig/gi1/ci0/access', then reload "
            "nvidia-docker-plugin (SIGHUP)\n")
        assert devices(mig_rest, "0:1")[-1] == "/dev/nvidia-caps/nvidia-cap22"  # others serve
    finally:
        os.mknod(node, saved.st_mode, saved.st_rdev)
        mig_rest.run(mig_rest.gpus.refresh())  # type: ignore[union-attr]
    assert devices(mig_rest, "0:0")[-1] == "/dev/nvidia-caps/nvidia-cap13"
