"""The REST API on a real port over the fake driver host, against the real GpuService."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from openapi_schema_validator import OAS30Validator

from nvplugin.api import json_docs
from tests.rest.live import LiveRest

OPENAPI = Path(__file__).resolve().parents[2] / "openapi.yaml"
ROUTES = ["/gpu/info", "/gpu/info/json", "/gpu/status", "/gpu/status/json", "/docker/cli",
          "/docker/cli/json", "/mesos/cli", "/driver/files"]


def get(server: LiveRest, path: str) -> requests.Response:
    return requests.get(server.url + path, timeout=10)


def schema_of(route: str) -> OAS30Validator:
    spec = yaml.safe_load(OPENAPI.read_text())
    media = spec["paths"][route]["get"]["responses"]["200"]["content"]["application/json"]
    # Resolve local refs by validating inside the whole document.
    return OAS30Validator({**media["schema"], "components": spec["components"]})


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("prefix", ["/v1.0", ""], ids=["v1.0", "alias"])
def test_every_route_answers(live_rest: LiveRest, prefix: str, route: str) -> None:
    response = get(live_rest, prefix + route)
    assert response.status_code == 200, response.text
    if route.endswith(("/json", "/files")):
        assert response.headers["Content-Type"] == "application/json"
        assert response.text.endswith("}\n") and response.text.count("\n") == 1
        schema_of("/v1.0" + route).validate(response.json())
    else:
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"


def test_gpu_info_page_lists_both_gpus(live_rest: LiveRest) -> None:
    text = get(live_rest, "/gpu/info").text
    assert text.startswith("\nDriver version:          580.159.04\nSupported CUDA version:  13.0\n")
    assert "\nDevice #0\n  Model:         NVIDIA H200\n" in text and "\nDevice #1\n" in text
    assert text.endswith("\n\n")


def test_docker_cli_maps_the_fake_hosts_nodes(live_rest: LiveRest) -> None:
    dev = f"{live_rest.dev_root}/dev"
    assert get(live_rest, "/v1.0/docker/cli?dev=1").text == (
        "--volume-driver=nvidia-docker --volume=nvidia_driver_580.159.04:/usr/local/nvidia:ro "
        f"--device={dev}/nvidiactl:/dev/nvidiactl --device={dev}/nvidia-uvm:/dev/nvidia-uvm "
        f"--device={dev}/nvidia-uvm-tools:/dev/nvidia-uvm-tools --device={dev}/nvidia1:/dev/nvidia1"
    )
    document: dict[str, Any] = get(live_rest, "/docker/cli/json?dev=1+0&vol=nvidia_driver").json()
    assert document["Devices"][-2:] == [f"{dev}/nvidia{i}:/dev/nvidia{i}" for i in (0, 1)]


def test_docker_cli_gives_nodes_as_the_docker_host_sees_them(live_rest: LiveRest) -> None:
    # As in the image: the fake host's parent stands for where the Docker host's / is mounted, so
    # <parent>/<root>/dev/nvidia1 is /<root>/dev/nvidia1 to Docker. The real GpuService and
    # devnodes build the host paths; only the REST edge translates them.
    root = live_rest.dev_root
    server = LiveRest(root, root, live_rest.nvml_library, host_root=root.parent).start()
    try:
        dev = f"/{root.name}/dev"
        document: dict[str, Any] = get(server, "/docker/cli/json?dev=1").json()
        names = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia1")
        assert document["Devices"] == [f"{dev}/{n}:/dev/{n}" for n in names]
    finally:
        server.stop()
    # And with the fake host itself as the host root, the nodes are the host's /dev ones: 1.0's
    # plain `--device=/dev/nvidia1`.
    server = LiveRest(root, root, live_rest.nvml_library, host_root=root).start()
    try:
        assert get(server, "/docker/cli?dev=1&vol=nvidia_driver").text == (
            "--volume-driver=nvidia-docker --volume=nvidia_driver_580.159.04:/usr/local/nvidia:ro "
            "--device=/dev/nvidiactl --device=/dev/nvidia-uvm --device=/dev/nvidia-uvm-tools "
            "--device=/dev/nvidia1")
    finally:
        server.stop()


def test_bad_selectors_on_the_real_grammar(live_rest: LiveRest) -> None:
    response = get(live_rest, "/docker/cli?dev=2")
    assert (response.status_code, response.text) == (400, "invalid device: 2\n")
    response = get(live_rest, "/docker/cli?dev=" + "7" * 100)
    assert response.status_code == 400 and response.text == f"invalid device: {'7' * 64}...\n"


def test_status_json_says_when_it_was_sampled(live_rest: LiveRest) -> None:
    before = time.time()
    devices = get(live_rest, "/gpu/status/json").json()["Devices"]
    assert [d["Index"] for d in devices] == [0, 1]
    for device in devices:
        sampled = datetime.fromisoformat(device["SampledAt"].replace("Z", "+00:00")).timestamp()
        assert before - 5 <= sampled <= time.time() + 1
        assert device["Power"] == 74 and device["Temperature"] == 31


def test_driver_files_is_the_discovered_manifest(live_rest: LiveRest) -> None:
    assert live_rest.manifest is not None
    assert get(live_rest, "/driver/files").json() == json.loads(
        json_docs.go_json(live_rest.manifest.to_json())
    )
    assert live_rest.manifest.version == "580.159.04"
