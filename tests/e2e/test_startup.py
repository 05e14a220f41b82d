"""Start-up of the real daemon: what it imports before it serves, that it serves before NVML and
discovery are done without answering wrongly, and the background build of the driver's volume.

Figures (how fast, how much memory) are in bench/bench_startup.py; these tests prove the
structure that makes them, so that features added later stay off the serving path.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nvplugin.cli.serve import IO_THREADS
from tests.dockerenv import PluginDaemon, wait_for
from tests.unixhttp import unix_post

StartPlugin = Callable[..., PluginDaemon]
REPO = Path(__file__).resolve().parents[2]

# Our modules the daemon imports before its sockets answer. A module added here is a conscious
# choice: anything else (doctor, list, the engine client, metrics, pages, CDI, ...) must load
# when it is used, or after "Serving remote API".
SERVING_PATH = {
    "nvplugin", "nvplugin.cli", "nvplugin.cli.lean_import", "nvplugin.cli.main",
    "nvplugin.cli.serve",
    "nvplugin.core", "nvplugin.core.atomicfile", "nvplugin.core.config", "nvplugin.core.errors",
    "nvplugin.core.hostpath", "nvplugin.core.ioprio", "nvplugin.core.later", "nvplugin.core.logs",
    "nvplugin.core.names", "nvplugin.core.phases", "nvplugin.core.regularfile",
    "nvplugin.core.single_flight", "nvplugin.core.text",
    "nvplugin.driver", "nvplugin.driver.catalog", "nvplugin.driver.discovery",
    "nvplugin.driver.driver_version", "nvplugin.driver.elfinfo", "nvplugin.driver.hostroot",
    "nvplugin.driver.ldcache", "nvplugin.driver.library_choice", "nvplugin.driver.manifest",
    "nvplugin.driver.state",
    "nvplugin.gpu", "nvplugin.gpu.cuda", "nvplugin.gpu.devnodes", "nvplugin.gpu.facts",
    "nvplugin.gpu.nvml",
    "nvplugin.gpu.records", "nvplugin.gpu.selection", "nvplugin.gpu.service",
    "nvplugin.volumes", "nvplugin.volumes.build", "nvplugin.volumes.clone",
    "nvplugin.volumes.mount_table", "nvplugin.volumes.names", "nvplugin.volumes.store",
    "nvplugin.api", "nvplugin.api.json_docs", "nvplugin.api.launch_args", "nvplugin.api.plugin",
    "nvplugin.api.plugin_socket", "nvplugin.api.rest_app", "nvplugin.api.tabwriter",
    "nvplugin.api.text_pages",
    # CDI's name rules (the kind is checked with the arguments): its records, builder and
    # keeper load after the sockets answer, with the spec's keeper
    "nvplugin.cdi", "nvplugin.cdi.names",
    # the light middleware only: health and its records, /metrics and the page load later
    "nvplugin.observe", "nvplugin.observe.timing",
    "nvplugin.web", "nvplugin.web.routes",
}
# Loaded after the sockets answer: GPU health (with the Engine client behind container names),
# the CDI spec's keeper, the metrics registry and the GPU page.
LATER = ("nvplugin.observe.service", "nvplugin.engine.client", "nvplugin.observe.exposition",
         "prometheus_client", "nvplugin.web.feed", "nvplugin.web.panels", "nvplugin.cdi.writer",
         "nvplugin.cdi.build", "nvplugin.cdi.spec", "nvplugin.observe.records",
         # records nothing needs before the first reading, build or page (~0.5 ms each)
         "nvplugin.gpu.readings", "nvplugin.gpu.status_cache", "nvplugin.gpu.cuda_report",
         "nvplugin.volumes.reports", "nvplugin.web.page", "nvplugin.web.documents")
# Standard modules the daemon has no use for at start-up, each costing milliseconds and
# megabytes (importlib.metadata pulls in zipfile and csv; pyelftools pulls in pdb).
HEAVY_STDLIB = {"importlib.metadata", "zipfile", "csv", "pdb", "tracemalloc", "multiprocessing",
                "sqlite3", "unittest", "doctest", "xml.etree.ElementTree", "http.client",
                "urllib.request", "tarfile", "lzma", "bz2"}
FLOOR = "import aiohttp, pynvml"


def imported(lines: list[str]) -> list[str]:
    """Module names from `-X importtime` lines, in the order their imports finished."""
    return [line.rsplit("|", 1)[-1].strip() for line in lines
            if line.startswith("import time:") and "|" in line and "cumulative" not in line]


def floor_modules() -> set[str]:
    """What `import aiohttp, pynvml` itself imports: the daemon's floor."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", FLOOR], cwd=REPO,
                          capture_output=True, text=True, check=True)
    return set(imported(done.stderr.splitlines()))


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode()


def test_the_serving_path_imports_only_what_it_needs(running_plugin: StartPlugin):
    daemon = running_plugin(python_flags=("-X", "importtime"))
    # Every route once, and a volume built and mounted: what serving uses is loaded now.
    for route in ("gpu/info", "gpu/info/json", "gpu/status", "gpu/status/json", "docker/cli",
                  "docker/cli/json", "mesos/cli", "driver/files"):
        assert http_get(f"{daemon.url}/v1.0/{route}")[0] == 200, route
    name = f"nvidia_driver_{daemon.host.version}"
    assert b'"Err":null' in _post(daemon.socket_path, "/VolumeDriver.Mount", {"Name": name})
    lines = daemon.log().splitlines()
    serving = next(i for i, line in enumerate(lines) if "Serving remote API at" in line)
    before, everything = imported(lines[:serving]), imported(lines)
    floor = floor_modules()

    ours = {m for m in before if m.split(".")[0] == "nvplugin"}
    assert ours - SERVING_PATH == set(), "imported before the sockets answer"
    # Third-party packages: only those the floor loads (aiohttp's own submodules are ours to
    # choose: aiohttp.web is the server).
    stdlib = set(sys.stdlib_module_names)
    packages = {m.split(".")[0] for m in before} - stdlib - {"nvplugin"}
    assert packages - {m.split(".")[0] for m in floor} == set(), f"beyond what '{FLOOR}' loads"
    assert (HEAVY_STDLIB & set(before)) - floor == set()
    for later in LATER:
        assert later not in before and later in everything, later
    # Used only for unusual ELF files, `list` and the wrapper: not by serving at all (doctor's
    # probes load when the GPU page's panel first reads them: a status request watches it).
    for never in ("elftools", "docker", "nvplugin.cli.listing", "nvplugin.wrapper"):
        assert not [m for m in everything if m == never or m.startswith(never + ".")], never


def test_nvml_starts_loading_before_the_web_stack_is_imported(running_plugin: StartPlugin):
    """NVML's init (C, hundreds of ms on a big host) overlaps the imports of aiohttp."""
    daemon = running_plugin(python_flags=("-X", "importtime"))
    lines = daemon.log().splitlines()
    loading = next(i for i, line in enumerate(lines)
                   if line.endswith("Loading NVIDIA management library"))
    first_aiohttp = next(i for i, line in enumerate(lines) if line.startswith("import time:")
                         and line.rsplit("|", 1)[-1].strip().split(".")[0] == "aiohttp")
    assert loading < first_aiohttp


def test_metrics_count_the_requests_answered_before_the_registry_loaded(
        running_plugin: StartPlugin):
    """The registry (prometheus_client) loads after the sockets answer: requests before it are
    timed all the same, and a scrape meanwhile waits for it rather than failing."""
    daemon = running_plugin(nvml={"init_delay_ms": 2000}, settled=False)
    early = 0
    while "Start-up took" not in daemon.log() and early < 200:
        assert _post(daemon.socket_path, "/Plugin.Activate", {}).startswith(b"HTTP/1.0 200")
        early += 1
    assert "Start-up took" not in daemon.log()  # NVML is still initialising
    status, page = http_get(daemon.url + "/metrics")
    assert status == 200
    counted = re.search(r'^nvplugin_plugin_request_duration_seconds_count\{code="200",'
                        r'route="/Plugin.Activate"\} (\d+)', page, re.M)
    # running_plugin's own readiness probes are Activates too
    assert counted is not None and int(float(counted.group(1))) >= early


def test_requests_during_a_slow_nvml_init_wait_and_answer_right(running_plugin: StartPlugin):
    """NVML takes 3 s to initialise: the sockets answer at once, Docker's Activate and List
    are answered, and docker/cli waits for the GPUs and the driver files instead of a 503."""
    daemon = running_plugin(nvml={"init_delay_ms": 3000}, settled=False)
    # running_plugin returns once Activate and the TCP port answer: NVML is still initialising.
    assert "Found 1 GPU(s)" not in daemon.log()
    listed = _post(daemon.socket_path, "/VolumeDriver.List", {})
    assert b'"Err":null' in listed
    assert "Found 1 GPU(s)" not in daemon.log()
    status, body = http_get(daemon.url + "/v1.0/docker/cli")
    assert status == 200
    assert f"--volume=nvidia_driver_{daemon.host.version}:/usr/local/nvidia:ro" in body
    assert "/dev/nvidia0" in body
    log = daemon.log()
    assert log.index("Serving remote API at") < log.index("Found 1 GPU(s)")


def test_a_restart_names_the_volume_it_built_while_nvml_loads(running_plugin: StartPlugin):
    """A restart finds the last run's volume: docker/cli names it once NVML has loaded, without
    waiting for the first discovery (the plugin serves a built volume as it is), and the
    container's Mount is served from it."""
    first = running_plugin()
    version = first.host.version
    built = first.volumes_dir / "nvidia_driver" / version
    assert wait_for(lambda: built.is_dir() and "in the background" in first.log())
    first.stop()
    again = running_plugin(volumes_dir=first.volumes_dir, nvml={"init_delay_ms": 2000},
                           settled=False)
    assert again.host.version == version
    status, body = http_get(again.url + "/v1.0/docker/cli")
    assert status == 200
    assert f"--volume=nvidia_driver_{version}:/usr/local/nvidia:ro" in body
    name = f"nvidia_driver_{version}"
    mounted = _post(again.socket_path, "/VolumeDriver.Mount", {"Name": name, "ID": "a" * 64})
    assert f'"Mountpoint":"{built}"'.encode() in mounted
    assert "Built volume" not in again.log()
    # Let go, as Docker would: a volume still mounted could not be removed after the test.
    unmounted = _post(again.socket_path, "/VolumeDriver.Unmount", {"Name": name, "ID": "a" * 64})
    assert b'"Err":null' in unmounted


def test_the_running_drivers_volume_is_built_in_the_background(running_plugin: StartPlugin):
    daemon = running_plugin()
    version = daemon.host.version
    built = daemon.volumes_dir / "nvidia_driver" / version
    assert wait_for(lambda: built.is_dir() and "in the background" in daemon.log())
    line = next(li for li in daemon.log().splitlines() if "Built volume" in li)
    assert line.endswith("in the background") and f"nvidia_driver_{version} from" in line
    # No request asked for it (readiness probes send Activate only).
    assert [li for li in daemon.log().splitlines()
            if "Received" in li and "activate" not in li] == []
    assert (built / "lib64" / f"libcuda.so.{version}").is_file()


def test_no_prebuild_leaves_the_build_to_the_first_request(running_plugin: StartPlugin):
    daemon = running_plugin(extra_args=("--no-prebuild",))
    time.sleep(0.5)  # what a prebuild would have needed to start, and more
    built = daemon.volumes_dir / "nvidia_driver" / daemon.host.version
    assert not built.exists() and "Built volume" not in daemon.log()
    name = f"nvidia_driver_{daemon.host.version}"
    assert b'"Err":null' in _post(daemon.socket_path, "/VolumeDriver.Create", {"Name": name})
    assert built.is_dir()
    line = next(li for li in daemon.log().splitlines() if "Built volume" in li)
    assert not line.endswith("in the background")


def test_start_up_phases_are_one_debug_line(running_plugin: StartPlugin):
    daemon = running_plugin()
    (line,) = [li for li in daemon.log().splitlines() if "Start-up took" in li]
    for phase in ("entry point", "imports", "nvidia-uvm", "NVML load and init", "GPU inventory",
                  "volume store", "plugin socket", "REST socket", "GPU health",
                  "driver discovery", "ready", "metrics and GPU page"):
        assert f" {phase} " in line, phase
    assert re.search(r"; main thread CPU \d+ ms until ready\)$", line), line
    assert "ELF files read in" in daemon.log()


def test_threads_stay_bounded_under_a_burst(running_plugin: StartPlugin):
    """The daemon's threads (each a stack and a malloc arena) do not grow with the host's CPUs
    or the load: the event loop, NVML's three (calls, the slow side ones, events) and
    IO_THREADS workers."""
    daemon = running_plugin(n_gpus=2)
    name = f"nvidia_driver_{daemon.host.version}"
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(
            lambda i: _post(daemon.socket_path, "/VolumeDriver.Mount" if i % 2 else
                            "/VolumeDriver.Get", {"Name": name, "ID": f"{i:064x}"}),
            range(400)))
        statuses = list(pool.map(lambda _: http_get(daemon.url + "/v1.0/gpu/status")[0],
                                 range(100)))
        # Let go, as Docker would: a volume still mounted could not be removed after the test
        # (Docker 20.10 keeps its record of a volume the plugin refused to remove).
        released = list(pool.map(
            lambda i: _post(daemon.socket_path, "/VolumeDriver.Unmount",
                            {"Name": name, "ID": f"{i:064x}"}), range(1, 400, 2)))
    assert all(b'"Err":null' in a for a in answers) and set(statuses) == {200}
    assert all(b'"Err":null' in a for a in released)
    assert daemon.proc is not None
    threads = len(list(Path(f"/proc/{daemon.proc.pid}/task").iterdir()))
    assert threads <= 1 + 3 + IO_THREADS


def _post(path: Path, route: str, body: dict) -> bytes:
    """A plugin call with a JSON body, as Docker makes it; the test fails if nothing answers."""
    answer = unix_post(path, route, json.dumps(body).encode(), timeout=30)
    assert answer is not None, f"no answer to {route} on {path}"
    return answer
