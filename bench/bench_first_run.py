"""The first `nvidia-docker run` after the daemon starts, against the runs after it.

    python3 bench/bench_first_run.py [--driver-root ROOT] [--runs 3] [--later 5] [--drop-caches]

Starts the daemon on Docker's plugin socket (a fresh volumes directory each time, so the driver's
volume has to be built again), waits until it is ready and idle, then times `nvidia-docker run
--rm --net=none IMAGE sh -c :` once, and --later times more. Three ways:

* prebuild (the default): the volume is built in the background after start-up; the first run
  comes once that build has finished, as a user's first container after a boot would;
* --no-prebuild: the same wait, then the first run builds the volume itself (the issue's 4.5 s
  on the H200, where the driver is on a read-only squashfs and every file is copied);
* prebuild, run at once: the first run right after the daemon answers, joining the build in
  progress (what is left of it is the wait).

--parts then splits the first run: after one more start (prebuild, build done), each part of
an `nvidia-docker run` is timed on its own, first and again, in the order a run does them:
`docker/cli` from the daemon, the volume's create through Docker, a plain `docker run` of the
same image (Docker's own cost), the same with only the GPU devices, with only the volume, and
the whole `nvidia-docker run`; a part whose first time is above its later ones is where the
first run's extra goes.

With --drop-caches the page cache is dropped before each start (a cold driver filesystem, as
after a boot; needs root and affects the whole host). Without --driver-root, a fake driver host
is built (root, gcc). Needs the Docker Engine. The image is made from this host's /bin/sh and its
libraries, labelled for the driver volume. Prints medians; asserts nothing. Target (issue 18):
the first run costs no more than the later ones.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_cdi import sh_image  # noqa: E402
from bench_rest import build_host  # noqa: E402
from bench_startup import Daemon, bench_env, e2e_lock, measure_start, spawn  # noqa: E402
from bench_wrapper import timed  # noqa: E402

IMAGE = "nvplugin-bench/first-run:sh"
DOCKER_PLUGIN_DIR = Path("/run/docker/plugins")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def ensure_image() -> None:
    """The host's /bin/sh and its libraries, imported as a labelled image (no registry)."""
    if sh("docker", "image", "inspect", IMAGE, check=False).returncode == 0:
        return
    subprocess.run(["docker", "import", "-c", "LABEL com.nvidia.volumes.needed=nvidia_driver",
                    "-", IMAGE], input=sh_image(), check=True, capture_output=True)


def wrapper(port: int) -> tuple[list[str], dict[str, str]]:
    env = {**bench_env(), "NV_HOST": f"http://127.0.0.1:{port}"}
    env.pop("NV_GPU", None)
    return [sys.executable, "-m", "nvplugin.wrapper", "run", "--rm", "--net=none", IMAGE,
            "/bin/sh", "-c", ":"], env


def timed_run(port: int) -> float:
    return timed(*wrapper(port))


def drop_page_cache() -> None:
    """A cold driver filesystem, as after a boot (root; the whole host)."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def wait_for_build(daemon: Daemon, timeout: float = 600) -> float:
    """Seconds until the daemon logs its background build (0 when it does not build)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if re.search(r"Built volume \S+ from \d+ files in \d+ ms in the background", daemon.log()):
            return time.monotonic() - started
        if daemon.proc.poll() is not None:
            raise SystemExit(f"the daemon exited:\n{daemon.log()[-2000:]}")
        time.sleep(0.05)
    raise SystemExit("the background build did not finish")


def one(root: Path, work: Path, env: dict[str, str], mode: str, later: int, settle: float,
        drop_caches: bool) -> tuple[float, list[float], float]:
    if drop_caches:
        drop_page_cache()
    extra = ("--no-prebuild",) if mode == "no-prebuild" else ()
    daemon = spawn(root, work, env, log_level="info", extra=extra,
                   socket_dir=DOCKER_PLUGIN_DIR)
    try:
        measure_start(daemon)
        waited = 0.0
        if mode == "prebuild":
            waited = wait_for_build(daemon)
        elif mode == "no-prebuild":
            time.sleep(settle)  # as long as a prebuild took: the same idle host
            waited = settle
        first = timed_run(daemon.port)
        runs = [timed_run(daemon.port) for _ in range(later)]
        return first, runs, waited
    finally:
        remove_volume(daemon)
        daemon.stop()


def timed_get(url: str) -> float:
    started = time.perf_counter()
    urllib.request.urlopen(url, timeout=60).read()
    return time.perf_counter() - started


def parts(root: Path, work: Path, env: dict[str, str], later: int, drop_caches: bool) -> None:
    """Each part of the first run after a start, timed first and then `later` more times."""
    if drop_caches:
        drop_page_cache()
    daemon = spawn(root, work, env, log_level="info", socket_dir=DOCKER_PLUGIN_DIR)
    try:
        measure_start(daemon)
        wait_for_build(daemon)
        cli = json.loads(urllib.request.urlopen(f"{daemon.url}/v1.0/docker/cli/json",
                                                timeout=60).read())
        devices = [f"--device={d}" for d in cli["Devices"]]
        volume = cli["Volumes"][0]
        name = volume.split(":")[0]
        plain = ["docker", "run", "--rm", "--net=none", IMAGE, "/bin/sh", "-c", ":"]
        with_devices = plain[:4] + devices + plain[4:]
        with_volume = [*plain[:4], f"--volume={volume}", *plain[4:]]
        argv, wrapper_env = wrapper(daemon.port)
        steps: list[tuple[str, Callable[[], float]]] = [
            ("docker/cli from the daemon", lambda: timed_get(f"{daemon.url}/v1.0/docker/cli")),
            ("docker volume create (the plugin's Create)",
             lambda: timed(["docker", "volume", "create", "-d", "nvidia-docker", name], env)),
            ("docker run, plain", lambda: timed(plain, env)),
            ("docker run --device (the GPU's nodes)", lambda: timed(with_devices, env)),
            ("docker run --volume (the driver volume)", lambda: timed(with_volume, env)),
            ("nvidia-docker run", lambda: timed(argv, wrapper_env)),
        ]
        rows = []
        for label, step in steps:
            first = step()
            again = statistics.median(step() for _ in range(later))
            rows.append((label, first, again))
    finally:
        remove_volume(daemon)
        daemon.stop()
    print(f"\nthe first run's parts, after one more start (build done; page cache "
          f"{'dropped' if drop_caches else 'warm'}); each part first, then the median of "
          f"{later} more\n")
    print(f"{'':44} {'first':>9} {'later':>9} {'first - later':>14}")
    for label, first, again in rows:
        print(f"{label:<44} {first * 1000:6.0f} ms {again * 1000:6.0f} ms "
              f"{(first - again) * 1000:+11.0f} ms")


def forget_volume(root: Path, work: Path, env: dict[str, str]) -> None:
    """Docker may remember the volume from an earlier daemon (another volumes directory): it
    is forgotten before the first start, through a daemon that builds nothing, so each start's
    own build is what its first run finds, or makes. (Removed after a start, it would remove
    the volume that start's prebuild may already have made.) Each start removes it again
    before it stops."""
    daemon = spawn(root, work, env, log_level="info", extra=("--no-prebuild",),
                   socket_dir=DOCKER_PLUGIN_DIR)
    try:
        measure_start(daemon)
        remove_volume(daemon)
    finally:
        daemon.stop()


def remove_volume(daemon: Daemon) -> None:
    answer = urllib.request.urlopen(f"{daemon.url}/v1.0/gpu/info/json", timeout=60).read()
    version = json.loads(answer)["Version"]["Driver"]
    sh("docker", "volume", "rm", "-f", f"nvidia_driver_{version}", check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver-root", type=Path)
    parser.add_argument("--runs", type=int, default=3, help="daemon starts per way")
    parser.add_argument("--later", type=int, default=5, help="runs after the first, per start")
    parser.add_argument("--drop-caches", action="store_true")
    parser.add_argument("--parts", action="store_true", help="then split the first run")
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nvplugin-bench-first-"))
    root = opts.driver_root or build_host(work)
    env = bench_env()
    ensure_image()
    results: dict[str, list[tuple[float, list[float], float]]] = {}
    with e2e_lock():
        forget_volume(root, work, env)
        settle = 0.0
        for _ in range(opts.runs):  # interleaved: the host's load hits every way alike
            for mode in ("prebuild", "no-prebuild", "prebuild, run at once"):
                result = one(root, work, env, mode, opts.later, settle, opts.drop_caches)
                if mode == "prebuild":
                    settle = result[2]
                results.setdefault(mode, []).append(result)
    print(f"driver root {root}; {opts.runs} daemon starts per way, {opts.later} later runs "
          f"each; page cache {'dropped before each start' if opts.drop_caches else 'warm'}\n")
    print(f"{'':24} {'first run':>12} {'later runs':>12} {'first - later':>14}")
    summary: dict[str, float] = {}
    for mode, rows in results.items():
        first = statistics.median(r[0] for r in rows) * 1000
        later = statistics.median(x for r in rows for x in r[1]) * 1000
        print(f"{mode:<24} {first:9.0f} ms {later:9.0f} ms {first - later:+11.0f} ms")
        key = re.sub(r"\W+", "_", mode).strip("_")
        summary[f"{key}_first_ms"], summary[f"{key}_later_ms"] = first, later
    waits = [r[2] for r in results["prebuild"]]
    summary["build_ms"] = statistics.median(waits) * 1000
    print(f"\nthe background build took {summary['build_ms']:.0f} ms after the daemon answered "
          "(median); the first run came after it")
    if opts.parts:
        with e2e_lock():
            parts(root, work, env, opts.later, opts.drop_caches)
    print("\nSUMMARY " + json.dumps({k: round(v, 1) for k, v in summary.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
