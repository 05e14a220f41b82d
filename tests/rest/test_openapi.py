"""openapi.yaml is a valid description of the live API: spec validity, honest examples, and a
schemathesis run against the app on a real port over the fake driver host."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from schemathesis.checks import CHECKS
from schemathesis.specs.openapi.checks import positive_data_acceptance

from nvplugin.api import rest_app
from nvplugin.web import routes as page_routes
from tests.rest.live import LiveRest

OPENAPI = Path(__file__).resolve().parents[2] / "openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
# The page's event stream never ends, so it cannot be fuzzed as a request with an answer;
# tests/web reads it as a page does.
schema = schemathesis.openapi.from_path(OPENAPI).exclude(path="/page/events")


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        _, *parts = node["$ref"].split("/")
        target: Any = SPEC
        for part in parts:
            target = target[part]
        return resolve(target)
    return node


def validator(media_schema: dict[str, Any]) -> OAS30Validator:
    return OAS30Validator({**media_schema, "components": SPEC["components"]})


def test_spec_is_valid_openapi() -> None:
    validate(SPEC)


def test_every_route_is_described_under_both_prefixes() -> None:
    expected = {p + path for p in (f"/{rest_app.API_VERSION}", "") for path, _ in rest_app.ROUTES}
    page = {path for path, _ in page_routes.ROUTES}  # the GPU page, unversioned only
    assert set(SPEC["paths"]) == expected | {rest_app.METRICS_PATH} | page
    # /metrics answers without NVML too (nvplugin's own metrics), and so does the page (it says
    # why there are no GPUs): never a 503, but for a stream refused to one page too many
    no_503 = {rest_app.METRICS_PATH} | page - {"/page/events"}
    for path, item in SPEC["paths"].items():
        # Only GET is an operation: schemathesis (rightly) reads a listed method as served.
        assert set(item) == {"get"}
        responses = item["get"]["responses"]
        assert {"200", "404", "405"} | ({"503"} if path not in no_503 else set()) \
            <= set(responses)
        assert responses["404"] == {"$ref": "#/components/responses/NotFound"}
        assert responses["405"] == {"$ref": "#/components/responses/MethodNotAllowed"}


def test_every_component_is_referenced() -> None:
    text = OPENAPI.read_text(encoding="utf-8")
    for kind in ("responses", "examples", "schemas", "parameters"):
        for name in SPEC["components"][kind]:
            assert f'"#/components/{kind}/{name}"' in text, f"{kind}/{name} is never used"


def iter_examples() -> list[tuple[str, str, str, Any]]:
    """(where, status, media type, example value) for every example in a response."""
    found = []
    responses = [(f"GET {path} {status}", status, response)
                 for path, item in SPEC["paths"].items()
                 for status, response in item["get"]["responses"].items()]
    responses += [(f"components {name}", name, response)
                  for name, response in SPEC["components"]["responses"].items()]
    for where, status, response in responses:
        for media, content in resolve(response).get("content", {}).items():  # 304: none
            for example in content.get("examples", {}).values():
                found.append((where, status, media, resolve(example)["value"]))
    return found


def test_every_example_conforms_to_its_schema() -> None:
    examples = iter_examples()
    assert len(examples) >= 30
    for where, status, media, value in examples:
        media_schema = _media_schema(where, status, media)
        validator(media_schema).validate(value)
        if media == "text/plain" and "pattern" in resolve(media_schema):
            assert re.search(resolve(media_schema)["pattern"], value), where


def _media_schema(where: str, status: str, media: str) -> dict[str, Any]:
    if where.startswith("components "):
        response = SPEC["components"]["responses"][status]
    else:
        path = where.split(" ")[1]
        response = SPEC["paths"][path]["get"]["responses"][status]
    return resolve(response)["content"][media]["schema"]


@pytest.mark.parametrize(
    ("route", "example"),
    [("/gpu/info", "GpuInfoText"), ("/gpu/info/json", "GpuInfoJson"),
     ("/gpu/status", "GpuStatusText"), ("/mesos/cli", "MesosCli"),
     ("/docker/cli?dev=7", "BadDevice"), ("/docker/cli?dev=%24(reboot)%0A", "BadDeviceHostile"),
     ("/docker/cli?vol=nvidia_driver_580.159.04", "BadVolume"), ("/gpu", "NotFound"),
     ("/cdi/cli?dev=1", "CdiCliText"), ("/cdi/cli", "CdiCliAll"),
     ("/cdi/cli/json?dev=0+1", "CdiCliJson"), ("/cdi/cli?dev=7", "BadDevice")],
)
def test_examples_are_what_the_fake_host_answers(live_rest: LiveRest, route: str,
                                                 example: str) -> None:
    """Examples without host paths or clock readings are compared with a fresh answer."""
    response = requests.get(live_rest.url + "/v1.0" + route, timeout=10)
    value = SPEC["components"]["examples"][example]["value"]
    assert (response.json() if isinstance(value, dict) else response.text) == value


def test_image_example_is_what_the_image_answers(live_rest: LiveRest) -> None:
    # The image: the Docker host's / (here the fake host) is both --dev-root and --host-root.
    root = live_rest.dev_root
    server = LiveRest(root, root, live_rest.nvml_library, host_root=root).start()
    try:
        response = requests.get(server.url + "/v1.0/docker/cli?dev=0", timeout=10)
    finally:
        server.stop()
    assert response.text == SPEC["components"]["examples"]["DockerCliTextImage"]["value"]


def test_metrics_example_is_what_the_fake_host_answers(live_rest: LiveRest) -> None:
    response = requests.get(live_rest.url + "/metrics", timeout=10)
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    lines = set(response.text.splitlines())
    example = SPEC["components"]["examples"]["Metrics"]["value"].splitlines()
    assert [line for line in example if line not in lines] == []


def test_cdi_spec_example_is_part_of_what_the_fake_host_answers(live_rest: LiveRest) -> None:
    """The abridged example, with the example's root replaced by the fake host's: each of its
    devices and mounts is in the live spec as shown."""
    live = requests.get(live_rest.url + "/v1.0/cdi/spec", timeout=10).json()
    text = yaml.safe_dump(SPEC["components"]["examples"]["CdiSpec"]["value"])
    example = yaml.safe_load(text.replace("/tmp/nvplugin-example/host", str(live_rest.dev_root)))
    assert {k: v for k, v in example.items() if k not in ("devices", "containerEdits")} == {
        k: v for k, v in live.items() if k not in ("devices", "containerEdits")}
    for device in example["devices"]:
        assert device in live["devices"]
    assert example["containerEdits"]["deviceNodes"] == live["containerEdits"]["deviceNodes"]
    for mount in example["containerEdits"]["mounts"]:
        assert mount in live["containerEdits"]["mounts"]


def test_method_not_allowed_example_is_what_the_fake_host_answers(live_rest: LiveRest) -> None:
    response = requests.post(live_rest.url + "/v1.0/gpu/info", timeout=10)
    assert response.status_code == 405 and response.headers["Allow"] == "GET,HEAD"
    assert response.text == SPEC["components"]["examples"]["MethodNotAllowed"]["value"]


# A selector naming a GPU the host lacks is well-formed yet invalid: a 400 to a string the schema
# allows is the documented answer, so "schema-valid data must be accepted" does not apply.
EXCLUDED = [positive_data_acceptance]


@schema.parametrize()
def test_live_api_conforms_to_openapi(case: schemathesis.Case, live_rest: LiveRest) -> None:
    response = case.call_and_validate(base_url=live_rest.url, excluded_checks=EXCLUDED)
    assert response.status_code < 500


def test_all_checks_are_known() -> None:
    # Guards EXCLUDED against a schemathesis upgrade renaming the check.
    assert positive_data_acceptance in CHECKS.get_all()
