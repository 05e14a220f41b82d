"""`nvidia-docker-plugin [COMMAND]`: one parser, then `serve` (the default), `list`, `doctor`,
`gc` or `cdi`.

Every command's modules load when it runs; `serve` starts loading NVML on its own thread before
it imports the web stack (see `_serve`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Sequence

from nvplugin.cdi.names import split_kind
from nvplugin.cli import STARTED
from nvplugin.cli.lean_import import ca_directory_only
from nvplugin.core import config as configuration
from nvplugin.core import logs
from nvplugin.core.config import Config
from nvplugin.core.errors import NvpluginError
from nvplugin.core.names import DAEMON_PROGRAM
from nvplugin.core.phases import Phases

log = logging.getLogger("nvplugin")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        invocation = configuration.parse(args)
        split_kind(invocation.config.cdi_kind)  # CDI's name rules: cdi/names.py
    except NvpluginError as err:
        print(f"{DAEMON_PROGRAM}: error: {err}", file=sys.stderr)
        return 2
    cfg = invocation.config
    if invocation.command == "serve":
        logs.setup(DAEMON_PROGRAM, cfg.log_level)
        return _serve(cfg, Phases(origin=STARTED))
    # One-shot commands print their own report: only warnings and worse go to the log.
    logs.setup(DAEMON_PROGRAM, cfg.log_level if cfg.log_level != "info" else "warning")
    if invocation.command == "list":
        from nvplugin.cli.listing import run_list

        return run_list(cfg, as_json=invocation.as_json, out=sys.stdout,
                        version=_nvml_version(cfg))
    if invocation.command == "gc":
        from nvplugin.cli.gc import run_gc

        return run_gc(cfg, as_json=invocation.as_json, out=sys.stdout,
                      nvml_version=lambda: _nvml_version(cfg))
    if invocation.command == "cdi":
        from nvplugin.cli.cdi_spec import run_cdi

        return run_cdi(cfg, output=invocation.output, out=sys.stdout)
    from nvplugin.cli.doctor import run_doctor

    return run_doctor(cfg, as_json=invocation.as_json, out=sys.stdout)


def _serve(cfg: Config, phases: Phases) -> int:
    """The daemon. NVML is loaded first, on its own thread and before the web stack and the
    APIs are imported: its init is C code that runs while Python imports (on a big GPU host the
    two are the largest parts of start-up, and they no longer add up)."""
    phases.spans["entry point"] = (0.0, phases.since_origin())  # cli/main's imports, argv
    # Start-up makes ~100,000 objects that live as long as the daemon: a collection meanwhile
    # would find almost nothing to free (2.6 % of the imports' instructions). `Daemon` turns
    # collection back on once it is ready.
    gc.disable()
    with phases.span("imports"):
        from nvplugin.gpu.cuda import CudaProperties
        from nvplugin.gpu.service import GpuService

        # 1.0's first start-up lines, in 1.0's order: each step is queued on the NVML thread in
        # that order, and the lines announce them as they are queued.
        log.info("Loading NVIDIA unified memory")
        log.info("Loading NVIDIA management library")
        log.info("Discovering GPU devices")
        gpus = GpuService.begin(driver_root=cfg.driver_root, dev_root=cfg.dev_root,
                                phases=phases, cuda=CudaProperties(cfg.driver_root))
        with ca_directory_only():  # aiohttp's unused client contexts: cli/lean_import.py
            from nvplugin.cli.serve import Daemon
    return asyncio.run(Daemon(cfg, gpus, phases).run())


def _nvml_version(cfg: Config) -> str | None:
    """The driver version from NVML, the authority when it loads (as in 1.0)."""
    from nvplugin.driver import discovery
    from nvplugin.gpu.service import GpuService

    async def read() -> str | None:
        library = discovery.find_nvml_library(cfg.driver_root)
        gpus = await GpuService.start(driver_root=cfg.driver_root, dev_root=cfg.dev_root,
                                      nvml_library=library)
        try:
            return await gpus.driver_version() if gpus.available else None
        finally:
            await gpus.close()

    return asyncio.run(read())


if __name__ == "__main__":
    sys.exit(main())
