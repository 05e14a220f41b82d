"""The GPU proof's pure parts: nvidia-smi and ldd parsing, comparison, the report."""

from __future__ import annotations

import pytest

from tests.gpu import report
from tests.gpu.proof import parse_args
from tests.gpu.report import (
    Report,
    bench_summary,
    compare_info,
    first_run_problems,
    format_summary,
    ldd_paths,
    missing_files,
    parse_smi_csv,
    percentile,
    start_up_problems,
)

SMI = """index, uuid, name, pci.bus_id, memory.total [MiB], driver_version
0, GPU-d10c7111-67d9-9e02-1f7a-53d331412b6f, NVIDIA H200, 00000000:00:06.0, 143771 MiB, 580.159.04
"""
INFO = {
    "Version": {"Driver": "580.159.04", "CUDA": "13.0"},
    "Devices": [{"UUID": "GPU-d10c7111-67d9-9e02-1f7a-53d331412b6f", "Model": "NVIDIA H200",
                 "PCI": {"BusID": "00000000:00:06.0"}, "Memory": {"Global": 143771}}],
}


def test_smi_csv_is_parsed_with_units_stripped_from_the_header():
    rows = parse_smi_csv(SMI)
    assert rows == [{"index": "0", "uuid": "GPU-d10c7111-67d9-9e02-1f7a-53d331412b6f",
                     "name": "NVIDIA H200", "pci.bus_id": "00000000:00:06.0",
                     "memory.total": "143771 MiB", "driver_version": "580.159.04"}]


def test_matching_info_has_no_problems():
    assert compare_info(parse_smi_csv(SMI), INFO) == []


@pytest.mark.parametrize(("path", "value", "needle"), [
    (("Devices", 0, "Model"), "NVIDIA H100", "name"),
    (("Devices", 0, "Memory", "Global"), 1, "memory.total"),
    (("Version", "Driver"), "570.1", "driver_version"),
], ids=["name", "memory", "driver"])
def test_each_difference_is_named(path, value, needle):
    import copy

    info = copy.deepcopy(INFO)
    target = info
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    problems = compare_info(parse_smi_csv(SMI), info)
    assert len(problems) == 1 and needle in problems[0]


def test_gpu_count_mismatch_is_reported():
    assert "GPU count" in compare_info(parse_smi_csv(SMI), {"Version": {}, "Devices": []})[0]


def test_ldd_paths_include_the_loader():
    out = """\tlinux-vdso.so.1 (0x00007ffc)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f)
"""
    assert ldd_paths(out) == ["/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]


def test_missing_files_names_what_list_lacks():
    listing = {"Files": [
        {"kind": "lib", "dest": "lib64/libcuda.so.580.1"},
        {"kind": "lib", "dest": "lib64/libnvidia-ml.so.570.9"},
        {"kind": "bin", "dest": "bin/nvidia-smi"},
    ]}
    problems = missing_files(listing, "580.1", ["libcuda", "libnvidia-ml", "libnvidia-nvvm"],
                             ["nvidia-smi", "nvidia-debugdump"])
    assert problems == ["libnvidia-ml: not at version 580.1: ['lib64/libnvidia-ml.so.570.9']",
                        "libnvidia-nvvm: not selected", "nvidia-debugdump: not selected"]


def test_summary_counts_and_timings(capsys):
    report = Report()
    report.add("one", True)
    report.add("two", False, "why")
    report.timings["x"] = "1 ms"
    text = format_summary(report)
    assert "1 passed, 1 failed" in text and "x  1 ms" in text
    assert not report.ok
    assert "[FAIL] two\n       why" in capsys.readouterr().out


def test_percentile_and_arguments():
    assert percentile([3, 1, 2], 50) == 2
    args = parse_args(["--wheels", "w", "--report", "r"])
    assert (args.wheels, args.report, args.keep_log) == ("w", "r", None)


def test_smi_fields_within_tolerance_agree_and_others_are_named():
    from tests.gpu.report import SMI_LIVE, compare_fields

    ours = {"Temperature": 33, "Power": 120, "Memory": {"GlobalUsed": 500},
            "Clocks": {"Cores": 345, "Memory": 3201}, "Utilization": {"GPU": None}}
    row = {"temperature.gpu": "34", "power.draw": "118.52", "memory.used": "501",
           "clocks.sm": "345", "clocks.mem": "3201", "utilization.gpu": "[N/A]"}
    lines, problems = compare_fields(row, ours, SMI_LIVE)
    assert problems == [] and len(lines) == len(SMI_LIVE)
    row["temperature.gpu"], row["utilization.gpu"] = "40", "0"
    _, problems = compare_fields(row, ours, SMI_LIVE)
    assert problems == ["temperature.gpu: nvidia-smi 40, ours 33",
                        "utilization.gpu: nvidia-smi '0', ours None"]


def test_ldconfig_driver_libraries_resolve_links_to_versioned_files():
    from tests.gpu.report import ldconfig_driver_libraries

    text = """3 libs found in cache `/etc/ld.so.cache'
\tlibcuda.so.1 (libc6,x86-64) => /usr/local/nvidia/lib64/libcuda.so.1
\tlibcuda.so.1 (libc6,x86-64) => /lib/libcuda.so.1
\tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1
"""
    links = {"/usr/local/nvidia/lib64/libcuda.so.1": "/usr/local/nvidia/lib64/libcuda.so.580.1",
             "/lib/libcuda.so.1": "/usr/local/nvidia/lib64/libcuda.so.580.1"}
    found = ldconfig_driver_libraries(text, lambda p: links.get(p, p), "580.1")
    assert found == {"libcuda.so.580.1"}


UUID = "GPU-d10c7111-67d9-9e02-1f7a-53d331412b6f"


def test_the_cdi_spec_check_names_what_is_missing():
    from tests.gpu.report import check_cdi_spec

    good = {"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
            "devices": [{"name": "0"}, {"name": UUID}, {"name": "all"}]}
    assert check_cdi_spec(good, [UUID], 0o644) == []
    assert check_cdi_spec({**good, "cdiVersion": "0.6.0"}, [UUID], 0o644) == [
        "cdiVersion '0.6.0', expected 0.5.0"]
    assert check_cdi_spec({**good, "devices": [{"name": "0"}]}, [UUID], 0o600) == [
        f"no device {UUID!r}", "no device 'all'", "mode 0o600, expected 0o644"]


MOUNTINFO = "\n".join((
    "612 590 0:45 / / rw,relatime - overlay overlay rw,lowerdir=/x",
    "640 612 7:3 /lib64/libcuda.so.580.159.04 /usr/local/nvidia/lib64/libcuda.so.1 "
    "ro,nosuid,nodev,relatime - squashfs /dev/loop3 ro",
    "641 612 7:3 /lib64/libcuda.so.580.159.04 /usr/lib/x86_64-linux-gnu/libcuda.so.1 "
    "rw,nosuid,relatime - squashfs /dev/loop3 ro",
))


def test_bind_mounts_are_checked_for_their_source_and_options():
    from tests.gpu.report import check_bind_mounts, parse_mountinfo

    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts["/usr/local/nvidia/lib64/libcuda.so.1"] == (
        "/lib64/libcuda.so.580.159.04", ["ro", "nosuid", "nodev", "relatime"])
    source = "/lib64/libcuda.so.580.159.04"
    assert check_bind_mounts(MOUNTINFO, {"/usr/local/nvidia/lib64/libcuda.so.1": source}) == []
    assert check_bind_mounts(MOUNTINFO, {
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1": source,
        "/usr/lib64/libcuda.so.1": source,
        "/usr/local/nvidia/lib64/libcuda.so.1": "/lib64/libcuda.so.575.51.02"}) == [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1 lacks ro,nodev (rw,nosuid,relatime)",
        "/usr/lib64/libcuda.so.1 is not a mount",
        "/usr/local/nvidia/lib64/libcuda.so.1 mounts /lib64/libcuda.so.580.159.04, expected "
        "/lib64/libcuda.so.575.51.02"]


def test_only_the_daemons_own_files_may_be_in_a_cdi_only_volumes_dir():
    from tests.gpu.report import volume_leftovers

    assert volume_leftovers([".lock", "state.json"]) == []
    assert volume_leftovers(["state.json", "nvidia_driver/580.159.04/lib64/libcuda.so.1"]) == [
        "nvidia_driver/580.159.04/lib64/libcuda.so.1"]


HOST_MOUNTINFO = """\
22 1 252:1 / / rw,relatime - ext4 /dev/vda1 rw
30 22 7:3 / /usr/local/nvidia ro,nosuid,nodev,relatime - squashfs /dev/loop3 ro
"""


def test_a_host_file_as_mountinfo_names_its_bind_mount():
    from tests.gpu.report import within_filesystem

    assert within_filesystem("/usr/local/nvidia/lib64/libcuda.so.580.159.04", HOST_MOUNTINFO) \
        == "/lib64/libcuda.so.580.159.04"
    assert within_filesystem("/usr/lib/x86_64-linux-gnu/libcuda.so.1", HOST_MOUNTINFO) == \
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
    assert within_filesystem("/usr/local/nvidia", HOST_MOUNTINFO) == "/"
    assert within_filesystem("/usr/local/nvidiax/y", HOST_MOUNTINFO) == "/usr/local/nvidiax/y"


METRICS_PAGE = """\
# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (C).
# TYPE DCGM_FI_DEV_GPU_TEMP gauge
DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-d10c",pci_bus_id="00000000:00:06.0",device="nvidia0",\
modelName="NVIDIA H200",Hostname="h",DCGM_FI_DRIVER_VERSION="580.159.04"} 31
DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-d10c",pci_bus_id="00000000:00:06.0",device="nvidia0",\
modelName="NVIDIA H200",Hostname="h",DCGM_FI_DRIVER_VERSION="580.159.04"} 74.321
nvplugin_container_gpu_processes{UUID="GPU-d10c",container_id="c",container_name="vec \\"add\\"",\
gpu="0",runtime="docker"} 1.0
nvplugin_gpu_healthy{UUID="GPU-d10c",gpu="0",reason=""} 1.0
"""
SMI_ROW = {"index": "0", "uuid": "GPU-d10c", "name": "NVIDIA H200",
           "pci.bus_id": "00000000:00:06.0", "driver_version": "580.159.04"}


def test_a_metrics_page_is_parsed_and_grouped_by_gpu():
    samples = report.parse_prometheus(METRICS_PAGE)
    assert [s.name for s in samples] == ["DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE",
                                         "nvplugin_container_gpu_processes",
                                         "nvplugin_gpu_healthy"]
    assert report.metrics_by_gpu(samples) == {"0": {"DCGM_FI_DEV_GPU_TEMP": 31.0,
                                                    "DCGM_FI_DEV_POWER_USAGE": 74.321}}
    assert report.container_samples(samples, 'vec "add"') == {
        "nvplugin_container_gpu_processes": 1.0}
    assert report.compare_metric_labels(samples, [SMI_ROW]) == []


def test_metric_labels_unlike_nvidia_smi_are_named():
    samples = report.parse_prometheus(METRICS_PAGE.replace('modelName="NVIDIA H200"',
                                                           'modelName="H200"', 1))
    problems = report.compare_metric_labels(samples, [SMI_ROW])
    assert len(problems) == 1 and "DCGM_FI_DEV_GPU_TEMP gpu=0: {'modelName': 'H200'}" in \
        problems[0]
    assert report.compare_metric_labels(samples, []) == [
        "DCGM_FI_DEV_GPU_TEMP: gpu='0' is no GPU of nvidia-smi's",
        "DCGM_FI_DEV_POWER_USAGE: gpu='0' is no GPU of nvidia-smi's"]


def test_metric_values_are_compared_with_nvidia_smi_as_fields_are():
    ours = report.metrics_by_gpu(report.parse_prometheus(METRICS_PAGE))["0"]
    fields = {k: report.SMI_METRICS[k] for k in ("temperature.gpu", "power.draw",
                                                 "temperature.memory")}
    lines, problems = report.compare_fields(
        {"temperature.gpu": "32", "power.draw": "75.10", "temperature.memory": "[N/A]"},
        ours, fields)
    assert problems == [] and len(lines) == 3  # N/A in nvidia-smi and no sample here agree
    _, problems = report.compare_fields({"temperature.gpu": "32", "power.draw": "75.10",
                                         "temperature.memory": "40"}, ours, fields)
    assert problems == ["temperature.memory: nvidia-smi '40', ours None"]


LIB = "/copy/usr/local/nvidia/lib64/libnvidia-ml.so.580.159.04"
MAPS = "\n".join([
    f"7f1a00000000-7f1a00200000 r--p 00000000 fd:01 1311 {LIB} (deleted)",
    f"7f1a00200000-7f1a00400000 r-xp 00200000 fd:01 1311 {LIB} (deleted)",
    f"7f1b00000000-7f1b00200000 r--p 00000000 fd:01 2422 {LIB}",
    "7f1c00000000-7f1c00001000 r--p 00000000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6",
    "7f1d00000000-7f1d00001000 rw-p 00000000 00:00 0",
])


def test_mapped_files_tell_a_deleted_mapping_from_a_live_one():
    lib = LIB
    assert report.mapped_files(MAPS, "libnvidia-ml") == [
        report.Mapped(1311, lib, True), report.Mapped(2422, lib, False)]
    assert report.mapped_files(MAPS, "libcuda") == []


def test_compare_reload_wants_only_the_new_file_mapped():
    lib = LIB
    old, new = report.Mapped(1311, lib, False), report.Mapped(2422, lib, False)
    assert report.compare_reload([old], [new], 1311, 2422, lib) == []
    both = report.compare_reload([old], report.mapped_files(MAPS, "libnvidia-ml"), 1311, 2422,
                                 lib)
    assert len(both) == 1 and "the old library stays mapped beside the new one" in both[0]
    kept = report.compare_reload([old], [old], 1311, 2422, lib)
    assert "NVML was not reloaded from the new file" in kept[0] and len(kept) == 2
    assert "before" in report.compare_reload([], [new], 1311, 2422, lib)[0]
# The SUMMARY lines of bench_startup.py and bench_first_run.py, as they print them.
START_UP = ('SUMMARY {"ready_ms": 233.9, "socket_ms": 220.7, "floor_bare_ms": 20.8, '
            '"floor_imports_ms": 188.6, "nvml_init_ms": 0.2, "target_ms": 278.4, '
            '"v1_ready_ms": 232.0, "rss_mib": 42.1, "floor_rss_mib": 36.0, '
            '"floor_nvml_rss_mib": 36.1, "rss_end_mib": 43.2, "growth_mib": 0.1, '
            '"requests_per_route": 10000, "threads": 8}')
FIRST_RUN = ('SUMMARY {"prebuild_first_ms": 410.0, "prebuild_later_ms": 395.0, '
             '"no_prebuild_first_ms": 3890.0, "no_prebuild_later_ms": 398.0, '
             '"prebuild_run_at_once_first_ms": 2100.0, "prebuild_run_at_once_later_ms": 401.0, '
             '"build_ms": 3400.0}')


def test_bench_summary_is_the_last_summary_line():
    text = "floors\n  python3 -c ''  20 ms\nSUMMARY {\"ready_ms\": 1}\n\n" + START_UP + "\n"
    figures = bench_summary(text)
    assert figures is not None and figures["ready_ms"] == 233.9 and figures["threads"] == 8.0
    assert bench_summary("no summary here\n") is None
    assert bench_summary("SUMMARY not json\n") is None


def test_start_up_within_the_targets_has_no_problems():
    figures = bench_summary(START_UP)
    assert figures is not None and start_up_problems(figures) == []


@pytest.mark.parametrize(("changes", "needle"), [
    ({"ready_ms": 300.0}, "ready in 300 ms, 111 ms over the floor"),  # neither target
    ({"ready_ms": 300.0, "floor_imports_ms": 260.0}, None),  # floor + 50 = 310 wins
    # Each start against its own round's floor, where the bench gives it, not the medians'.
    ({"ready_ms": 400.0, "floor_imports_ms": 300.0, "ready_over_floor_ms": 45.0}, None),
    ({"ready_ms": 400.0, "floor_imports_ms": 390.0, "ready_over_floor_ms": 55.0},
     "ready in 400 ms, 55 ms over the floor"),
    ({"rss_mib": 46.5}, "RSS 46.5 MiB is 10.5 MiB over the floor's 36.0"),
    ({"growth_mib": 1.5}, "RSS grew 1.5 MiB over 10000 requests of every route"),
], ids=["slow", "slow-floor", "paired", "paired-slow", "heavy", "growing"])
def test_start_up_targets(changes, needle):
    figures = {**(bench_summary(START_UP) or {}), **changes}
    problems = start_up_problems(figures)
    assert (problems == []) if needle is None else any(needle in p for p in problems), problems


def test_start_up_without_memory_figures_checks_the_time_only():
    figures = {k: v for k, v in (bench_summary(START_UP) or {}).items()
               if k.endswith("_ms")}
    assert start_up_problems(figures) == []


@pytest.mark.parametrize(("first", "later", "ok"), [
    (410.0, 395.0, True),  # 15 ms over: within 50 ms
    (500.0, 395.0, False),  # 105 ms over
    (2300.0, 2000.0, True),  # 300 ms over, within 20 % of 2 s
    (3890.0, 398.0, False),  # a first run that builds the volume itself
])
def test_first_run_margin(first, later, ok):
    figures = {**(bench_summary(FIRST_RUN) or {}), "prebuild_first_ms": first,
               "prebuild_later_ms": later}
    problems = first_run_problems(figures)
    assert (problems == []) is ok, problems
    if not ok:
        assert problems[0].startswith(f"the first run after a start took {first:.0f} ms")


def test_only_runs_the_set_up_and_the_named_steps_in_order():
    from tests.gpu.proof import select_steps

    def install() -> None: ...
    def start_daemon() -> None: ...
    def build_image() -> None: ...
    def cdi_podman() -> None: ...
    def timings() -> None: ...

    steps = (install, start_daemon, build_image, cdi_podman, timings)
    assert select_steps(steps, None) == steps
    assert select_steps(steps, "cdi_podman, build_image") == (install, start_daemon, build_image,
                                                              cdi_podman)
    with pytest.raises(ValueError, match="no such step: nope; the steps are install, "):
        select_steps(steps, "nope,timings")
