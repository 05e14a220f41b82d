"""What a fake NVIDIA driver host is made of: the libraries, binaries and files of a real driver.

Each library is `lib<name>.so.<version>` with the SONAME the real driver gives it (`.so.1`, `.so.0`
for GLX/EGL ICDs, `.so.2` for GLESv2, `.so.4` for nvvm, the full versioned name where the real
library has no SONAME link). GLVND loaders and egl-wayland/gbm carry their own versions.
"""

from __future__ import annotations

from dataclasses import dataclass

DRIVER = "driver"  # placeholder: the library's own version is the driver version


@dataclass(frozen=True, slots=True)
class Lib:
    name: str  # lib<name>.so...
    sover: str | None  # SONAME suffix after .so.; None: the SONAME is the full versioned name
    needed: tuple[str, ...] = ()  # names of other Libs it links against (DT_NEEDED)
    own_version: str = DRIVER  # file version when it is not the driver's
    bits32: bool = False  # also shipped as a 32-bit build
    note: str | None = None  # "new-tls": carries the .note.ABI-tag 2.3.99

    def filename(self, version: str) -> str:
        return f"lib{self.name}.so.{version if self.own_version == DRIVER else self.own_version}"

    def soname(self, version: str) -> str:
        return f"lib{self.name}.so.{self.sover}" if self.sover else self.filename(version)


LIBS: tuple[Lib, ...] = (
    # compute / utility
    Lib("cuda", "1", bits32=True),
    Lib("nvidia-ml", "1", bits32=True),
    Lib("nvidia-ptxjitcompiler", "1", bits32=True),
    Lib("nvidia-opencl", "1", bits32=True),
    Lib("nvidia-nvvm", "4"),
    Lib("nvidia-gpucomp", None, bits32=True),
    Lib("nvidia-allocator", "1"),
    Lib("cudadebugger", "1"),
    Lib("nvidia-pkcs11-openssl3", None),
    Lib("nvidia-cfg", "1"),
    # video
    Lib("vdpau_nvidia", "1", bits32=True),
    Lib("nvidia-encode", "1", needed=("nvcuvid",), bits32=True),
    Lib("nvcuvid", "1", bits32=True),
    Lib("nvidia-opticalflow", "1"),
    # graphics: NVIDIA vendor libraries
    Lib("nvidia-glcore", None, bits32=True),
    Lib("nvidia-eglcore", None, bits32=True),
    Lib("nvidia-glsi", None, bits32=True),
    Lib("nvidia-tls", None, bits32=True, note="new-tls"),
    Lib("GLX_nvidia", "0", needed=("nvidia-glcore", "nvidia-tls"), bits32=True),
    Lib("EGL_nvidia", "0", needed=("nvidia-eglcore", "nvidia-glsi"), bits32=True),
    Lib("GLESv2_nvidia", "2", needed=("nvidia-eglcore",), bits32=True),
    Lib("GLESv1_CM_nvidia", "1", needed=("nvidia-eglcore",), bits32=True),
    Lib("nvidia-rtcore", None),
    Lib("nvoptix", "1", needed=("nvidia-rtcore",)),
    Lib("nvidia-glvkspirv", None),
    Lib("nvidia-fbc", "1", bits32=True),
    Lib("nvidia-ngx", "1"),
    Lib("nvidia-vulkan-producer", None),
    Lib("nvidia-egl-wayland", "1", own_version="1.1.13"),
    Lib("nvidia-egl-gbm", "1", own_version="1.1.2"),
    # GLVND loaders (NVIDIA's .run installer ships them with their own versions)
    Lib("GLdispatch", "0", own_version="0.0.0", bits32=True),
    Lib("GLX", "0", needed=("GLdispatch",), own_version="0.0.0", bits32=True),
    Lib("OpenGL", "0", needed=("GLdispatch",), own_version="0.0.0"),
    Lib("GL", "1", needed=("GLdispatch", "GLX"), own_version="1.7.0", bits32=True),
    Lib("EGL", "1", needed=("GLdispatch",), own_version="1.1.0", bits32=True),
    Lib("GLESv2", "2", needed=("GLdispatch",), own_version="2.1.0"),
    Lib("GLESv1_CM", "1", needed=("GLdispatch",), own_version="1.2.0"),
)
LIBS_BY_NAME = {lib.name: lib for lib in LIBS}

# Mesa builds of the GL loaders: same SONAMEs, no GLdispatch/glcore; discovery must reject them.
MESA_LOOKALIKES: tuple[Lib, ...] = (
    Lib("GL", "1", own_version="1.2.0"),
    Lib("EGL", "1", own_version="1.0.0"),
)
# An older driver's leftovers (SONAME unchanged except nvvm's, which bumped its major).
STALE_LIBS: tuple[Lib, ...] = (
    Lib("cuda", "1"),
    Lib("nvidia-ml", "1"),
    Lib("nvidia-nvvm", "3"),
)
DAMAGED_LIB = "nvidia-ifr"  # catalogued but not built: written truncated when damaged_lib=True

BINARIES = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control",
            "nvidia-cuda-mps-server")

# (path under the data prefix, content); {version} is filled in.
CONFIG_FILES: tuple[tuple[str, str], ...] = (
    ("share/vulkan/icd.d/nvidia_icd.json",
     '{"file_format_version": "1.0.1", "ICD": {"library_path": "libGLX_nvidia.so.0", '
     '"api_version": "1.4.303"}}\n'),
    ("share/vulkan/implicit_layer.d/nvidia_layers.json",
     '{"file_format_version": "1.0.0", "layer": {"name": "VK_LAYER_NV_optimus", '
     '"library_path": "libGLX_nvidia.so.0"}}\n'),
    ("share/glvnd/egl_vendor.d/10_nvidia.json",
     '{"file_format_version": "1.0.0", "ICD": {"library_path": "libEGL_nvidia.so.0"}}\n'),
    ("share/egl/egl_external_platform.d/10_nvidia_wayland.json",
     '{"file_format_version": "1.0.0", "ICD": {"library_path": "libnvidia-egl-wayland.so.1"}}\n'),
    ("share/egl/egl_external_platform.d/15_nvidia_gbm.json",
     '{"file_format_version": "1.0.0", "ICD": {"library_path": "libnvidia-egl-gbm.so.1"}}\n'),
)
FIRMWARE = ("gsp_ga10x.bin", "gsp_tu10x.bin")

PROC_VERSION = {
    "proprietary": "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {version}  Sun Nov 16 "
                   "10:21:37 UTC 2025\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
    "open": "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {version}  Release Build  "
            "(dvs-builder@U22-I3-AE18-09-3)  Wed Nov 19 03:12:44 UTC 2025\n"
            "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)\n",
}

# .note.ABI-tag: namesz 4, descsz 16, type 1 (NT_GNU_ABI_TAG), "GNU", then OS 0 (Linux) and the
# minimum kernel ABI. NVIDIA's new-TLS build of libnvidia-tls carries 2.3.99; the classic one not.
ABI_NOTE_ASM = (
    '__asm__(".section .note.ABI-tag,\\"a\\",@note\\n.balign 4\\n.long 4\\n.long 16\\n.long 1\\n'
    '.asciz \\"GNU\\"\\n.long 0\\n.long 2\\n.long {minor}\\n.long {patch}\\n.previous\\n");\n'
)
NEW_TLS = (3, 99)
OLD_TLS = (2, 5)


def lib_source(lib: Lib, version: str, tls: tuple[int, int] | None = None) -> str:
    ident = lib.name.replace("-", "_")
    note = ABI_NOTE_ASM.format(minor=tls[0], patch=tls[1]) if tls else ""
    return (f'{note}const char nv_component_{ident}[] = "lib{lib.name} {version}";\n'
            f"int nv_{ident}_entry(void) {{ return {len(lib.name)}; }}\n")


def bin_source(name: str, version: str) -> str:
    return ("#include <stdio.h>\n"
            f'int main(void) {{ puts("{name} (fake NVIDIA driver {version})"); return 0; }}\n')
