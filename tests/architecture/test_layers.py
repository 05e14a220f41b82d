"""The package's layers import downward only: each subpackage may import the parts listed in
ALLOWED (and itself); `nvplugin/__init__` and the two `__main__` modules are entry glue.

Imports are read with `ast`, lazy ones inside functions included, so a layer cannot be crossed
by moving an import into a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "nvplugin"

# The layers, lowest first. A part may import itself and what is listed here, nothing else.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "driver": {"core"},
    "gpu": {"core", "driver"},
    "engine": {"core"},
    "volumes": {"core", "driver"},
    "observe": {"core", "driver", "gpu", "engine"},
    "cdi": {"core", "driver", "gpu"},
    "api": {"core", "driver", "gpu", "volumes", "observe", "cdi"},
    "wrapper": {"core", "engine"},
    "web": {"core", "driver", "gpu", "volumes", "observe", "cdi"},
    "cli": {"core", "driver", "gpu", "volumes", "engine", "observe", "cdi", "api", "web"},
}
def _part(module: str) -> str | None:
    parts = module.split(".")
    # nvplugin.__version__ and other names of the package root belong to no part
    return parts[1] if len(parts) > 1 and parts[0] == "nvplugin" and parts[1] in ALLOWED else None


def _imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file under `root`, nested ones included."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from nvplugin import x` names the part x
            if module == "nvplugin":
                found += [(node.lineno, f"nvplugin.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_lives_in_a_known_part():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert loose == [], f"modules outside a subpackage: {loose}"
    parts = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert parts == set(ALLOWED), "a new subpackage needs its place in ALLOWED"
    for part in parts:
        doc = ast.get_docstring(ast.parse((PACKAGE / part / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), f"{part}/__init__.py must say what it may import"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_downward_only(path: Path):
    rel = path.relative_to(PACKAGE)
    if len(rel.parts) == 1:  # nvplugin/__init__.py, nvplugin/__main__.py: entry glue
        return
    part = rel.parts[0]
    crossing = [
        f"line {line}: {module}"
        for line, module in _imports(path)
        if (target := _part(module)) is not None and target != part
        and target not in ALLOWED[part]
    ]
    assert crossing == [], f"{rel} ({part}) may import only {sorted(ALLOWED[part])}: {crossing}"


def test_the_checker_sees_a_crossing(tmp_path: Path):
    """The walk finds plain, from-, relative and nested imports (so the test above can fail)."""
    fake = tmp_path / "nvplugin" / "driver" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("import nvplugin.api.rest_app\nfrom nvplugin import gpu\n"
                    "from ..volumes import store\ndef f():\n    from nvplugin.cli import main\n")
    targets = {_part(m) for _line, m in _imports(fake, tmp_path / "nvplugin")}
    assert targets == {"api", "gpu", "volumes", "cli"}


def test_no_module_imports_the_docker_sdk_at_load_time():
    """Start-up cost: the SDK (~100 ms to import) never loads with a module (see engine/)."""
    for path in _modules():
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
        assert "docker" not in names, f"{path.relative_to(PACKAGE)} imports the docker SDK"
