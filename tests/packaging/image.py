"""Builds the plugin image without a registry or network inside `docker build`.

The engine in CI runs with `--bridge=none`, so RUN steps have only a loopback interface: the base
image comes from `debootstrap` + `docker import`, and the wheels are fetched on the host with
`pip download` for the base's Python and installed offline (`--build-arg WHEELS=wheels`).
The rootfs tarball and the dependency wheels are cached under /var/cache/nvplugin-ci.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("NVPLUGIN_CI_CACHE", "/var/cache/nvplugin-ci"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv")
BASE_TAG = f"nvplugin-ci/{SUITE}-python3:1"
# What a minbase rootfs carries that a daemon image does not need.
_TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
         "usr/share/lintian", "var/lib/apt/lists", "var/cache/apt", "var/log")


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-3000:]}"
                           f"\n{done.stderr[-3000:]}")
    return done


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def base_rootfs_tar(debootstrap: str) -> Path:
    """A trimmed Debian minbase with Python, as a tarball (cached)."""
    tar = CACHE / f"{SUITE}-{'-'.join(BASE_PACKAGES)}.tar"
    if tar.exists():
        return tar
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = CACHE / f"rootfs.tmp-{os.getpid()}"
    shutil.rmtree(rootfs, ignore_errors=True)
    try:
        _run([debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE,
              str(rootfs), MIRROR])
        for inner in _TRIM:
            target = rootfs / inner
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        partial = tar.with_suffix(".partial")
        _run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."])
        partial.rename(tar)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return tar


def ensure_base_image(debootstrap: str | None) -> str:
    """The local base image tag; built with debootstrap when neither it nor its tarball exist."""
    if image_exists(BASE_TAG):
        return BASE_TAG
    tar = CACHE / f"{SUITE}-{'-'.join(BASE_PACKAGES)}.tar"
    if not tar.exists():
        if debootstrap is None:
            raise RuntimeError("debootstrap is needed to make the base image")
        tar = base_rootfs_tar(debootstrap)
    _run(["docker", "import", "-c", 'CMD ["/bin/bash"]', str(tar), BASE_TAG])
    return BASE_TAG


def python_of(image: str) -> str:
    """`3.11` for an image whose python3 is 3.11."""
    done = _run(["docker", "run", "--rm", "--net=none", "--entrypoint", "python3", image, "-c",
                 "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"])
    return done.stdout.strip()


def project_dependencies() -> list[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"])


def download_wheels(dest: Path, python: str) -> None:
    """The project's dependencies as binary wheels for CPython `python` on x86_64 (cached)."""
    tag = python.replace(".", "")
    cached = CACHE / f"wheels-cp{tag}"
    cached.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
          "--python-version", python, "--implementation", "cp", "--abi", f"cp{tag}",
          "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
          "--platform", "manylinux_2_28_x86_64", "--platform", "linux_x86_64",
          "-d", str(cached), *project_dependencies()])
    shutil.copytree(cached, dest, dirs_exist_ok=True)


def build_context(dest: Path, python: str) -> Path:
    """The repository's files (tracked and not ignored) plus `wheels/`, built offline-ready."""
    listed = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO).stdout
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    wheels = dest / "wheels"
    download_wheels(wheels, python)
    # Build our wheel from the copy, so the repository gets no build/ or egg-info litter.
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels),
          str(dest)], cwd=dest)
    return dest


def build_image(context: Path, base: str, tag: str) -> str:
    _run(["docker", "build", "--quiet", "--build-arg", f"BASE={base}", "--build-arg",
          "WHEELS=wheels", "-t", tag, str(context)])
    return tag


def image_size(tag: str) -> int:
    return int(_run(["docker", "image", "inspect", "--format", "{{.Size}}", tag]).stdout)
