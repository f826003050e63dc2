"""Every table kind: which result files it reads and how it renders them.

A kind is a module with ``FORMULA``, ``inputs(config, spec) -> {name: [paths]}`` and
``render(config, name, files) -> (csv, tex)``, where ``files`` maps the same names to the JSON documents read from
those paths. The workflow asks ``table_inputs`` for a table's files, so each table depends on exactly what its kind
reads (Table 12 on nothing but model configs, Table 5 on block choices and variant records, Table 10 on speed runs).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from kdp.errors import bad_value
from kdp.io import read_json, write_text
from kdp.table_kinds import block_cost, data_usage, pruned_layers, results, speedup

KINDS: dict[str, ModuleType] = {
    "classification": results, "generation": results, "ablation": results, "kmax": results,
    "pruned_layers": pruned_layers, "data_usage": data_usage, "speedup": speedup, "block_cost": block_cost,
}
VARIANT_RECORD = "kdp_variant.json"


def kind_module(config: dict, name: str) -> ModuleType:
    kind = config["tables"][name]["kind"]
    if kind not in KINDS:
        raise bad_value(f"config key tables.{name}.kind", kind, sorted(KINDS))
    return KINDS[kind]


def table_inputs(config: dict, name: str) -> dict[str, list[str]]:
    """Input files of one table by role; roles with no files are left out."""
    files = kind_module(config, name).inputs(config, config["tables"][name])
    return {role: paths for role, paths in files.items() if paths}


def input_function(config: dict):
    """``table_inputs`` as a Snakemake input function of the ``{table}`` wildcard."""
    def files(wildcards) -> dict[str, list[str]]:
        return table_inputs(config, wildcards.table)

    return files


def read_inputs(files: dict[str, list[str]]) -> dict[str, list[dict]]:
    """JSON documents per role; a variant directory stands for its kdp_variant.json, a model's base directory
    for its config.json."""
    return {role: [read_json(_document(Path(path))) for path in paths] for role, paths in files.items()}


def _document(path: Path) -> Path:
    if not path.is_dir():
        return path
    for name in (VARIANT_RECORD, "config.json"):
        if (path / name).is_file():
            return path / name
    raise bad_value("table input directory", str(path), f"a directory with {VARIANT_RECORD} or config.json")


def render(config: dict, name: str, documents: dict[str, list[dict]]) -> tuple[str, str]:
    return kind_module(config, name).render(config, name, documents)


def table(config: dict, name: str, files: dict[str, list[str]], out_csv: str, out_tex: str) -> None:
    """The workflow step: read the inputs, render, write both files atomically."""
    csv_text, tex_text = render(config, name, read_inputs(files))
    write_text(out_csv, csv_text)
    write_text(out_tex, tex_text)
