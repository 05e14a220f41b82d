"""CDI: how long the daemon takes to make its spec, and what the spec adds to a container start,
each against a baseline measured in the same run.

    python3 bench/bench_cdi.py                  # the real host: driver root /, its NVML, Podman
    python3 bench/bench_cdi.py --fake           # a gcc-built fake 2-GPU host (root: mknod)
    python3 bench/bench_cdi.py --no-podman      # the spec alone

1. Spec generation, from what the daemon already holds (the manifest, the GPU records, the control
   nodes): building the records, validating them, checking every host file, rendering the JSON;
   against re-discovery with remembered ELF facts, the step that precedes every rewrite.
2. Container start: `podman run --rm --network=none IMG sh -c :` plain, with
   `--device nvidia.com/gpu=0` and with `=all`, runs alternating, medians and the difference.
   Each podman runs in a private mount namespace in which a temporary directory holding the spec
   is mounted over /run/cdi, so the host's own spec directories are neither read nor touched.
   The image is the host's /bin/sh and the libraries it needs.

No asserts: figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nvplugin.cdi.build import build_spec  # noqa: E402
from nvplugin.cdi.spec import Spec, validate  # noqa: E402
from nvplugin.cdi.writer import check_host_files  # noqa: E402
from nvplugin.driver import discovery, elfinfo  # noqa: E402
from nvplugin.gpu.service import GpuService  # noqa: E402

KIND = "nvidia.com/gpu"
IMAGE = "localhost/nvplugin-bench/sh:cdi"
ISOLATE = 'mount --bind "$0" /run/cdi && exec podman "$@"'


def measure(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm the page cache and imports once
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def figures(name: str, times: list[float]) -> float:
    ordered = sorted(times)
    median = statistics.median(ordered)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    print(f"  {name:<44} median {median:9.3f} ms   p90 {p90:9.3f} ms   (n={len(times)})")
    return median


async def inputs(driver_root: Path, dev_root: Path) -> tuple:
    gpus = await GpuService.start(driver_root=driver_root, dev_root=dev_root,
                                  nvml_library=discovery.find_nvml_library(driver_root))
    try:
        if not gpus.available:
            raise SystemExit(f"NVML is unavailable: {gpus.reason}")
        inventory = await gpus.inventory()
        nodes = await gpus.control_nodes()
        version = await gpus.driver_version()
    finally:
        await gpus.close()
    return discovery.discover(driver_root, version), inventory.gpus, nodes, version


def spec_generation(driver_root: Path, dev_root: Path, runs: int) -> Spec:
    manifest, gpus, nodes, version = asyncio.run(inputs(driver_root, dev_root))
    host_root = Path("/")

    def build() -> Spec:
        return build_spec(manifest, gpus, nodes, kind=KIND, host_root=str(host_root)).spec

    spec = build()
    print(f"driver {version} under {driver_root}: {len(gpus)} GPU(s), "
          f"{len(manifest.entries)} files, {len(manifest.links)} links -> {len(spec.devices)} "
          f"devices, {len(spec.edits.mounts)} mounts, {len(spec.render())} bytes, "
          f"cdiVersion {spec.version}; {runs} runs each")
    parts = {
        "build the records": figures("build the records", measure(build, runs)),
        "validate": figures("validate", measure(lambda: validate(spec), runs)),
        "check every host file (lstat)": figures(
            "check every host file (lstat)", measure(lambda: check_host_files(spec, host_root),
                                                     runs)),
        "render the JSON": figures("render the JSON", measure(spec.render, runs)),
    }

    def whole() -> None:
        made = build()
        validate(made)
        check_host_files(made, host_root)
        made.render()

    total = figures("whole spec (what each rewrite costs)", measure(whole, runs))
    memo = elfinfo.ElfMemo()
    baseline = figures("baseline: re-discovery, warm ELF facts",
                       measure(lambda: discovery.discover(driver_root, version, memo=memo),
                               runs))
    print(f"  spec / re-discovery: {total / baseline:.2f}x  (parts: "
          + ", ".join(f"{k} {v / total:.0%}" for k, v in parts.items()) + ")")
    return spec


def sh_image() -> bytes:
    """The host's /bin/sh and the shared libraries `ldd` names for it, as a root filesystem."""
    files = [os.path.realpath("/bin/sh")]
    ldd = subprocess.run(["ldd", "/bin/sh"], capture_output=True, text=True)
    for line in ldd.stdout.splitlines():
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0] if words else ""
        if path.startswith("/"):
            files.append(path)
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for directory in ("bin", "dev", "proc", "sys", "tmp", "etc"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(files[0], arcname="bin/sh")
        for path in files[1:]:
            tar.add(os.path.realpath(path), arcname=path.lstrip("/"))
    return data.getvalue()


def container_starts(spec: Spec, starts: int) -> None:
    podman = shutil.which("podman")
    if podman is None:
        print("container start: no podman on PATH, not measured")
        return
    imported = subprocess.run([podman, "import", "--change", 'CMD ["/bin/sh"]', "-", IMAGE],
                              input=sh_image(), capture_output=True)
    if imported.returncode != 0:
        print(f"container start: podman import failed: {imported.stderr.decode()[-300:]}")
        return
    Path("/run/cdi").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as spec_dir:
        (Path(spec_dir) / "nvidia-docker.json").write_bytes(spec.render())
        ways = {"plain podman run": [],
                f"--device {KIND}=0": ["--device", f"{KIND}=0"],
                f"--device {KIND}=all": ["--device", f"{KIND}=all"]}
        times: dict[str, list[float]] = {name: [] for name in ways}
        print(f"container start: {starts} runs each, alternating ({len(spec.edits.mounts)} "
              "mounts in the spec)")
        for _ in range(starts + 1):
            for name, extra in ways.items():
                argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                        ISOLATE, spec_dir, "run", "--rm", "--network=none", *extra, IMAGE,
                        "/bin/sh", "-c", ":"]
                start = time.perf_counter()
                done = subprocess.run(argv, capture_output=True)
                took = (time.perf_counter() - start) * 1000
                if done.returncode != 0:
                    print(f"  {name}: failed: {done.stderr.decode()[-300:]}")
                    return
                times[name].append(took)
    medians = {name: figures(name, t[1:]) for name, t in times.items()}  # the first: warm-up
    plain = medians["plain podman run"]
    for name, median in medians.items():
        if name != "plain podman run":
            print(f"  {name}: +{median - plain:.1f} ms, {median / plain:.2f}x plain")
    subprocess.run([podman, "rmi", "-f", IMAGE], capture_output=True)


def fake_host(tmp: Path) -> Path:
    from tests.fakehost.build import build_fake_host, make_dev_nodes
    from tests.fakenvml.build import gpu, make_config, write_config

    host = build_fake_host(tmp / "host")
    make_dev_nodes(host.root, [0, 1])
    config = write_config(tmp / "fakenvml.json", make_config(
        gpus=[gpu(0), gpu(1)], driver_version=host.version))
    os.environ["FAKE_NVML_CONFIG"] = str(config)
    return host.root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver-root", default="/", help="root holding the driver (default /)")
    parser.add_argument("--runs", type=int, default=50, help="runs per spec measurement")
    parser.add_argument("--starts", type=int, default=10, help="container starts per way")
    parser.add_argument("--fake", action="store_true", help="a gcc-built fake host instead")
    parser.add_argument("--no-podman", action="store_true", help="skip the container starts")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = fake_host(Path(tmp)) if args.fake else Path(args.driver_root)
        spec = spec_generation(root, root, args.runs)
        if not args.no_podman:
            container_starts(spec, args.starts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
