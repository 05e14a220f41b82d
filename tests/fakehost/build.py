"""Build a fake NVIDIA driver host under a directory: real gcc ELF files, a real ld.so.cache.

    host = build_fake_host(tmp_path / "host", cache_format="compat", stale_version="570.86.15")
    discover(host.root)

Objects come from an `ObjectCache` (compiled once, then copied), so a host assembles in well
under a second after the first. `FakeHost` lists what discovery is expected to select and reject.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tests.fakehost import components as c
from tests.fakehost.compiler import CompileError, ObjectCache, gcc_m32_works
from tests.fakenvml.cuda import fake_cuda_source

REPO = Path(__file__).resolve().parents[2]
FAKE_NVML_SOURCE = REPO / "tests" / "fakenvml" / "fakenvml.c"
_AUTO = Path("<auto>")
log = logging.getLogger(__name__)
Layout = Literal["usr-lib", "usr-local-nvidia"]


@dataclass(slots=True)
class FakeHost:
    root: Path
    version: str
    layout: Layout
    lib64_dir: str  # in-root paths, e.g. /usr/lib/x86_64-linux-gnu
    lib32_dir: str | None
    bin_dir: str
    with_32bit: bool
    cache_format: str
    stale_version: str | None
    nvml_source: Path | None
    expected_dests: set[str] = field(default_factory=set)  # manifest dests discovery must select
    expected_rejected: set[str] = field(default_factory=set)  # in-root paths it must reject

    def path(self, inner: str) -> Path:
        """The host path of an in-root path."""
        return self.root / inner.lstrip("/")

    @property
    def cache_path(self) -> Path:
        return self.root / "etc" / "ld.so.cache"


def _compile_libs(objects: ObjectCache, libs: Iterable[c.Lib], version: str, bits: int,
                  nvml_source: Path | None) -> dict[str, Path]:
    """name -> compiled object, dependencies first so DT_NEEDED carries their SONAMEs."""
    arch = ["-m32"] if bits == 32 else []
    built: dict[str, Path] = {}
    pending = list(libs)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        while pending:
            ready = [lib for lib in pending if all(n in built for n in lib.needed)]
            if not ready:
                raise ValueError(f"unresolvable DT_NEEDED among {[x.name for x in pending]}")

            def one(lib: c.Lib) -> tuple[str, Path]:
                flags = [*arch, "-shared", "-fPIC", "-O2", f"-Wl,-soname,{lib.soname(version)}",
                         "-Wl,--no-as-needed"]
                if lib.name == "nvidia-ml" and nvml_source is not None and bits == 64:
                    return lib.name, objects.build(nvml_source.read_text(), flags,
                                                   name="libnvidia-ml")
                if lib.name == "cuda" and bits == 64:  # the fake libcuda reads the NVML config
                    return lib.name, objects.build(fake_cuda_source(), flags, name="libcuda")
                tls = c.NEW_TLS if lib.note == "new-tls" else None
                inputs = [built[n] for n in lib.needed]
                return lib.name, objects.build(c.lib_source(lib, version, tls), flags, inputs,
                                               name=f"lib{lib.name}")

            built.update(pool.map(one, ready))
            pending = [lib for lib in pending if lib.name not in built]
    return built


def _usable_fake_nvml(objects: ObjectCache, version: str) -> Path | None:
    """tests/fakenvml/fakenvml.c when it exists and compiles, else None (a plain stub).

    The file is another module's work in progress; a broken revision of it must not take every
    fake host down, so the failure is logged and `FakeHost.nvml_source` says None.
    """
    if not FAKE_NVML_SOURCE.exists():
        return None
    try:
        _compile_libs(objects, [c.LIBS_BY_NAME["nvidia-ml"]], version, 64, FAKE_NVML_SOURCE)
    except CompileError as err:
        log.warning("Not using %s for the fake host's NVML: %s", FAKE_NVML_SOURCE, err)
        return None
    return FAKE_NVML_SOURCE


def _install_lib(root: Path, libdir: str, lib: c.Lib, version: str, obj: Path,
                 absolute_links: bool = False) -> str:
    """Copy the object in as its versioned name and add the .so.N and .so links; returns path."""
    directory = root / libdir.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    filename = lib.filename(version)
    shutil.copyfile(obj, directory / filename)
    os.chmod(directory / filename, 0o755)
    target = f"{libdir}/{filename}" if absolute_links else filename
    for link in {lib.soname(version), f"lib{lib.name}.so"} - {filename}:
        (directory / link).unlink(missing_ok=True)
        os.symlink(target, directory / link)
    return f"{libdir}/{filename}"


def build_fake_host(
    root: Path,
    *,
    version: str = "580.159.04",
    cache_format: Literal["new", "compat"] = "new",
    kernel_module: Literal["proprietary", "open"] = "proprietary",
    with_32bit: bool | None = None,
    stale_version: str | None = None,
    mesa_lookalikes: bool = True,
    old_tls: bool = True,
    damaged_lib: bool = False,
    layout: Layout = "usr-lib",
    nvml_source: Path | None = _AUTO,
    objects: ObjectCache | None = None,
) -> FakeHost:
    objects = objects or ObjectCache()
    if nvml_source == _AUTO:
        nvml_source = _usable_fake_nvml(objects, version)
    if with_32bit is None:
        with_32bit = gcc_m32_works()
    root.mkdir(parents=True, exist_ok=True)
    if layout == "usr-local-nvidia":
        prefix, lib64, lib32 = "/usr/local/nvidia", "/usr/local/nvidia/lib64", None
        bin_dir, fw_dir = "/usr/local/nvidia/bin", "/usr/local/nvidia/firmware/nvidia"
        with_32bit = False  # the squashfs driver on the H200 host ships no 32-bit libraries
    else:
        prefix, lib64, lib32 = "/usr", "/usr/lib/x86_64-linux-gnu", "/usr/lib/i386-linux-gnu"
        bin_dir, fw_dir = "/usr/bin", "/lib/firmware/nvidia"
    host = FakeHost(root=root, version=version, layout=layout, lib64_dir=lib64,
                    lib32_dir=lib32 if with_32bit else None, bin_dir=bin_dir,
                    with_32bit=with_32bit, cache_format=cache_format,
                    stale_version=stale_version, nvml_source=nvml_source)
    conf_dirs = [lib64]
    absolute = layout == "usr-local-nvidia"

    built64 = _compile_libs(objects, c.LIBS, version, 64, nvml_source)
    for lib in c.LIBS:
        _install_lib(root, lib64, lib, version, built64[lib.name], absolute_links=absolute)
        host.expected_dests.add(f"lib64/{lib.filename(version)}")
    if with_32bit and lib32:
        libs32 = [lib for lib in c.LIBS if lib.bits32]
        built32 = _compile_libs(objects, libs32, version, 32, None)
        for lib in libs32:
            _install_lib(root, lib32, lib, version, built32[lib.name])
            host.expected_dests.add(f"lib/{lib.filename(version)}")
        conf_dirs.append(lib32)
    if layout == "usr-local-nvidia":
        # The H200 squashfs: `lib -> lib64`; the cache is built through the symlinked name.
        os.symlink("lib64", root / "usr/local/nvidia/lib")
        conf_dirs = ["/usr/local/nvidia/lib", "/lib"]
        (root / "lib").mkdir(exist_ok=True)
    if mesa_lookalikes:
        mesa_dir = "/usr/lib/x86_64-linux-gnu/mesa"
        built = _compile_libs(objects, c.MESA_LOOKALIKES, "mesa-23.2", 64, None)
        for lib in c.MESA_LOOKALIKES:
            host.expected_rejected.add(_install_lib(root, mesa_dir, lib, version, built[lib.name]))
        conf_dirs.append(mesa_dir)
    if old_tls:
        tls_dir = "/usr/lib/nvidia/classic-tls"
        tls = c.LIBS_BY_NAME["nvidia-tls"]
        obj = objects.build(c.lib_source(tls, version, c.OLD_TLS),
                            ["-shared", "-fPIC", "-O2", f"-Wl,-soname,{tls.soname(version)}"],
                            name="libnvidia-tls-classic")
        host.expected_rejected.add(_install_lib(root, tls_dir, tls, version, obj))
        conf_dirs.append(tls_dir)
    if stale_version:
        stale_dir = "/usr/lib64"
        built = _compile_libs(objects, c.STALE_LIBS, stale_version, 64, None)
        for lib in c.STALE_LIBS:
            path = _install_lib(root, stale_dir, lib, stale_version, built[lib.name])
            host.expected_rejected.add(path)
        conf_dirs.append(stale_dir)
        _write(root, f"/lib/firmware/nvidia/{stale_version}/gsp_ga10x.bin", b"GSP-OLD")
    if damaged_lib:
        lib = c.LIBS_BY_NAME.get(c.DAMAGED_LIB) or c.Lib(c.DAMAGED_LIB, "1")
        good = objects.build(c.lib_source(lib, version), ["-shared", "-fPIC"], name="damaged")
        path = f"{lib64}/{lib.filename(version)}"
        _write(root, path, good.read_bytes()[:200])  # ELF header intact, the rest cut off
        os.symlink(lib.filename(version), root / f"{lib64}/{lib.soname(version)}".lstrip("/"))
        host.expected_rejected.add(path)

    _install_binaries(host, objects)
    if layout == "usr-local-nvidia":
        _h200_extras(host, absolute_to=lib64)
    for rel, content in c.CONFIG_FILES:
        _write(root, f"{prefix}/{rel}", content.encode())
        host.expected_dests.add(rel)
    for name in c.FIRMWARE:
        _write(root, f"{fw_dir}/{version}/{name}", f"GSP {name} {version}".encode())
        host.expected_dests.add(f"firmware/nvidia/{version}/{name}")
    _write(root, "/proc/driver/nvidia/version",
           c.PROC_VERSION[kernel_module].format(version=version).encode())
    write_ld_cache(root, conf_dirs, cache_format)
    return host


def _install_binaries(host: FakeHost, objects: ObjectCache) -> None:
    directory = host.path(host.bin_dir)
    directory.mkdir(parents=True, exist_ok=True)
    # Static, so nvidia-smi runs inside a busybox container with no libc of its own.
    flags = ["-static", "-O2", "-s"]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        built = list(pool.map(lambda n: objects.build(c.bin_source(n, host.version), flags,
                                                      name=n), c.BINARIES))
    for name, obj in zip(c.BINARIES, built, strict=True):
        shutil.copyfile(obj, directory / name)
        os.chmod(directory / name, 0o755)
        host.expected_dests.add(f"bin/{name}")


def _h200_extras(host: FakeHost, absolute_to: str) -> None:
    """What the real H200 host has besides the squashfs: shell wrappers in /usr/bin (the real
    binaries are in /usr/local/nvidia/bin), /bin -> usr/bin, and /lib links into the driver."""
    for name in c.BINARIES:
        path = f"/usr/bin/{name}"
        _write(host.root, path, f'#!/bin/sh\nexec /usr/local/nvidia/bin/{name} "$@"\n'.encode())
        os.chmod(host.path(path), 0o755)
        host.expected_rejected.add(path)
    os.symlink("usr/bin", host.root / "bin")
    for name in ("libcuda.so.1", "libnvidia-ml.so.1", "libnvidia-nvvm.so.4"):
        os.symlink(f"{absolute_to}/{name}", host.path(f"/lib/{name}"))


def _write(root: Path, inner: str, data: bytes) -> None:
    path = root / inner.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_ld_cache(root: Path, dirs: Iterable[str], cache_format: str = "new") -> Path:
    """`ldconfig -r root` over the listed in-root dirs; -X keeps our links exactly as built."""
    conf = root / "etc" / "ld.so.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("".join(f"{d}\n" for d in dirs))
    argv = ["ldconfig", "-X", "-r", str(root), "-c", cache_format]
    if os.geteuid() != 0:  # ldconfig -r chroots; a user namespace grants that without root
        argv = ["unshare", "--map-root-user", *argv]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr}")
    return root / "etc" / "ld.so.cache"


def make_dev_nodes(dev_root: Path, minors: list[int], *, uvm_tools: bool = True,
                   modeset: bool = False, uvm_major: int = 238) -> list[Path]:
    """Character nodes as the NVIDIA driver creates them, under dev_root/dev (never /dev)."""
    if dev_root.resolve() == Path("/"):
        raise ValueError("make_dev_nodes refuses to write into the real /dev")
    dev = dev_root / "dev"
    dev.mkdir(parents=True, exist_ok=True)
    nodes = [("nvidiactl", 195, 255), *((f"nvidia{m}", 195, m) for m in minors),
             ("nvidia-uvm", uvm_major, 0)]
    if uvm_tools:
        nodes.append(("nvidia-uvm-tools", uvm_major, 1))
    if modeset:
        nodes.append(("nvidia-modeset", 195, 254))
    made = []
    for name, major, minor in nodes:
        path = dev / name
        path.unlink(missing_ok=True)
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(path, 0o666)  # as the driver makes them, whatever the umask
        made.append(path)
    return made


def write_mig_capabilities(driver_root: Path, dev_root: Path,
                           minors: dict[tuple[int, int], tuple[int, int]], *, gpu_minor: int = 0,
                           caps_major: int = 241) -> list[Path]:
    """A MIG-enabled GPU's capability files, as the driver creates one per GPU instance and
    compute instance (`proc/driver/nvidia/capabilities/gpu<m>/mig/gi<G>[/ci<C>]/access`), and
    the `nvidia-caps` nodes `nvidia-modprobe -f` makes for them. `minors` maps (GI, CI) to the
    (GI access, CI access) minors. Returns the nodes."""
    if dev_root.resolve() == Path("/"):
        raise ValueError("write_mig_capabilities refuses to write into the real /dev")
    caps = driver_root / "proc/driver/nvidia/capabilities" / f"gpu{gpu_minor}" / "mig"
    made = []
    for (gi, ci), (gi_minor, ci_minor) in minors.items():
        for path, minor in ((caps / f"gi{gi}/access", gi_minor),
                            (caps / f"gi{gi}/ci{ci}/access", ci_minor)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"DeviceFileMinor: {minor}\nDeviceFileMode: 292\n"
                            "DeviceFileModify: 1\n")
            node = dev_root / "dev/nvidia-caps" / f"nvidia-cap{minor}"
            node.parent.mkdir(parents=True, exist_ok=True)
            node.unlink(missing_ok=True)
            os.mknod(node, 0o444 | stat.S_IFCHR, os.makedev(caps_major, minor))
            made.append(node)
    return made

