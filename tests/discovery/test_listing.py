"""`nvidia-docker-plugin list [--json]`: the explainable manifest."""

from __future__ import annotations

import io
import json

from nvplugin.cli.listing import run_list
from nvplugin.core.config import Config


def test_text_lists_files_links_and_rejections(fake_host_factory):
    host = fake_host_factory(stale_version="570.86.15")
    out, err = io.StringIO(), io.StringIO()
    assert run_list(Config(driver_root=host.root), as_json=False, out=out, err=err) == 0
    text = out.getvalue()
    assert text.startswith(f"NVIDIA driver {host.version} under {host.root}:")
    header = next(line for line in text.splitlines() if line.startswith("KIND"))
    assert header.split() == ["KIND", "CAPABILITY", "ARCH", "SONAME", "DEST", "SOURCE", "WHY"]
    cuda = next(line for line in text.splitlines()
                if f"lib64/libcuda.so.{host.version} " in line)
    assert cuda.split()[:4] == ["lib", "compute", "x86-64", "libcuda.so.1"]
    assert "the CUDA driver API" in cuda
    assert header.index("DEST") == cuda.index(f"lib64/libcuda.so.{host.version}")
    assert "lib64/libGLX_indirect.so.0" in text
    assert "left over from driver 570.86.15" in text
    assert "classic-TLS build" in text
    assert err.getvalue() == ""


def test_json_is_the_manifest_plus_a_summary(fake_host):
    out = io.StringIO()
    assert run_list(Config(driver_root=fake_host.root), as_json=True, out=out,
                    version=fake_host.version) == 0
    body = json.loads(out.getvalue())
    assert body["Version"] == fake_host.version
    assert {f["dest"] for f in body["Files"]} == fake_host.expected_dests
    assert body["Summary"]["Files"] == len(body["Files"])
    assert body["Summary"]["Rejected"] == len(body["Rejected"]) > 0
    assert body["Summary"]["ByKind"]["bin"] == 5
    assert body["Summary"]["DriverRoot"] == str(fake_host.root)
    assert {"source", "dest", "kind", "capability", "reason", "arch", "soname"} <= set(
        body["Files"][0])


def test_no_driver_is_an_error_naming_the_root(tmp_path):
    for as_json in (False, True):
        out, err = io.StringIO(), io.StringIO()
        assert run_list(Config(driver_root=tmp_path), as_json=as_json, out=out, err=err) == 1
        assert err.getvalue().startswith("nvidia-docker-plugin | Error: no NVIDIA driver found "
                                         f"under {tmp_path}")
        assert "/etc/ld.so.cache" in err.getvalue()
        if as_json:
            assert json.loads(out.getvalue())["DriverRoot"] == str(tmp_path)
        else:
            assert out.getvalue() == ""
