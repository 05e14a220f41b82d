"""End-to-end proof on a host with an NVIDIA driver and a Docker Engine.

    python3 -m tests.gpu.proof [--wheels DIR] [--report FILE]

Installs nvplugin in a fresh virtual environment, starts the daemon with its default flags, and
checks what users rely on, printing PASS/FAIL per step and a summary table. Steps that need
several GPUs (identity and topology of every GPU, isolation between GPUs, two containers on two
GPUs at once, status of all GPUs) print SKIP on a host with fewer; skips do not fail the proof.
Needs root, `docker`, `nvidia-smi`, `nvcc` and `curl`; the CDI steps need `podman` on PATH
(`export PATH=$(gpu-bundle/start-podman gpu-bundle/podman-bin.tar.xz)`) and fail without it.
Leaves the host as it found it (daemon stopped, volume removed, no CDI spec it did not find).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import site
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.gpu.report import (
    SMI_FIELDS,
    SMI_LIVE,
    SMI_METRICS,
    SMI_STATIC,
    Report,
    bench_summary,
    check_bind_mounts,
    check_cdi_spec,
    compare_affinity,
    compare_cuda_memory,
    compare_fields,
    compare_identity,
    compare_info,
    compare_metric_labels,
    compare_page,
    compare_placement,
    compare_reload,
    compare_topology,
    compare_visible,
    container_samples,
    count_gpus,
    first_run_problems,
    format_summary,
    ldconfig_driver_libraries,
    ldd_paths,
    mapped_files,
    median_ms,
    metrics_by_gpu,
    missing_files,
    page_assets,
    parse_compute_apps,
    parse_cuda_props,
    parse_events,
    parse_prometheus,
    parse_smi_csv,
    parse_topo_matrix,
    percentile,
    proc_bus_dir,
    proc_device_minor,
    skip_reason,
    start_up_problems,
    topo_matrix_text,
    vm_rss_kib,
    volume_leftovers,
    within_filesystem,
)

REPO = Path(__file__).resolve().parents[2]
API = "http://localhost:3476"
SOCKET = Path("/run/docker/plugins/nvidia-docker.sock")
STATE = Path("/var/lib/nvidia-docker/volumes/state.json")
IMAGE = "nvplugin-proof/cuda:latest"
TOO_NEW_IMAGE = "nvplugin-proof/cuda:too-new"
WANTED_LIBS = ("libcuda", "libnvidia-ml", "libnvidia-ptxjitcompiler")
WANTED_BINS = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced",
               "nvidia-cuda-mps-control", "nvidia-cuda-mps-server")
IMAGE_TOOLS = ("/bin/sh", "/bin/ls", "/bin/cat")
# NVLink multicast off in everything the proof starts, the daemon and the containers included.
# vecadd, nvidia-smi and the daemon use none of NCCL, PyTorch's symmetric memory or NVSHMEM, but
# the multi-GPU hosts that run this proof are shared, and a program that does use multicast there
# can put every GPU of the host out of service for a day or more (the device README's rule): the
# variables are set anyway, so nothing started from here, now or later, can turn it on.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                 "NVSHMEM_DISABLE_NVLS": "1"}
MULTI_GPU = 2
IDENTITY = "gpu/info/json: every GPU's UUID, bus id and minor, in nvidia-smi order"
TOPOLOGY = "gpu/info/json Topology matches nvidia-smi topo -m"
ISOLATION = ("NV_GPU=1: nvidia-smi -L and vecadd see exactly GPU 1",
             "docker run $(curl .../docker/cli?dev=0+1): exactly GPUs 0 and 1",
             "NV_GPU=<GPU 1's UUID prefix>: exactly GPU 1")
CONCURRENT = "two containers run vecadd at once, each on its own GPU"
STATUS_ALL = "gpu/status/json answers for every GPU"
LEAN_START_UP = ("start-up and memory within issue 18's targets (bench_startup: ready, RSS, "
                 "flat over 10,000 requests of every route)")
LEAN_FIRST_RUN = ("the first nvidia-docker run after a start costs no more than later ones "
                  "(bench_first_run, cold page cache)")
CUDA_SIZES = "gpu/info Constant, Shared, L2 Cache match the CUDA runtime; cuInit kept out"
AFFINITY = "gpu/info CPU Affinity matches sysfs (numa_node, /sys/devices/system/node)"
OLD_VOLUMES = "an old driver's volume: doctor shows its space, gc (through the daemon) removes it"
UPGRADE = ("driver reinstalled under the running daemon (a copy of the driver root: files "
           "replaced, ldconfig): NVML reloaded from the new file, the old one unmapped, a volume "
           "built after it runs CUDA from the new files")
CDI_SPEC = Path("/var/run/cdi/nvidia-docker.json")
CDI_IMAGE = "localhost/nvplugin-proof/cuda:cdi"  # 1.0's PATH and LD_LIBRARY_PATH
CDI_PLAIN_IMAGE = "localhost/nvplugin-proof/cuda:cdi-plain"  # neither
CDI_STEPS = (
    "CDI spec written at start-up: cdiVersion 0.5.0, devices 0, GPU-<uuid> and all, mode 0644",
    "podman --device nvidia.com/gpu=0: nvidia-smi -L and vecadd (1.0's PATH/LD_LIBRARY_PATH)",
    "podman --device nvidia.com/gpu=0: nvidia-smi -L and vecadd (no PATH/LD_LIBRARY_PATH)",
    "podman --device nvidia.com/gpu=all: nvidia-smi -L lists every GPU, vecadd runs",
    "CDI is zero copy: libcuda and nvidia-smi are ro,nosuid,nodev mounts of the host's files; "
    "a fresh volumes directory stays empty",
)
OLD_VERSION = "1.0.0"  # no driver has it: a volume left by an "older" driver, made by hand
PAGE = "GPU page at /: every GPU, live numbers, the vecadd container by name, nothing external"
PAGE_SHOT = "GPU page screenshot in headless Chromium"
METRICS = "/metrics: dcgm-exporter's names and labels, values as nvidia-smi reads them"
METRICS_CONTAINER = "/metrics and gpu/status/json: a CUDA container's process by its name"
PAGE_BUDGET = 200 * 1024  # the page and everything it loads
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")
# The same figure on the one-GPU H200 (docs/gpu-proof.md), to set the multi-GPU one against.
ONE_GPU_STATUS_P50 = "1.36 ms"


def sh(*cmd: str, env: dict[str, str] | None = None, check: bool = False,
       timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def run_argv(program: str, *options: str) -> list[str]:
    """`<program> run` with MULTICAST_OFF passed into the container, then `options`."""
    env = [f"--env={name}={value}" for name, value in MULTICAST_OFF.items()]
    return [program, "run", *env, *options]


def needs_gpus(count: int, *names: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Marks a step that needs `count` GPUs; `names` are the report lines it writes (or skips)."""
    def mark(step: Callable[..., None]) -> Callable[..., None]:
        step.needs_gpus = count  # type: ignore[attr-defined]
        step.step_names = names  # type: ignore[attr-defined]
        return step
    return mark


def get(path: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(API + path, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


class Proof:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.report = Report()
        self.work = Path(tempfile.mkdtemp(prefix="nvplugin-proof-"))
        self.venv = self.work / "venv"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.version = ""
        self.cli_args: list[str] = []
        self.gpus = 0
        self.smi_rows: list[dict[str, str]] = []  # index, uuid, pci.bus_id per GPU
        self.status_answers: tuple[int, int] = (0, 0)  # (answers, answers listing every GPU)
        self.image_data = b""  # the minimal CUDA image's root filesystem, for Podman too
        self.cdi_spec_existed = CDI_SPEC.exists()  # a spec the proof did not write stays

    # -- set-up -------------------------------------------------------------------------------
    def install(self) -> None:
        start = time.monotonic()
        # System site packages: the GPU host has no registry, and its aiohttp/pynvml are fine.
        sh(sys.executable, "-m", "venv", "--system-site-packages", str(self.venv), check=True)
        if sys.prefix != sys.base_prefix:
            # This interpreter is itself a venv (as on the GPU host): layer the new venv over
            # its packages too, since --system-site-packages reaches only the base interpreter's.
            purelib = sh(str(self.venv / "bin/python"), "-c",
                         "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
            parents = "\n".join(site.getsitepackages())
            Path(purelib, "_nvplugin_proof_parent.pth").write_text(parents + "\n")
        pip = [str(self.venv / "bin/python"), "-m", "pip", "install", "-q"]
        if self.args.wheels:
            wheels = sorted(str(p) for p in Path(self.args.wheels).glob("*.whl"))
            sh(*pip, "--no-index", "--no-deps", *wheels, check=True)
            pip += ["--no-index", "--no-build-isolation", "--no-deps"]
        result = sh(*pip, str(REPO))
        version = sh(str(self.venv / "bin/nvidia-docker-plugin"), "-v").stdout.strip()
        self.report.add("install in a fresh venv", result.returncode == 0 and "plugin" in version,
                        version or result.stderr, time.monotonic() - start)

    def start_daemon(self, label: str = "daemon start to ready", *flags: str) -> float:
        log = open(self.work / "daemon.log", "ab")  # noqa: SIM115 - handed to the child
        start = time.monotonic()
        self.daemon = subprocess.Popen([str(self.venv / "bin/nvidia-docker-plugin"), *flags],
                                       stdout=log, stderr=log)
        while time.monotonic() - start < 60 and self.daemon.poll() is None:
            try:
                if get("/v1.0/gpu/info/json", timeout=2)[0] == 200 and SOCKET.exists():
                    break
            except OSError:
                pass
            time.sleep(0.02)
        took = time.monotonic() - start
        self.report.timings[label] = f"{took * 1000:.0f} ms"
        return took

    def stop_daemon(self) -> int | None:
        if self.daemon is None or self.daemon.poll() is not None:
            return None
        self.daemon.send_signal(signal.SIGTERM)
        return self.daemon.wait(timeout=60)

    # -- steps --------------------------------------------------------------------------------
    def check_info(self) -> None:
        status, body = get("/v1.0/gpu/info/json")
        smi = sh("nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv")
        if status != 200:
            self.report.add("gpu/info/json matches nvidia-smi", False, f"HTTP {status}: {body}")
            return
        info = json.loads(body)
        self.version = info["Version"]["Driver"]
        problems = compare_info(parse_smi_csv(smi.stdout), info)
        agree = f"every field of {len(info['Devices'])} GPU(s) agrees"
        detail = smi.stdout.strip() + "\n" + ("\n".join(problems) or agree)
        self.report.add("gpu/info/json matches nvidia-smi", not problems, detail)
        self.report.facts["driver"] = self.version
        self.report.facts["cuda"] = str(info["Version"]["CUDA"])
        self.report.facts["gpus"] = ", ".join(d["Model"] for d in info["Devices"])

    def check_smi_fields(self) -> None:
        """gpu/info and gpu/status against the same fields of `nvidia-smi -q`."""
        detail, problems = [], []
        for label, fields, route in (("info", SMI_STATIC, "/v1.0/gpu/info/json"),
                                     ("status", SMI_LIVE, "/v1.0/gpu/status/json")):
            ours = json.loads(get(route)[1])["Devices"]
            smi = sh("nvidia-smi", f"--query-gpu={','.join(fields)}",
                     "--format=csv,noheader,nounits")
            for index, csv_line in enumerate(smi.stdout.strip().splitlines()):
                cells = (cell.strip() for cell in csv_line.split(","))
                row = dict(zip(fields, cells, strict=False))
                pairs, wrong = compare_fields(row, ours[index], fields)
                detail += [f"GPU {index} {label} {pair}" for pair in pairs]
                problems += [f"GPU {index} {label} {problem}" for problem in wrong]
        self.report.add("gpu/info and gpu/status agree with nvidia-smi -q", not problems,
                        "\n".join(detail + problems))

    def check_cuda_sizes(self) -> None:
        """The three sizes against cudaprops.cu (the CUDA runtime, 1.0's source), and what the
        daemon's way costs: cuInit ran in its child (its log line), never in the daemon (its
        maps), and what cuInit adds to a process (the child run again here, for the figures)."""
        binary = self.work / "cudaprops"
        compiled = sh("nvcc", "-O2", "-cudart", "static", "-o", str(binary),
                      str(REPO / "tests/gpu/cudaprops.cu"))
        if compiled.returncode != 0:
            self.report.add(CUDA_SIZES, False, compiled.stderr)
            return
        props = sh(str(binary))
        info = json.loads(get("/v1.0/gpu/info/json")[1])
        lines, problems = compare_cuda_memory(info, parse_cuda_props(props.stdout))
        if props.returncode != 0:
            problems.insert(0, f"cudaprops exited {props.returncode}: {props.stdout.strip()}")
        page = [line.strip() for line in get("/v1.0/gpu/info")[1].splitlines()
                if line.strip().startswith(("Constant:", "Shared:", "L2 Cache:"))]
        log = (self.work / "daemon.log").read_text(errors="replace")
        read = [line for line in log.splitlines() if "Read CUDA memory sizes" in line]
        if not read:
            problems.append("the daemon never logged 'Read CUDA memory sizes'")
        pid = self.daemon.pid if self.daemon is not None else 0
        # cuInit opens /dev/nvidia-uvm and keeps it. NVML may too (the H200 showed two open in
        # the daemon), so the daemon is held against a process making the daemon's NVML calls
        # (init, CUDA version, an event set): more uvm handles than that one means cuInit ran.
        # A mapped libcuda proves nothing: NVML loads it for nvmlSystemGetCudaDriverVersion.
        uvm = [fd for fd in _open_files(pid) if fd.startswith("/dev/nvidia-uvm")] if pid else []
        baseline = sh(str(self.venv / "bin/python"), "-c", NVML_ONLY_UVM).stdout.strip()
        lines.append(f"/dev/nvidia-uvm handles: daemon {len(uvm)}, a process using NVML "
                     f"only {baseline or '?'}")
        if not baseline.isdigit() or len(uvm) > int(baseline):
            problems.append(f"the daemon holds {len(uvm)} /dev/nvidia-uvm handle(s), more than "
                            f"NVML alone ({baseline or 'unknown'}): cuInit ran there")
        python = str(self.venv / "bin/python")
        where = sh(python, "-c", "from nvplugin.driver.discovery import find_cuda_library; "
                   "from nvplugin.gpu.cuda import CHILD; print(find_cuda_library('/'), CHILD)")
        library, child = [*where.stdout.split(), "", ""][:2]
        started = time.monotonic()
        asked = sh(python, "-I", child, library)
        took = (time.monotonic() - started) * 1000
        try:
            answer = json.loads(asked.stdout)
            before, after = answer["rss_kib"]
            self.report.timings["cuInit in a process: time, resident memory added"] = (
                f"{answer['init_ms']:.0f} ms, {(after - before) / 1024:+.1f} MiB "
                f"({before / 1024:.1f} -> {after / 1024:.1f} MiB)")
            self.report.timings["the daemon's CUDA query (child process, start to answer)"] = (
                f"{took:.0f} ms")
        except (ValueError, KeyError, TypeError):
            problems.append(f"the CUDA child on {library} answered {asked.stdout!r} "
                            f"{asked.stderr.strip()!r}")
        rss = vm_rss_kib(Path(f"/proc/{pid}/status").read_text()) if pid else None
        if rss is not None:
            self.report.timings["the daemon's resident memory (no cuInit in it)"] = (
                f"{rss / 1024:.1f} MiB")
        self.report.add(CUDA_SIZES, not problems,
                        "\n".join([props.stdout.strip(), *lines, *page, *read, *problems]))

    def check_affinity(self) -> None:
        info = json.loads(get("/v1.0/gpu/info/json")[1])
        numa, cpus = {}, {}
        for dev in info.get("Devices") or []:
            bus = proc_bus_dir(str(dev["PCI"]["BusID"]))
            device = Path("/sys/bus/pci/devices", bus)
            numa[bus], cpus[bus] = _read(device / "numa_node"), _read(device / "local_cpulist")
        nodes = {path.name: _read(path / "cpulist") or "?"
                 for path in Path("/sys/devices/system/node").glob("node[0-9]*")}
        lines, problems = compare_affinity(info, numa, cpus, nodes)
        page = [line.strip() for line in get("/v1.0/gpu/info")[1].splitlines()
                if line.strip().startswith("CPU Affinity:")]
        self.report.add(AFFINITY, not problems, "\n".join([*lines, *page, *problems]))

    def check_list(self) -> None:
        result = sh(str(self.venv / "bin/nvidia-docker-plugin"), "list", "--json")
        try:
            listing = json.loads(result.stdout)
        except json.JSONDecodeError:
            self.report.add("list finds the driver files", False, result.stdout + result.stderr)
            return
        problems = missing_files(listing, self.version, WANTED_LIBS, WANTED_BINS)
        files = listing.get("Files") or []
        kinds = {kind: sum(1 for f in files if f["kind"] == kind)
                 for kind in ("lib", "bin", "firmware", "config")}
        detail = (f"{len(files)} files selected {kinds}, {len(listing.get('Links') or [])} links, "
                  f"{len(listing.get('Rejected') or [])} rejected")
        listed = {str(f["dest"]).rsplit("/", 1)[-1] for f in files if f["kind"] == "lib"}
        wanted = ldconfig_driver_libraries(sh("ldconfig", "-p").stdout, os.path.realpath,
                                           self.version)
        problems += [f"{name}: listed by ldconfig -p, not selected"
                     for name in sorted(wanted - listed)]
        detail += f"\nevery one of the {len(wanted)} driver libraries ldconfig -p lists: "
        detail += "selected" if wanted <= listed else "NOT all selected"
        self.report.add("list finds the driver files", not problems,
                        "\n".join([detail, *problems]))

    def create_volume(self) -> None:
        name = f"nvidia_driver_{self.version}"
        start = time.monotonic()
        result = sh("docker", "volume", "create", "-d", "nvidia-docker", name)
        took = time.monotonic() - start
        self.report.timings["first volume build (docker volume create)"] = f"{took * 1000:.0f} ms"
        mountpoint = sh("docker", "volume", "inspect", "-f", "{{.Mountpoint}}", name).stdout.strip()
        root = Path(mountpoint) if mountpoint else Path("/nonexistent")
        expected = ["bin/nvidia-smi", "lib64/libcuda.so.1", "lib64/libnvidia-ml.so.1",
                    f"lib64/libcuda.so.{self.version}"]
        absent = [p for p in expected if not (root / p).exists()]
        source_fs = sh("stat", "-f", "-c", "%T", "/usr/local/nvidia").stdout.strip()
        detail = (f"{result.stdout.strip() or result.stderr.strip()} at {mountpoint}; driver on "
                  f"{source_fs}; {sum(1 for _ in root.rglob('*'))} entries")
        self.report.add("volume create on a read-only driver filesystem",
                        result.returncode == 0 and not absent,
                        detail + ("\nmissing: " + ", ".join(absent) if absent else ""), took)

    def build_image(self) -> None:
        build = self.work / "image"
        (build / "bin").mkdir(parents=True)
        vecadd = build / "vecadd"
        compiled = sh("nvcc", "-O2", "-cudart", "static", "-o", str(vecadd),
                      str(REPO / "tests/gpu/vecadd.cu"))
        if compiled.returncode != 0:
            self.report.add("build the minimal CUDA image", False, compiled.stderr)
            return
        libs: set[str] = set()
        for program in (str(vecadd), *IMAGE_TOOLS):
            libs.update(ldd_paths(sh("ldd", program).stdout))
        libc_dir = Path(next(p for p in libs if "/libc.so" in p)).parent
        for extra in ("libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1"):
            if (libc_dir / extra).exists():
                libs.add(str(libc_dir / extra))
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            for directory in ("bin", "tmp", "dev", "proc", "sys", "etc", "usr/local"):
                info = tarfile.TarInfo(directory)
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
                tar.addfile(info)
            tar.add(str(vecadd), arcname="bin/vecadd")
            for tool in IMAGE_TOOLS:
                tar.add(os.path.realpath(tool), arcname=tool.lstrip("/"))
            for lib in sorted(libs):
                tar.add(os.path.realpath(lib), arcname=lib.lstrip("/"))
        changes = ["ENV PATH=/usr/local/nvidia/bin:/bin",
                   "ENV LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64"]
        label = "LABEL com.nvidia.volumes.needed=nvidia_driver"
        ok = True
        for tag, extra in ((IMAGE, [label]), (TOO_NEW_IMAGE,
                           [label, "LABEL com.nvidia.cuda.version=99.0"])):
            args = [a for change in changes + extra for a in ("-c", change)]
            imported = subprocess.run(["docker", "import", *args, "-", tag],
                                      input=data.getvalue(), capture_output=True)
            ok = ok and imported.returncode == 0
        self.image_data = data.getvalue()
        size = sh("docker", "image", "inspect", "-f", "{{.Size}}", IMAGE).stdout.strip()
        self.report.add("build the minimal CUDA image", ok,
                        f"{len(libs)} host libraries + vecadd (cudart static); {size} bytes")

    def run_ways(self) -> None:
        no_help = sh(*run_argv("docker", "--rm", "--net=none", IMAGE, "vecadd"))
        self.report.add("without nvplugin the CUDA program fails (the 'before')",
                        no_help.returncode != 0 and "insufficient" in no_help.stdout,
                        no_help.stdout.strip() or no_help.stderr.strip())
        status, cli = get("/v1.0/docker/cli")
        self.cli_args = cli.split()
        volume = f"nvidia_driver_{self.version}"
        devices = [a for a in self.cli_args if a.startswith("--device=")]
        ways = {
            "nvidia-docker run": run_argv(str(self.venv / "bin/nvidia-docker"), "--rm",
                                          "--net=none", IMAGE),
            "docker run $(curl .../docker/cli)": run_argv("docker", "--rm", "--net=none",
                                                          *self.cli_args, IMAGE),
            "docker run --volume-driver -v ... --device": run_argv(
                "docker", "--rm", "--net=none", "--volume-driver=nvidia-docker",
                f"-v={volume}:/usr/local/nvidia:ro", *devices, IMAGE),
        }
        for name, argv in ways.items():
            smi = sh(*argv, "nvidia-smi", "-L")
            vec = sh(*argv, "vecadd")
            ok = (smi.returncode == 0 and "GPU 0:" in smi.stdout and vec.returncode == 0
                  and "PASS" in vec.stdout)
            self.report.add(f"{name}: nvidia-smi -L and vecadd", ok and status == 200,
                            "\n".join(x for x in (smi.stdout.strip(), smi.stderr.strip(),
                                                  vec.stdout.strip(), vec.stderr.strip()) if x))

    def selection_and_refusal(self) -> None:
        wrapper = str(self.venv / "bin/nvidia-docker")
        uuid = json.loads(get("/v1.0/gpu/info/json")[1])["Devices"][0]["UUID"]
        for value in ("0", uuid[:12]):
            env = {**os.environ, "NV_GPU": value}
            run = sh(*run_argv(wrapper, "--rm", "--net=none", IMAGE, "nvidia-smi", "-L"), env=env)
            self.report.add(f"NV_GPU={value} selects its GPU",
                            run.returncode == 0 and uuid in run.stdout,
                            (run.stdout + run.stderr).strip())
        bad = sh(*run_argv(wrapper, "--rm", "--net=none", IMAGE, "nvidia-smi"),
                 env={**os.environ, "NV_GPU": "7"})
        self.report.add("NV_GPU=7 is refused", bad.returncode == 1
                        and "Error: invalid device: 7" in bad.stderr, bad.stderr.strip())
        cuda = self.report.facts.get("cuda", "?")
        refused = sh(*run_argv(wrapper, "--rm", "--net=none", TOO_NEW_IMAGE, "vecadd"))
        expected = f"unsupported CUDA version: driver {cuda} < image 99.0"
        self.report.add("com.nvidia.cuda.version=99.0 is refused",
                        refused.returncode == 1 and expected in refused.stderr,
                        refused.stderr.strip())

    # -- several GPUs -----------------------------------------------------------------------
    def _gpu_rows(self) -> list[dict[str, str]]:
        if not self.smi_rows:
            smi = sh("nvidia-smi", "--query-gpu=index,uuid,pci.bus_id", "--format=csv")
            self.smi_rows = parse_smi_csv(smi.stdout)
        return self.smi_rows

    @needs_gpus(MULTI_GPU, IDENTITY)
    def check_identity(self) -> None:
        rows = self._gpu_rows()
        minors: list[int | None] = []
        for row in rows:
            information = Path("/proc/driver/nvidia/gpus", proc_bus_dir(row["pci.bus_id"]),
                               "information")
            try:
                minors.append(proc_device_minor(information.read_text()))
            except OSError:
                minors.append(None)
        lines, problems = compare_identity(rows, minors, json.loads(get("/v1.0/gpu/info/json")[1]))
        self.report.add(IDENTITY, not problems, "\n".join(lines + problems))

    @needs_gpus(MULTI_GPU, TOPOLOGY)
    def check_topology(self) -> None:
        bus_ids = [row["pci.bus_id"] for row in self._gpu_rows()]
        topo = sh("nvidia-smi", "topo", "-m")
        # PCIe only (what NVML's common ancestor reads where -m shows NV#), and P2P read status
        # (nvplugin, as 1.0, lists only peers CUDA can read); both optional on older drivers.
        pci, p2p = sh("nvidia-smi", "topo", "-mp"), sh("nvidia-smi", "topo", "-p2p", "r")
        matrix = parse_topo_matrix(topo.stdout)
        pci_matrix = parse_topo_matrix(pci.stdout) if pci.returncode == 0 else {}
        p2p_matrix = parse_topo_matrix(p2p.stdout) if p2p.returncode == 0 else {}
        info = json.loads(get("/v1.0/gpu/info/json")[1])
        lines, problems = compare_topology(info, bus_ids, matrix, pci_matrix or None,
                                           p2p_matrix or None)
        if topo.returncode != 0 or not matrix:
            problems.insert(0, f"nvidia-smi topo -m exited {topo.returncode}: "
                               f"{topo.stderr.strip()}")
        self.report.add(TOPOLOGY, not problems,
                        "\n".join([topo_matrix_text(topo.stdout), *lines, *problems]))

    @needs_gpus(MULTI_GPU, *ISOLATION)
    def isolation(self) -> None:
        wrapper = str(self.venv / "bin/nvidia-docker")
        rows = self._gpu_rows()
        uuids = [row["uuid"] for row in rows]
        buses = [row["pci.bus_id"] for row in rows]
        status, cli = get("/v1.0/docker/cli?dev=0+1")
        base = {k: v for k, v in os.environ.items() if k != "NV_GPU"}
        prefix = uuids[1][:12]
        cases = (
            (ISOLATION[0], run_argv(wrapper, "--rm", "--net=none", IMAGE), {"NV_GPU": "1"}, [1]),
            (ISOLATION[1], run_argv("docker", "--rm", "--net=none", *cli.split(), IMAGE), {},
             [0, 1]),
            (ISOLATION[2], run_argv(wrapper, "--rm", "--net=none", IMAGE), {"NV_GPU": prefix},
             [1]),
        )
        for name, argv, extra, selected in cases:
            env = {**base, **extra}
            smi = sh(*argv, "nvidia-smi", "-L", env=env)
            vec = sh(*argv, "vecadd", env=env)
            problems = compare_visible(smi.stdout, vec.stdout, [uuids[k] for k in selected],
                                       [buses[k] for k in selected])
            if argv[0] == "docker" and status != 200:
                problems.insert(0, f"docker/cli?dev=0+1: HTTP {status}: {cli.strip()}")
            problems += [f"{what} exited {run.returncode}" for what, run
                         in (("nvidia-smi -L", smi), ("vecadd", vec)) if run.returncode != 0]
            how = (" ".join(f"{k}={v}" for k, v in extra.items()) or f"docker/cli: {cli.strip()}")
            outputs = (smi.stdout, smi.stderr, vec.stdout, vec.stderr)
            self.report.add(name, not problems, "\n".join(
                [how, *(x.strip() for x in outputs if x.strip()), *problems]))

    @needs_gpus(MULTI_GPU, CONCURRENT)
    def concurrent(self) -> None:
        wrapper = str(self.venv / "bin/nvidia-docker")
        uuids = [row["uuid"] for row in self._gpu_rows()[:2]]
        names = [f"nvplugin-proof-gpu{k}" for k in range(2)]
        for name in names:
            sh("docker", "rm", "-f", name)
        problems: list[str] = []
        try:
            for k, name in enumerate(names):
                started = sh(*run_argv(wrapper, "-d", "--name", name, "--net=none",
                                       "-e", "VECADD_HOLD_SECONDS=8", IMAGE, "vecadd"),
                             env={**os.environ, "NV_GPU": str(k)})
                if started.returncode != 0:
                    problems.append(f"{name} (NV_GPU={k}): {started.stderr.strip()}")
            pids = [sh("docker", "inspect", "-f", "{{.State.Pid}}", n).stdout.strip()
                    for n in names]
            # Poll: each container needs a moment to create its context and reach the kernels.
            deadline, apps, placed = time.monotonic() + 7, [], ["not polled"]
            while time.monotonic() < deadline:
                query = sh("nvidia-smi", "--query-compute-apps=pid,gpu_uuid,process_name",
                           "--format=csv,noheader")
                apps = parse_compute_apps(query.stdout)
                placed = compare_placement(apps, uuids)
                if not placed:
                    break
                time.sleep(0.25)
            waited = [sh("docker", "wait", n, timeout=120).stdout.strip() for n in names]
            logs = [sh("docker", "logs", n).stdout.strip() for n in names]
        finally:
            for name in names:
                sh("docker", "rm", "-f", name)
        problems += placed
        problems += [f"{n} exited {code!r}" for n, code in zip(names, waited, strict=True)
                     if code != "0"]
        problems += [f"{n}: no 'Held the GPU' in its log" for n, log in zip(names, logs,
                     strict=True) if "Held the GPU" not in log]
        detail = [f"{n}: NV_GPU={k}, expected on {uuids[k]}, host pid {pids[k]}, exit "
                  f"{waited[k]}; {logs[k].splitlines()[-1] if logs[k] else 'no log'}"
                  for k, n in enumerate(names)]
        detail += [f"nvidia-smi compute app: pid {a.pid} on {a.gpu_uuid} ({a.name})"
                   + (f" = {names[pids.index(str(a.pid))]}" if str(a.pid) in pids else "")
                   for a in apps]
        self.report.add(CONCURRENT, not problems, "\n".join(detail + problems))

    @needs_gpus(MULTI_GPU, STATUS_ALL)
    def status_all_gpus(self) -> None:
        answers, complete = self.status_answers
        p50 = next((v for k, v in self.report.timings.items()
                    if k.startswith("gpu/status/json p50")), "not measured")
        self.report.add(STATUS_ALL, answers > 0 and complete == answers,
                        f"{complete} of {answers} timed answers listed all {self.gpus} GPUs; "
                        f"p50 {p50} with {self.gpus} GPUs, {ONE_GPU_STATUS_P50} with 1 GPU "
                        "(the one-GPU H200, docs/gpu-proof.md)")

    def old_volumes(self) -> None:
        """A volume of another driver version next to the real one: doctor reports the disk it
        holds, `gc` asks the running daemon (the volumes directory is the daemon's) to remove
        it, Docker no longer lists it, and the current volume stays."""
        kind = STATE.parent / "nvidia_driver"
        old, name = kind / OLD_VERSION, f"nvidia_driver_{OLD_VERSION}"
        (old / "lib64").mkdir(parents=True, exist_ok=True)
        (old / "lib64" / f"libcuda.so.{OLD_VERSION}").write_bytes(b"\0" * (1 << 20))
        program = str(self.venv / "bin/nvidia-docker-plugin")
        try:
            doctor = json.loads(sh(program, "doctor", "--json").stdout or "[]")
        except json.JSONDecodeError:
            doctor = []
        stale = next((c for c in doctor if c.get("check") == "stale-volumes"), {})
        gc = sh(program, "gc")
        listed = sh("docker", "volume", "ls", "-q").stdout.split()
        problems = []
        if stale.get("status") != "WARN" or f"{OLD_VERSION} (1.0 MiB, 1.0 MiB of them freed" \
                not in str(stale.get("detail")):
            problems.append(f"doctor's stale-volumes: {stale}")
        if gc.returncode != 0 or not gc.stdout.startswith(f"Removed {name}: 1.0 MiB") \
                or f"by the running daemon ({SOCKET})" not in gc.stdout:
            problems.append(f"gc exited {gc.returncode}: {gc.stdout.strip()} {gc.stderr.strip()}")
        if old.exists():
            problems.append(f"{old} is still there")
        if name in listed:
            problems.append(f"docker volume ls still lists {name}")
        if self.version and not (kind / self.version).is_dir():
            problems.append(f"the current volume {kind / self.version} went too")
        self.report.add(OLD_VOLUMES, not problems, "\n".join(
            [f"doctor: {stale.get('status')} {stale.get('detail')}", f"gc: {gc.stdout.strip()}",
             *problems]))

    def cdi_podman(self) -> None:
        """The daemon's CDI spec through Podman, from a daemon whose volumes directory starts
        empty and must stay so: every driver file reaches the containers as a bind mount."""
        podman = shutil.which("podman")
        if podman is None or not self.image_data:
            why = ("podman is not on PATH: export PATH=$(gpu-bundle/start-podman "
                   "gpu-bundle/podman-bin.tar.xz)" if podman is None else
                   "the minimal CUDA image was not built")
            for name in CDI_STEPS:
                self.report.add(name, False, why)
            return
        for tag, changes in ((CDI_IMAGE, ["ENV PATH=/usr/local/nvidia/bin:/bin",
                                          "ENV LD_LIBRARY_PATH=/usr/local/nvidia/lib:"
                                          "/usr/local/nvidia/lib64"]),
                             (CDI_PLAIN_IMAGE, [])):
            args = [a for change in [*changes, 'CMD ["/bin/sh"]'] for a in ("--change", change)]
            subprocess.run([podman, "import", *args, "-", tag], input=self.image_data,
                           capture_output=True, check=True)
        volumes = self.work / "cdi-volumes"
        volumes.mkdir()
        self.stop_daemon()
        started = time.monotonic()
        # --no-prebuild: the volume plugin's background build would fill the directory; CDI
        # itself must need no copy at all.
        self.start_daemon("daemon start to ready, fresh volumes directory",
                          "--volumes-dir", str(volumes), "--no-prebuild")
        while not CDI_SPEC.exists() and time.monotonic() - started < 30:
            time.sleep(0.02)
        try:
            self._cdi_checks(podman, volumes)
        finally:
            code = self.stop_daemon()
            kept = CDI_SPEC.exists()
            self.report.timings["CDI spec kept at a clean stop"] = (
                f"{'yes' if kept else 'NO'} (daemon exit {code})")
            for tag in (CDI_IMAGE, CDI_PLAIN_IMAGE):
                sh(podman, "rmi", "-f", tag)
            self.start_daemon("daemon restart after the CDI steps")

    def _cdi_checks(self, podman: str, volumes: Path) -> None:
        rows = self._gpu_rows()
        uuids = [row["uuid"] for row in rows]
        try:
            body = json.loads(CDI_SPEC.read_text())
            mode: int | None = CDI_SPEC.stat().st_mode & 0o777
        except (OSError, json.JSONDecodeError) as err:
            body, mode = {}, None
            self.report.add(CDI_STEPS[0], False, f"{CDI_SPEC}: {err}")
        else:
            served = get("/v1.0/cdi/spec")
            problems = check_cdi_spec(body, uuids, mode)
            if served != (200, CDI_SPEC.read_text()):
                problems.append(f"GET /v1.0/cdi/spec answers {served[0]}, not the file's bytes")
            names = [d["name"] for d in body.get("devices", [])]
            mounts = len((body.get("containerEdits") or {}).get("mounts") or [])
            self.report.add(CDI_STEPS[0], not problems, "\n".join(
                [f"{CDI_SPEC}: devices {', '.join(names)}; {mounts} mounts", *problems]))

        def run(device: str, image: str, *command: str) -> subprocess.CompletedProcess[str]:
            return sh(*run_argv(podman, "--rm", "--network=none", "--device",
                                f"nvidia.com/gpu={device}", image), *command)

        for name, image in ((CDI_STEPS[1], CDI_IMAGE), (CDI_STEPS[2], CDI_PLAIN_IMAGE)):
            smi, vec = run("0", image, "nvidia-smi", "-L"), run("0", image, "vecadd")
            ok = (smi.returncode == 0 and "GPU 0: " in smi.stdout and uuids[0] in smi.stdout
                  and vec.returncode == 0 and "PASS" in vec.stdout)
            self.report.add(name, ok, "\n".join(x.strip() for x in (
                smi.stdout, smi.stderr, vec.stdout, vec.stderr) if x.strip()))
        smi, vec = run("all", CDI_IMAGE, "nvidia-smi", "-L"), run("all", CDI_IMAGE, "vecadd")
        listed = [line for line in smi.stdout.splitlines() if line.startswith("GPU ")]
        self.report.add(CDI_STEPS[3], smi.returncode == 0 and len(listed) == len(uuids)
                        and all(u in smi.stdout for u in uuids) and vec.returncode == 0
                        and "PASS" in vec.stdout, "\n".join(x.strip() for x in (
                            smi.stdout, smi.stderr, vec.stdout, vec.stderr) if x.strip()))
        host = _read(Path("/proc/self/mountinfo")) or ""
        sources = {m["containerPath"]: m["hostPath"]
                   for m in (body.get("containerEdits") or {}).get("mounts") or []}
        targets = ("/usr/local/nvidia/lib64/libcuda.so.1",
                   "/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/bin/nvidia-smi")
        expected = {t: within_filesystem(sources.get(t, "(not in the spec)"), host)
                    for t in targets}
        inside = run("0", CDI_IMAGE, "cat", "/proc/self/mountinfo")
        problems = check_bind_mounts(inside.stdout, expected)
        # The spec's libcuda is the one the host's own loader uses, not some other copy.
        cuda = os.path.realpath(_ldconfig_path("libcuda.so.1") or "libcuda.so.1")
        if sources.get(targets[0]) != cuda:
            problems.append(f"the spec mounts {sources.get(targets[0])} as libcuda.so.1, the "
                            f"host's ld.so.cache names {cuda}")
        files = [str(p.relative_to(volumes)) for p in volumes.rglob("*") if p.is_file()]
        problems += [f"{volumes}: {f}" for f in volume_leftovers(files)]
        self.report.add(CDI_STEPS[4], inside.returncode == 0 and not problems, "\n".join(
            [f"{target} <- {source}" for target, source in expected.items()]
            + [f"{volumes}: {len(files)} files ({', '.join(sorted(files)) or 'none'})",
               *problems]))
        plain, cdi = [], []
        for _ in range(5):
            start = time.monotonic()
            sh(*run_argv(podman, "--rm", "--network=none", CDI_IMAGE, "sh", "-c", ":"))
            plain.append(time.monotonic() - start)
            start = time.monotonic()
            run("0", CDI_IMAGE, "sh", "-c", ":")
            cdi.append(time.monotonic() - start)
        self.report.timings["podman run (median of 5)"] = median_ms(plain)
        self.report.timings["podman run --device nvidia.com/gpu=0 (median of 5)"] = median_ms(cdi)

    def driver_upgrade(self) -> None:
        """The daemon on a writable copy of the driver root, whose versioned libraries are then
        replaced by new files (new inodes; the old ones deleted), ldconfig re-run and the module
        version file rewritten, as a reinstall does. The real kernel module fixes the version,
        so a version change (and a running container keeping the old version's volume) is shown
        on the fake host only (tests/e2e/test_daemon.py::test_driver_upgrade_is_seen_without_a_
        restart); what this shows is that the real NVML is shut down, unloaded and loaded again
        from the new file, and that a build after it takes the new, re-vetted files."""
        root, volumes = self.work / "upgrade-root", self.work / "upgrade-volumes"
        nvidia = root / "usr/local/nvidia"
        nvidia.parent.mkdir(parents=True)
        started = time.monotonic()
        copied = sh("cp", "-a", "/usr/local/nvidia", str(nvidia))
        size = sum(p.stat().st_size for p in nvidia.rglob("*") if p.is_file() and
                   not p.is_symlink())
        self.report.timings["driver root copied for the upgrade step"] = (
            f"{(time.monotonic() - started) * 1000:.0f} ms, {size / 2**20:.0f} MiB")
        (root / "etc").mkdir()
        (root / "etc/ld.so.conf").write_text("/usr/local/nvidia/lib64\n")
        cache = sh("ldconfig", "-X", "-r", str(root))
        proc = root / "proc/driver/nvidia/version"
        proc.parent.mkdir(parents=True)
        proc.write_text(Path("/proc/driver/nvidia/version").read_text())
        if copied.returncode != 0 or cache.returncode != 0:
            self.report.add(UPGRADE, False, f"cp: {copied.stderr.strip()}; ldconfig -r: "
                            f"{cache.stderr.strip()}")
            shutil.rmtree(root, ignore_errors=True)
            return
        self.stop_daemon()
        self.start_daemon("daemon start to ready, on a copy of the driver root",
                          "--driver-root", str(root), "--dev-root", "/",
                          "--volumes-dir", str(volumes), "--cdi-dir", "")
        try:
            self._upgrade_checks(root, volumes)
        finally:
            self.stop_daemon()
            self.start_daemon("daemon restart after the upgrade step")
            shutil.rmtree(root, ignore_errors=True)

    def _upgrade_checks(self, root: Path, volumes: Path) -> None:
        lib64 = root / "usr/local/nvidia/lib64"
        library = Path(os.path.realpath(lib64 / "libnvidia-ml.so.1"))
        pid = self.daemon.pid if self.daemon is not None else 0
        before = mapped_files(_read(Path(f"/proc/{pid}/maps")) or "", "libnvidia-ml")
        old_inode = library.stat().st_ino
        problems: list[str] = []
        info = get("/v1.0/gpu/info/json")
        if info[0] != 200 or json.loads(info[1])["Version"]["Driver"] != self.version:
            problems.append(f"gpu/info/json on the copy before: {info[0]} {info[1][:200]}")
        log_path = self.work / "daemon.log"
        rediscoveries = log_path.read_text(errors="replace").count("Driver files changed")
        replaced = 0
        for path in sorted(lib64.iterdir()):  # as a package manager installs: new file, rename
            if path.is_symlink() or not path.is_file() or f".so.{self.version}" not in path.name:
                continue
            new = path.with_name(f".{path.name}.new")
            shutil.copy2(path, new)
            os.replace(new, path)
            replaced += 1
        sh("ldconfig", "-X", "-r", str(root), check=True)
        proc = root / "proc/driver/nvidia/version"
        fresh = proc.with_name(".version.new")
        fresh.write_text(proc.read_text())
        os.replace(fresh, proc)
        swapped = time.monotonic()
        while time.monotonic() - swapped < 30:
            if log_path.read_text(errors="replace").count("Driver files changed") > rediscoveries:
                break
            time.sleep(0.1)
        else:
            problems.append("no 'Driver files changed' in the daemon's log within 30 s")
        self.report.timings["reinstall seen and NVML reloaded (watcher, 5 s period)"] = (
            f"{(time.monotonic() - swapped) * 1000:.0f} ms")
        new_inode = library.stat().st_ino
        after = mapped_files(_read(Path(f"/proc/{pid}/maps")) or "", "libnvidia-ml")
        problems += compare_reload(before, after, old_inode, new_inode, str(library))
        info = get("/v1.0/gpu/info/json")
        if info[0] != 200 or json.loads(info[1])["Version"]["Driver"] != self.version:
            problems.append(f"gpu/info/json after the reinstall: {info[0]} {info[1][:200]}")
        wrapper = str(self.venv / "bin/nvidia-docker")
        smi = sh(*run_argv(wrapper, "--rm", "--net=none", IMAGE, "nvidia-smi", "-L"))
        vec = sh(*run_argv(wrapper, "--rm", "--net=none", IMAGE, "vecadd"))
        if smi.returncode != 0 or "GPU 0:" not in smi.stdout or vec.returncode != 0 \
                or "PASS" not in vec.stdout:
            problems.append(f"the volume built after the reinstall: nvidia-smi -L exit "
                            f"{smi.returncode}, vecadd exit {vec.returncode}: "
                            f"{(smi.stderr + vec.stdout + vec.stderr).strip()[-400:]}")
        placed = volumes / "nvidia_driver" / self.version / "lib64" / library.name
        if not placed.is_file() or (placed.stat().st_ino != new_inode
                                    and placed.read_bytes() != library.read_bytes()):
            problems.append(f"{placed} is not the new {library} (inode {new_inode})")
        self.report.add(UPGRADE, not problems, "\n".join(
            [f"{replaced} versioned libraries replaced under {lib64}; NVML mapped before: "
             f"{[(m.inode, m.deleted) for m in before]}, after: "
             f"{[(m.inode, m.deleted) for m in after]} (old inode {old_inode}, new {new_inode})",
             smi.stdout.strip(), vec.stdout.strip(), *problems]))

    def restart_while_running(self) -> None:
        wrapper = str(self.venv / "bin/nvidia-docker")
        name = "nvplugin-proof-hold"
        sh("docker", "rm", "-f", name)
        started = sh(*run_argv(wrapper, "-d", "--name", name, "--net=none",
                               "-e", "VECADD_HOLD_SECONDS=8", IMAGE, "vecadd"))
        time.sleep(2)
        before = _mounts()
        self.stop_daemon()
        self.start_daemon("daemon restart to ready")
        after = _mounts()
        waited = sh("docker", "wait", name, timeout=120).stdout.strip()
        logs = sh("docker", "logs", name).stdout.strip()
        sh("docker", "rm", name)
        released = _mounts()
        ok = (started.returncode == 0 and before and before == after and waited == "0"
              and "Held the GPU" in logs and not released)
        self.report.add("daemon restarted while a GPU container runs", bool(ok),
                        f"mounts before {before}, after restart {after}, after rm {released}; "
                        f"exit {waited}; {logs.splitlines()[-1] if logs else started.stderr}")

    def timings(self) -> None:
        wrapper = str(self.venv / "bin/nvidia-docker")
        ours, plain = [], []
        for _ in range(5):
            start = time.monotonic()
            sh(*run_argv(wrapper, "--rm", "--net=none", IMAGE, "sh", "-c", ":"))
            ours.append(time.monotonic() - start)
            start = time.monotonic()
            sh(*run_argv("docker", "--rm", "--net=none", *self.cli_args, IMAGE, "sh", "-c",
                         ":"))
            plain.append(time.monotonic() - start)
        self.report.timings["nvidia-docker run (median of 5)"] = median_ms(ours)
        self.report.timings["docker run, same arguments (median of 5)"] = median_ms(plain)
        overhead = (sorted(ours)[2] - sorted(plain)[2]) * 1000
        self.report.timings["nvidia-docker run overhead"] = f"{overhead:.0f} ms"
        samples, complete = [], 0
        for _ in range(200):
            start = time.perf_counter()
            status, body = get("/v1.0/gpu/status/json")
            samples.append(time.perf_counter() - start)
            complete += status == 200 and len(json.loads(body)["Devices"]) == self.gpus
        self.status_answers = (len(samples), complete)
        # The GPU count in the label sets a multi-GPU host's figure against a one-GPU host's.
        gpus = f"{self.gpus} GPU{'s' if self.gpus != 1 else ''}"
        for q in (50, 99):
            value = percentile(samples, q) * 1e3
            self.report.timings[f"gpu/status/json p{q} over 200 ({gpus})"] = f"{value:.2f} ms"

    def cleanup(self) -> None:
        for tag in (IMAGE, TOO_NEW_IMAGE):
            sh("docker", "rmi", "-f", tag)
        if self.version:
            sh("docker", "volume", "rm", f"nvidia_driver_{self.version}")
        code = self.stop_daemon()
        if not self.cdi_spec_existed:  # kept at a clean stop by design; the proof's own goes
            CDI_SPEC.unlink(missing_ok=True)
        log = (self.work / "daemon.log").read_text(errors="replace")
        self.report.add("daemon stops cleanly (SIGTERM)", code == 0
                        and "Successfully terminated" in log and not SOCKET.exists(),
                        f"exit {code}; socket {'left behind' if SOCKET.exists() else 'removed'}")
        if self.args.keep_log:
            shutil.copy(self.work / "daemon.log", self.args.keep_log)
        shutil.rmtree(self.work, ignore_errors=True)

    def page_live(self) -> None:
        """The page while vecadd holds GPU 0: its files, what its stream sends (saved to
        --page-dir), checked against gpu/status/json and nvidia-smi; a screenshot where a
        chromium is at hand (none on the GPU host: there the saved stream is the record)."""
        out = Path(self.args.page_dir) if self.args.page_dir else self.work / "page"
        out.mkdir(parents=True, exist_ok=True)
        name = "nvplugin-proof-page"
        sh("docker", "rm", "-f", name)
        held = sh(*run_argv(str(self.venv / "bin/nvidia-docker"), "-d", "--name", name,
                            "--net=none", "-e", "VECADD_HOLD_SECONDS=15", IMAGE, "vecadd"),
                  env={**os.environ, "NV_GPU": "0"})
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and name not in get("/v1.0/gpu/status/json")[1]:
                time.sleep(0.25)  # the context is made and the container named
            html, headers, weight = _fetch_page(out)
            stream = _capture(API + "/page/events", seconds=5)
            (out / "events.txt").write_text(stream)
            status = json.loads(get("/v1.0/gpu/status/json")[1])
            (out / "gpu-status.json").write_text(json.dumps(status, indent=1))
            (out / "state.json").write_text(get("/page/state.json")[1])
            shot = self._page_screenshot(out / "gpu-page.png")
        finally:
            sh("docker", "rm", "-f", name)
        events = parse_events(stream)
        hello = next((data for kind, data in events if kind == "hello"), {})
        samples = [data for kind, data in events if kind == "sample"]
        rows = self._gpu_rows()
        problems = compare_page(hello, samples, status, [r["uuid"] for r in rows], self.version,
                                name)
        if held.returncode != 0:
            problems.insert(0, f"vecadd did not start: {held.stderr.strip()}")
        if "default-src 'none'" not in headers.get("Content-Security-Policy", ""):
            problems.append(f"no Content-Security-Policy on /: {headers}")
        if weight >= PAGE_BUDGET:
            problems.append(f"the page and its assets weigh {weight} bytes (budget {PAGE_BUDGET})")
        external = [u for u in page_assets(html) if "//" in u]
        problems += [f"the page loads {u} from elsewhere" for u in external]
        self.report.add(PAGE, not problems, "\n".join(
            [f"{len(hello.get('inventory', {}).get('gpus', []))} GPU(s) in hello, "
             f"{len(samples)} samples in 5 s, page + assets {weight} bytes; saved in {out}",
             *problems]))
        if shot is None:
            self.report.skip(PAGE_SHOT, "no chromium on this host (set NVP_CHROMIUM); the page's "
                             "HTML, state.json and events.txt are saved instead")
        else:
            self.report.add(PAGE_SHOT, shot.returncode == 0 and (out / "gpu-page.png").is_file(),
                            f"{out / 'gpu-page.png'}: {shot.stderr.strip()[-300:]}")

    def metrics_live(self) -> None:
        """/metrics next to nvidia-smi: every SMI_METRICS field asked alone (a field this
        nvidia-smi lacks is noted, not failed), each GPU's labels, every GPU healthy with its
        NVML events registered, then a CUDA container holding GPU 0 named in /metrics and in
        gpu/status/json by the ID Docker gives it; 50 scrapes timed."""
        status, page = get("/metrics")
        samples = parse_prometheus(page)
        ours = metrics_by_gpu(samples)
        rows = self._gpu_rows()
        detail: list[str] = []
        problems = [] if status == 200 else [f"GET /metrics: {status}"]
        problems += compare_metric_labels(samples, [
            {**row, "name": smi["name"], "driver_version": smi["driver_version"]}
            for row, smi in zip(rows, parse_smi_csv(sh(
                "nvidia-smi", "--query-gpu=name,driver_version", "--format=csv").stdout),
                strict=False)])
        for field, spec in SMI_METRICS.items():
            smi = sh("nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits")
            if smi.returncode != 0:
                detail.append(f"{field}: this nvidia-smi cannot tell ({smi.stdout.strip()})")
                continue
            for index, value in enumerate(smi.stdout.strip().splitlines()):
                lines, wrong = compare_fields({field: value.strip()},
                                              ours.get(str(index), {}), {field: spec})
                detail += [f"GPU {index} {line}" for line in lines]
                problems += [f"GPU {index} {problem}" for problem in wrong]
        health = [s for s in samples if s.name == "nvplugin_gpu_healthy"]
        if len(health) != self.gpus or any(s.value != 1 for s in health):
            problems.append(f"nvplugin_gpu_healthy: {[(s.labels, s.value) for s in health]}")
        log = (self.work / "daemon.log").read_text(errors="replace")
        problems += [line for line in log.splitlines() if "reports no NVML events" in line
                     or "health follows NVML reads only" in line]
        self.report.add(METRICS, not problems, "\n".join(detail + problems))

        name = "nvplugin-proof-metrics"
        sh("docker", "rm", "-f", name)
        held = sh(*run_argv(str(self.venv / "bin/nvidia-docker"), "-d", "--name", name,
                            "--net=none", "-e", "VECADD_HOLD_SECONDS=30", IMAGE, "vecadd"),
                  env={**os.environ, "NV_GPU": "0"})
        try:
            container_id = sh("docker", "inspect", "--format", "{{.Id}}", name).stdout.strip()
            found: dict[str, float] = {}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(found) < 2:
                found = container_samples(parse_prometheus(get("/metrics")[1]), name)
                time.sleep(0.5)  # the context is made, then the engine names the container
            status_doc = json.loads(get("/v1.0/gpu/status/json")[1])
            owners = [p.get("Container") for p in status_doc["Devices"][0]["Processes"] or []]
            apps = sh("nvidia-smi", "--query-compute-apps=pid,gpu_uuid,process_name",
                      "--format=csv,noheader").stdout.strip()
        finally:
            sh("docker", "rm", "-f", name)
        wrong = [] if held.returncode == 0 else [f"vecadd did not start: {held.stderr.strip()}"]
        if found.get("nvplugin_container_gpu_processes") != 1.0 or \
                not found.get("nvplugin_container_gpu_memory_used_bytes"):
            wrong.append(f"/metrics for {name}: {found}")
        wanted = {"ID": container_id, "Name": name, "Runtime": "docker"}
        if wanted not in owners:
            wrong.append(f"gpu/status/json GPU 0 processes' containers: {owners}, wanted {wanted}")
        self.report.add(METRICS_CONTAINER, not wrong, "\n".join(
            [f"/metrics: {found}", f"gpu/status/json: {owners}", f"nvidia-smi: {apps}",
             *wrong]))
        samples_s = []
        for _ in range(50):
            began = time.perf_counter()
            get("/metrics")
            samples_s.append(time.perf_counter() - began)
        gpus = f"{self.gpus} GPU{'s' if self.gpus != 1 else ''}"
        self.report.timings[f"/metrics p50 over 50 ({gpus})"] = \
            f"{percentile(samples_s, 50) * 1e3:.2f} ms"

    def _page_screenshot(self, path: Path) -> subprocess.CompletedProcess[str] | None:
        chromium = os.environ.get("NVP_CHROMIUM") or shutil.which("chromium") \
            or shutil.which("chromium-browser")
        if chromium is None:
            return None
        profile = tempfile.mkdtemp(prefix="nvplugin-proof-chromium-")
        try:
            return sh(chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                      "--window-size=1280,2400", "--timeout=4000",
                      f"--screenshot={path}", API + "/", timeout=120)
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    def lean_start_up(self) -> None:
        """Issue 18: start-up and memory against floors measured in the same run, and the first
        `nvidia-docker run` after a start against later ones. The benches start their own
        daemons (the second on Docker's plugin socket), so the proof's own is stopped for them
        and started again after."""
        self.stop_daemon()
        try:
            # The first-run bench first: Docker keeps the first address it resolves for the
            # plugin's name, and the start-up bench's daemons publish a spec file elsewhere.
            first_run = sh(sys.executable, str(REPO / "bench/bench_first_run.py"),
                           "--driver-root", "/", "--runs", "3", "--drop-caches", "--parts",
                           timeout=1800)
            start_up = sh(sys.executable, str(REPO / "bench/bench_startup.py"), "--driver-root",
                          "/", "--runs", "15", "--requests", "10000", timeout=1800)
        finally:
            self.start_daemon("daemon start to ready (after the issue 18 benches)")
        for name, result, problems_of in (
                (LEAN_START_UP, start_up, start_up_problems),
                (LEAN_FIRST_RUN, first_run, first_run_problems)):
            figures = bench_summary(result.stdout)
            if figures is None:
                self.report.add(name, False, f"no SUMMARY line (exit {result.returncode}):\n"
                                f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
                continue
            for key, value in figures.items():
                self.report.timings[f"issue 18: {key}"] = f"{value:g}"
            problems = problems_of(figures)
            self.report.add(name, not problems, "\n".join([result.stdout.strip(), *problems]))

    def steps(self) -> tuple[Callable[[], Any], ...]:
        return (self.install, self.start_daemon, self.check_info, self.check_smi_fields,
                self.check_cuda_sizes, self.check_affinity, self.check_identity,
                self.check_topology, self.check_list,
                self.create_volume, self.build_image, self.run_ways,
                self.page_live, self.metrics_live, self.selection_and_refusal, self.isolation,
                self.concurrent,
                self.cdi_podman, self.old_volumes, self.driver_upgrade,
                self.restart_while_running, self.lean_start_up, self.timings,
                self.status_all_gpus)

    def run(self) -> int:
        listed = sh("nvidia-smi", "--query-gpu=index", "--format=csv,noheader")
        self.gpus = count_gpus(listed.stdout)
        try:
            run_steps(self.report, select_steps(self.steps(), self.args.only), self.gpus)
        finally:
            self.cleanup()
        summary = format_summary(self.report)
        print(summary)
        if self.args.report:
            Path(self.args.report).write_text(summary + "\n")
        return 0 if self.report.ok else 1


SET_UP = ("install", "start_daemon")


def select_steps(steps: Sequence[Callable[[], Any]], only: str | None,
                 ) -> tuple[Callable[[], Any], ...]:
    """Every step, or (--only a,b) the set-up steps and those named, in the proof's order: a
    failed step re-run within a device lease. ValueError names a step the proof has not."""
    if not only:
        return tuple(steps)
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    known = {step.__name__ for step in steps}
    if wanted - known:
        raise ValueError(f"no such step: {', '.join(sorted(wanted - known))}; the steps are "
                         f"{', '.join(step.__name__ for step in steps)}")
    return tuple(s for s in steps if s.__name__ in wanted or s.__name__ in SET_UP)


def run_steps(report: Report, steps: Sequence[Callable[[], Any]], gpu_count: int) -> None:
    """Runs each step, or reports its lines as SKIP where the host has too few GPUs for it."""
    for step in steps:
        reason = skip_reason(getattr(step, "needs_gpus", 1), gpu_count)
        if reason is not None:
            for name in getattr(step, "step_names", (step.__name__,)):
                report.skip(name, reason)
            continue
        try:
            step()
        except Exception as err:  # one broken step must not hide the others' results
            report.add(step.__name__, False, f"{type(err).__name__}: {err}")


def _fetch_page(out: Path) -> tuple[str, dict[str, str], int]:
    """GET / and every asset it loads, saved under `out`; (HTML, its headers, total bytes)."""
    with urllib.request.urlopen(API + "/", timeout=10) as response:
        body, headers = response.read(), dict(response.headers)
    (out / "page.html").write_bytes(body)
    html, weight = body.decode(), len(body)
    for name in page_assets(html):
        with urllib.request.urlopen(f"{API}/page/assets/{name}", timeout=10) as response:
            weight += len(response.read())
    return html, headers, weight


def _capture(url: str, seconds: float) -> str:
    """What an event stream sends in `seconds` (the stream itself never ends)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds
    with urllib.request.urlopen(url, timeout=seconds + 5) as response:
        while time.monotonic() < deadline:
            chunk = response.read1(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


# A process making the daemon's NVML calls, printing how many /dev/nvidia-uvm handles it holds.
NVML_ONLY_UVM = (
    "import os, pynvml\n"
    "pynvml.nvmlInit(); pynvml.nvmlSystemGetCudaDriverVersion()\n"
    "s = pynvml.nvmlEventSetCreate()\n"
    "for i in range(pynvml.nvmlDeviceGetCount()):\n"
    "    h = pynvml.nvmlDeviceGetHandleByIndex(i)\n"
    "    try: pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlDeviceGetSupportedEventTypes(h), s)\n"
    "    except pynvml.NVMLError: pass\n"
    "fds = [os.readlink(f'/proc/self/fd/{f}') for f in os.listdir('/proc/self/fd')\n"
    "       if os.path.exists(f'/proc/self/fd/{f}')]\n"
    "print(sum(f.startswith('/dev/nvidia-uvm') for f in fds))\n"
)


def _open_files(pid: int) -> list[str]:
    """What the process's file descriptors point at (/proc/<pid>/fd)."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            found.append(os.readlink(fd))
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ldconfig_path(name: str) -> str | None:
    """Where the host's ld.so.cache says `name` is (the first, 64-bit on these hosts)."""
    for line in sh("ldconfig", "-p").stdout.splitlines():
        left, _, path = line.partition(" => ")
        if left.strip().startswith(name + " ") and "x86-64" in left:
            return path.strip()
    return None


def _mounts() -> dict[str, Any]:
    """Mount counts the daemon persisted, per volume."""
    try:
        state = json.loads(STATE.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    volumes = state.get("mounts") or {}
    return {name: mounts for name, mounts in volumes.items() if mounts}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m tests.gpu.proof", description=__doc__)
    parser.add_argument("--wheels", help="install dependencies offline from this wheel directory")
    parser.add_argument("--report", help="also write the summary to this file")
    parser.add_argument("--keep-log", help="copy the daemon's log to this file")
    parser.add_argument("--page-dir", help="save the GPU page's HTML, state and stream here")
    parser.add_argument("--only", help="run only these steps (comma-separated method names; "
                        "install and start_daemon always run)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(MULTICAST_OFF)  # inherited by the daemon, docker and every tool started
    if os.geteuid() != 0:
        print("the GPU proof needs root (it starts the daemon with its default paths)")
        return 2
    for tool in ("docker", "nvidia-smi", "nvcc"):
        if shutil.which(tool) is None:
            print(f"the GPU proof needs {tool!r} on PATH")
            return 2
    return Proof(args).run()


if __name__ == "__main__":
    sys.exit(main())
