"""Which Docker Engine to talk to, by the docker CLI's own rules.

`resolve_endpoint` follows the CLI's precedence (`--context`, `-H`, `DOCKER_HOST`,
`DOCKER_CONTEXT`, `currentContext` in config.json, the default socket) and its TLS options, so the
wrapper inspects the image on the engine that will run it and `doctor` checks that same engine.
Named contexts are read from the CLI's own store (`contexts/meta/<sha256(name)>/meta.json`),
which is what `docker context inspect` prints, without the ~40 ms of running it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nvplugin.core.errors import DockerError


class GlobalOptions(Protocol):
    """The docker CLI's global options as given (`-H`, `--context`, `--tls*`, `--config`)."""

    def global_values(self, name: str) -> list[str]: ...
    def global_flag(self, name: str) -> bool: ...


class NoOptions:
    """No global options: the environment and config.json decide (what `doctor` checks)."""

    def global_values(self, name: str) -> list[str]:
        return []

    def global_flag(self, name: str) -> bool:
        return False


DEFAULT_HOST = "unix:///var/run/docker.sock"
@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the Docker Engine is and how to speak TLS to it (the CLI's rules)."""

    host: str
    tls: bool = False
    tls_verify: bool = False
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    config_dir: str | None = None


def config_dir(inv: GlobalOptions, environ: Mapping[str, str]) -> Path:
    given = inv.global_values("config")
    if given:
        return Path(given[-1])
    if environ.get("DOCKER_CONFIG"):
        return Path(environ["DOCKER_CONFIG"])
    return Path(environ.get("HOME", "/root")) / ".docker"


def context_name(inv: GlobalOptions, environ: Mapping[str, str], cfg: Path) -> str:
    """The docker CLI's order: --context, -H, DOCKER_HOST, DOCKER_CONTEXT, config, default."""
    if inv.global_values("context"):
        if inv.global_values("host"):
            raise DockerError("conflicting options: either specify --host or --context, not both")
        return inv.global_values("context")[-1]
    if inv.global_values("host") or environ.get("DOCKER_HOST"):
        return "default"
    if environ.get("DOCKER_CONTEXT"):
        return environ["DOCKER_CONTEXT"]
    try:
        current = json.loads((cfg / "config.json").read_text()).get("currentContext")
    except (OSError, ValueError, AttributeError):
        current = None
    return current or "default"


def resolve_endpoint(inv: GlobalOptions, environ: Mapping[str, str]) -> Endpoint:
    """The engine the docker CLI would use for these global options and environment.

    Named contexts are read from the CLI's own store (`contexts/meta/<sha256(name)>/meta.json`),
    which is what `docker context inspect` prints, without the cost of running it.
    """
    cfg = config_dir(inv, environ)
    name = context_name(inv, environ, cfg)
    if name != "default":
        return _context_endpoint(cfg, name)
    hosts = inv.global_values("host")
    host = hosts[-1] if hosts else environ.get("DOCKER_HOST") or DEFAULT_HOST
    verify = inv.global_flag("tlsverify") or bool(environ.get("DOCKER_TLS_VERIFY"))
    tls = verify or inv.global_flag("tls")
    certs = Path(environ.get("DOCKER_CERT_PATH") or cfg)

    def pick(option: str, default: str) -> str:
        values = inv.global_values(option)
        return values[-1] if values else str(certs / default)

    return Endpoint(
        host=host if "://" in host else f"tcp://{host}",
        tls=tls,
        tls_verify=verify,
        ca_cert=pick("tlscacert", "ca.pem") if tls else None,
        cert=pick("tlscert", "cert.pem") if tls else None,
        key=pick("tlskey", "key.pem") if tls else None,
        config_dir=str(cfg),
    )


def _context_endpoint(cfg: Path, name: str) -> Endpoint:
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = cfg / "contexts" / "meta" / digest / "meta.json"
    try:
        docker = json.loads(meta.read_text())["Endpoints"]["docker"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DockerError(f'context "{name}" not found ({meta}: {e})') from e
    tls_dir = cfg / "contexts" / "tls" / digest / "docker"
    files = {f: tls_dir / f for f in ("ca.pem", "cert.pem", "key.pem")}
    has = {f: str(p) if p.is_file() else None for f, p in files.items()}
    tls = any(has.values())
    return Endpoint(
        host=docker.get("Host") or DEFAULT_HOST,
        tls=tls,
        tls_verify=tls and not docker.get("SkipTLSVerify", False),
        ca_cert=has["ca.pem"],
        cert=has["cert.pem"],
        key=has["key.pem"],
        config_dir=str(cfg),
    )
