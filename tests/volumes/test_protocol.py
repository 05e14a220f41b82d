"""The plugin protocol over a real unix socket, called the way Docker 20.10 calls it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket

import pytest

from tests.volumes.conftest import DOCKER_ACCEPT, VERSION, Driver, Plugin

NAME = f"nvidia_driver_{VERSION}"
CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"


async def test_activate_has_an_empty_body_and_1_0_logs(plugin: Plugin,
                                                       caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, "nvplugin")
    status, ctype, text = await plugin.raw("/Plugin.Activate", b"")
    assert (status, ctype, text) == (200, CONTENT_TYPE, '{"Implements":["VolumeDriver"]}\n')
    assert [r.getMessage() for r in caplog.records] == [
        "Received activate request", "Plugins activated [VolumeDriver]"]


async def test_docker_volume_create_inspect_ls_rm(plugin: Plugin,
                                                  caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, "nvplugin")
    # First use after dockerd start, then `docker volume create|inspect|ls|rm`.
    assert await plugin.call("/VolumeDriver.Capabilities", {}) == {
        "Capabilities": {"Scope": "local"}}
    assert await plugin.call("/VolumeDriver.Create", {"Name": NAME, "Opts": None}) == {
        "Err": None}
    got = await plugin.call("/VolumeDriver.Get", {"Name": NAME})
    mountpoint = str(plugin.store.kind_dir / VERSION)
    assert got["Err"] is None
    assert got["Volume"]["Name"] == NAME and got["Volume"]["Mountpoint"] == mountpoint
    assert got["Volume"]["CreatedAt"].endswith("Z") and got["Volume"]["Status"] == {"Mounts": 0}
    listed = await plugin.call("/VolumeDriver.List", {})
    assert listed["Err"] is None
    assert [(v["Name"], v["Mountpoint"]) for v in listed["Volumes"]] == [(NAME, mountpoint)]
    assert await plugin.call("/VolumeDriver.Remove", {"Name": NAME}) == {"Err": None}
    assert await plugin.call("/VolumeDriver.List", {}) == {"Volumes": None, "Err": None}
    messages = [r.getMessage() for r in caplog.records]
    assert f"Received create request for volume '{NAME}'" in messages
    assert f"Received remove request for volume '{NAME}'" in messages


async def test_docker_run_sequence_with_mount_ids(plugin: Plugin):
    mount_id = "f" * 64
    assert (await plugin.call("/VolumeDriver.Get", {"Name": NAME}))["Err"] is None
    mounted = await plugin.call("/VolumeDriver.Mount", {"Name": NAME, "ID": mount_id})
    assert mounted == {"Mountpoint": str(plugin.store.kind_dir / VERSION), "Err": None}
    # docker cp on the running container: the same ID again, then its Unmount.
    await plugin.call("/VolumeDriver.Mount", {"Name": NAME, "ID": mount_id})
    await plugin.call("/VolumeDriver.Unmount", {"Name": NAME, "ID": mount_id})
    assert await plugin.call("/VolumeDriver.Remove", {"Name": NAME}) == {
        "Err": f"volume {NAME} is in use by 1 container(s)"}
    path = await plugin.call("/VolumeDriver.Path", {"Name": NAME})
    assert path == mounted  # Path answers like Mount but counts nothing
    assert await plugin.call("/VolumeDriver.Unmount", {"Name": NAME, "ID": mount_id}) == {
        "Err": None}
    assert await plugin.call("/VolumeDriver.Unmount", {"Name": NAME, "ID": "0" * 64}) == {
        "Err": None}
    assert await plugin.call("/VolumeDriver.Remove", {"Name": NAME}) == {"Err": None}


@pytest.mark.parametrize(("route", "nulls"), [
    ("/VolumeDriver.Create", {}),
    ("/VolumeDriver.Remove", {}),
    ("/VolumeDriver.Mount", {"Mountpoint": None}),
    ("/VolumeDriver.Path", {"Mountpoint": None}),
    ("/VolumeDriver.Get", {"Volume": None}),
    ("/VolumeDriver.Unmount", {}),
], ids=lambda v: v if isinstance(v, str) else "")
async def test_protocol_errors_are_200_with_err_and_1_0_nulls(plugin: Plugin, route: str,
                                                              nulls: dict[str, None]):
    answer = await plugin.call(route, {"Name": "0123abcd" * 8, "ID": "x"})
    assert answer == {**nulls, "Err": f"bad volume format: {'0123abcd' * 8}"}
    answer = await plugin.call(route, {"Name": "nvidia_opencl_1.0", "ID": "x"})
    assert answer["Err"] == "unsupported volume: nvidia_opencl_1.0"


async def test_unknown_versions(plugin: Plugin):
    assert await plugin.call("/VolumeDriver.Mount", {"Name": "nvidia_driver_1.0", "ID": "a"}) == {
        "Mountpoint": None, "Err": "no such volume: nvidia_driver_1.0"}
    assert await plugin.call("/VolumeDriver.Get", {"Name": "nvidia_driver_1.0"}) == {
        "Volume": None, "Err": "no such volume: nvidia_driver_1.0"}
    created = await plugin.call("/VolumeDriver.Create", {"Name": "nvidia_driver_1.0"})
    assert created["Err"].startswith("invalid volume version: nvidia_driver_1.0")


async def test_build_failure_reaches_docker_as_a_specific_err(plugin: Plugin, driver: Driver):
    source = driver.manifest.entries[0].source
    await asyncio.to_thread(os.unlink, source)
    answer = await plugin.call("/VolumeDriver.Mount", {"Name": NAME, "ID": "a"})
    assert answer == {"Mountpoint": None,
                      "Err": f"cannot build {NAME}: {source}: No such file or directory"}


@pytest.mark.parametrize(("body", "status", "err"), [
    (b"{not json", 400, "/VolumeDriver.Mount: the request body is not JSON"),
    (b"\xff\xfe", 400, "/VolumeDriver.Mount: the request body is not JSON"),
    (b"[1, 2]", 400, "/VolumeDriver.Mount: the request body must be a JSON object"),
    (b"{}", 400, "/VolumeDriver.Mount: the request has no volume Name"),
    (b"", 400, "/VolumeDriver.Mount: the request has no volume Name"),
    (b'{"Name": 5}', 400, "/VolumeDriver.Mount: the request has no volume Name"),
    (b'{"Name": "nvidia_driver_1", "ID": {"a": 1}}', 400, "/VolumeDriver.Mount: the mount ID"),
    (b'{"Name": "nvidia_driver_1", "ID": "' + b"x" * 300 + b'"}', 400, "/VolumeDriver.Mount: the"),
    (b'{"Name": "../../etc"}', 200, "bad volume format: ../../etc"),
    (b'{"Name": "nvidia_driver_1.0/../.."}', 200, "bad volume format: nvidia_driver_1.0/../.."),
    (b'{"Name": "nvidia_driver_..", "ID": "a"}', 200, "bad volume format: nvidia_driver_.."),
    (b'{"Name": "nvidia_driver_1\\u0000"}', 200, "bad volume format: nvidia_driver_1\\x00"),
    (b'{"Name": "' + b"9" * 1_000 + b'"}', 200, "bad volume format: 9999"),
    (b"x" * 100_000, 413, "the request body is larger than 65536 bytes"),
], ids=["syntax", "binary", "array", "empty-object", "empty", "name-type", "id-type", "id-long",
        "traversal", "slash", "dotdot", "nul", "long-name", "huge-body"])
async def test_garbage_gets_a_clear_err_and_the_server_keeps_serving(
        plugin: Plugin, body: bytes, status: int, err: str):
    got_status, ctype, text = await plugin.raw("/VolumeDriver.Mount", body)
    assert (got_status, ctype) == (status, CONTENT_TYPE)
    answer = json.loads(text)
    assert answer["Err"].startswith(err), answer
    assert len(answer["Err"]) < 300
    assert (await plugin.call("/VolumeDriver.Capabilities"))["Capabilities"] == {"Scope": "local"}
    assert list(plugin.store.kind_dir.iterdir()) == []


@pytest.mark.parametrize(("body", "headers", "err"), [
    (b"[" * 30_000 + b"]" * 30_000, {},
     "/VolumeDriver.Mount: the request body is not JSON: nested 30000 levels deep (at most 64)"),
    (b'{"Name": "nvidia_driver_1", "ID": ' + b"7" * 5_000 + b"}", {},
     "/VolumeDriver.Mount: the request body is not JSON: a number of more than"),
    (b'{"Name": "nvidia_driver_1"}', {"Content-Encoding": "gzip"},
     "/VolumeDriver.Mount: the request body cannot be decoded (Content-Encoding gzip)"),
    (b'{"Name": "nvidia_driver_1"}', {"Content-Encoding": "br, zstd, x-unknown"},
     "/VolumeDriver.Mount: the request body cannot be decoded (Content-Encoding br, zstd"),
], ids=["deep-nesting", "5000-digits", "not-gzip", "unknown-encoding"])
async def test_hostile_bodies_are_400_with_one_log_line_never_500(
        plugin: Plugin, body: bytes, headers: dict[str, str], err: str,
        caplog: pytest.LogCaptureFixture):
    status, ctype, text = await plugin.raw("/VolumeDriver.Mount", body,
                                           headers={**DOCKER_ACCEPT, **headers})
    assert (status, ctype) == (400, CONTENT_TYPE), text
    answer = json.loads(text)
    assert answer["Err"].startswith(err), answer
    assert answer["Mountpoint"] is None and len(answer["Err"]) < 300
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is None  # one line, no traceback
    assert (await plugin.call("/VolumeDriver.Capabilities"))["Capabilities"] == {"Scope": "local"}


@pytest.mark.parametrize(("method", "route", "status", "err"), [
    ("POST", "/VolumeDriver.Nope", 404, "unknown plugin endpoint /VolumeDriver.Nope"),
    ("POST", "/", 404, "unknown plugin endpoint /"),
    ("GET", "/VolumeDriver.List", 405, "GET is not supported on /VolumeDriver.List: use POST"),
], ids=["unknown", "root", "wrong-method"])
async def test_wrong_routes_answer_json(plugin: Plugin, method: str, route: str, status: int,
                                        err: str):
    assert await plugin.raw(route, b"{}", method=method) == (
        status, CONTENT_TYPE, json.dumps({"Err": err}, separators=(",", ":")) + "\n")


@pytest.mark.parametrize("headers", [
    {}, {"Accept": "*/*"}, {"Accept": "application/json"},
    {"Accept": "application/vnd.docker.plugins.v1.1+json"},
    {"Accept": "text/html, application/vnd.docker.plugins.v1.2+json;q=0.9"},
], ids=["none-curl", "any", "json", "v1.1", "list"])
async def test_requests_without_docker_accept_are_served(plugin: Plugin,
                                                         headers: dict[str, str]):
    status, _ctype, text = await plugin.raw("/VolumeDriver.Capabilities", b"", headers=headers)
    assert status == 200 and json.loads(text) == {"Capabilities": {"Scope": "local"}}


async def test_a_wrong_accept_is_406_with_a_reason(plugin: Plugin,
                                                   caplog: pytest.LogCaptureFixture):
    status, _ctype, text = await plugin.raw("/VolumeDriver.List", b"{}",
                                            headers={"Accept": "text/html"})
    assert status == 406
    assert json.loads(text)["Err"].startswith("unsupported plugin API 'text/html'")
    assert "Unsupported plugin API text/html" in caplog.text


async def test_raw_socket_garbage_leaves_the_server_healthy(plugin: Plugin):
    def junk() -> None:
        for payload in (b"\x00\x01\x02garbage\r\n\r\n", b"POST /VolumeDriver.Get HTTP/1.1\r\n"
                        b"Content-Length: 999999999999\r\n\r\n{", b"GET / HTTP/9.9\r\n\r\n", b""):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(str(plugin.site.socket_path))
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass

    await asyncio.to_thread(junk)
    got = await plugin.call("/VolumeDriver.Mount", {"Name": NAME, "ID": "after-garbage"})
    assert got["Err"] is None


async def test_fifty_concurrent_mounts_over_the_socket_build_once(plugin: Plugin):
    calls = [plugin.call("/VolumeDriver.Create", {"Name": NAME}) for _ in range(10)]
    calls += [plugin.call("/VolumeDriver.Mount", {"Name": NAME, "ID": f"{i:064x}"})
              for i in range(40)]
    answers = await asyncio.gather(*calls)
    assert all(a["Err"] is None for a in answers)
    assert plugin.store.builds == 1
    assert plugin.store.mounts.count(NAME) == 40
