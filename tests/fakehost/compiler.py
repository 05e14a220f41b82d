"""Compile each distinct C object once and keep it in a content-addressed cache directory.

The key is the gcc version, the source text, the flags and the keys of the objects linked in, so
a fake host assembled a second time only copies files. Writes are atomic (temp file + rename),
so concurrent pytest processes sharing the directory never see half a file.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path


def default_cache_dir() -> Path:
    env = os.environ.get("NVPLUGIN_FAKEHOST_CACHE")
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"nvplugin-fakehost-{os.getuid()}"


@cache
def gcc_version() -> str:
    done = subprocess.run(["gcc", "-dumpfullversion", "-dumpversion"], capture_output=True,
                          text=True, check=True)
    return done.stdout.strip()


@cache
def gcc_m32_works() -> bool:
    """True when `gcc -m32` can build a shared library (gcc-multilib installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "probe.c")
        src.write_text("int probe(void) { return 32; }\n")
        done = subprocess.run(["gcc", "-m32", "-shared", "-fPIC", str(src), "-o",
                               str(Path(tmp, "probe.so"))], capture_output=True)
        return done.returncode == 0


class CompileError(RuntimeError):
    pass


class ObjectCache:
    """`build(source, flags, inputs)`: path of the compiled object, built at most once."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.compiled = 0  # how many objects this instance actually compiled (for tests/bench)

    def key(self, source: str, flags: Sequence[str], inputs: Sequence[Path]) -> str:
        digest = hashlib.sha256()
        for part in (gcc_version(), source, "\0".join(flags), "\0".join(p.name for p in inputs)):
            digest.update(part.encode())
            digest.update(b"\x01")
        return digest.hexdigest()[:24]

    def build(self, source: str, flags: Sequence[str], inputs: Sequence[Path] = (),
              name: str = "obj") -> Path:
        out = self.directory / f"{name}-{self.key(source, flags, inputs)}"
        if out.exists():
            return out
        with tempfile.TemporaryDirectory(dir=self.directory) as tmp:
            src = Path(tmp, f"{name}.c")
            src.write_text(source)
            obj = Path(tmp, name)
            argv = ["gcc", *flags, str(src), *(str(p) for p in inputs), "-o", str(obj)]
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                raise CompileError(f"{' '.join(argv)} failed:\n{done.stderr}")
            os.replace(obj, out)
        with self._lock:
            self.compiled += 1
        return out
