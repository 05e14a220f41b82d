"""The doctor's pure parts: decisions from facts, rendering and the exit status."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from nvplugin.cdi.spec import Device, Edits, Node, Spec
from nvplugin.cli import doctor_checks
from nvplugin.cli.doctor_checks import FAIL, PASS, SKIP, WARN, Check, Name, health_check
from nvplugin.core.errors import CdiError, DriverNotFound
from nvplugin.volumes.usage import DiskUsage


def test_matching_versions_pass_and_a_mismatch_fails_with_the_nvml_wording():
    assert doctor_checks.compare_versions("580.159.04", "580.159.04").status == PASS
    mismatch = doctor_checks.compare_versions("575.51.02", "580.159.04")
    assert mismatch.status == FAIL
    assert "Driver/library version mismatch" in mismatch.detail
    assert "575.51.02" in mismatch.detail and "580.159.04" in mismatch.detail
    assert "reboot" in mismatch.fix
    assert doctor_checks.compare_versions("580.159.04", None).status == FAIL


def test_node_states():
    chr_rw = stat.S_IFCHR | 0o666
    path = Path("/dev/nvidia0")
    assert doctor_checks.node_check("n", path, chr_rw, True) is None
    assert doctor_checks.node_check("n", path, None, False).status == FAIL
    assert "not a character device" in doctor_checks.node_check("n", path, stat.S_IFREG | 0o666,
                                                         True).detail
    assert doctor_checks.node_check("n", path, chr_rw, False).status == FAIL
    private = doctor_checks.node_check("n", path, stat.S_IFCHR | 0o600, True)
    assert private.status == WARN and "0600" in private.detail and "chmod 0666" in private.fix


def test_stale_versions_are_named_with_their_space_and_how_they_go():
    kind = Path("/v/nvidia_driver")
    facts = doctor_checks.VolumeFacts
    mib = 1 << 20
    assert doctor_checks.stale_check([facts("580.159.04")], "580.159.04", kind).status == PASS
    assert doctor_checks.stale_check([], None, kind).status == PASS
    stale = doctor_checks.stale_check(
        [facts("580.159.04"), facts("570.86.15", DiskUsage(412 * mib, 380 * mib)),
         facts("575.51.03", DiskUsage(100 * mib, 0), mounts=2)], "580.159.04", kind)
    assert stale.status == WARN
    assert stale.detail == (
        "volumes of old drivers: 570.86.15 (412.0 MiB, 380.0 MiB of them freed by removal), "
        "575.51.03 (100.0 MiB, 0.0 MiB of them freed by removal; mounted by 2 container(s)); "
        "512.0 MiB, 380.0 MiB of them freed by removal in all (current 580.159.04)")
    assert stale.fix == (
        "nvidia-docker-plugin gc removes those no container mounts; stop the containers using "
        "nvidia_driver_575.51.03 (docker ps --filter volume=nvidia_driver_575.51.03) and it "
        "goes, unless the daemon runs with --keep-old-volumes")
    only_mounted = doctor_checks.stale_check([facts("575.51.03", None, mounts=1)], "580.1", kind)
    assert "size unknown" in only_mounted.detail and "gc" not in only_mounted.fix
    assert doctor_checks.stale_check([facts("570.86.15")], None, kind).status == WARN


def test_exit_status_fails_only_on_failures():
    assert doctor_checks.exit_status([Check("a", PASS, ""), Check("b", WARN, "", "x"),
                               Check("c", SKIP, "")]) == 0
    assert doctor_checks.exit_status([Check("a", PASS, ""), Check("b", FAIL, "", "x")]) == 1


def test_text_has_one_line_per_check_and_a_fix_line_per_problem():
    checks = [Check(Name.DRIVER, PASS, "module 1.2 loaded"),
              Check(Name.UVM, FAIL, "/dev/nvidia-uvm is missing", "nvidia-modprobe -u -c=0"),
              Check(Name.REST, SKIP, "disabled")]
    lines = doctor_checks.render_text(checks).splitlines()
    assert lines[0].split() == ["PASS", "driver-module", "module", "1.2", "loaded"]
    assert lines[1].startswith("FAIL  nvidia-uvm ")
    assert lines[2].strip() == "fix: nvidia-modprobe -u -c=0"
    assert lines[3].startswith("SKIP  rest-api ")
    assert lines[-1] == "1 passed, 0 warning(s), 1 failed, 1 skipped"


def test_json_is_a_list_of_check_status_detail_fix():
    checks = [Check(Name.DOCKER, FAIL, "not reachable", "start Docker")]
    assert json.loads(doctor_checks.render_json(checks)) == [
        {"check": "docker", "status": "FAIL", "detail": "not reachable", "fix": "start Docker"}]


def test_node_problems_merge_into_one_check_at_the_worst_status():
    dev, chr_rw = Path("/dev"), stat.S_IFCHR | 0o666
    ctl, gpu0, gpu1 = dev / "nvidiactl", dev / "nvidia0", dev / "nvidia1"
    fine = doctor_checks.nodes_check(dev, [(ctl, chr_rw, True), (gpu0, chr_rw, True)])
    assert fine.status == PASS and "1 GPU node(s)" in fine.detail
    one = doctor_checks.nodes_check(dev, [(ctl, chr_rw, True), (gpu0, None, False)])
    assert one == doctor_checks.node_check(Name.NODES, gpu0, None, False)
    both = doctor_checks.nodes_check(dev, [(ctl, stat.S_IFCHR | 0o600, True), (gpu0, chr_rw, True),
                                           (gpu1, None, False)])
    assert both.status == FAIL and both.detail.count(";") == 1
    assert both.fix.startswith("chmod 0666")  # the first problem's fix


def test_a_missing_uvm_node_says_what_fails():
    uvm = Path("/dev/nvidia-uvm")
    assert doctor_checks.uvm_check(uvm, stat.S_IFCHR | 0o666, True).status == PASS
    missing = doctor_checks.uvm_check(uvm, None, False)
    assert missing.status == FAIL and "CUDA programs fail" in missing.detail
    assert doctor_checks.uvm_check(uvm, stat.S_IFREG, True).detail.endswith("character device")


def test_health_passes_when_every_gpu_is_healthy_and_warns_with_each_reason():
    ok = {"Status": "healthy", "Reason": None, "Since": "2026-01-01T00:00:00.000Z"}
    assert health_check([{"Index": 0, "Health": ok}, {"Index": 1, "Health": ok}]) == Check(
        Name.HEALTH, PASS, "all 2 GPU(s) healthy")
    sick = {"Status": "unhealthy", "Reason": "double-bit ECC error",
            "Since": "2026-01-01T00:00:01.000Z"}
    check = health_check([{"Index": 0, "Health": ok}, {"Index": 1, "Health": sick}])
    assert (check.status, check.detail) == (
        WARN, "GPU 1 unhealthy since 2026-01-01T00:00:01.000Z: double-bit ECC error")
    assert "--health-recovery" in check.fix


def _spec(*names: str) -> Spec:
    node = Node("/dev/nvidia0", "/dev/nvidia0")
    return Spec("nvidia.com/gpu", tuple(Device(n, Edits(nodes=(node,))) for n in names),
                Edits(nodes=(Node("/dev/nvidiactl", "/dev/nvidiactl"),)))


def test_cdi_spec_verdicts():
    path = Path("/var/run/cdi/nvidia-docker.json")
    now = _spec("0", "all")
    check = doctor_checks.cdi_spec_check
    assert check(None, None, now, read_by_default=True).status == SKIP
    ok = check(path, now, now, read_by_default=True)
    assert ok.status == PASS and "matches the driver and GPUs now: 2 devices" in ok.detail
    assert "unless told" not in ok.detail
    elsewhere = check(Path("/srv/cdi/nvidia-docker.json"), now, now, read_by_default=False)
    assert elsewhere.status == PASS
    assert "engines read /etc/cdi and /var/run/cdi unless told to read /srv/cdi" in \
        elsewhere.detail
    stale = check(path, _spec("0", "1", "all"), now, read_by_default=True)
    assert stale.status == FAIL and f"{path} is stale" in stale.detail
    assert "devices removed: 1" in stale.detail and "systemctl reload" in stale.fix
    missing = check(path, None, now, read_by_default=True)
    assert missing.status == FAIL and "the daemon is not running" in missing.detail
    gone = check(path, now, DriverNotFound("no NVIDIA driver found under /"), read_by_default=True)
    assert gone.status == FAIL and "no spec can be made now (no NVIDIA driver" in gone.detail
    neither = check(path, None, DriverNotFound("no driver"), read_by_default=True)
    assert neither.status == FAIL and "none can be made: no driver" in neither.detail
    foreign = check(path, CdiError("not a CDI spec nvplugin writes: x"), now,
                    read_by_default=True)
    assert foreign.status == FAIL and foreign.fix.startswith(f"remove {path}")


def test_cdi_conflict_verdicts():
    check = doctor_checks.cdi_conflicts_check
    ours = Path("/var/run/cdi/nvidia-docker.json")
    assert check("nvidia.com/gpu", ours, []).status == PASS
    toolkit = check("nvidia.com/gpu", ours, [(Path("/var/run/cdi/nvidia.yaml"), True)])
    assert toolkit.status == FAIL and "/var/run/cdi/nvidia.yaml also claim nvidia.com/gpu" in \
        toolkit.detail
    assert "nvidia-cdi-refresh.path" in toolkit.fix and "--cdi-kind" in toolkit.fix
    static = check("nvidia.com/gpu", ours, [(Path("/etc/cdi/old.json"), False)])
    assert static.status == WARN and "ours wins for the names both define" in static.detail
    assert "nvidia-cdi-refresh" not in static.fix
