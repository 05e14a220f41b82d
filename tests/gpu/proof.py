"""End-to-end proof on a host with an NVIDIA driver and a Docker Engine.

    python3 -m tests.gpu.proof [--wheels DIR] [--report FILE]

Installs nvplugin in a fresh virtual environment, starts the daemon with its default flags, and
checks what users rely on, printing PASS/FAIL per step and a summary table. Needs root, `docker`,
`nvidia-smi`, `nvcc` and `curl`. Leaves the host as it found it (daemon stopped, volume removed).
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

from tests.gpu.report import (
    SMI_FIELDS,
    SMI_LIVE,
    SMI_STATIC,
    Report,
    compare_fields,
    compare_info,
    format_summary,
    ldconfig_driver_libraries,
    ldd_paths,
    median_ms,
    missing_files,
    parse_smi_csv,
    percentile,
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


def sh(*cmd: str, env: dict[str, str] | None = None, check: bool = False,
       timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}: {result.stderr.strip()}")
    return result


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

    def start_daemon(self, label: str = "daemon start to ready") -> float:
        log = open(self.work / "daemon.log", "ab")  # noqa: SIM115 - handed to the child
        start = time.monotonic()
        self.daemon = subprocess.Popen([str(self.venv / "bin/nvidia-docker-plugin")],
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
        size = sh("docker", "image", "inspect", "-f", "{{.Size}}", IMAGE).stdout.strip()
        self.report.add("build the minimal CUDA image", ok,
                        f"{len(libs)} host libraries + vecadd (cudart static); {size} bytes")

    def run_ways(self) -> None:
        no_help = sh("docker", "run", "--rm", "--net=none", IMAGE, "vecadd")
        self.report.add("without nvplugin the CUDA program fails (the 'before')",
                        no_help.returncode != 0 and "insufficient" in no_help.stdout,
                        no_help.stdout.strip() or no_help.stderr.strip())
        status, cli = get("/v1.0/docker/cli")
        self.cli_args = cli.split()
        volume = f"nvidia_driver_{self.version}"
        devices = [a for a in self.cli_args if a.startswith("--device=")]
        ways = {
            "nvidia-docker run": [str(self.venv / "bin/nvidia-docker"), "run", "--rm",
                                  "--net=none", IMAGE],
            "docker run $(curl .../docker/cli)": ["docker", "run", "--rm", "--net=none",
                                                  *self.cli_args, IMAGE],
            "docker run --volume-driver -v ... --device": [
                "docker", "run", "--rm", "--net=none", "--volume-driver=nvidia-docker",
                f"-v={volume}:/usr/local/nvidia:ro", *devices, IMAGE],
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
            run = sh(wrapper, "run", "--rm", "--net=none", IMAGE, "nvidia-smi", "-L", env=env)
            self.report.add(f"NV_GPU={value} selects its GPU",
                            run.returncode == 0 and uuid in run.stdout,
                            (run.stdout + run.stderr).strip())
        bad = sh(wrapper, "run", "--rm", "--net=none", IMAGE, "nvidia-smi",
                 env={**os.environ, "NV_GPU": "7"})
        self.report.add("NV_GPU=7 is refused", bad.returncode == 1
                        and "Error: invalid device: 7" in bad.stderr, bad.stderr.strip())
        cuda = self.report.facts.get("cuda", "?")
        refused = sh(wrapper, "run", "--rm", "--net=none", TOO_NEW_IMAGE, "vecadd")
        expected = f"unsupported CUDA version: driver {cuda} < image 99.0"
        self.report.add("com.nvidia.cuda.version=99.0 is refused",
                        refused.returncode == 1 and expected in refused.stderr,
                        refused.stderr.strip())

    def restart_while_running(self) -> None:
        wrapper = str(self.venv / "bin/nvidia-docker")
        name = "nvplugin-proof-hold"
        sh("docker", "rm", "-f", name)
        started = sh(wrapper, "run", "-d", "--name", name, "--net=none",
                     "-e", "VECADD_HOLD_SECONDS=8", IMAGE, "vecadd")
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
            sh(wrapper, "run", "--rm", "--net=none", IMAGE, "sh", "-c", ":")
            ours.append(time.monotonic() - start)
            start = time.monotonic()
            sh("docker", "run", "--rm", "--net=none", *self.cli_args, IMAGE, "sh", "-c", ":")
            plain.append(time.monotonic() - start)
        self.report.timings["nvidia-docker run (median of 5)"] = median_ms(ours)
        self.report.timings["docker run, same arguments (median of 5)"] = median_ms(plain)
        overhead = (sorted(ours)[2] - sorted(plain)[2]) * 1000
        self.report.timings["nvidia-docker run overhead"] = f"{overhead:.0f} ms"
        samples = []
        for _ in range(200):
            start = time.perf_counter()
            get("/v1.0/gpu/status/json")
            samples.append(time.perf_counter() - start)
        for q in (50, 99):
            value = percentile(samples, q) * 1e3
            self.report.timings[f"gpu/status/json p{q} over 200"] = f"{value:.2f} ms"

    def cleanup(self) -> None:
        for tag in (IMAGE, TOO_NEW_IMAGE):
            sh("docker", "rmi", "-f", tag)
        if self.version:
            sh("docker", "volume", "rm", f"nvidia_driver_{self.version}")
        code = self.stop_daemon()
        log = (self.work / "daemon.log").read_text(errors="replace")
        self.report.add("daemon stops cleanly (SIGTERM)", code == 0
                        and "Successfully terminated" in log and not SOCKET.exists(),
                        f"exit {code}; socket {'left behind' if SOCKET.exists() else 'removed'}")
        if self.args.keep_log:
            shutil.copy(self.work / "daemon.log", self.args.keep_log)
        shutil.rmtree(self.work, ignore_errors=True)

    def run(self) -> int:
        steps = (self.install, self.start_daemon, self.check_info, self.check_smi_fields,
                 self.check_list,
                 self.create_volume, self.build_image, self.run_ways,
                 self.selection_and_refusal, self.restart_while_running, self.timings)
        try:
            for step in steps:
                try:
                    step()
                except Exception as err:  # one broken step must not hide the others' results
                    self.report.add(step.__name__, False, f"{type(err).__name__}: {err}")
        finally:
            self.cleanup()
        summary = format_summary(self.report)
        print(summary)
        if self.args.report:
            Path(self.args.report).write_text(summary + "\n")
        return 0 if self.report.ok else 1


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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
