"""`nvidia-docker-plugin cdi [--output FILE]`: this host's CDI spec, as the daemon writes it.

The same spec, built the same way (cdi/writer.py's `spec_from_host`): for a host without the
daemon, a node image, or to see what the daemon would write. JSON on stdout, or written
atomically to FILE (mode 0644), which is how a static copy goes to /etc/cdi.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TextIO

from nvplugin.cdi.writer import spec_from_host, write_spec
from nvplugin.core.config import Config
from nvplugin.core.errors import NvpluginError
from nvplugin.core.names import DAEMON_PROGRAM


def run_cdi(cfg: Config, *, output: Path | None, out: TextIO, err: TextIO | None = None) -> int:
    """0 with the spec printed or written; 1 with one line on stderr when there is none."""
    err = err or sys.stderr
    try:
        spec, left_out = asyncio.run(spec_from_host(cfg))
    except NvpluginError as exc:
        print(f"{DAEMON_PROGRAM} | Error: {exc}", file=err)
        return 1
    for item in left_out:
        print(f"{DAEMON_PROGRAM} | Warning: left out {item}", file=err)
    if output is None:
        out.write(spec.render().decode())
        return 0
    try:
        write_spec(output, spec)
    except OSError as exc:
        print(f"{DAEMON_PROGRAM} | Error: cannot write {output}: {exc.strerror or exc}", file=err)
        return 1
    return 0
