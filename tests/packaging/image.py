"""Local Debian images and offline wheels, without a registry or network inside containers.

The engine in CI runs with `--bridge=none`, so RUN steps and containers have only a loopback
interface: images come from `debootstrap` + `docker import` (the plugin image's base, and a
Debian with systemd as init for the real-systemd test), and wheels are fetched on the host with
`pip download` for the image's Python and installed offline (`--build-arg WHEELS=wheels`, or
PIP_NO_INDEX/PIP_FIND_LINKS for `scripts/install-and-run`). Rootfs tarballs (one per package
set) and wheels are cached under /var/cache/nvplugin-ci.
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
# A fresh Debian 12 host as install-and-run finds it: systemd as PID 1 (systemd-sysv gives
# /sbin/init), Python with venv, and curl to talk to the socket and the REST API as a user would.
SYSTEMD_PACKAGES = ("systemd", "systemd-sysv", "python3", "python3-venv", "curl")
SYSTEMD_TAG = f"nvplugin-ci/{SUITE}-systemd:1"
# Pip and the build backend: `pip install .` builds nvplugin in an isolated environment.
INSTALL_TOOLS = ("pip",)
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


def rootfs_tar_path(packages: tuple[str, ...]) -> Path:
    return CACHE / f"{SUITE}-{'-'.join(packages)}.tar"


def base_rootfs_tar(debootstrap: str, packages: tuple[str, ...] = BASE_PACKAGES) -> Path:
    """A trimmed Debian minbase with `packages`, as a tarball (cached per package set)."""
    tar = rootfs_tar_path(packages)
    if tar.exists():
        return tar
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = CACHE / f"rootfs.tmp-{os.getpid()}"
    shutil.rmtree(rootfs, ignore_errors=True)
    try:
        _run([debootstrap, "--variant=minbase", f"--include={','.join(packages)}", SUITE,
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


def _ensure_image(tag: str, packages: tuple[str, ...], changes: tuple[str, ...],
                  debootstrap: str | None) -> str:
    """`tag`, imported from the cached rootfs of `packages` (debootstrapped when missing)."""
    if image_exists(tag):
        return tag
    tar = rootfs_tar_path(packages)
    if not tar.exists():
        if debootstrap is None:
            raise RuntimeError(f"debootstrap is needed to make the image {tag}")
        tar = base_rootfs_tar(debootstrap, packages)
    _run(["docker", "import", *(arg for c in changes for arg in ("-c", c)), str(tar), tag])
    return tag


def ensure_base_image(debootstrap: str | None) -> str:
    """The local base image tag; built with debootstrap when neither it nor its tarball exist."""
    return _ensure_image(BASE_TAG, BASE_PACKAGES, ('CMD ["/bin/bash"]',), debootstrap)


def ensure_systemd_image(debootstrap: str | None) -> str:
    """A Debian 12 whose PID 1 is systemd (`container=docker` tells systemd where it runs)."""
    return _ensure_image(SYSTEMD_TAG, SYSTEMD_PACKAGES,
                         ('CMD ["/sbin/init"]', "ENV container=docker"), debootstrap)


def python_of(image: str) -> str:
    """`3.11` for an image whose python3 is 3.11."""
    done = _run(["docker", "run", "--rm", "--net=none", "--entrypoint", "python3", image, "-c",
                 "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"])
    return done.stdout.strip()


def project_dependencies() -> list[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"])


def build_requirements() -> list[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(data["build-system"]["requires"])


def _download(requirements: list[str], python: str, cache_name: str) -> Path:
    """Binary wheels of `requirements` for CPython `python` on x86_64, in CACHE/<name>-cp<tag>."""
    tag = python.replace(".", "")
    cached = CACHE / f"{cache_name}-cp{tag}"
    cached.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
          "--python-version", python, "--implementation", "cp", "--abi", f"cp{tag}",
          "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
          "--platform", "manylinux_2_28_x86_64", "--platform", "linux_x86_64",
          "-d", str(cached), *requirements])
    return cached


def download_wheels(dest: Path, python: str) -> None:
    """The project's dependencies as binary wheels for CPython `python` on x86_64 (cached)."""
    shutil.copytree(_download(project_dependencies(), python, "wheels"), dest,
                    dirs_exist_ok=True)


def download_install_wheels(dest: Path, python: str) -> None:
    """Everything `pip install --upgrade pip` and `pip install .` of a checkout need offline:
    the dependencies, pip, and the build backend (cached)."""
    download_wheels(dest, python)
    shutil.copytree(_download([*INSTALL_TOOLS, *build_requirements()], python, "install-tools"),
                    dest, dirs_exist_ok=True)


def checkout_files() -> list[str]:
    """The repository's files as a clone plus this worktree's changes has them: tracked and
    untracked-but-not-ignored files that exist (no .venv, build/ or egg-info litter)."""
    listed = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO).stdout
    return [name for name in filter(None, listed.split("\0")) if (REPO / name).is_file()]


def checkout_tar() -> bytes:
    """`checkout_files()` as a tar stream (modes kept: the scripts stay executable)."""
    return _run_bytes(["tar", "-C", str(REPO), "--null", "-T", "-", "-cf", "-"],
                      "\0".join(checkout_files()).encode())


def _run_bytes(argv: list[str], stdin: bytes) -> bytes:
    done = subprocess.run(argv, input=stdin, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]!r}")
    return done.stdout


def build_context(dest: Path, python: str) -> Path:
    """The repository's files (tracked and not ignored) plus `wheels/`, built offline-ready."""
    for name in checkout_files():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
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
