"""The fake library's builds: every -DOMIT_<function> guard compiles warning-free (-Werror) and
removes that symbol, and an omitted function reaches pynvml as FUNCTION_NOT_FOUND."""

from __future__ import annotations

import ctypes
import re
import subprocess
import sys
from pathlib import Path

from tests.fakenvml.build import SOURCE

OMITTABLE = sorted(set(re.findall(r"#ifndef OMIT_(\w+)", SOURCE.read_text())))


def exported(library: Path) -> set[str]:
    lib = ctypes.CDLL(str(library))
    return {name for name in OMITTABLE if hasattr(lib, name)}


def test_every_guard_builds_and_removes_its_symbol(fake_nvml_lib, fake_nvml_lib_variant):
    assert len(OMITTABLE) >= 30  # the scan found the guards
    assert exported(fake_nvml_lib) == set(OMITTABLE)
    assert exported(fake_nvml_lib_variant(omit=OMITTABLE)) == set()


def test_an_omitted_function_is_not_found_through_pynvml(fake_nvml, fake_nvml_lib_variant):
    """In a new process, so this one's pynvml stays bound to the fake_nvml library."""
    variant = fake_nvml_lib_variant(omit=["nvmlEventSetWait_v2", "nvmlDeviceGetFieldValues"])
    script = f"""
import ctypes, pynvml
pynvml.nvmlLib = ctypes.CDLL({str(variant)!r})
pynvml.nvmlInit()
event_set = pynvml.nvmlEventSetCreate()
for call in (lambda: pynvml.nvmlEventSetWait_v2(event_set, 0),
             lambda: pynvml.nvmlDeviceGetFieldValues(pynvml.nvmlDeviceGetHandleByIndex(0), [82])):
    try:
        call()
    except pynvml.NVMLError as err:
        print(err.value)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2])
    assert out.stdout.split() == ["13", "13"]  # NVML_ERROR_FUNCTION_NOT_FOUND
