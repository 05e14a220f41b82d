"""Device nodes under `--dev-root`: the control nodes every GPU container needs and MIG caps.

1.0 refused to start without `nvidia-modprobe`; here it is only tried when `/dev/nvidia-uvm` is
missing, and its absence is no error when the nodes are there.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

from nvplugin.gpu.records import DeviceNode, Gpu, MigDevice

log = logging.getLogger(__name__)

# (name, required): 1.0 always passed nvidiactl and nvidia-uvm, and uvm-tools when present;
# nvidia-modeset is passed when present, as nvidia-container-toolkit does.
CONTROL_NODES = (("nvidiactl", True), ("nvidia-uvm", True), ("nvidia-uvm-tools", False),
                 ("nvidia-modeset", False))
MODPROBE_DIRS = ("usr/bin", "usr/sbin", "usr/local/bin", "usr/local/nvidia/bin", "bin", "sbin")
MODPROBE_TIMEOUT_S = 10.0
MIG_MINORS = "proc/driver/nvidia-caps/mig-minors"

Runner = Callable[[list[str]], object]


def find_modprobe(driver_root: Path) -> Path | None:
    for directory in MODPROBE_DIRS:
        candidate = driver_root / directory / "nvidia-modprobe"
        if candidate.is_file():
            return candidate
    return None


def _run(argv: list[str]) -> object:
    return subprocess.run(argv, check=True, capture_output=True, timeout=MODPROBE_TIMEOUT_S)


def control_nodes(dev_root: Path, driver_root: Path, *, run: Runner = _run
                  ) -> tuple[DeviceNode, ...]:
    """The control nodes that exist now; loads nvidia-uvm first when its node is missing."""
    dev = dev_root / "dev"
    # nvidia-modprobe creates nodes in this process's /dev, so only when that is the dev root.
    modprobe = find_modprobe(driver_root) if dev_root.resolve() == Path("/") else None
    if not (dev / "nvidia-uvm").exists() and modprobe is not None:
        try:
            run([str(modprobe), "-u", "-c=0"])
        except (OSError, subprocess.SubprocessError) as err:
            log.warning("Could not load nvidia-uvm with %s: %s", modprobe, err)
    # Without the kernel module the nodes are missing for the reason the daemon already gives
    # in its one "NVIDIA driver not found" line; only with it loaded is a missing node news.
    missing_level = logging.WARNING if (driver_root / "proc/driver/nvidia").is_dir() \
        else logging.DEBUG
    nodes = []
    for name, required in CONTROL_NODES:
        node = dev / name
        if node.exists():
            nodes.append(DeviceNode(host_path=str(node), path=f"/dev/{name}"))
        elif required:
            log.log(missing_level, "%s is missing; containers will not reach the GPUs until it "
                    "exists", node)
    return tuple(nodes)


def parse_mig_minors(text: str) -> dict[str, int]:
    """`/proc/driver/nvidia-caps/mig-minors` lines (`gpu0/gi1/access 12`) as name -> minor."""
    minors = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            minors[parts[0]] = int(parts[1])
    return minors


def read_mig_minors(driver_root: Path) -> dict[str, int]:
    try:
        return parse_mig_minors((driver_root / MIG_MINORS).read_text(errors="replace"))
    except OSError:
        return {}  # no MIG support in this driver (or not loaded): no caps nodes


def gpu_nodes(gpus: Iterable[Gpu], mig_devices: Iterable[tuple[Gpu, MigDevice]] = ()
              ) -> tuple[DeviceNode, ...]:
    """GPU nodes in index order, then the caps nodes of each chosen MIG device."""
    nodes = [DeviceNode(host_path=g.host_path, path=g.path)
             for g in sorted(gpus, key=lambda g: g.index)]
    seen: set[str] = set()
    for _, mig in mig_devices:
        for cap in mig.caps:
            if cap not in seen:
                seen.add(cap)
                nodes.append(DeviceNode(host_path=cap,
                                        path=f"/dev/nvidia-caps/{Path(cap).name}"))
    return tuple(nodes)
