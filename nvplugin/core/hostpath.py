"""Device paths as the Docker host sees them, when the daemon sees the host's `/` elsewhere."""

from __future__ import annotations

import posixpath

from nvplugin.core.errors import ConfigError


def _normal(path: str) -> str:
    # normpath keeps a leading `//` (POSIX lets it mean something else); Linux does not.
    return "/" + posixpath.normpath(path).lstrip("/")


def docker_host_path(path: str, host_root: str) -> str:
    """`path`, a node as this daemon sees it, as the Docker host sees it.

    `host_root` is where the Docker host's `/` appears to the daemon: `/` when the daemon runs on
    the host, `/host` in our image (the host's `/` mounted there). So with `/host`,
    `/host/dev/nvidia0` is `/dev/nvidia0`; with `/`, a driver container's
    `/run/nvidia/driver/dev/nvidia0` stays as it is. Lexical, like the paths it is given (built
    from --dev-root): `..` cannot climb out. A relative path, or one outside `host_root`, is
    something Docker cannot open on its host: ConfigError naming both.
    """
    if not path.startswith("/"):
        raise ConfigError(
            f"device path {path!r} is relative: Docker opens device nodes by absolute path on "
            "its host; give --dev-root as an absolute path"
        )
    root, inner = _normal(host_root), _normal(path)
    if root == "/":
        return inner
    if inner == root:
        return "/"
    if not inner.startswith(root + "/"):
        raise ConfigError(
            f"{inner} is not under --host-root {root}, so the Docker host cannot see it: set "
            "--dev-root to a directory under --host-root (where the host's / is mounted), or "
            "--host-root to / when the daemon runs on the host"
        )
    return inner[len(root):]
