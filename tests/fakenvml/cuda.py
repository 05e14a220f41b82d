"""Build the fake `libcuda.so.1` (fakecuda.c): the CUDA driver API calls nvplugin makes.

It reads the fake NVML's config (`$FAKE_NVML_CONFIG`; schema in fakecuda.c and build.py), so
both fake libraries describe the same GPUs. fakecuda.c is compiled behind fakenvml.c's JSON
reader (`fake_cuda_source`), so the two fakes share one reader.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.fakenvml.build import SOURCE as NVML_SOURCE
from tests.fakenvml.build import VERSION_RE, compile_library

CUDA_SOURCE = Path(__file__).with_name("fakecuda.c")
SONAME = "libcuda.so.1"
_READER = ("/* ---- a small JSON reader", "/* ---- config state")


def fake_cuda_source() -> str:
    """fakecuda.c behind fakenvml.c's includes and JSON reader: one compilable file."""
    nvml = NVML_SOURCE.read_text()
    start, end = nvml.index(_READER[0]), nvml.index(_READER[1])
    head = [line for line in nvml[:start].splitlines()
            if line.startswith(("#define _GNU_SOURCE", "#include"))]
    return "\n".join(head) + "\n" + nvml[start:end] + CUDA_SOURCE.read_text()


def build_fake_cuda(out_dir: Path, *, version: str | None = None, gcc: str = "gcc") -> Path:
    """Compile into `out_dir/libcuda.so.1`, or `libcuda.so.<version>` (soname libcuda.so.1)
    with `version`; reuses an existing build of the same source."""
    if version is not None and not VERSION_RE.fullmatch(version):
        raise ValueError(f"not a driver version: {version!r} (digits and dots: 580.159.04)")
    out_dir.mkdir(parents=True, exist_ok=True)
    source = out_dir / ".fakecuda.c"
    source.write_text(fake_cuda_source())
    target = out_dir / (SONAME if version is None else f"libcuda.so.{version}")
    return compile_library(source, target, soname=SONAME, gcc=gcc, what="the fake libcuda")


def install_fake_cuda(root: Path, library: Path) -> Path:
    """Copy a built fake libcuda into `root` where discovery finds it without an ld.so.cache
    (`/usr/lib/x86_64-linux-gnu/libcuda.so.1`); returns the host path."""
    target = root / "usr/lib/x86_64-linux-gnu" / SONAME
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(library, target)
    return target
