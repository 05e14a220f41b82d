"""Every third-party module the code, tests and benchmarks import is declared in pyproject.toml.

CI installs `.[test]` on a fresh machine: a module imported but not declared (requests, pyyaml
and openapi-schema-validator once were) works on a developer's venv and fails there.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OWN = {"nvplugin", "tests", "bench"}


def declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"],
                    *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return {_normal(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in requirements}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules() -> dict[str, str]:
    """Top-level module -> the first file importing it (imports inside functions included)."""
    found: dict[str, str] = {}
    for part in ("nvplugin", "tests", "bench"):
        for path in sorted((REPO / part).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def test_every_imported_distribution_is_declared():
    local = OWN | {p.stem for p in (REPO / "bench").glob("*.py")}
    distributions = importlib.metadata.packages_distributions()
    wanted = declared()
    missing = []
    for module, where in sorted(imported_modules().items()):
        if module in sys.stdlib_module_names or module in local or module.startswith("_"):
            continue
        owners = {_normal(d) for d in distributions.get(module, [])}
        assert owners, f"{module} (imported by {where}) belongs to no installed distribution"
        if not owners & wanted:
            missing.append(f"{module} ({', '.join(sorted(owners))}, imported by {where})")
    assert missing == [], f"imported but not declared in pyproject.toml: {missing}"


def test_the_pytest_settings_plugin_is_declared_with_the_version_that_reads_them():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    settings = pyproject["tool"]["pytest"]["ini_options"]
    test_extra = pyproject["project"]["optional-dependencies"]["test"]
    assert settings["asyncio_mode"] == "auto"  # pytest-asyncio's settings:
    assert "asyncio_default_fixture_loop_scope" in settings  # this one since 0.24 (pytest 8.2)
    assert "pytest-asyncio>=0.24" in test_extra and "pytest>=8.2" in test_extra
