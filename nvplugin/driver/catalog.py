"""Which driver files belong in a volume, and why: the table as data (1.0's list, plus what
current drivers ship). Adding a file is a one-line diff; the reasons are what `list` prints.

Libraries match by name stem (`libcuda` matches `libcuda.so`, `libcuda.so.1`,
`libcuda.so.580.159.04`); `versioned=True` means the file carries the driver's version, so a copy
with another version is an older driver's leftover. Capabilities group files as
libnvidia-container does (`compute, utility, video, graphics, display, ngx`; 32-bit libraries
are `compat32`).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from nvplugin.driver.elfinfo import ElfFacts, describe_abi, is_new_tls, is_nvidia_gl_loader
from nvplugin.driver.manifest import Kind


@dataclass(frozen=True, slots=True)
class Component:
    """One kind of driver file 1.0's inventory lists, and why it is taken."""

    # lib: name stem; bin: file name; config: glob under share/ or etc/; firmware: glob
    pattern: str
    kind: Kind
    capability: str
    reason: str
    versioned: bool = True  # lib only: the file name ends in the driver version


def _lib(stem: str, capability: str, reason: str, versioned: bool = True) -> Component:
    return Component(stem, "lib", capability, reason, versioned)


LIBRARIES: tuple[Component, ...] = (
    _lib("libnvidia-ml", "utility", "NVML, the management library (nvidia-smi, DCGM, pynvml)"),
    _lib("libnvidia-cfg", "utility", "GPU configuration queries used by nvidia-settings/NVML"),
    _lib("libnvidia-nscq", "utility", "NVSwitch configuration and query library"),
    _lib("libcuda", "compute", "the CUDA driver API"),
    _lib("libcudadebugger", "compute", "CUDA debugger backend (cuda-gdb)"),
    _lib("libnvidia-ptxjitcompiler", "compute", "PTX JIT compiler used by libcuda"),
    _lib("libnvidia-fatbinaryloader", "compute", "fat binary loader used by libcuda (361-396)"),
    _lib("libnvidia-nvvm", "compute", "NVVM compiler used by libcuda for LTO and JIT"),
    _lib("libnvidia-gpucomp", "compute", "GPU code compiler shared by libcuda and OpenCL"),
    _lib("libnvidia-opencl", "compute", "the NVIDIA OpenCL ICD"),
    _lib("libnvidia-compiler", "compute", "NVVM/PTX compiler for OpenCL (older drivers)"),
    _lib("libnvidia-allocator", "compute", "GPU memory allocator (GBM backend, CUDA IPC)"),
    _lib("libnvidia-pkcs11", "compute", "PKCS#11 for confidential computing"),
    _lib("libnvidia-pkcs11-openssl3", "compute", "PKCS#11 for confidential computing (OpenSSL 3)"),
    _lib("libnvidia-tileiras", "compute", "tile IR compiler used by libcuda (CUDA 13)"),
    _lib("libvdpau_nvidia", "video", "the NVIDIA VDPAU driver (video decode)"),
    _lib("libnvidia-encode", "video", "NVENC video encoder"),
    _lib("libnvcuvid", "video", "NVDEC/CUVID video decoder"),
    _lib("libnvidia-opticalflow", "video", "Optical Flow SDK runtime"),
    _lib("libnvidia-fbc", "video", "NvFBC framebuffer capture"),
    _lib("libnvidia-ifr", "video", "NvIFR OpenGL framebuffer capture (older drivers)"),
    _lib("libGLX_nvidia", "graphics", "GLVND GLX vendor library (OpenGL on X, Vulkan ICD)"),
    _lib("libEGL_nvidia", "graphics", "GLVND EGL vendor library"),
    _lib("libGLESv2_nvidia", "graphics", "GLVND OpenGL ES 2/3 vendor library"),
    _lib("libGLESv1_CM_nvidia", "graphics", "GLVND OpenGL ES 1 vendor library"),
    _lib("libnvidia-glcore", "graphics", "OpenGL core implementation"),
    _lib("libnvidia-eglcore", "graphics", "EGL/GLES core implementation"),
    _lib("libnvidia-glsi", "graphics", "OpenGL system interface used by EGL"),
    _lib("libnvidia-tls", "graphics", "thread-local storage support for the GL libraries"),
    _lib("libnvidia-glvkspirv", "graphics", "SPIR-V compiler for Vulkan and OpenGL"),
    _lib("libnvidia-rtcore", "graphics", "ray-tracing core used by OptiX and Vulkan RT"),
    _lib("libnvoptix", "graphics", "the OptiX ray-tracing runtime"),
    _lib("libnvidia-cbl", "graphics", "Vulkan ray-tracing helper (older drivers)"),
    _lib("libnvidia-vulkan-producer", "graphics", "Vulkan swapchain producer for EGLStreams"),
    _lib("libnvidia-ngx", "ngx", "NGX (DLSS) runtime"),
    _lib("libnvidia-egl-wayland", "display", "EGL external platform for Wayland", False),
    _lib("libnvidia-egl-gbm", "display", "EGL external platform for GBM", False),
    # GLVND loaders (1.0 shipped them so images without GLVND still find GL); kept only when
    # their DT_NEEDED shows an NVIDIA or GLVND build, never Mesa's (see discovery's blacklist).
    _lib("libGL", "graphics", "GLVND (or legacy NVIDIA) libGL loader", False),
    _lib("libGLX", "graphics", "GLVND GLX loader", False),
    _lib("libOpenGL", "graphics", "GLVND OpenGL loader", False),
    _lib("libGLdispatch", "graphics", "GLVND dispatch layer", False),
    _lib("libEGL", "graphics", "GLVND (or legacy NVIDIA) EGL loader", False),
    _lib("libGLESv1_CM", "graphics", "GLVND (or legacy NVIDIA) GLES 1 loader", False),
    _lib("libGLESv2", "graphics", "GLVND (or legacy NVIDIA) GLES 2 loader", False),
)
# Left out on purpose (1.0 did too): libnvidia-gtk2/3 and libnvidia-wfb (X server/tools),
# libglx/nvidia_drv (X server modules), libOpenCL (the ICD loader belongs to the image).

# Loaders that exist in Mesa builds too; these need the DT_NEEDED check.
GL_LOADERS = frozenset({"libGL", "libEGL", "libGLESv1_CM", "libGLESv2"})

BINARIES: tuple[Component, ...] = (
    Component("nvidia-smi", "bin", "utility", "System Management Interface"),
    Component("nvidia-debugdump", "bin", "utility", "GPU state dump for bug reports"),
    Component("nvidia-persistenced", "bin", "utility",
              "persistence daemon (keeps GPUs initialised)"),
    Component("nvidia-cuda-mps-control", "bin", "compute", "Multi-Process Service control"),
    Component("nvidia-cuda-mps-server", "bin", "compute", "Multi-Process Service server"),
)
# Not nvidia-modprobe, nvidia-settings, nvidia-xconfig: they change the host, not a container.

CONFIGS: tuple[Component, ...] = (
    Component("vulkan/icd.d/nvidia_icd*.json", "config", "graphics", "Vulkan ICD manifest"),
    Component("vulkan/implicit_layer.d/nvidia_layers.json", "config", "graphics",
              "Vulkan implicit layer manifest"),
    Component("glvnd/egl_vendor.d/*nvidia*.json", "config", "graphics",
              "GLVND EGL vendor manifest"),
    Component("egl/egl_external_platform.d/*nvidia*.json", "config", "display",
              "EGL external platform manifest (Wayland/GBM/X11)"),
    Component("nvidia/nvoptix.bin", "config", "graphics", "OptiX shader cache seed"),
)
FIRMWARE: tuple[Component, ...] = (
    Component("gsp*.bin", "firmware", "compute", "GSP firmware for this driver version"),
)

# Where libraries are looked for when the cache misses them, in the order tried.
LIBRARY_DIRS = (
    "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib", "/lib/x86_64-linux-gnu", "/lib64", "/lib",
    "/usr/lib/aarch64-linux-gnu", "/usr/lib/powerpc64le-linux-gnu",
    "/usr/lib/i386-linux-gnu", "/lib/i386-linux-gnu", "/usr/lib32",
)
BINARY_DIRS = ("/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/nvidia/bin", "/usr/local/bin")
DATA_PREFIXES = ("/usr/share", "/etc", "/usr/local/nvidia/share", "/usr/local/share")
FIRMWARE_DIRS = ("/lib/firmware/nvidia", "/usr/lib/firmware/nvidia",
                 "/usr/local/nvidia/firmware/nvidia", "/usr/local/nvidia/lib/firmware/nvidia")

_LIB_NAME = re.compile(r"^(lib[\w+-]+?)\.so(?:\.[0-9][0-9.]*)?$")
_BY_STEM = {c.pattern: c for c in LIBRARIES}
_BY_BIN = {c.pattern: c for c in BINARIES}


def library_stem(name: str) -> str | None:
    """`libcuda.so.580.159.04` -> `libcuda`; None for names that are not shared libraries."""
    match = _LIB_NAME.match(name)
    return match.group(1) if match else None


def library(name: str) -> Component | None:
    """The catalogue entry for a library file or cache key, if it is a driver library."""
    stem = library_stem(name)
    return _BY_STEM.get(stem) if stem else None


def binary(name: str) -> Component | None:
    return _BY_BIN.get(name)


def config(rel: str) -> Component | None:
    """The entry for a data file by its path under share/ or etc/ (`vulkan/icd.d/x.json`)."""
    return next((c for c in CONFIGS if fnmatch.fnmatchcase(rel, c.pattern)), None)


def library_links(directory: str, stem: str, filename: str, soname: str | None,
                  ) -> list[tuple[str, str, str]]:
    """(link path, target, reason) for a selected library, as 1.0 made them (§4.6)."""
    links: list[tuple[str, str, str]] = []
    if soname and soname != filename:
        links.append((f"{directory}/{soname}", filename, "SONAME link, as ldconfig makes it"))
    if stem == "libcuda":
        # Applications dlopen("libcuda.so") without a version (1.0 added it in rc.3, #103).
        links.append((f"{directory}/libcuda.so", filename,
                      "applications dlopen libcuda.so without a version"))
    elif stem == "libGLX_nvidia" and soname:
        # GLVND sends indirect GLX contexts to libGLX_indirect.so.0; point it at NVIDIA's.
        links.append((f"{directory}/{soname.replace('GLX_nvidia', 'GLX_indirect')}", filename,
                      "GLVND loads libGLX_indirect.so.0 for indirect GLX"))
    elif stem == "libnvidia-opticalflow":
        # The Optical Flow SDK dlopens the unversioned name (libnvidia-container links it too).
        links.append((f"{directory}/libnvidia-opticalflow.so", soname or filename,
                      "the Optical Flow SDK dlopens libnvidia-opticalflow.so"))
    return links


def blacklisted(component: Component, facts: ElfFacts) -> str | None:
    """Why a library file that matched the table must still be left out (1.0's blacklist)."""
    stem = component.pattern
    if facts.elf_type != "ET_DYN":
        return f"not a shared library ({facts.elf_type})"
    if facts.arch == "x32":
        return "x32 ABI library; only 64-bit and 32-bit x86 builds are served"
    if stem in GL_LOADERS and not is_nvidia_gl_loader(facts):
        # Same SONAME as NVIDIA's/GLVND's loader but another vendor's (Mesa): it would bypass
        # the NVIDIA driver inside the container.
        needed = ", ".join(facts.needed) or "nothing"
        return (f"{stem} built by another vendor (e.g. Mesa): DT_NEEDED has no libGLdispatch or "
                f"libnvidia-e?glcore (needs {needed})")
    if stem == "libnvidia-tls" and not is_new_tls(facts):
        # Drivers < 390 shipped a classic-TLS copy beside the new-TLS one; only the latter works.
        return f"classic-TLS build ({describe_abi(facts)}); only the 2.3.99 one is used"
    return None
