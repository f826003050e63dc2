"""The maintainer scripts of resources/benchmarks and the benchmarks of bench/, imported from their files (they
import each other by name, as scripts run from their folder do), so that tests need no ``sys.path`` edit."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
FOLDER = REPO / "resources" / "benchmarks"
BENCH = REPO / "bench"


def load_script(name: str, folder: Path = FOLDER) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]
