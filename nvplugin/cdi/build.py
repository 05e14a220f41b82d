"""This host's CDI spec from what discovery and NVML found: where each driver file goes in the
container, the devices by index, UUID and MIG name, and `all`. Pure.

Zero copy: every file is a read-only `nosuid,nodev` bind mount of the very file discovery chose
(as the engine's host sees it, `--host-root` taken off), never a copy, and nothing else crosses.
Names are looked up two ways, and both must work:

- **1.0's layout**, for images that set `PATH=/usr/local/nvidia/bin:...` and
  `LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64` (1.0's images, and NVIDIA's CUDA
  images to this day): the volume's tree, file for file and link for link, under
  /usr/local/nvidia. A link (`libcuda.so.1`) becomes a second mount of its target's file, so no
  hook has to create it.
- **The system's own places**, for images that set neither: the binaries in /usr/bin (on every
  default PATH), and each library under the names programs and other libraries ask for (its
  SONAME links, `libcuda.so`, or its own name when that is its SONAME) in the directories the C
  library searches without a cache entry: /usr/lib/<multiarch> (Debian, Ubuntu) and /usr/lib64
  (RHEL, Fedora, SUSE) for 64-bit, /usr/lib/i386-linux-gnu and /usr/lib for 32-bit. GLVND's
  loaders (libGL, libEGL, ...) are left to the image there: images with GL bring their own, and
  NVIDIA's vendor libraries plug into them. Vulkan, EGL and OptiX data files go where their
  loaders look (/usr/share/...), GSP firmware where the toolkit puts it (/lib/firmware/nvidia).

Why not `containerEdits.env`: an engine applies CDI's `env` over the image's own, so a
`PATH` or `LD_LIBRARY_PATH` there would replace an image's value (NGC images put
/usr/local/cuda/compat/lib in theirs) rather than add to it (measured with Podman 4.3: the
spec's `PATH` replaced `-e PATH=...`). Why not a hook running ldconfig in the container: it runs
a host binary as root over the image's files at every start, needs a host path the daemon may
not share (the daemon in a container), and the mounts above make it unnecessary.

Device nodes carry no major/minor: engines read them from `hostPath` when the container is
created, so a module reload that moves nvidia-uvm's major never leaves the spec stale.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from nvplugin.cdi.names import qualified
from nvplugin.cdi.spec import Device, Edits, Mount, Node, Spec
from nvplugin.core.errors import CdiError, ConfigError
from nvplugin.core.hostpath import docker_host_path
from nvplugin.core.names import DRIVER_VOLUME_KIND, VOLUME_KINDS
from nvplugin.driver import catalog
from nvplugin.driver.manifest import Entry, Manifest
from nvplugin.gpu.devnodes import selection_nodes
from nvplugin.gpu.records import DeviceNode, Gpu, MigDevice
from nvplugin.gpu.selection import Selection

LEGACY_ROOT = VOLUME_KINDS[DRIVER_VOLUME_KIND][0]  # /usr/local/nvidia, 1.0's mount point
# Where the C library finds a name with no cache entry, per ELF architecture (discovery's names).
SYSTEM_LIBRARY_DIRS: dict[str, tuple[str, ...]] = {
    "x86-64": ("/usr/lib/x86_64-linux-gnu", "/usr/lib64"),
    "i386": ("/usr/lib/i386-linux-gnu", "/usr/lib"),
    "aarch64": ("/usr/lib/aarch64-linux-gnu", "/usr/lib64"),
    "ppc64": ("/usr/lib/powerpc64le-linux-gnu", "/usr/lib64"),
}
SYSTEM_BIN_DIR = "/usr/bin"
SHARE_DIR = "/usr/share"
FIRMWARE_DIR = "/lib/firmware"
# GLVND's loaders: kept in 1.0's layout (as 1.0's volume), never put over an image's own.
IMAGE_LOADERS = frozenset({"libGL", "libGLX", "libOpenGL", "libGLdispatch", "libEGL",
                           "libGLESv1_CM", "libGLESv2"})
CODE_OPTIONS = ("ro", "nosuid", "nodev", "bind")
DATA_OPTIONS = ("ro", "nosuid", "nodev", "noexec", "bind")  # manifests, firmware: never run
ALL = "all"
MAX_LINK_HOPS = 8


@dataclass(frozen=True, slots=True)
class Built:
    """A spec, and the MIG devices it had to leave out (with why), for the log."""

    spec: Spec
    left_out: tuple[str, ...] = ()


def build_spec(manifest: Manifest, gpus: Sequence[Gpu], control_nodes: Iterable[DeviceNode], *,
               kind: str, host_root: str, healthy: Callable[[str], bool] = lambda _uuid: True,
               ) -> Built:
    """The spec for these driver files, GPUs and control nodes. CdiError when one cannot be
    made: no /dev/nvidiactl, or a file the engine's host cannot see (outside --host-root).

    `all` holds the GPUs `healthy` (by UUID) accepts, as docker/cli's every GPU does: one that
    had a critical Xid, a double-bit ECC error or fell off the bus is left out until it
    recovers, and with none healthy there is no `all` (the engine then refuses it by name).
    Each GPU's own devices (index, UUID, MIG) stay: a GPU named is given as asked."""
    controls = tuple(_node(n, host_root) for n in control_nodes)
    if not any(n.path == "/dev/nvidiactl" for n in controls):
        raise CdiError("no /dev/nvidiactl under --dev-root: no container could reach a GPU; "
                       "load the driver (nvidia-modprobe -c=0) or check --dev-root")
    devices, left_out = _devices(gpus, host_root, healthy)
    edits = Edits(nodes=controls, mounts=container_mounts(manifest, host_root))
    return Built(Spec(kind=kind, devices=devices, edits=edits), left_out)


def _host(path: str, host_root: str) -> str:
    try:
        return docker_host_path(path, host_root)
    except ConfigError as err:
        raise CdiError(f"cannot name {path} in a CDI spec: {err.message}") from None


def _node(node: DeviceNode, host_root: str) -> Node:
    return Node(path=node.path, host_path=_host(node.host_path, host_root))


def _edits(chosen: Selection, host_root: str) -> Edits:
    return Edits(nodes=tuple(_node(n, host_root) for n in selection_nodes(chosen)))


def _usable(gpu: Gpu) -> list[MigDevice]:
    """The MIG devices that can be handed out: MIG on, access nodes found."""
    if not gpu.mig_mode:
        return []
    return [mig for mig in gpu.mig_devices if mig.access_problem is None and mig.caps]


def _devices(gpus: Sequence[Gpu], host_root: str, healthy: Callable[[str], bool],
             ) -> tuple[tuple[Device, ...], tuple[str, ...]]:
    """By index, then by UUID, then MIG devices as `<gpu>:<mig>` and by MIG UUID, then `all`
    (every healthy device's nodes, as CDI's convention and NVIDIA's toolkit have it)."""
    ordered = sorted(gpus, key=lambda g: g.index)
    by_index, by_uuid, by_mig_index, by_mig_uuid = [], [], [], []
    left_out = []
    usable: list[tuple[Gpu, MigDevice]] = []
    for gpu in ordered:
        edits = _edits(Selection(gpus=(gpu,)), host_root)
        by_index.append(Device(str(gpu.index), edits))
        by_uuid.append(Device(gpu.uuid, edits))
        for mig in _usable(gpu):
            usable.append((gpu, mig))
            mig_edits = _edits(Selection(gpus=(gpu,), mig_devices=((gpu, mig),)), host_root)
            by_mig_index.append(Device(f"{gpu.index}:{mig.index}", mig_edits))
            by_mig_uuid.append(Device(mig.uuid, mig_edits))
        if gpu.mig_mode:
            left_out += [f"MIG device {gpu.index}:{mig.index} ({mig.uuid}): "
                         f"{mig.access_problem or 'no access nodes'}"
                         for mig in gpu.mig_devices if mig not in _usable(gpu)]
    devices = [*by_index, *by_uuid, *by_mig_index, *by_mig_uuid]
    well = tuple(gpu for gpu in ordered if healthy(gpu.uuid))
    left_out += [f"GPU {gpu.index} ({gpu.uuid}) from {ALL}: unhealthy"
                 for gpu in ordered if gpu not in well]
    if well:
        devices.append(Device(ALL, _edits(Selection(
            gpus=well, mig_devices=tuple((g, m) for g, m in usable if g in well)), host_root)))
    return tuple(devices), tuple(left_out)


def container_mounts(manifest: Manifest, host_root: str) -> tuple[Mount, ...]:
    """Every mount of the driver's files, sorted by container path (see the module docstring)."""
    files = {entry.dest: entry for entry in manifest.entries}
    links = {link.path: link.target for link in manifest.links}
    placed: dict[str, tuple[Entry, tuple[str, ...]]] = {}
    names: dict[str, list[str]] = {}  # entry dest -> the names it is looked up by, links first
    for link_path in links:
        entry = _resolve(link_path, files, links)
        placed[f"{LEGACY_ROOT}/{link_path}"] = (entry, CODE_OPTIONS)
        if posixpath.dirname(link_path) == posixpath.dirname(entry.dest):
            names.setdefault(entry.dest, []).append(posixpath.basename(link_path))
    for entry in manifest.entries:
        _top, _, rest = entry.dest.partition("/")
        if entry.kind == "config":  # share/vulkan/icd.d/nvidia_icd.json
            placed[f"{SHARE_DIR}/{rest}"] = (entry, DATA_OPTIONS)
        elif entry.kind == "firmware":  # firmware/nvidia/<version>/gsp_*.bin
            placed[f"{FIRMWARE_DIR}/{rest}"] = (entry, DATA_OPTIONS)
        elif entry.kind == "bin":
            placed[f"{LEGACY_ROOT}/{entry.dest}"] = (entry, CODE_OPTIONS)
            placed[f"{SYSTEM_BIN_DIR}/{rest}"] = (entry, CODE_OPTIONS)
        else:  # lib64/<file>, lib/<file>
            placed[f"{LEGACY_ROOT}/{entry.dest}"] = (entry, CODE_OPTIONS)
            filename = posixpath.basename(entry.dest)
            if catalog.library_stem(filename) in IMAGE_LOADERS:
                continue
            lookups = names.get(entry.dest, [])
            if entry.soname in (None, filename):
                lookups = [*lookups, filename]
            for directory in SYSTEM_LIBRARY_DIRS.get(entry.arch or "", ()):
                for name in lookups:
                    placed[f"{directory}/{name}"] = (entry, CODE_OPTIONS)
    return tuple(Mount(host_path=_host(entry.source, host_root), container_path=path,
                       options=options)
                 for path, (entry, options) in sorted(placed.items()))


def _resolve(link_path: str, files: dict[str, Entry], links: dict[str, str]) -> Entry:
    """The file a volume link ends at (`lib64/libcuda.so` -> `lib64/libcuda.so.580.159.04`)."""
    path = link_path
    for _ in range(MAX_LINK_HOPS):
        path = posixpath.normpath(posixpath.join(posixpath.dirname(path), links[path]))
        if path in files:
            return files[path]
        if path not in links:
            break
    raise CdiError(f"the driver link {link_path} leads to no selected file")


def device_arguments(kind: str, chosen: Selection, everything: bool) -> tuple[str, ...]:
    """`--device` values for a selection: `<kind>=all` when every GPU was asked for, else each
    GPU and MIG device by UUID, which, unlike an index, still names the same device if the spec
    is rewritten between this answer and the container's start. Raises DeviceAccessError as
    docker/cli does for a MIG device without its access nodes (the spec leaves it out)."""
    selection_nodes(chosen)
    if everything:
        return (qualified(kind, ALL),)
    names = [gpu.uuid for gpu in chosen.gpus] + [mig.uuid for _, mig in chosen.mig_devices]
    return tuple(qualified(kind, name) for name in names)
