"""rest_app.make_app over HTTP with a record-backed GPU service: routes, selectors, errors."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from nvplugin.api import json_docs, launch_args, rest_app, text_pages
from nvplugin.core.config import Config
from nvplugin.core.errors import DriverNotFound
from nvplugin.driver.manifest import Entry, Link, Manifest
from nvplugin.gpu.records import GpuInventory
from tests.rest import records
from tests.rest.fakes import Node, RecordCdi, RecordGpus

MANIFEST = Manifest(
    version="375.26",
    entries=(Entry("/usr/lib/x86_64-linux-gnu/libcuda.so.375.26", "lib64/libcuda.so.375.26",
                   "lib", "compute", "CUDA driver", "x86-64", "libcuda.so.1"),),
    links=(Link("lib64/libcuda.so.1", "libcuda.so.375.26", "SONAME"),),
)
PREFIXES = ["/v1.0", ""]
MakeClient = Callable[..., Awaitable[TestClient]]


def no_driver() -> Manifest:
    raise DriverNotFound("no NVIDIA driver under /: libcuda.so.1 is not in /etc/ld.so.cache")


@pytest.fixture
def gpus() -> RecordGpus:
    inventory, statuses = records.v1_sample_host()
    return RecordGpus(inventory, statuses)


@pytest.fixture
async def client(aiohttp_client: MakeClient, gpus: RecordGpus) -> TestClient:
    return await aiohttp_client(rest_app.make_app(gpus, lambda: MANIFEST, Config(), RecordCdi()))


@pytest.mark.parametrize("prefix", PREFIXES, ids=["v1.0", "alias"])
async def test_every_route_renders_the_records(client: TestClient, prefix: str) -> None:
    inventory, statuses = records.v1_sample_host()
    expected = {
        "/gpu/info": (text_pages.gpu_info_text(inventory), "text/plain"),
        "/gpu/info/json": (json_docs.gpu_info_json(inventory), "application/json"),
        "/gpu/status": (text_pages.gpu_status_text(inventory, statuses), "text/plain"),
        "/gpu/status/json": (json_docs.gpu_status_json(statuses), "application/json"),
        "/mesos/cli": (launch_args.mesos_cli_text(inventory), "text/plain"),
        "/driver/files": (json_docs.go_json(MANIFEST.to_json()), "application/json"),
    }
    for path, (body, content_type) in expected.items():
        response = await client.get(prefix + path)
        assert response.status == 200, path
        assert response.content_type == content_type, path
        assert await response.text() == body, path
    info = await client.get(prefix + "/gpu/info")
    assert info.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert (await info.read()) == (Path(__file__).parent / "golden/v1_sample_info.txt").read_bytes()


async def test_driver_files_is_the_manifest(client: TestClient) -> None:
    document = await (await client.get("/v1.0/driver/files")).json()
    assert document == json.loads(json.dumps(MANIFEST.to_json()))


DOCKER_ALL = (
    "--volume-driver=nvidia-docker --volume=nvidia_driver_375.26:/usr/local/nvidia:ro "
    "--device=/dev/nvidiactl --device=/dev/nvidia-uvm --device=/dev/nvidia0 --device=/dev/nvidia1"
)


@pytest.mark.parametrize(
    "query",
    ["", "?dev=", "?dev=*", "?dev=+", "?dev=0+1", "?dev=1+0", "?dev=1%200+1", "?vol=nvidia_driver",
     "?vol=*&dev=*", "?dev=GPU-aaaa+GPU-1111"],
)
async def test_docker_cli_selects_all_gpus_in_index_order(client: TestClient, query: str) -> None:
    response = await client.get("/v1.0/docker/cli" + query)
    assert response.status == 200
    assert await response.text() == DOCKER_ALL


@pytest.mark.parametrize(("query", "device"), [("?dev=1", "/dev/nvidia1"),
                                               ("?dev=GPU-11", "/dev/nvidia0"),
                                               ("?dev=0&dev=$(reboot)", "/dev/nvidia0")],
                         ids=["index", "uuid-prefix", "first-value-wins-as-in-1.0"])
async def test_docker_cli_json_selects(client: TestClient, query: str, device: str) -> None:
    response = await client.get("/docker/cli/json" + query)
    assert response.status == 200 and response.content_type == "application/json"
    assert await response.text() == (
        '{"VolumeDriver":"nvidia-docker","Volumes":["nvidia_driver_375.26:/usr/local/nvidia:ro"],'
        f'"Devices":["/dev/nvidiactl","/dev/nvidia-uvm","{device}"]}}\n'
    )


HOSTILE = [
    ("dev=;rm -rf /", "invalid device: ;rm"),
    ("dev=$(touch /tmp/pwned)", "invalid device: $(touch"),
    ("dev=0+--privileged", "invalid device: --privileged"),
    ("dev=`id`", "invalid device: `id`"),
    ("dev=0%0A--privileged", "invalid device: --privileged"),
    ("dev=GPU-%07%08", "invalid device: GPU-\\x07\\x08"),
    ("dev=%1B[2J%E2%80%AE", "invalid device: \\x1b[2J\\u202e"),
    ("dev=%C3%A9t%C3%A9", "invalid device: été"),
    ("dev=%FF%FE", "invalid device: "),
    ("dev=" + "9" * 5000, "invalid device: " + "9" * 64 + "..."),
    ("dev=-1", "invalid device: -1"),
    ("dev=%D9%A3", "invalid device: \u0663"),  # ARABIC-INDIC DIGIT THREE is not an index
    ("vol=nvidia_driver_375.26", "invalid volume: nvidia_driver_375.26"),
    ("vol=$(id)&dev=0", "invalid volume: $(id)"),
    ("vol=a%00b", "invalid volume: a\\x00b"),
]


@pytest.mark.parametrize(("query", "message"), HOSTILE, ids=[q[:24] for q, _ in HOSTILE])
@pytest.mark.parametrize("route", ["/v1.0/docker/cli", "/docker/cli/json"])
async def test_hostile_selectors_are_refused_with_one_quoted_line(
    client: TestClient, route: str, query: str, message: str
) -> None:
    response = await client.get(f"{route}?{query}")
    body = await response.text()
    assert response.status == 400 and response.content_type == "text/plain"
    assert body.startswith(message) and body.endswith("\n") and body.count("\n") == 1
    assert len(body) < 16 + 64 * 6 + 8
    assert not any(ch in body[:-1] for ch in "\r\t\x1b\x00\u202e")


async def test_ten_thousand_character_query_is_refused(client: TestClient) -> None:
    response = await client.get("/v1.0/docker/cli?dev=" + "0" * 10_000)
    assert 400 <= response.status < 500
    assert "0" * 100 not in await response.text()


@pytest.mark.parametrize(
    "path",
    ["/gpu/info", "/gpu/info/json", "/gpu/status", "/gpu/status/json", "/docker/cli",
     "/docker/cli/json", "/mesos/cli", "/v1.0/docker/cli?dev=0"],
)
async def test_unavailable_driver_answers_503_with_reason(
    client: TestClient, gpus: RecordGpus, path: str
) -> None:
    gpus.available = False
    gpus.reason = "NVML could not be loaded: libnvidia-ml.so.1 was not found under /"
    response = await client.get(path)
    assert response.status == 503 and response.content_type == "text/plain"
    assert await response.text() == gpus.reason + "\n"


async def test_nvml_failure_answers_503(client: TestClient, gpus: RecordGpus) -> None:
    from nvplugin.core.errors import NvmlError

    gpus.fail_with = NvmlError("nvmlDeviceGetUUID: GPU is lost\nreset it")
    response = await client.get("/gpu/status/json")
    assert response.status == 503
    assert await response.text() == "nvmlDeviceGetUUID: GPU is lost reset it\n"


async def test_missing_driver_files_answer_503(aiohttp_client: MakeClient, gpus: RecordGpus,
                                               ) -> None:
    client = await aiohttp_client(rest_app.make_app(gpus, no_driver, Config(), RecordCdi()))
    response = await client.get("/driver/files")
    assert response.status == 503
    assert (await response.text()).startswith("no NVIDIA driver under /")


async def test_unexpected_error_is_logged_once_and_names_the_route(
    client: TestClient, gpus: RecordGpus, caplog: pytest.LogCaptureFixture
) -> None:
    gpus.fail_with = KeyError("boom")
    with caplog.at_level(logging.ERROR, logger="nvplugin.api.rest_app"):
        response = await client.get("/v1.0/gpu/info")
    body = await response.text()
    assert response.status == 500
    assert body.startswith("internal error serving GET /v1.0/gpu/info: KeyError;")
    assert body.count("\n") == 1 and "check logs for details" not in body
    records_with_trace = [r for r in caplog.records if r.exc_info]
    assert len(records_with_trace) == 1 and "/v1.0/gpu/info" in records_with_trace[0].getMessage()


@pytest.mark.parametrize(
    "path", ["/", "/v1.0", "/v1.0/gpu/info/", "/v2.0/gpu/info", "/gpu", "/v1.0/GPU/INFO",
             "/v1.0/gpu/info/json/x", "/%2e%2e/etc/passwd"],
)
async def test_unknown_paths_are_404(client: TestClient, path: str) -> None:
    response = await client.get(path)
    assert response.status == 404
    assert await response.text() == "404 page not found\n"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_wrong_methods_are_405(client: TestClient, gpus: RecordGpus, method: str) -> None:
    response = await client.request(method, "/v1.0/docker/cli?dev=0")
    assert response.status == 405
    assert await response.text() == "405 method not allowed: use GET\n"
    assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD"}
    assert gpus.calls == []


async def test_devices_under_another_dev_root_are_mapped(
    aiohttp_client: MakeClient, gpus: RecordGpus
) -> None:
    gpus.nodes = (Node("/run/nvidia/driver/dev/nvidiactl", "/dev/nvidiactl"),)
    inventory = gpus.inventory_
    moved = tuple(
        type(gpu)(**{**{f: getattr(gpu, f) for f in gpu.__slots__},
                     "host_path": "/run/nvidia/driver" + gpu.path})
        for gpu in inventory.gpus
    )
    gpus.inventory_ = type(inventory)(inventory.versions, moved)
    config = Config(dev_root=Path("/run/nvidia/driver"), driver_root=Path("/run/nvidia/driver"))
    client = await aiohttp_client(rest_app.make_app(gpus, lambda: MANIFEST, config, RecordCdi()))
    response = await client.get("/docker/cli?dev=1")
    assert await response.text() == (
        "--volume-driver=nvidia-docker --volume=nvidia_driver_375.26:/usr/local/nvidia:ro "
        "--device=/run/nvidia/driver/dev/nvidiactl:/dev/nvidiactl "
        "--device=/run/nvidia/driver/dev/nvidia1:/dev/nvidia1"
    )


def _nodes_under(gpus: RecordGpus, root: str) -> None:
    """Every node of the record host moved under `root`, as NVML and devnodes build them."""
    gpus.nodes = tuple(Node(root + n.path, n.path) for n in gpus.nodes)
    inventory = gpus.inventory_
    moved = tuple(dataclasses.replace(gpu, host_path=root + gpu.path) for gpu in inventory.gpus)
    gpus.inventory_ = dataclasses.replace(inventory, gpus=moved)


@pytest.mark.parametrize("prefix", PREFIXES, ids=["v1.0", "alias"])
async def test_the_images_devices_are_given_as_the_docker_host_sees_them(
    aiohttp_client: MakeClient, gpus: RecordGpus, prefix: str
) -> None:
    # The README's container: the host's / at /host, --dev-root /host, --host-root /host.
    _nodes_under(gpus, "/host")
    config = Config(driver_root=Path("/host"), dev_root=Path("/host"), host_root=Path("/host"))
    client = await aiohttp_client(rest_app.make_app(gpus, lambda: MANIFEST, config, RecordCdi()))
    response = await client.get(prefix + "/docker/cli?dev=1")
    assert await response.text() == (
        "--volume-driver=nvidia-docker --volume=nvidia_driver_375.26:/usr/local/nvidia:ro "
        "--device=/dev/nvidiactl --device=/dev/nvidia-uvm --device=/dev/nvidia1"
    )
    document = await (await client.get(prefix + "/docker/cli/json?dev=0+1")).json()
    assert document["Devices"] == ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia0",
                                   "/dev/nvidia1"]


async def test_a_driver_container_seen_from_the_image_keeps_its_host_path(
    aiohttp_client: MakeClient, gpus: RecordGpus
) -> None:
    _nodes_under(gpus, "/host/run/nvidia/driver")
    root = Path("/host/run/nvidia/driver")
    config = Config(driver_root=root, dev_root=root, host_root=Path("/host"))
    client = await aiohttp_client(rest_app.make_app(gpus, lambda: MANIFEST, config, RecordCdi()))
    document = await (await client.get("/docker/cli/json?dev=0")).json()
    assert document["Devices"] == [f"/run/nvidia/driver{p}:{p}"
                                   for p in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia0")]


async def test_a_node_docker_cannot_see_is_refused_with_503_and_logged(
    aiohttp_client: MakeClient, gpus: RecordGpus, caplog: pytest.LogCaptureFixture
) -> None:
    # Start-up refuses a --dev-root outside --host-root; a node found elsewhere anyway (here the
    # plugin container's own /dev) must not reach Docker as a path only the container has.
    _nodes_under(gpus, "/host")
    gpus.nodes = (Node("/dev/nvidiactl", "/dev/nvidiactl"),)
    config = Config(driver_root=Path("/host"), dev_root=Path("/host"), host_root=Path("/host"))
    client = await aiohttp_client(rest_app.make_app(gpus, lambda: MANIFEST, config, RecordCdi()))
    with caplog.at_level(logging.ERROR, logger="nvplugin.api.rest_app"):
        for path in ("/docker/cli", "/docker/cli/json"):
            response = await client.get(path)
            assert response.status == 503
            text = await response.text()
            assert text.startswith("/dev/nvidiactl is not under --host-root /host"), text
            assert text.count("\n") == 1 and "--device" not in text
    refusals = [r.getMessage() for r in caplog.records if r.name == "nvplugin.api.rest_app"]
    assert len(refusals) == 2
    assert refusals[0].startswith("Error: refusing /docker/cli: /dev/nvidiactl is not under")


def test_routes_are_registered_under_both_prefixes() -> None:
    app = rest_app.make_app(RecordGpus(*records.one_gpu_host()), lambda: MANIFEST, Config(),
                            RecordCdi())
    paths = {r.canonical for r in app.router.resources()}
    assert paths == {p + path for p in PREFIXES for path, _ in rest_app.ROUTES}
    assert isinstance(app, web.Application)


async def test_docker_cli_without_driver_files_is_503(aiohttp_client: MakeClient,
                                                       gpus: RecordGpus) -> None:
    client = await aiohttp_client(rest_app.make_app(gpus, no_driver, Config(), RecordCdi()))
    response = await client.get("/docker/cli")
    assert response.status == 503
    assert (await response.text()).startswith("no NVIDIA driver under /")


def test_last_pages_renders_again_only_for_other_records() -> None:
    pages, calls = rest_app.LastPages(), []

    def renderer(inventory: GpuInventory) -> str:
        calls.append(inventory)
        return f"page {len(calls)}"

    one, _ = records.one_gpu_host()
    two, _ = records.two_gpu_host()
    assert pages.render(renderer, one) == "page 1"
    assert pages.render(renderer, dataclasses.replace(one)) == "page 1"  # equal records
    assert pages.render(renderer, two) == "page 2"
    assert pages.render(text_pages.gpu_info_text, one) == text_pages.gpu_info_text(one)
    assert len(calls) == 2


async def test_each_app_keeps_its_own_pages(aiohttp_client: MakeClient) -> None:
    first, _ = records.one_gpu_host()
    second, statuses = records.v1_sample_host()
    apps = [await aiohttp_client(rest_app.make_app(RecordGpus(inventory, statuses),
                                                   lambda: MANIFEST, Config(), RecordCdi()))
            for inventory in (first, second)]
    for client, inventory in zip(apps * 2, (first, second) * 2, strict=True):
        response = await client.get("/gpu/info")
        assert await response.text() == text_pages.gpu_info_text(inventory)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_the_server_cannot_decode_is_a_400_never_a_traceback(
        client: TestClient, encoding: str, caplog: pytest.LogCaptureFixture) -> None:
    for _ in range(3):
        response = await client.get("/v1.0/gpu/info", data=b"not compressed at all",
                                    headers={"Content-Encoding": encoding})
        assert response.status == 400
        assert await response.text() == (f"the request body cannot be decoded (Content-Encoding "
                                          f"{encoding}); these requests take no body\n")
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
    assert (await client.get("/v1.0/docker/cli")).status == 200


async def test_a_body_is_ignored_as_1_0_ignored_it(client: TestClient) -> None:
    response = await client.get("/v1.0/gpu/info", data=b"{}", headers={"Content-Encoding": "x"})
    assert response.status == 200
