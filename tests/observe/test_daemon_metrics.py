"""The daemon on a fake GPU host, seen by real consumers: Prometheus scrapes `--metrics-listen`
and answers queries through its HTTP API, `promtool check metrics` parses the page, and a real
container whose PID the fake NVML reports as a GPU process shows up by name in /metrics and
gpu/status/json."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nvplugin.observe import dcgm
from tests.dockerenv import PluginDaemon, free_port, wait_for
from tests.fakenvml.build import append_event, write_config
from tests.requirements import need_tool

pytestmark = [pytest.mark.docker, pytest.mark.root]
MIB = 1 << 20
# promtool's lint problems with dcgm-exporter's own names (kept: its dashboards use them)
LINT = re.compile(r'^(\S+) (counter metrics should have "_total" suffix|label names should be '
                  r'written in \'snake_case\' not \'camelCase\'|metric name should not include '
                  r'type \'counter\')$')


def get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def edit_nvml(daemon: PluginDaemon, change: Callable[[dict[str, Any]], None]) -> None:
    assert daemon.host is not None
    config = json.loads(daemon.host.nvml_config.read_text())
    change(config)
    write_config(daemon.host.nvml_config, config)


def known_readings(config: dict[str, Any]) -> None:
    first, second = config["gpus"]
    first.update(temperature=31, energy_mj=987654321, memory_temperature=41,
                 pcie_replay_count=3, util_gpu=17)
    second.update(temperature=55, util_gpu=88)  # no memory temperature, no energy counter


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Start a Prometheus (Debian's) scraping 127.0.0.1:<port> every second; yields its URL."""
    binary = need_tool("prometheus")
    procs: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> str:
        web_port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: nvplugin\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n")
        log = open(tmp_path / "prometheus.log", "ab")  # noqa: SIM115 - handed to the child
        procs.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{web_port}"], stdout=log, stderr=log))
        log.close()
        url = f"http://127.0.0.1:{web_port}"
        if not wait_for(lambda: _answers(url + "/-/ready"), timeout=60):
            pytest.fail("Prometheus did not start:\n"
                        + (tmp_path / "prometheus.log").read_text()[-3000:])
        return url

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers(url: str) -> bool:
    try:
        get(url, timeout=2)
        return True
    except OSError:
        return False


def query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    answer = json.loads(get(prometheus_url + "/api/v1/query?" + urllib.parse.urlencode(
        {"query": expr})))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_prometheus_scrapes_dcgm_exporters_series(running_plugin, prometheus):
    metrics_port = free_port()
    daemon = running_plugin(2, extra_args=("--metrics-listen", f"127.0.0.1:{metrics_port}"))
    edit_nvml(daemon, known_readings)
    assert daemon.host is not None
    uuids = daemon.host.uuids
    url = prometheus(metrics_port)

    def temperatures() -> dict[str, str]:
        return {r["metric"]["UUID"]: r["value"][1] for r in query(url, "DCGM_FI_DEV_GPU_TEMP")}

    assert wait_for(lambda: temperatures() == {uuids[0]: "31", uuids[1]: "55"}, timeout=60), \
        temperatures()
    series = query(url, "DCGM_FI_DEV_GPU_TEMP")
    labels = {r["metric"]["gpu"]: r["metric"] for r in series}
    assert labels["0"] == {
        "__name__": "DCGM_FI_DEV_GPU_TEMP", "gpu": "0", "UUID": uuids[0],
        "pci_bus_id": "00000000:18:00.0", "device": "nvidia0", "modelName": "NVIDIA H200",
        "Hostname": labels["0"]["Hostname"], "DCGM_FI_DRIVER_VERSION": daemon.host.version,
        "instance": f"127.0.0.1:{metrics_port}", "job": "nvplugin"}
    assert labels["0"]["Hostname"]
    # A field only GPU 0 supports has one series; a counter keeps its name.
    memory = query(url, "DCGM_FI_DEV_MEMORY_TEMP")
    assert [(r["metric"]["gpu"], r["value"][1]) for r in memory] == [("0", "41")]
    energy = query(url, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")
    assert [(r["metric"]["gpu"], r["value"][1]) for r in energy] == [("0", "987654321")]
    util = {r["metric"]["gpu"]: r["value"][1] for r in query(url, "DCGM_FI_DEV_GPU_UTIL")}
    assert util == {"0": "17", "1": "88"}
    healthy = {r["metric"]["UUID"]: (r["metric"].get("reason", ""), r["value"][1])
               for r in query(url, "nvplugin_gpu_healthy")}
    assert healthy == {uuids[0]: ("", "1"), uuids[1]: ("", "1")}
    assert query(url, "process_resident_memory_bytes")  # prometheus_client's own


def test_promtool_parses_the_page_from_both_listeners(running_plugin):
    promtool = need_tool("promtool")
    metrics_port = free_port()
    daemon = running_plugin(2, extra_args=("--metrics-listen", f"127.0.0.1:{metrics_port}"))
    edit_nvml(daemon, known_readings)
    get(daemon.url + "/v1.0/gpu/info")  # a request, so a latency histogram has samples
    counters = {f.name for f in dcgm.FIELDS if f.type == "counter"}
    for url in (daemon.url + "/metrics", f"http://127.0.0.1:{metrics_port}/metrics"):
        page = get(url)
        assert "DCGM_FI_DEV_SM_CLOCK{" in page and "nvplugin_rest_request_duration_seconds" in page
        checked = subprocess.run([promtool, "check", "metrics"], input=page, text=True,
                                 capture_output=True, timeout=60)
        said = (checked.stdout + checked.stderr).strip().splitlines()
        assert checked.returncode in (0, 3), said  # 3: lint problems only, never a parse error
        assert not any("error" in line for line in said), said
        # The only lint problems are dcgm-exporter's own names: its counters without "_total"
        # and its camelCase labels (modelName), never one of nvplugin's metrics.
        for line in said:
            match = LINT.match(line)
            assert match, line
            name, problem = match.groups()
            assert name in counters if "counter" in problem else name.startswith("DCGM_FI_"), \
                line


def test_the_metrics_listener_serves_metrics_alone(running_plugin):
    metrics_port = free_port()
    running_plugin(1, extra_args=("--metrics-listen", f"127.0.0.1:{metrics_port}"))
    with pytest.raises(urllib.error.HTTPError) as caught:
        get(f"http://127.0.0.1:{metrics_port}/v1.0/gpu/info")
    assert caught.value.code == 404


def test_a_containers_gpu_process_shows_up_by_name(running_plugin, docker_engine, make_image):
    daemon = running_plugin(1)
    name = f"nvplugin-observe-{time.time_ns()}"
    container = docker_engine.client.containers.run(make_image(), ["sleep", "300"], name=name,
                                                    detach=True, network_mode="none")
    try:
        container.reload()
        pid = int(container.attrs["State"]["Pid"])
        assert pid > 0

        def gpu_process(config: dict[str, Any]) -> None:
            config["gpus"][0]["processes"] = [{"pid": pid, "used_memory": 512 * MIB}]
            config["process_names"] = {str(pid): "sleep"}

        edit_nvml(daemon, gpu_process)
        assert daemon.host is not None
        labels = {"UUID": daemon.host.uuids[0], "container_id": container.id,
                  "container_name": name, "gpu": "0", "runtime": "docker"}

        def samples() -> dict[str, float]:
            page = get(daemon.url + "/metrics")
            return {s.name: s.value for f in text_string_to_metric_families(page)
                    for s in f.samples if s.name.startswith("nvplugin_container_")
                    and s.labels == labels}

        # The name arrives from the engine in the background: a scrape or two later.
        assert wait_for(lambda: len(samples()) == 2, timeout=30), get(daemon.url + "/metrics")
        assert samples() == {"nvplugin_container_gpu_memory_used_bytes": 512 * MIB,
                             "nvplugin_container_gpu_processes": 1}

        def attributed() -> Any:
            document = json.loads(get(daemon.url + "/v1.0/gpu/status/json"))
            return document["Devices"][0]["Processes"][0]["Container"]

        assert attributed() == {"ID": container.id, "Name": name, "Runtime": "docker"}
    finally:
        container.remove(force=True)


def test_an_unhealthy_gpu_leaves_every_gpu_until_it_recovers(running_plugin):
    """An Xid 79 on GPU 1 of a running daemon: docker/cli's every GPU and the CDI spec's `all`
    lose it (the named devices stay), /metrics says why; after --health-recovery it is back."""
    daemon = running_plugin(2, extra_args=("--health-recovery", "2s"))
    assert daemon.host is not None
    events = daemon.host.nvml_config.with_name("observe-events.jsonl")
    edit_nvml(daemon, lambda c: c.update(events_file=str(events)))

    def gpu1_healthy() -> bool:
        document = json.loads(get(daemon.url + "/v1.0/gpu/status/json"))
        return document["Devices"][1]["Health"]["Status"] == "healthy"

    def all_nodes() -> list[str]:
        spec = json.loads(get(daemon.url + "/v1.0/cdi/spec"))
        every = next(d for d in spec["devices"] if d["name"] == "all")
        return [n["path"] for n in every["containerEdits"]["deviceNodes"]]

    assert all_nodes() == ["/dev/nvidia0", "/dev/nvidia1"]

    def inject() -> bool:
        append_event(events, {"gpu": 1, "type": "xid", "data": 79})  # until the set has it
        return not gpu1_healthy()

    assert wait_for(inject, timeout=30)
    def gpus_given(query: str = "") -> list[str]:  # container paths of the GPU nodes
        line = get(daemon.url + "/v1.0/docker/cli" + query)
        return re.findall(r":(/dev/nvidia[0-9]+)(?= |$)", line)

    assert gpus_given() == ["/dev/nvidia0"]
    assert gpus_given("?dev=1") == ["/dev/nvidia1"]
    assert wait_for(lambda: all_nodes() == ["/dev/nvidia0"], timeout=10)
    page = get(daemon.url + "/metrics")
    assert (f'nvplugin_gpu_healthy{{UUID="{daemon.host.uuids[1]}",gpu="1",'
            'reason="Xid 79: GPU has fallen off the bus"} 0.0') in page
    assert 'err_code="79",err_msg="GPU has fallen off the bus"} 79' in page
    assert wait_for(gpu1_healthy, timeout=30)
    assert wait_for(lambda: all_nodes() == ["/dev/nvidia0", "/dev/nvidia1"], timeout=10)
    assert gpus_given() == ["/dev/nvidia0", "/dev/nvidia1"]
    log = daemon.log()
    assert f"GPU 1 ({daemon.host.uuids[1]}) is unhealthy: Xid 79: GPU has fallen off the bus" \
        in log
    assert f"GPU 1 ({daemon.host.uuids[1]}) is healthy again" in log
