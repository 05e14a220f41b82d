"""What `nvidia-docker` costs on top of `docker`, measured in the same run (hyperfine-style).

    python3 bench/bench_wrapper.py [--runs 15] [--nv-host URL] [--image TAG]

- rewrite overhead: `nvidia-docker run --rm --net=none IMG /bin/sh -c :` against `docker run`
  with the very arguments the wrapper would exec (devices and driver volume included), so the
  difference is the wrapper alone: interpreter start, imports, one image inspect and one volume
  create (over `nvplugin.engine.transport`, no docker SDK), two REST calls to the daemon;
- pass-through overhead: `nvidia-docker ps` against `docker ps`.

Needs the Docker Engine and a plugin daemon at --nv-host (default $NV_HOST or localhost:3476).
Without a daemon, `--stub` serves the daemon's two JSON answers from this process (volume driver
`local`, host nodes as devices), which measures the wrapper but not the plugin's volume path.
Runs alternate between the two commands; medians are printed with ratios. No asserts: targets are
< 150 ms rewrite overhead and < 60 ms pass-through overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_cdi import sh_image  # noqa: E402

from nvplugin.wrapper import nvidia_docker  # noqa: E402

IMAGE = "nvplugin-bench/wrapper:sh"
STUB_VOLUME = "nvbench_driver_0.0"


def wrapper_command() -> list[str]:
    """The console script if installed, else what it runs (cheaper than `-m`, which adds runpy)."""
    script = shutil.which("nvidia-docker")
    if script:
        return [script]
    return [sys.executable, "-c",
            "import sys; from nvplugin.wrapper.nvidia_docker import main; sys.exit(main())"]


def ensure_image(tag: str) -> None:
    """A labelled image of the host's /bin/sh made with `docker import` (no registry needed;
    GPU hosts have no busybox)."""
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
        return
    subprocess.run(
        ["docker", "import", "-c", "LABEL com.nvidia.volumes.needed=nvidia_driver",
         "-c", 'CMD ["/bin/sh"]', "-", tag],
        input=sh_image(), check=True, capture_output=True,
    )  # fmt: skip


def start_stub() -> tuple[ThreadingHTTPServer, str]:
    answers = {
        "/v1.0/gpu/info/json": {"Version": {"Driver": "0.0", "CUDA": "13.0"}, "Devices": []},
        "/v1.0/docker/cli/json": {
            "VolumeDriver": "local",
            "Volumes": [f"{STUB_VOLUME}:/usr/local/nvidia:ro"],
            "Devices": ["/dev/null:/dev/nvidiactl", "/dev/zero:/dev/nvidia0"],
        },
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are two writes: without this, Nagle + delayed ACK stall 40 ms.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            data = (json.dumps(answers[self.path.partition("?")[0]]) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v1.0/gpu/info/json", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def final_argv(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The command line the wrapper would exec (it also creates the volume, as a real run does)."""
    seen: list[list[str]] = []
    code = nvidia_docker.main(list(argv), env, lambda _f, args, _e: seen.append(list(args)))
    if code != 0 or not seen:
        raise SystemExit(f"the wrapper failed (exit {code}) for {' '.join(argv)}")
    return seen[0]


def keep_bytecode(env: dict[str, str], pycache: Path) -> None:
    """Make `env` keep bytecode in `pycache` for every module, ours and the dependencies', as an
    installed package has it (pip compiles at install): on a host with PYTHONDONTWRITEBYTECODE=1
    (the GPU host sets it) and packages installed without bytecode, every interpreter would
    compile them at every start (pynvml alone, ~45 ms there)."""
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)


def timed(cmd: Sequence[str], env: Mapping[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.decode().strip()}")
    return elapsed


def compare(name: str, ours: Sequence[str], base: Sequence[str], env: Mapping[str, str],
            runs: int) -> None:  # fmt: skip
    timed(ours, env), timed(base, env)  # warm-up: page cache, image, volume
    a: list[float] = []
    b: list[float] = []
    for _ in range(runs):
        a.append(timed(ours, env))
        b.append(timed(base, env))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{name}")
    print(f"  nvidia-docker  median {ma * 1000:8.1f} ms  (min {min(a) * 1000:.1f}, n={runs})")
    print(f"  docker         median {mb * 1000:8.1f} ms  (min {min(b) * 1000:.1f}, n={runs})")
    print(f"  overhead       {(ma - mb) * 1000:8.1f} ms  ratio {ma / mb:.2f}x  (medians)")
    # On a shared, loaded host the minimums are the steadier figure.
    lo_a, lo_b = min(a), min(b)
    print(f"  overhead       {(lo_a - lo_b) * 1000:8.1f} ms  ratio {lo_a / lo_b:.2f}x  (mins)")


def import_cost(env: Mapping[str, str]) -> None:
    wrapper = "nvplugin.wrapper.nvidia_docker"
    rewrite_path = f"import {wrapper}, nvplugin.engine.client, nvplugin.wrapper.cuda_compat"
    for label, code in (("python3 -c pass", "pass"),
                        (f"import {wrapper} (pass-through)", f"import {wrapper}"),
                        ("rewrite-path imports", rewrite_path),
                        ("import docker (pull, ssh:// only)", "import docker")):  # fmt: skip
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", code], env=dict(env),
                                  capture_output=True)
            samples.append(time.perf_counter() - started)
        if done.returncode != 0:  # the docker SDK is optional (GPU hosts may lack it)
            print(f"  {label:38s} not measured: {done.stderr.decode().strip().splitlines()[-1]}")
            continue
        print(f"  {label:38s} median {statistics.median(samples) * 1000:7.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--nv-host", default=os.environ.get("NV_HOST", "http://localhost:3476"))
    parser.add_argument("--image", default=IMAGE)
    parser.add_argument("--stub", action="store_true", help="serve the daemon's JSON in-process")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("NV_GPU", None)
    # Written by the warm-up run: no installed wrapper compiles its modules at every run.
    keep_bytecode(env, Path(tempfile.mkdtemp(prefix="nvplugin-bench-wrapper-")))
    url = args.nv_host
    if args.stub or not reachable(url):
        if not args.stub:
            print(f"no plugin daemon at {url}: using the in-process stub (see --help)")
        _, url = start_stub()
    env["NV_HOST"] = url
    ensure_image(args.image)

    run_args = ["run", "--rm", "--net=none", args.image, "/bin/sh", "-c", ":"]
    final = final_argv(run_args, env)
    print(f"daemon {url}; wrapper command: {' '.join(wrapper_command())}")
    print(f"final docker argv: {' '.join(final)}\n")
    compare("rewrite (run of a GPU image)", [*wrapper_command(), *run_args], final, env, args.runs)
    compare("pass-through (ps)", [*wrapper_command(), "ps"], ["docker", "ps"], env, args.runs)
    print("\nstart-up pieces (each a fresh interpreter; the first is in both overheads above)")
    import_cost(env)
    if url != args.nv_host:
        subprocess.run(["docker", "volume", "rm", "-f", STUB_VOLUME], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
