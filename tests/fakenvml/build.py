"""Build the fake `libnvidia-ml.so.1` (fakenvml.c) and write the JSON config it reads.

Config schema (the file named by `$FAKE_NVML_CONFIG`, re-read whenever it is replaced):

    top level   driver_version "580.159.04" (missing or null: the library file's own version,
                build_fake_nvml(version=...); a build without one reports UNKNOWN),
                cuda_version 13000, init_error "DRIVER_NOT_LOADED"|…,
                missing_functions ["nvmlDeviceGetNumGpuCores", …] (answer FUNCTION_NOT_FOUND),
                pcie_delay_ms 20 (sleep per nvmlDeviceGetPcieThroughput call),
                call_delay_ms 1 (sleep at the start of every call: makes on-loop calls visible),
                init_delay_ms 500 (nvmlInit sleeps this long, as a big host's driver takes),
                process_names {"<pid>": "name" or an error name} (nvmlSystemGetProcessName;
                a PID missing: NOT_FOUND), gpus [...],
                events_file "/path/events.jsonl" (FakeNvml.write sets it: FakeNvml.events_path)
    per GPU     name, uuid, minor, bus_id, handle_error, memory_total/memory_used (bytes),
                memory_reserved (bytes; the driver's: used in v1, apart in v2; missing: 0),
                bar1_total/bar1_used (bytes), power_limit_mw, power_usage_mw,
                enforced_power_limit_mw, default_power_limit_mw,
                power_limit_constraints_mw [min, max], energy_mj (since the driver loaded),
                pcie_replay_count, clocks_event_reasons (NVML bit mask),
                remapped_rows {correctable, uncorrectable, pending, failure},
                memory_temperature, temperature_thresholds {shutdown, slowdown, mem_max,
                gpu_max, acoustic_min, acoustic_curr, acoustic_max, gps_curr},
                max_clock_{graphics,sm,mem,video}, clock_{graphics,sm,mem,video} (MHz),
                max_pcie_gen, max_pcie_width, pcie_rx_kbs, pcie_tx_kbs, util_gpu, util_memory,
                util_encoder, util_decoder, temperature, compute_capability [9, 0], cores,
                multiprocessors, memory_bus_width, numa_node, ecc, persistence, mig_mode,
                ecc_errors {"volatile"|"aggregate": {"corrected"|"uncorrected": {l1_cache,
                l2_cache, device_memory, register_file, texture_memory, texture_shm, cbu, sram,
                total (missing: the sum of the locations given)}}} (any level may be an error),
                ecc_l1, ecc_l2, ecc_device_memory (uncorrected volatile counts where ecc_errors
                has none),
                field_values {"<field id>" or "<field id>:<scope id>": number (integer:
                unsigned_long_long, negative: signed_long_long, fraction: double) or
                {"type": "unsigned_int"|"signed_int"|"double"|…, "value": n} or an error}
                (nvmlDeviceGetFieldValues; ids 82, 83, 94 fall back to memory_temperature,
                energy_mj, pcie_replay_count; any other id: NOT_SUPPORTED in its nvmlReturn),
                topology [NVML level per peer index], p2p [NVML P2P status per peer index],
                nvlinks [remote bus id or null per link],
                processes, graphics_processes, mps_processes (compute, graphics, MPS lists;
                missing or null: none running) [{pid, used_memory (bytes; null: not available),
                gpu_instance_id, compute_instance_id (missing: 0xFFFFFFFF),
                cc_protected_memory (missing: 0)}],
                mig_devices [{uuid "MIG-…", gpu_instance_id, compute_instance_id, and any key
                of a GPU's own for that MIG device: name, memory_total, memory_used, processes,
                …} or null (an empty slot) per slot] (nvmlDeviceGetHandleByUUID takes GPU and
                MIG UUIDs),
                lost true (GPU_IS_LOST from every call on it, its handle and MIG devices),
                event_types ["xid", "double_bit_ecc", …] or a mask
                (nvmlDeviceGetSupportedEventTypes; nvmlDeviceRegisterEvents refuses others),
                cuda_attributes {"total_constant_memory", "l2_cache_size",
                "max_shared_memory_per_multiprocessor" or "<CU_DEVICE_ATTRIBUTE number>": value}
                (the fake libcuda's, tests/fakenvml/fakecuda.c; top level "cuda": {init_error,
                order, init_delay_ms})
    events      one JSON object a line, appended to events_file while the process runs
                (FakeNvml.inject_event): {"gpu": 0, "type": "xid", "data": 79,
                "gpu_instance_id": 1, "compute_instance_id": 0} (ids optional: 0xFFFFFFFF);
                type is a name below or an NVML bit; "gpu_lost" makes nvmlEventSetWait answer
                GPU_IS_LOST (FakeNvml.lose_gpu also sets "lost"). Each event set gets each line
                once: those for a GPU and type it registered, appended after the registration.
                Names: single_bit_ecc 0x1, double_bit_ecc 0x2, pstate 0x4, xid 0x8, clock 0x10,
                power_source_change 0x80, mig_config_change 0x100, single_bit_ecc_storm 0x200,
                dram_retirement 0x400, dram_retirement_failure 0x800, non_fatal_poison 0x1000,
                fatal_poison 0x2000, gpu_unavailable 0x4000, gpu_recovery_action 0x8000.

A missing key or `null` answers NVML_ERROR_NOT_SUPPORTED; a string naming an NVML error
("NOT_SUPPORTED", "GPU_IS_LOST", "NO_PERMISSION", …) makes that call return it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("fakenvml.c")
SONAME = "libnvidia-ml.so.1"
EVENTS_FILE = "fakenvml-events.jsonl"  # FakeNvml's "events_file", beside its config
VERSION_RE = re.compile(r"[0-9]+(\.[0-9]+)+")

GIB = 1 << 30
MIB = 1 << 20

# One H200 as the real host reports it (modern-anchors Appendix A), used as the default GPU.
H200: dict[str, Any] = {
    "name": "NVIDIA H200",
    "uuid": "GPU-d10c7111-67d9-9e02-1f7a-53d331412b6f",
    "minor": 0,
    "bus_id": "00000000:00:06.0",
    "memory_total": 143771 * MIB,
    "memory_used": 1 * MIB,
    "bar1_total": 256 * GIB,
    "bar1_used": 3 * MIB,
    "power_limit_mw": 700000,
    "power_usage_mw": 74321,
    "max_clock_graphics": 1980,
    "max_clock_sm": 1980,
    "max_clock_mem": 3201,
    "max_clock_video": 1545,
    "clock_graphics": 345,
    "clock_sm": 345,
    "clock_mem": 3201,
    "clock_video": 765,
    "max_pcie_gen": 5,
    "max_pcie_width": 16,
    "pcie_rx_kbs": 2345,
    "pcie_tx_kbs": 1234,
    "util_gpu": 0,
    "util_memory": 0,
    "util_encoder": 0,
    "util_decoder": 0,
    "temperature": 31,
    "compute_capability": [9, 0],
    "cores": 16896,
    "multiprocessors": "NOT_SUPPORTED",
    "memory_bus_width": 5120,
    "numa_node": "NOT_SUPPORTED",
    "ecc": True,
    "persistence": True,
    "mig_mode": False,
    "ecc_l1": 0,
    "ecc_l2": 0,
    "ecc_device_memory": 0,
    "nvlinks": [None] * 18,
    "processes": [],
    # Not read from the host: the types NVML's documentation lists for an ECC-enabled GPU.
    "event_types": ["single_bit_ecc", "double_bit_ecc", "pstate", "xid", "clock"],
    # For the fake libcuda (fakecuda.c): 1.0's gpu/info showed 64, 228 and 61440 KiB on the H200.
    "cuda_attributes": {
        "total_constant_memory": 64 << 10,
        "max_shared_memory_per_multiprocessor": 228 << 10,
        "l2_cache_size": 61440 << 10,
    },
}


def gpu(index: int, **overrides: Any) -> dict[str, Any]:
    """An H200-like GPU for NVML index `index`: distinct UUID, minor and bus id."""
    entry = copy.deepcopy(H200)
    entry.update(
        uuid=f"GPU-{index:08x}-67d9-9e02-1f7a-53d331412b6f",
        minor=index,
        bus_id=f"00000000:{0x18 + index * 0x10:02X}:00.0",
    )
    entry.update(overrides)
    return entry


def make_config(n_gpus: int = 1, *, gpus: list[dict[str, Any]] | None = None, **top: Any) -> dict:
    """A whole config: `n_gpus` GPUs (or the given list) with a full P2P topology table."""
    entries = gpus if gpus is not None else [gpu(i) for i in range(n_gpus)]
    for i, entry in enumerate(entries):
        # Two CPU sockets: GPUs 0-3 on one, 4-7 on the other (NVML levels: 10 single switch,
        # 40 same NUMA node, 50 across sockets).
        entry.setdefault(
            "topology",
            [0 if j == i else (10 if j // 2 == i // 2 else 40 if j // 4 == i // 4 else 50)
             for j in range(len(entries))],
        )
        entry.setdefault("p2p", [0] * len(entries))
    config: dict[str, Any] = {
        "driver_version": "580.159.04",
        "cuda_version": 13000,
        "process_names": {},
        "gpus": entries,
    }
    config.update(top)
    return config


def append_event(path: Path, event: Mapping[str, Any]) -> None:
    """Append one event line in a single write, so the fake never reads half of it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(event) + "\n").encode())
    finally:
        os.close(fd)


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    """Write atomically (temp + rename) so the fake never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fakenvml-", suffix=".json")
    with os.fdopen(fd, "w") as out:
        json.dump(config, out)
    os.replace(tmp, path)
    return path


def build_fake_nvml(out_dir: Path, *, omit: Iterable[str] = (), version: str | None = None,
                    gcc: str = "gcc") -> Path:
    """Compile fakenvml.c into `out_dir/libnvidia-ml.so.1`; `omit` drops those entry points.

    With `version`, the file is a driver's own: `out_dir/libnvidia-ml.so.<version>` (soname still
    libnvidia-ml.so.1) reporting that version unless the config names one; `link_soname` points
    `libnvidia-ml.so.1` at it. Reuses an existing build of the same source and options.
    """
    omitted = sorted(set(omit))
    flags = [f"-DOMIT_{name}" for name in omitted]
    if version is not None:
        if not VERSION_RE.fullmatch(version):
            raise ValueError(f"not a driver version: {version!r} (digits and dots: 580.159.04)")
        flags.append(f'-DFAKE_DRIVER_VERSION="{version}"')
    target = out_dir / (SONAME if version is None else f"libnvidia-ml.so.{version}")
    return compile_library(SOURCE, target, soname=SONAME, flags=[*flags, "-lpthread"], gcc=gcc,
                           what="the fake NVML")


def compile_library(source: Path, target: Path, *, soname: str, flags: Sequence[str] = (),
                    gcc: str = "gcc", what: str) -> Path:
    """`gcc -Wall -Werror -shared` of `source` into `target` (atomically), unless `target` is
    already the build of this source with these flags."""
    digest = hashlib.sha256(source.read_bytes() + " ".join(flags).encode()).hexdigest()[:16]
    target.parent.mkdir(parents=True, exist_ok=True)
    stamp = target.with_name(f".{target.name}.build")
    if target.exists() and stamp.exists() and stamp.read_text() == digest:
        return target
    tmp = target.with_name(f".{target.name}.tmp")
    cmd = [gcc, "-O2", "-Wall", "-Werror", "-shared", "-fPIC", f"-Wl,-soname,{soname}",
           "-o", str(tmp), str(source), *flags]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building {what} failed:\n{result.stderr}")
    os.replace(tmp, target)
    stamp.write_text(digest)
    return target


def link_soname(library: Path) -> Path:
    """Point `libnvidia-ml.so.1` beside `library` at it (relative, atomically), as ldconfig does
    when a driver is installed; returns the link."""
    link = library.with_name(SONAME)
    tmp = library.with_name(f".{SONAME}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(library.name, tmp)
    os.replace(tmp, link)
    return link
