"""A stand-in for the daemon's REST API (`gpu/info/json`, `docker/cli/json`) in a thread.

It answers with the daemon's documented shapes and statuses so the wrapper's HTTP handling can be
tested in isolation (bad statuses, unreachable, query encoding). Its `VolumeDriver` is `local` by
default, so Docker can create the volume without the volume plugin; device nodes are host nodes
mapped to NVIDIA names (`/dev/null:/dev/nvidia0`), so a container really gets them.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

DRIVER = "580.159.04"
UUIDS = ("GPU-d10c7111-67d9-9e02-1f7a-53d331412b6f", "GPU-b78a60a0-1111-2222-3333-444455556666")
HOST_NODES = {"/dev/nvidiactl": "/dev/null", "/dev/nvidia-uvm": "/dev/zero",
              "/dev/nvidia0": "/dev/full", "/dev/nvidia1": "/dev/random"}  # fmt: skip


@dataclass
class FakePlugin:
    """Serves what the real daemon serves; tests change `cuda`, `fail` or `volume_driver`."""

    cuda: str = "13.0"
    volume_driver: str = "local"
    volume_prefix: str = "nvidia_driver"
    fail: tuple[int, str] | None = None  # (status, body) for every request
    requests: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def volume(self) -> str:
        return f"{self.volume_prefix}_{DRIVER}"

    def info(self) -> dict[str, Any]:
        devices = [{"UUID": u, "Path": f"/dev/nvidia{i}", "Model": "NVIDIA H200", "Arch": "9.0"}
                   for i, u in enumerate(UUIDS)]  # fmt: skip
        return {"Version": {"Driver": DRIVER, "CUDA": self.cuda}, "Devices": devices}

    def cli(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        picked: list[int] = []
        for item in " ".join(query.get("dev", [])).split():
            if item == "*":
                continue
            if item.isdigit() and int(item) < len(UUIDS):
                index = int(item)
            else:
                found = [i for i, u in enumerate(UUIDS) if item.startswith("GPU-") and
                         u.startswith(item)]  # fmt: skip
                if not found:
                    return 400, f"invalid device: {item}\n"
                index = found[0]
            if index not in picked:
                picked.append(index)
        for kind in " ".join(query.get("vol", [])).split():
            if kind not in ("nvidia_driver", "*"):
                return 400, f"invalid volume: {kind}\n"
        gpus = sorted(picked) if picked else list(range(len(UUIDS)))
        nodes = ["/dev/nvidiactl", "/dev/nvidia-uvm", *(f"/dev/nvidia{i}" for i in gpus)]
        return 200, {
            "VolumeDriver": self.volume_driver,
            "Volumes": [f"{self.volume}:/usr/local/nvidia:ro"],
            "Devices": [f"{HOST_NODES[n]}:{n}" for n in nodes],
        }

    def handle(self, path: str) -> tuple[int, Any]:
        self.requests.append(path)
        if self.fail is not None:
            return self.fail
        url = urllib.parse.urlsplit(path)
        if url.path == "/v1.0/gpu/info/json":
            return 200, self.info()
        if url.path == "/v1.0/docker/cli/json":
            return self.cli(urllib.parse.parse_qs(url.query))
        return 404, "404 page not found\n"


def _handler(plugin: FakePlugin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are two writes: without this, Nagle + delayed ACK stall 40 ms.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            status, body = plugin.handle(self.path)
            is_json = not isinstance(body, str)
            data = (json.dumps(body) + "\n" if is_json else body).encode()
            self.send_response(status)
            kind = "application/json" if is_json else "text/plain; charset=utf-8"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@pytest.fixture
def fake_plugin() -> Iterator[FakePlugin]:
    # A unique volume name: other tests on the same engine own `nvidia_driver_<version>`.
    plugin = FakePlugin(volume_prefix=f"nvtest_{uuid.uuid4().hex[:8]}")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(plugin))
    server.daemon_threads = True
    plugin.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield plugin
    server.shutdown()
    server.server_close()
