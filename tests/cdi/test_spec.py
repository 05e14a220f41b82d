"""CDI's name rules, the spec's JSON, the version its fields need, validation and change lines."""

from __future__ import annotations

import json

import pytest

from nvplugin.cdi.names import check_device_name, qualified, split_kind
from nvplugin.cdi.spec import (
    MAX_VERSION,
    Device,
    Edits,
    Mount,
    Node,
    Spec,
    declared_kind,
    describe_change,
    required_version,
    validate,
)
from nvplugin.core.errors import CdiError

OPTIONS = ("ro", "nosuid", "nodev", "bind")
CTL = Node("/dev/nvidiactl", "/dev/nvidiactl")
LIB = Mount("/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04",
            "/usr/local/nvidia/lib64/libcuda.so.1", OPTIONS)


def spec(*devices: Device, kind: str = "nvidia.com/gpu", edits: Edits | None = None) -> Spec:
    return Spec(kind=kind, devices=devices,
                edits=edits if edits is not None else Edits(nodes=(CTL,), mounts=(LIB,)))


def gpu(name: str, minor: int = 0, host: str | None = None) -> Device:
    path = f"/dev/nvidia{minor}"
    return Device(name, Edits(nodes=(Node(path, host or path),)))


@pytest.mark.parametrize("kind", ["nvidia.com/gpu", "example.org/gpu-x", "ab/cd", "A_b.c-d/e_F"])
def test_kinds_engines_accept(kind):
    vendor, cls = split_kind(kind)
    assert f"{vendor}/{cls}" == kind


@pytest.mark.parametrize(("kind", "why"), [
    ("nvidia.com", "expected vendor/class"),
    ("/gpu", "the vendor must"), ("n/gpu", "the vendor must"),  # one character: a Go panic
    ("-nvidia.com/gpu", "the vendor must"), ("nvidia.com./gpu", "the vendor must"),
    ("nvi dia.com/gpu", "the vendor must"), ("nvidia.com/g", "the class must"),
    ("nvidia.com/gpu.x", "cdiVersion 0.6.0"), ("nvidia.com/gpu-", "the class must"),
    ("nvidia.com/gpu/x", "the class must"), ("nvidia.com/\x1b[2Jgpu", "\\x1b"),
])
def test_kinds_engines_refuse_are_named(kind, why):
    with pytest.raises(CdiError, match="invalid CDI kind") as err:
        split_kind(kind)
    assert why in err.value.message
    assert "\x1b" not in err.value.message


@pytest.mark.parametrize("name", ["0", "17", "GPU-00000001-67d9-9e02-1f7a-53d331412b6f", "0:1",
                                  "MIG-aaaa1111-0000", "all", "a", "x.y_z"])
def test_device_names_engines_accept(name):
    assert check_device_name(name) == name
    assert qualified("nvidia.com/gpu", name) == f"nvidia.com/gpu={name}"


@pytest.mark.parametrize("name", ["", "-0", "0-", ":1", "a b", "a/b", "gpu=0", "é", "0\n"])
def test_device_names_engines_refuse(name):
    with pytest.raises(CdiError, match="invalid CDI device name"):
        check_device_name(name)


def test_the_version_is_the_lowest_the_fields_need():
    assert required_version(spec(gpu("gpu0"))) == "0.3.0"
    assert required_version(spec(gpu("0"))) == "0.5.0"  # a name starting with a digit
    assert required_version(spec(gpu("gpu0", host="/host/dev/nvidia0"))) == "0.5.0"  # hostPath
    assert required_version(spec(gpu("gpu0"), kind="nvidia.com/g.pu")) == "0.6.0"


def test_a_spec_needing_more_than_podman_4_3_reads_is_refused():
    with pytest.raises(CdiError) as err:
        validate(spec(gpu("0"), kind="nvidia.com/g.pu"))
    assert f"newer than the {MAX_VERSION} that Debian 12's Podman 4.3 reads" in err.value.message


def test_json_leaves_host_path_out_when_it_is_the_path_and_declares_the_version():
    body = spec(gpu("0"), gpu("1", minor=5, host="/host/dev/nvidia5")).to_json()
    assert body["cdiVersion"] == "0.5.0" and body["kind"] == "nvidia.com/gpu"
    assert body["devices"][0] == {"name": "0",
                                  "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}]}}
    assert body["devices"][1]["containerEdits"]["deviceNodes"] == [
        {"path": "/dev/nvidia5", "hostPath": "/host/dev/nvidia5"}]
    assert body["containerEdits"]["mounts"] == [
        {"hostPath": LIB.host_path, "containerPath": LIB.container_path, "options": list(OPTIONS)}]


def test_a_written_spec_reads_back_equal():
    original = spec(gpu("0"), gpu("GPU-1", minor=1, host="/h/dev/nvidia1"))
    assert Spec.from_json(json.loads(original.render())) == original
    assert original.render().endswith(b"}\n")


@pytest.mark.parametrize("change", [
    lambda b: b["containerEdits"].update(hooks=[{"hookName": "createContainer", "path": "/x"}]),
    lambda b: b["containerEdits"].update(env=["NVIDIA_VISIBLE_DEVICES=void"]),
    lambda b: b.update(annotations={"a": "b"}),
    lambda b: b.update(cdiVersion="0.6.0"),
    lambda b: b["devices"][0]["containerEdits"]["deviceNodes"][0].update(major=195),
    lambda b: b.pop("kind"),
], ids=["hooks", "env", "annotations", "version", "major", "no-kind"])
def test_what_another_tool_wrote_is_not_taken_for_ours(change):
    body = spec(gpu("0")).to_json()
    change(body)
    with pytest.raises(CdiError, match="not a CDI spec nvplugin writes"):
        Spec.from_json(body)
    with pytest.raises(CdiError, match="not a JSON object"):
        Spec.from_json([body])


@pytest.mark.parametrize(("broken", "problem"), [
    (spec(), "no devices"),
    (spec(gpu("0"), gpu("0")), "device '0' is listed twice"),
    (spec(Device("0", Edits())), "device '0' has no edits"),
    (spec(Device("0 1", Edits(nodes=(CTL,)))), "invalid CDI device name"),
    (spec(Device("0", Edits(nodes=(Node("nvidia0", "/dev/nvidia0"),)))), "is not under /dev"),
    (spec(Device("0", Edits(nodes=(Node("/dev/../etc/x", "/dev/nvidia0"),)))), "not under /dev"),
    (spec(Device("0", Edits(nodes=(Node("/dev/nvidia0", "dev/nvidia0"),)))), "is not absolute"),
    (spec(gpu("0"), edits=Edits(mounts=(LIB, LIB))), "two mounts onto"),
    (spec(gpu("0"), edits=Edits(mounts=(Mount("lib", "/x", OPTIONS),))), "not a clean absolute"),
    (spec(gpu("0"), edits=Edits(mounts=(Mount("/a", "/x/../y", OPTIONS),))), "not a clean"),
    (spec(gpu("0"), edits=Edits(mounts=(Mount("/a", "/x", ("bind", "nosuid", "nodev")),))),
     "a read-only bind with nosuid,nodev is required"),
    (spec(gpu("0"), edits=Edits(mounts=(Mount("/a", "/x", ("ro", "nosuid", "nodev")),))),
     "a read-only bind"),
    (spec(gpu("0"), edits=Edits(mounts=(Mount("/a", "/x", (*OPTIONS, "suid")),))),
     "a read-only bind"),
], ids=["empty", "twice", "no-edits", "name", "relative-node", "dotdot-node", "relative-host",
        "same-target", "relative-mount", "dotdot-mount", "writable", "not-bind", "suid"])
def test_validation_names_what_an_engine_would_refuse(broken, problem):
    with pytest.raises(CdiError, match="invalid CDI spec") as err:
        validate(broken)
    assert problem in err.value.message


def test_many_problems_are_cut_to_a_few():
    broken = spec(*(Device(f"-{i}", Edits()) for i in range(5)))
    with pytest.raises(CdiError) as err:
        validate(broken)
    assert err.value.message.count(";") == 2 and "more)" in err.value.message


def test_change_lines_say_what_changed():
    old = spec(gpu("0"), gpu("1", minor=1))
    assert describe_change(None, old).startswith("new spec: 2 devices, 1 control nodes, 1 mounts")
    assert describe_change(old, old).startswith("unchanged: 2 devices")
    upgraded = Mount(LIB.host_path.replace("580.159.04", "590.10.01"), LIB.container_path,
                     OPTIONS)
    new = spec(gpu("0"), gpu("2", minor=2), edits=Edits(nodes=(CTL,), mounts=(upgraded,)))
    line = describe_change(old, new)
    assert "devices added: 2" in line and "devices removed: 1" in line
    assert "1 mounts from other host files: /usr/local/nvidia/lib64/libcuda.so.1" in line
    more = spec(gpu("0"), edits=Edits(nodes=(CTL,), mounts=tuple(
        Mount("/a", f"/x/{i}", OPTIONS) for i in range(5))))
    assert "5 mounts added: /x/0, /x/1, /x/2 and 2 more; 1 mounts removed:" in describe_change(
        spec(gpu("0")), more)


@pytest.mark.parametrize(("data", "suffix", "kind"), [
    (b'{"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu", "devices": []}', ".json",
     "nvidia.com/gpu"),
    (b"---\ncdiVersion: 0.5.0\ncontainerEdits:\n  env:\n  - kind: x\nkind: nvidia.com/gpu\n",
     ".yaml", "nvidia.com/gpu"),
    (b"cdiVersion: '0.7.0'\nkind: \"nvidia.com/gpu\"  # generated\n", ".yaml", "nvidia.com/gpu"),
    (b"kind: example.com/fpga\n", ".yaml", "example.com/fpga"),
    (b"devices: []\n", ".yaml", None),
    (b"{not json", ".json", None),
    (b'["kind"]', ".json", None),
], ids=["json", "yaml", "quoted", "other", "no-kind", "bad-json", "not-object"])
def test_the_kind_any_spec_file_declares(data, suffix, kind):
    assert declared_kind(data, suffix) == kind
