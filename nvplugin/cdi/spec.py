"""A CDI spec as records: its JSON, the lowest `cdiVersion` its fields need, its validation, and
what changed between two of them.

Only the fields nvplugin writes are modelled (device nodes with `path` and `hostPath`, bind
mounts with options); a spec read back (`Spec.from_json`) must hold nothing else, so a file that
another tool wrote, or edited, is recognised as not ours. Pure: the host-file checks live in
writer.py.

Version rules, from the CDI specification's own table (specs-go/version.go): 0.3.0 is the
earliest engines accept; a device name that does not start with a letter (`0`) or a device node
with `hostPath` needs 0.5.0; a mount `type` 0.4.0; annotations or a dotted class 0.6.0;
additionalGids and intelRdt 0.7.0. Engines refuse a spec whose declared version is lower than
its fields need, and older engines refuse a version newer than they know: Debian 12's Podman
4.3 reads 0.5.0 and answers `unresolvable CDI devices` for 0.6.0. So the spec declares exactly
the version its fields need, and validation refuses anything above MAX_VERSION.
"""

from __future__ import annotations

import json
import posixpath
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nvplugin.cdi.names import check_device_name, split_kind
from nvplugin.core.errors import CdiError

# Where engines read specs unless told otherwise, in the order they read them: a later directory
# wins a clash (/var/run is /run on every current distribution).
ENGINE_SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
EARLIEST_VERSION = "0.3.0"
MAX_VERSION = "0.5.0"  # the newest Debian 12's Podman 4.3.1 reads
MOUNT_OPTIONS = frozenset({"ro", "nosuid", "nodev", "noexec", "bind", "rbind"})
REQUIRED_OPTIONS = ("ro", "nosuid", "nodev")  # nothing handed over is writable, setuid or a device
EXAMPLES = 3  # paths named in a change line, per direction


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


@dataclass(frozen=True, slots=True)
class Node:
    """A device node: `path` in the container, `host_path` as the engine's host sees it."""

    path: str
    host_path: str


@dataclass(frozen=True, slots=True)
class Mount:
    """A read-only bind mount of one host file (as the engine's host sees it)."""

    host_path: str
    container_path: str
    options: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Edits:
    """What a CDI device or the spec adds to a container: device nodes and mounts."""

    nodes: tuple[Node, ...] = ()
    mounts: tuple[Mount, ...] = ()

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.nodes:
            body["deviceNodes"] = [
                {"path": n.path} if n.host_path == n.path else {"path": n.path,
                                                                  "hostPath": n.host_path}
                for n in self.nodes]
        if self.mounts:
            body["mounts"] = [{"hostPath": m.host_path, "containerPath": m.container_path,
                               "options": list(m.options)} for m in self.mounts]
        return body


@dataclass(frozen=True, slots=True)
class Device:
    """One CDI device: its name and its edits."""

    name: str
    edits: Edits


@dataclass(frozen=True, slots=True)
class Spec:
    """A whole spec: the devices and the edits every request for this kind gets."""

    kind: str
    devices: tuple[Device, ...]
    edits: Edits

    @property
    def version(self) -> str:
        return required_version(self)

    def device(self, name: str) -> Device | None:
        return next((d for d in self.devices if d.name == name), None)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"cdiVersion": self.version, "kind": self.kind,
                                "devices": [{"name": d.name, "containerEdits": d.edits.to_json()}
                                            for d in self.devices]}
        edits = self.edits.to_json()
        if edits:
            body["containerEdits"] = edits
        return body

    def render(self) -> bytes:
        """The file's bytes, also what `GET /v1.0/cdi/spec` answers."""
        return (json.dumps(self.to_json(), indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, body: object) -> Spec:
        """A spec nvplugin wrote, read back; CdiError for anything else (another tool's fields,
        a hand edit, a declared version other than the one its fields need)."""
        if not isinstance(body, dict):
            raise CdiError("not a CDI spec nvplugin writes: not a JSON object")
        try:
            spec = _spec_from_json(body)
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise CdiError(f"not a CDI spec nvplugin writes: {type(err).__name__}: {err}") from None
        if body["cdiVersion"] != spec.version:
            raise CdiError(f"not a CDI spec nvplugin writes: cdiVersion "
                           f"{body['cdiVersion']!r}, its fields need {spec.version}")
        return spec


def _only(body: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = set(body) - allowed
    if extra:
        raise ValueError(f"{where} has fields {sorted(extra)}")


def _edits_from_json(body: Mapping[str, Any], where: str) -> Edits:
    _only(body, {"deviceNodes", "mounts"}, where)
    nodes = []
    for node in body.get("deviceNodes", []):
        _only(node, {"path", "hostPath"}, f"{where} device node")
        nodes.append(Node(path=str(node["path"]), host_path=str(node.get("hostPath",
                                                                            node["path"]))))
    mounts = []
    for mount in body.get("mounts", []):
        _only(mount, {"hostPath", "containerPath", "options"}, f"{where} mount")
        mounts.append(Mount(host_path=str(mount["hostPath"]),
                            container_path=str(mount["containerPath"]),
                            options=tuple(str(o) for o in mount.get("options", []))))
    return Edits(nodes=tuple(nodes), mounts=tuple(mounts))


def _spec_from_json(body: Mapping[str, Any]) -> Spec:
    _only(body, {"cdiVersion", "kind", "devices", "containerEdits"}, "the spec")
    devices = []
    for device in body["devices"]:
        _only(device, {"name", "containerEdits"}, "a device")
        devices.append(Device(name=str(device["name"]),
                              edits=_edits_from_json(device["containerEdits"],
                                                     f"device {device['name']!r}")))
    return Spec(kind=str(body["kind"]), devices=tuple(devices),
                edits=_edits_from_json(body.get("containerEdits", {}), "the spec's edits"))


def required_version(spec: Spec) -> str:
    """The lowest cdiVersion whose rules allow every field `spec` uses (see the docstring)."""
    needed = EARLIEST_VERSION
    _vendor, _sep, cls = spec.kind.partition("/")
    edits = [spec.edits, *(d.edits for d in spec.devices)]
    rules = (
        ("0.5.0", any(d.name[:1] not in string.ascii_letters for d in spec.devices)),
        ("0.5.0", any(n.host_path != n.path for e in edits for n in e.nodes)),
        ("0.6.0", "." in cls),
    )
    for version, used in rules:
        if used and _version_key(version) > _version_key(needed):
            needed = version
    return needed


def validate(spec: Spec) -> None:
    """Everything an engine would refuse, and what nvplugin never hands out: CdiError naming
    each problem (up to a few). The host files are checked by writer.check_host_files."""
    problems: list[str] = []
    try:
        split_kind(spec.kind)
    except CdiError as err:
        problems.append(err.message)
    if not spec.devices:
        problems.append("no devices (engines refuse an empty spec)")
    seen: set[str] = set()
    for device in spec.devices:
        try:
            check_device_name(device.name)
        except CdiError as err:
            problems.append(err.message)
        if device.name in seen:
            problems.append(f"device {device.name!r} is listed twice")
        seen.add(device.name)
        if not device.edits.nodes and not device.edits.mounts:
            problems.append(f"device {device.name!r} has no edits (engines refuse it)")
        problems += _edit_problems(device.edits, f"device {device.name!r}")
    problems += _edit_problems(spec.edits, "the spec's edits")
    version = spec.version
    if _version_key(version) > _version_key(MAX_VERSION):
        problems.append(f"its fields need cdiVersion {version}, newer than the {MAX_VERSION} "
                        "that Debian 12's Podman 4.3 reads")
    if problems:
        more = f" (and {len(problems) - EXAMPLES} more)" if len(problems) > EXAMPLES else ""
        raise CdiError("invalid CDI spec: " + "; ".join(problems[:EXAMPLES]) + more)


def _is_clean_absolute(path: str) -> bool:
    return path.startswith("/") and posixpath.normpath(path) == path and "\0" not in path


def _edit_problems(edits: Edits, where: str) -> list[str]:
    problems = []
    for node in edits.nodes:
        if not (_is_clean_absolute(node.path) and node.path.startswith("/dev/")):
            problems.append(f"{where}: device node path {node.path!r} is not under /dev")
        if not _is_clean_absolute(node.host_path):
            problems.append(f"{where}: device node host path {node.host_path!r} is not absolute")
    targets: set[str] = set()
    for mount in edits.mounts:
        for path in (mount.host_path, mount.container_path):
            if not _is_clean_absolute(path):
                problems.append(f"{where}: mount path {path!r} is not a clean absolute path")
        if mount.container_path in targets:
            problems.append(f"{where}: two mounts onto {mount.container_path}")
        targets.add(mount.container_path)
        unknown = set(mount.options) - MOUNT_OPTIONS
        missing = [o for o in REQUIRED_OPTIONS if o not in mount.options]
        if unknown or missing or not {"bind", "rbind"} & set(mount.options):
            problems.append(f"{where}: mount {mount.container_path} has options "
                            f"{','.join(mount.options)}; a read-only bind with nosuid,nodev "
                            "is required")
    return problems


_YAML_KIND = re.compile(r"""^kind:[ \t]*(["']?)([^"'\s#]+)\1[ \t]*(#.*)?$""", re.MULTILINE)


def declared_kind(data: bytes, suffix: str) -> str | None:
    """The `kind` any CDI spec file declares (another producer's too), or None. JSON is parsed;
    YAML is not (no YAML parser is a dependency for this one field): its top-level `kind:` line
    is read, which is how nvidia-ctk and every other generator write it."""
    text = data.decode(errors="replace")
    if suffix == ".json":
        try:
            body = json.loads(text)
        except ValueError:
            return None
        kind = body.get("kind") if isinstance(body, dict) else None
        return kind if isinstance(kind, str) else None
    match = _YAML_KIND.search(text)
    return match.group(2) if match else None


def _names(kind: str, items: Iterable[str]) -> str:
    listed = sorted(items)
    shown = ", ".join(listed[:EXAMPLES]) + (f" and {len(listed) - EXAMPLES} more"
                                              if len(listed) > EXAMPLES else "")
    return f"{kind} {shown}"


def describe_change(old: Spec | None, new: Spec) -> str:
    """One log line's worth: what `new` changes over `old` (None: nothing was there)."""
    mounts = {m.container_path: m for m in new.edits.mounts}
    summary = (f"{len(new.devices)} devices, {len(new.edits.nodes)} control nodes, "
               f"{len(mounts)} mounts, cdiVersion {new.version}")
    if old is None:
        return f"new spec: {summary}"
    if old == new:
        return f"unchanged: {summary}"
    parts = []
    if old.kind != new.kind:
        parts.append(f"kind {old.kind} -> {new.kind}")
    old_devices, new_devices = {d.name: d for d in old.devices}, {d.name: d for d in new.devices}
    if new_names := new_devices.keys() - old_devices.keys():
        parts.append(_names("devices added:", new_names))
    if old_names := old_devices.keys() - new_devices.keys():
        parts.append(_names("devices removed:", old_names))
    if changed := [n for n in new_devices.keys() & old_devices.keys()
                   if new_devices[n] != old_devices[n]]:
        parts.append(_names("devices changed:", changed))
    if old.edits.nodes != new.edits.nodes:
        parts.append("control nodes: " + (", ".join(n.path for n in new.edits.nodes) or "none"))
    before = {m.container_path: m for m in old.edits.mounts}
    if added := [p for p in mounts if p not in before]:
        parts.append(_names(f"{len(added)} mounts added:", added))
    if gone := [p for p in before if p not in mounts]:
        parts.append(_names(f"{len(gone)} mounts removed:", gone))
    if moved := [p for p in mounts if p in before and before[p] != mounts[p]]:
        parts.append(_names(f"{len(moved)} mounts from other host files:", moved))
    return "; ".join(parts) + f" (now {summary})"
