"""GpuService over the real pynvml and the C fake NVML: enumeration, units, unsupported fields."""

from __future__ import annotations

import logging
from pathlib import Path

import pynvml
import pytest

from nvplugin.core.errors import DeviceAccessError, NvmlError, SelectionError
from nvplugin.gpu.devnodes import selection_nodes
from nvplugin.gpu.records import DeviceNode, P2PLink
from tests.fakehost.build import write_mig_capabilities
from tests.fakenvml.build import gpu
from tests.requirements import need_root

GIB = 1 << 30


async def test_zero_gpus_is_a_valid_answer(fake_nvml, start_service):
    fake_nvml.write(fake_nvml.make_config(0))
    service = await start_service()
    inventory = await service.inventory()
    assert service.available and inventory.gpus == ()
    assert inventory.versions.driver == "580.159.04" and inventory.versions.cuda == "13.0"
    assert await service.status() == ()
    assert service.select(None).gpus == ()


async def test_one_h200_in_final_units(fake_nvml, start_service, host_root: Path):
    service = await start_service()
    (gpu,) = (await service.inventory()).gpus
    assert (gpu.index, gpu.minor, gpu.path) == (0, 0, "/dev/nvidia0")
    assert gpu.host_path == str(host_root / "dev/nvidia0")
    assert gpu.uuid == "GPU-00000000-67d9-9e02-1f7a-53d331412b6f"
    assert gpu.model == "NVIDIA H200" and gpu.bus_id == "00000000:18:00.0"
    assert gpu.power_limit_w == 700 and gpu.memory_global_mib == 143771
    assert gpu.bar1_total_mib == 256 * 1024
    assert (gpu.pcie_generation, gpu.pcie_width, gpu.pcie_bandwidth_mbs) == (5, 16, 3938 * 16)
    assert (gpu.clock_cores_mhz, gpu.clock_memory_mhz) == (1980, 3201)
    assert (gpu.arch, gpu.family, gpu.cores, gpu.multiprocessors) == ("9.0", "Hopper", 16896, 132)
    assert gpu.memory_bandwidth_mbs == 2 * 3201 * 5120 // 8
    assert gpu.ecc is True and gpu.persistence_mode is True and gpu.mig_mode is False
    # no NVML source for these: left unknown rather than invented
    assert (gpu.memory_shared_kib, gpu.memory_constant_kib, gpu.memory_l2_kib) == (None,) * 3
    assert gpu.topology == () and gpu.mig_devices == ()


async def test_eight_gpus_with_minors_that_differ_from_indices(fake_nvml, start_service):
    config = fake_nvml.make_config(8)
    for i, entry in enumerate(config["gpus"]):
        entry["minor"] = 7 - i
    fake_nvml.write(config)
    service = await start_service()
    gpus = (await service.inventory()).gpus
    assert [g.index for g in gpus] == list(range(8))
    assert [g.path for g in gpus] == [f"/dev/nvidia{7 - i}" for i in range(8)]
    assert len({g.uuid for g in gpus}) == 8
    # pairs share a switch (5), GPUs 0-3 / 4-7 share a socket (2), else cross-socket (1)
    assert gpus[0].topology[0] == P2PLink(bus_id=gpus[1].bus_id, link=5, nvlinks=0)
    assert {link.bus_id: link.link for link in gpus[0].topology}[gpus[2].bus_id] == 2
    assert {link.bus_id: link.link for link in gpus[0].topology}[gpus[7].bus_id] == 1
    assert len(gpus[3].topology) == 7
    statuses = await service.status()
    assert [s.index for s in statuses] == list(range(8))
    assert service.select("GPU-00000005").gpus[0].minor == 2


async def test_every_optional_field_unsupported_reads_as_none(fake_nvml, start_service):
    required = {"name", "uuid", "minor", "bus_id"}
    config = fake_nvml.make_config(2)
    for entry in config["gpus"]:
        for key in list(entry):
            if key not in required:
                entry[key] = "NOT_SUPPORTED"
    config["cuda_version"] = "NOT_SUPPORTED"
    fake_nvml.write(config)
    service = await start_service()
    inventory = await service.inventory()
    assert inventory.versions.cuda is None
    gpu = inventory.gpus[0]
    for name in ("power_limit_w", "cpu_affinity", "bar1_total_mib", "pcie_generation",
                 "pcie_bandwidth_mbs", "clock_cores_mhz", "clock_memory_mhz", "arch", "family",
                 "cores", "multiprocessors", "ecc", "memory_global_mib", "memory_bandwidth_mbs",
                 "persistence_mode", "mig_mode"):
        assert getattr(gpu, name) is None, name
    assert gpu.topology == (P2PLink(bus_id=inventory.gpus[1].bus_id, link=0, nvlinks=None),)
    status = (await service.status())[0]
    for name in ("power_w", "temperature_c", "utilization_gpu", "utilization_memory",
                 "utilization_encoder", "utilization_decoder", "memory_used_mib", "ecc_l1",
                 "ecc_l2", "ecc_global", "clock_cores_mhz", "clock_memory_mhz",
                 "bar1_used_mib", "pcie_rx_mbs", "pcie_tx_mbs"):
        assert getattr(status, name) is None, name


OLD_DRIVER = ["nvmlSystemGetCudaDriverVersion_v2", "nvmlDeviceGetNumGpuCores",
              "nvmlDeviceGetMemoryBusWidth", "nvmlDeviceGetNumaNodeId", "nvmlDeviceGetMigMode",
              "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetTopologyCommonAncestor",
              "nvmlDeviceGetP2PStatus", "nvmlDeviceGetNvLinkState",
              "nvmlDeviceGetMemoryErrorCounter", "nvmlDeviceGetAttributes_v2"]


def _old_driver_config(fake_nvml):
    config = fake_nvml.make_config(2)
    config["gpus"][0]["processes"] = [{"pid": 4242, "used_memory": 300 << 20}]
    config["process_names"] = {"4242": "python3"}
    return config


def _assert_old_driver_answers(inventory, statuses):
    assert inventory.versions.cuda == "13.0"  # from the unversioned call
    gpu = inventory.gpus[0]
    assert gpu.cores is None and gpu.memory_bandwidth_mbs is None and gpu.mig_mode is None
    assert gpu.topology[0].link == 0 and gpu.topology[0].nvlinks is None
    assert statuses[0].ecc_l1 is None and statuses[0].power_w == 74
    # The old driver's _v2 call needs a wrapper that nvidia-ml-py 11.515 to 12.535 lack.
    expected = [(4242, "python3", 300)]
    if not hasattr(pynvml, "nvmlDeviceGetComputeRunningProcesses_v2"):
        expected = []
    assert [(p.pid, p.name, p.memory_used_mib) for p in statuses[0].processes] == expected


async def test_functions_reported_missing_read_as_none(fake_nvml, start_service):
    config = _old_driver_config(fake_nvml)
    config["missing_functions"] = OLD_DRIVER
    fake_nvml.write(config)
    service = await start_service()
    _assert_old_driver_answers(await service.inventory(), await service.status())


async def test_symbols_absent_from_the_library_read_as_none(
    fake_nvml, fake_nvml_lib_variant, start_service
):
    library = fake_nvml_lib_variant(OLD_DRIVER)
    fake_nvml.write(_old_driver_config(fake_nvml))
    service = await start_service(str(library))
    _assert_old_driver_answers(await service.inventory(), await service.status())


async def test_a_failing_field_is_none_with_one_warning(fake_nvml, start_service, caplog):
    fake_nvml.update(lambda c: c["gpus"][0].update(temperature="GPU_IS_LOST"))
    service = await start_service()
    with caplog.at_level(logging.WARNING, logger="nvplugin.gpu.nvml"):
        for _ in range(3):
            service.status_cache.max_age = -1.0
            assert (await service.status())[0].temperature_c is None
    warnings = [r.getMessage() for r in caplog.records if "temperature" in r.getMessage()]
    assert warnings == ["NVML cannot read temperature: GPU is lost; reporting it as N/A"]


@pytest.mark.parametrize(("error", "message"), [
    ("DRIVER_NOT_LOADED",
     "the NVIDIA kernel module is not loaded (load it with 'modprobe nvidia')"),
    ("NO_PERMISSION",
     "no permission to open /dev/nvidiactl (run as root or in the device's group)"),
    ("UNKNOWN", "Unknown Error"),
])
async def test_init_failures_make_the_service_unavailable(fake_nvml, start_service, error, message):
    fake_nvml.update(lambda c: c.update(init_error=error))
    service = await start_service()
    assert not service.available
    assert service.reason == f"NVML could not be loaded from {fake_nvml.library}: {message}"
    for call in (service.inventory(), service.status(), service.driver_version()):
        with pytest.raises(NvmlError, match="NVML could not be loaded"):
            await call
    with pytest.raises(NvmlError):
        service.select("0")


@pytest.mark.parametrize("wording", [
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  575.57.08  Sat May 24 07:21:20 UTC 2025",
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  575.57.08  Release Build  (dvs)",
], ids=["proprietary", "open"])
async def test_version_mismatch_names_both_versions(
    fake_nvml, start_service, host_root: Path, tmp_path: Path, wording: str
):
    (host_root / "proc/driver/nvidia/version").write_text(wording + "\n")
    versioned = tmp_path / "lib" / "libnvidia-ml.so.580.159.04"
    versioned.parent.mkdir()
    versioned.write_bytes(fake_nvml.library.read_bytes())
    link = versioned.with_name("libnvidia-ml.so.1")
    link.symlink_to(versioned.name)
    fake_nvml.update(lambda c: c.update(init_error="LIB_RM_VERSION_MISMATCH"))
    service = await start_service(str(link))
    assert service.reason == ("Driver/library version mismatch: kernel module 575.57.08, "
                              "user space 580.159.04; reboot or reload the nvidia module")


async def test_missing_library_file(start_service, tmp_path: Path):
    service = await start_service(str(tmp_path / "libnvidia-ml.so.1"))
    assert service.reason == (f"NVML could not be loaded from {tmp_path}/libnvidia-ml.so.1: "
                              "No such file or directory")


async def test_a_gpu_without_a_handle_is_a_hard_error(fake_nvml, start_service):
    config = fake_nvml.make_config(2)
    config["gpus"][1]["handle_error"] = "GPU_IS_LOST"
    fake_nvml.write(config)
    service = await start_service()
    assert service.reason == "GPU 1: nvmlDeviceGetHandleByIndex: GPU is lost"


async def test_a_gpu_without_a_minor_is_unsupported(fake_nvml, start_service):
    fake_nvml.update(lambda c: c["gpus"][0].update(minor="NOT_SUPPORTED"))
    service = await start_service()
    assert service.reason == "unsupported GPU device: GPU 0 has no minor number (Not Supported)"


async def test_numa_node_from_nvml_else_sysfs_else_none(fake_nvml, start_service, host_root):
    config = fake_nvml.make_config(3)
    config["gpus"][0]["numa_node"] = 1
    config["gpus"][2]["numa_node"] = -1
    config["gpus"][1]["bus_id"] = "00000000:3B:00.0"
    fake_nvml.write(config)
    # NVML's 8-digit domain, sysfs' 4-digit lower-case one (1.0 looked up the former)
    sysfs = host_root / "sys/bus/pci/devices/0000:3b:00.0"
    sysfs.mkdir(parents=True)
    (sysfs / "numa_node").write_text("1\n")
    service = await start_service()
    gpus = (await service.inventory()).gpus
    assert gpus[1].bus_id == "00000000:3B:00.0"
    # nvidia-ml-py before 12.550 has no NUMA node wrapper: only sysfs can tell
    from_nvml = 1 if hasattr(pynvml, "nvmlDeviceGetNumaNodeId") else None
    assert [g.cpu_affinity for g in gpus] == [from_nvml, 1, None]


def _sysfs_tree(root: Path, *, numa_node: str, nodes: tuple[int, ...]) -> None:
    """The H200's sysfs view: the GPU's numa_node, and the machine's NUMA node directories."""
    device = root / "sys/bus/pci/devices/0000:00:06.0"
    device.mkdir(parents=True)
    (device / "numa_node").write_text(f"{numa_node}\n")
    (device / "local_cpulist").write_text("0-15\n")
    system = root / "sys/devices/system/node"
    system.mkdir(parents=True)
    for node in nodes:
        (system / f"node{node}").mkdir()
        (system / f"node{node}/cpulist").write_text("0-15\n")
    # Entries that are not nodes: the kernel lists these beside them.
    (system / "possible").write_text("0\n")
    (system / "power").mkdir()


@pytest.mark.parametrize(("numa_node", "nodes", "expected"), [
    ("-1", (0,), 0),  # the H200: one node, so every CPU, the GPU's included, is node 0's
    ("-1", (1,), 1),  # one node need not be node 0
    ("-1", (0, 1), None),  # two nodes and no word from the firmware: unknown, not node 0
    ("1", (0, 1), 1),
])
async def test_numa_node_minus_one_is_the_only_node_else_unknown(
        fake_nvml, start_service, host_root, numa_node, nodes, expected):
    # The H200's bus id; NVML has no NUMA node for a GPU that is not one (the H200 answers so).
    fake_nvml.write(fake_nvml.make_config(gpus=[gpu(0, bus_id="00000000:00:06.0",
                                                    numa_node="NOT_SUPPORTED")]))
    _sysfs_tree(host_root, numa_node=numa_node, nodes=nodes)
    service = await start_service()
    assert (await service.inventory()).gpus[0].cpu_affinity == expected


async def test_numa_node_minus_one_from_nvml_follows_the_same_rule(fake_nvml, start_service,
                                                                    host_root):
    fake_nvml.write(fake_nvml.make_config(gpus=[gpu(0, numa_node=-1)]))
    (host_root / "sys/devices/system/node/node0").mkdir(parents=True)
    service = await start_service()
    # Without the wrapper (nvidia-ml-py before 12.550) nothing tells: no sysfs file here.
    expected = 0 if hasattr(pynvml, "nvmlDeviceGetNumaNodeId") else None
    assert (await service.inventory()).gpus[0].cpu_affinity == expected


async def test_nvlinks_counted_per_peer_and_through_switches(fake_nvml, start_service):
    config = fake_nvml.make_config(3)
    buses = [g["bus_id"] for g in config["gpus"]]
    config["gpus"][0]["nvlinks"] = [buses[1], buses[1], None, buses[2], "00000000:C0:00.0"]
    config["gpus"][0]["p2p"] = [0, 0, 5]  # GPU 2 not reachable peer-to-peer
    fake_nvml.write(config)
    service = await start_service()
    gpu = (await service.inventory()).gpus[0]
    # 2 direct links to GPU 1, plus 1 to an NVSwitch that reaches every peer
    assert gpu.topology == (P2PLink(bus_id=buses[1], link=5, nvlinks=3),)


async def test_mig_devices_with_their_access_nodes(fake_nvml, start_service, host_root):
    need_root()  # mknod
    write_mig_capabilities(host_root, host_root, minors={(1, 0): (12, 13), (2, 0): (21, 22)})
    fake_nvml.update(lambda c: c["gpus"][0].update(mig_mode=True, mig_devices=[
        {"uuid": "MIG-aaaa1111-0000-0000-0000-000000000000", "gpu_instance_id": 1,
         "compute_instance_id": 0},
        None,
        {"uuid": "MIG-bbbb2222-0000-0000-0000-000000000000", "gpu_instance_id": 2,
         "compute_instance_id": 0},
        {"uuid": "MIG-cccc3333-0000-0000-0000-000000000000", "gpu_instance_id": 3,
         "compute_instance_id": 0},
    ]))
    service = await start_service()
    gpu = (await service.inventory()).gpus[0]
    assert gpu.mig_mode is True
    assert [(m.index, m.uuid[:8], m.gpu_instance, m.compute_instance)
            for m in gpu.mig_devices] == [(0, "MIG-aaaa", 1, 0), (2, "MIG-bbbb", 2, 0),
                                          (3, "MIG-cccc", 3, 0)]
    caps = host_root / "dev/nvidia-caps"
    assert gpu.mig_devices[1].caps == (
        DeviceNode(str(caps / "nvidia-cap21"), "/dev/nvidia-caps/nvidia-cap21"),
        DeviceNode(str(caps / "nvidia-cap22"), "/dev/nvidia-caps/nvidia-cap22"))
    # GI 3 has no capability files: the instance is gone (or never was); it cannot be handed out.
    assert gpu.mig_devices[2].caps == ()
    assert "capabilities/gpu0/mig/gi3/access cannot be read" in gpu.mig_devices[2].access_problem
    picked = service.select("0:2")
    assert picked.gpus == (gpu,) and picked.mig_devices == ((gpu, gpu.mig_devices[1]),)
    assert selection_nodes(picked) == (DeviceNode(gpu.host_path, "/dev/nvidia0"),
                                       *gpu.mig_devices[1].caps)
    assert service.select("MIG-aaaa").mig_devices[0][1].index == 0
    with pytest.raises(DeviceAccessError, match="MIG device 0:3 "):
        selection_nodes(service.select("0:3"))
    with pytest.raises(SelectionError):
        service.select("0:1")  # an empty slot


async def test_driver_version_is_read_live(fake_nvml, start_service):
    service = await start_service()
    assert await service.driver_version() == "580.159.04"
    fake_nvml.update(lambda c: c.update(driver_version="580.200.01", cuda_version=13010))
    inventory = await service.inventory()
    assert (inventory.versions.driver, inventory.versions.cuda) == ("580.200.01", "13.1")


async def test_refresh_rereads_the_gpus(fake_nvml, start_service):
    service = await start_service()
    assert len((await service.inventory()).gpus) == 1
    fake_nvml.write(fake_nvml.make_config(3))
    await service.refresh()
    assert len((await service.inventory()).gpus) == 3
    fake_nvml.update(lambda c: c.update(init_error="DRIVER_NOT_LOADED"))
    await service.refresh()
    assert not service.available and "not loaded" in (service.reason or "")
    fake_nvml.update(lambda c: c.pop("init_error"))
    await service.refresh()
    assert service.available


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_versions_are_at_most_a_second_old_and_a_refresh_forgets_them(fake_nvml,
                                                                            start_service):
    clock = Clock()
    service = await start_service(clock=clock)
    first = await service.inventory()
    fake_nvml.update(lambda c: c.update(driver_version="580.200.01"))
    clock.now += 0.9
    assert await service.inventory() is first  # no NVML call: the same record
    clock.now += 0.2
    assert (await service.inventory()).versions.driver == "580.200.01"
    assert await service.driver_version() == "580.200.01"  # never cached
    fake_nvml.write(fake_nvml.make_config(3))
    await service.refresh()
    assert len((await service.inventory()).gpus) == 3  # at once, whatever the clock says


async def test_control_nodes_are_looked_for_at_most_a_second_ago(start_service, host_root):
    clock = Clock()
    service = await start_service(clock=clock)
    for name in ("nvidiactl", "nvidia-uvm"):
        (host_root / "dev" / name).touch()
    assert [n.path for n in await service.control_nodes()] == ["/dev/nvidiactl", "/dev/nvidia-uvm"]
    (host_root / "dev/nvidia-uvm-tools").touch()
    assert len(await service.control_nodes()) == 2
    clock.now += 1.0
    assert len(await service.control_nodes()) == 3
