"""The fresh-machine contract: what the code imports is declared, and CI runs the README's test command
in a brand-new virtual environment (so a package left on the machine cannot hide a missing one)."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Modules the code needs without an import statement naming them.
IMPLICIT = {"pyarrow": "pandas reads and writes the .parquet manifests with it (silverclip.data.manifest)"}
# The project's own modules: the package and every module of tests/ and benchmarks/ (helpers they import).
LOCAL = {"silverclip"} | {p.stem for folder in ("tests", "benchmarks") for p in (REPO / folder).glob("*.py")}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {_norm(re.match(r"[A-Za-z0-9_.\-]+", r).group(0)) for r in reqs}


def _imported_modules() -> dict[str, str]:
    """Top-level third-party modules imported anywhere in src/, tests/ and benchmarks/ -> one file importing it."""
    found: dict[str, str] = {}
    for folder in ("src", "tests", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in LOCAL:
                        found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_declared() -> None:
    declared = _declared() | {"silverclip"}
    dists = metadata.packages_distributions()
    missing = []
    for module, where in sorted({**_imported_modules(), **IMPLICIT}.items()):
        names = {_norm(d) for d in dists.get(module, [module])}
        if not names & declared:
            missing.append(f"{module} ({IMPLICIT.get(module, where)}; distribution {sorted(names)})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_ci_runs_the_readme_test_command_in_a_new_virtualenv() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    command = next(line for b in blocks for line in b.splitlines() if "pytest" in line)
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert command in ci, f"the README's test command {command!r} is not in .ci/run as written"
    venv = next((i for i, line in enumerate(ci) if re.search(r"python3? -m venv ", line)), None)
    activate = next((i for i, line in enumerate(ci) if re.search(r"^\. .*/bin/activate", line)), None)
    assert venv is not None and activate is not None, ".ci/run must create and activate a new virtual environment"
    assert venv < activate < ci.index(command)
