"""`nvidia-docker-plugin list [--json]`: every file a driver volume would hold, and why.

Selected files first (kind, capability, arch, SONAME, destination, source, reason), then the
links, then every candidate that was left out with its reason. JSON is `Manifest.to_json()` plus
a `Summary`. The daemon's main wires the subcommand; this module only discovers and prints.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any, TextIO

from nvplugin.api.tabwriter import align
from nvplugin.core.config import Config
from nvplugin.core.errors import DiscoveryError
from nvplugin.core.names import DAEMON_PROGRAM
from nvplugin.core.text import escape_controls
from nvplugin.driver import discovery
from nvplugin.driver.manifest import Manifest


def run_list(config: Config, *, as_json: bool, out: TextIO, version: str | None = None,
             err: TextIO | None = None) -> int:
    """Print the manifest for `config.driver_root`; 0 on success, 1 when there is no driver."""
    err = err or sys.stderr
    try:
        manifest = discovery.discover(config.driver_root, version)
    except DiscoveryError as exc:
        print(f"{DAEMON_PROGRAM} | Error: {exc}", file=err)
        if as_json:
            json.dump({"Error": str(exc), "DriverRoot": str(config.driver_root)}, out, indent=2)
            out.write("\n")
        return 1
    if as_json:
        json.dump(manifest_json(manifest, str(config.driver_root)), out, indent=2)
        out.write("\n")
    else:
        out.write(manifest_text(manifest, str(config.driver_root)))
    return 0


def summary(manifest: Manifest, driver_root: str) -> dict[str, Any]:
    return {
        "DriverRoot": driver_root,
        "Version": manifest.version,
        "Files": len(manifest.entries),
        "Links": len(manifest.links),
        "Rejected": len(manifest.rejected),
        "ByKind": dict(sorted(Counter(e.kind for e in manifest.entries).items())),
        "ByCapability": dict(sorted(Counter(e.capability for e in manifest.entries).items())),
    }


def manifest_json(manifest: Manifest, driver_root: str) -> dict[str, Any]:
    body = manifest.to_json()
    body["Summary"] = summary(manifest, driver_root)
    return body


def _clean(text: str | None) -> str:
    # Tabs and newlines are structure for the aligner; a file name must not carry them in.
    return escape_controls(text or "-")


def manifest_text(manifest: Manifest, driver_root: str) -> str:
    s = summary(manifest, driver_root)
    parts = [f"NVIDIA driver {manifest.version} under {driver_root}: {s['Files']} files, "
             f"{s['Links']} links, {s['Rejected']} rejected\n\n"]
    rows = ["KIND\tCAPABILITY\tARCH\tSONAME\tDEST\tSOURCE\tWHY"]
    rows += ["\t".join(_clean(x) for x in (e.kind, e.capability, e.arch, e.soname, e.dest,
                                           e.source, e.reason))
             for e in manifest.entries]
    parts.append(align("\n".join(rows) + "\n", padding=2))
    if manifest.links:
        rows = ["LINK\tTARGET\tWHY"]
        rows += [f"{_clean(x.path)}\t{_clean(x.target)}\t{_clean(x.reason)}"
                 for x in manifest.links]
        parts.append("\n" + align("\n".join(rows) + "\n", padding=2))
    if manifest.rejected:
        rows = ["REJECTED\tWHY"]
        rows += [f"{_clean(r.path)}\t{_clean(r.reason)}" for r in manifest.rejected]
        parts.append("\n" + align("\n".join(rows) + "\n", padding=2))
    return "".join(parts)
