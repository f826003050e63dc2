"""What pyproject.toml promises: every third-party module the code imports is a declared dependency, and scripts
find kdp-bench as an installed package, never by editing ``sys.path``."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.test_workflow import REPO

tomllib = pytest.importorskip("tomllib")

#: Code that runs from the installed project (tests need only the ``test`` extra on top).
CODE = ["kdp", "baselines", "workflow/scripts", "bench", "resources"]
PROJECT_PACKAGES = {"kdp", "baselines"}
BENCH_SCRIPTS = sorted((REPO / "bench").glob("*.py"))


def _sources() -> list[Path]:
    return [path for root in CODE for path in sorted((REPO / root).rglob("*.py"))]


def _imported_top_level(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_a_declared_dependency():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_canonical(re.split(r"[\[<>=!~ ;]", requirement)[0]) for requirement in project["dependencies"]}
    providers = metadata.packages_distributions()
    undeclared = {}
    for path in _sources():
        neighbours = {sibling.stem for sibling in path.parent.glob("*.py")}  # a script importing the one beside it
        for module in _imported_top_level(path) - PROJECT_PACKAGES - neighbours - set(sys.stdlib_module_names):
            distributions = {_canonical(name) for name in providers.get(module, [module])}
            if not distributions & declared:
                undeclared.setdefault(module, path.relative_to(REPO).as_posix())
    assert undeclared == {}


def test_no_code_edits_sys_path():
    edits = []
    for path in [*_sources(), *sorted((REPO / "tests").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            target = node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
            if isinstance(target, ast.Attribute) and target.attr == "path" and getattr(target.value, "id", "") == "sys":
                edits.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert edits == []


@pytest.mark.parametrize("script", BENCH_SCRIPTS, ids=[path.stem for path in BENCH_SCRIPTS])
def test_bench_scripts_import_the_package_and_parse_their_options(script):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("usage:")
