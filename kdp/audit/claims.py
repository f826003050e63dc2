"""The claims folder: one tidy CSV per printed table (one printed cell per row), ``claims.csv`` for the text, and
for any paper other than KDP a ``paper.yaml`` naming each file's schema. Reading, validating and indexing them.

A folder without ``paper.yaml`` is read as the KDP paper's layout (``resources/claims/``: ``table01.csv`` to
``table12.csv`` and ``claims.csv``, every rule). With it, the folder lists its files and the schema each
follows (``scores``, ``layers``, ``flops``, ``claims`` or one of KDP's table schemas), and ``rules: generic``
keeps the KDP-specific rules (its tables' roles, its claim ids) from running. docs/audit.md documents the schemas.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from kdp import flops
from kdp.audit.intervals import Printed
from kdp.errors import UserError, bad_value

CLAIMS_DIR = Path(__file__).resolve().parents[2] / "resources" / "claims"
PAPER_FILE = "paper.yaml"
DENSE = "Dense"  # every schema's name for the unpruned model's row
SUMMARY_COLUMNS = ("Avg", "RP", "RP_on_Dense", "RP_on_std")


@dataclass(frozen=True)
class TableSchema:
    kind: str
    columns: tuple[str, ...]
    numbers: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    # Columns the rules branch on: a misspelt value would silently drop the row from every check.
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    optional_numbers: tuple[str, ...] = ()


_SCORES = ("model", "method", "benchmark", "value", "src_line")
_FLOPS = TableSchema("flops", ("model", "method", "quantity", "value", "src_line"), ("value", "src_line"),
                     ("model", "method", "quantity", "src_line"), {"quantity": ("FLOPs_G", "Change_pct", "SpeedUp_x")})

SCHEMAS: dict[str, TableSchema] = {
    "claims": TableSchema("claims", ("claim_id", "location", "text", "quantity", "value", "depends_on"), (),
                          ("claim_id",)),
    "table01": TableSchema(
        "scores", ("model", "method", "marker", "pruning_ratio", "benchmark", "value", "src_line"),
        ("pruning_ratio", "value", "src_line"), ("model", "method", "benchmark", "pruning_ratio", "src_line"),
    ),
    "table02": TableSchema(
        "generation", ("model", "method", "benchmark", "metric", "value", "src_line"), ("value", "src_line"),
        ("model", "method", "benchmark", "metric", "value", "src_line"),
    ),
    "table03": TableSchema("table03", ("model", "method", "benchmark", "value", "src_line"), ("value", "src_line"),
                           ("model", "method", "benchmark", "value", "src_line")),
    "table04": TableSchema("table04", ("model", "K_max", "first_layer", "last_layer", "benchmark", "value", "src_line"),
                           ("K_max", "first_layer", "last_layer", "value", "src_line")),
    "table05": TableSchema(
        "table05", ("model", "pruning_ratio", "block_index", "first_layer", "last_layer", "src_line"),
        ("pruning_ratio", "block_index", "first_layer", "last_layer", "src_line"),
        ("model", "pruning_ratio", "first_layer", "last_layer", "src_line"),
    ),
    "table06": TableSchema("scores", ("model", "method", "marker", "benchmark", "value", "src_line"),
                           ("value", "src_line"), ("model", "method", "benchmark", "src_line")),
    "table07": TableSchema(
        "generation", ("model", "method", "benchmark", "metric", "value", "src_line"), ("value", "src_line"),
        ("model", "method", "benchmark", "metric", "value", "src_line"),
    ),
    "table08": TableSchema("table08", ("method", "need_finetuning", "total_sample_numeric", "src_line"),
                           ("total_sample_numeric", "src_line")),
    "table09": TableSchema("table09", ("model", "method", "benchmark", "value", "src_line"), ("value", "src_line"),
                           ("model", "method", "benchmark", "value", "src_line")),
    "table10": _FLOPS,
    "table11": TableSchema(
        "scores", ("model", "setting", "n_datasets", "n_samples", "benchmark", "value", "src_line"),
        ("n_datasets", "value", "src_line"), ("model", "setting", "benchmark", "src_line"),
    ),
    "table12": TableSchema("table12", ("model", "component", "quantity", "k", "value", "src_line"),
                           ("k", "value", "src_line"), ("model", "component", "quantity", "k", "value", "src_line"),
                           {"component": ("Transformer Block", "Fold Block", "Retention Rate"),
                            "quantity": ("FLOPs", "Params")}),
    # The generic schemas any paper's folder may use (paper.yaml maps its files onto them).
    "scores": TableSchema("scores", _SCORES, ("value", "src_line"), ("model", "method", "benchmark", "src_line"),
                          optional_numbers=("pruning_ratio",)),
    "layers": TableSchema("layers", ("model", "method", "first_layer", "last_layer", "src_line"),
                          ("first_layer", "last_layer", "src_line"),
                          ("model", "method", "first_layer", "last_layer", "src_line")),
    "flops": _FLOPS,
}
KDP_TABLES = tuple(name for name in SCHEMAS if name == "claims" or name.startswith("table"))
RULE_SCOPES = ("all", "generic")


@dataclass(frozen=True)
class Paper:
    """``paper.yaml``: which paper, where its numbers were read, which file follows which schema."""

    title: str = "KDP: Simplifying Representation Dynamics in Kernel Space (Ma et al., ICLR 2026)"
    source: str = "the paper's text, as resources/claims/README.md names it"
    rules: str = "all"
    tables: Mapping[str, str] = field(default_factory=lambda: {name: name for name in KDP_TABLES})


@dataclass(frozen=True)
class ClaimsTables:
    directory: Path
    frames: Mapping[str, pd.DataFrame]
    paper: Paper = field(default_factory=Paper)
    row_cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __contains__(self, name: str) -> bool:
        return name in self.frames

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.frames[name]

    def schema(self, name: str) -> TableSchema:
        return SCHEMAS[self.paper.tables[name]]

    def of_kind(self, kind: str) -> list[str]:
        """Loaded tables whose schema is of ``kind`` (``scores``, ``flops``, ``layers``, ``generation``, ...)."""
        return [name for name in self.frames if self.schema(name).kind == kind]


def load_paper(directory: Path) -> Paper:
    path = directory / PAPER_FILE
    if not path.is_file():
        return Paper()
    with open(path, encoding="utf-8") as handle:
        spec = yaml.safe_load(handle) or {}
    allowed = {"title", "source", "rules", "tables"}
    for key in spec:
        if key not in allowed:
            raise bad_value(f"{path}: key", key, sorted(allowed))
    if spec.get("rules", "generic") not in RULE_SCOPES:
        raise bad_value(f"{path}: rules", spec["rules"], RULE_SCOPES)
    tables = spec.get("tables") or {}
    if not isinstance(tables, dict) or not tables:
        raise UserError(f"{path}: tables: must map each CSV file's name (without .csv) to its schema; "
                        f"allowed schemas: {', '.join(SCHEMAS)}")
    for name, schema in tables.items():
        if schema not in SCHEMAS:
            raise bad_value(f"{path}: tables.{name}", schema, list(SCHEMAS))
    return Paper(str(spec.get("title", "")), str(spec.get("source", "")), spec.get("rules", "generic"),
                 {str(name): schema for name, schema in tables.items()})


def claims_folder_inputs(folder: str, root: str | Path) -> tuple[Path, list[Path]]:
    """The config's ``audit.claims`` folder (relative to ``root`` unless absolute) and the files its audit reads:
    its tables and paper.yaml. A missing folder or a bad paper.yaml is a UserError."""
    path = Path(folder) if Path(folder).is_absolute() else Path(root) / folder
    if not path.is_dir():
        raise UserError(f"config key audit.claims: {folder!r} is not a folder; allowed: a claims folder such as "
                        "resources/claims or resources/claims_shortgpt (docs/audit.md)")
    paper = load_paper(path)
    return path, [*(path / f"{name}.csv" for name in paper.tables), *path.glob(PAPER_FILE)]


def load_claims(directory: str | Path = CLAIMS_DIR, names: Iterable[str] | None = None) -> ClaimsTables:
    """Read and validate the claims CSVs (every table the folder's paper lists unless ``names`` picks some)."""
    directory = Path(directory)
    paper = load_paper(directory)
    wanted = list(names) if names is not None else list(paper.tables)
    unknown = [name for name in wanted if name not in paper.tables]
    if unknown:
        raise bad_value(f"{directory}: claims table", unknown[0], list(paper.tables))
    frames = {name: _read_table(directory / f"{name}.csv", SCHEMAS[paper.tables[name]]) for name in wanted}
    return ClaimsTables(directory, frames, paper)


def _read_table(path: Path, schema: TableSchema) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: claims table not found")
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [column for column in schema.columns if column not in header]
        if missing:
            raise UserError(f"{path} line 1: missing column(s) {', '.join(map(repr, missing))}; "
                            f"required: {', '.join(schema.columns)}")
        numbers = (*schema.numbers, *(c for c in schema.optional_numbers if c in header))
        records = [_validated_row(path, reader.line_num, row, schema, numbers) for row in reader]
    frame = pd.DataFrame.from_records(records, columns=None if records else [*header, "_line"])
    if "setting" in frame.columns:  # Table 11's rows are training set-ups; audit them like methods
        frame["method"] = frame["setting"]
    return frame


def _validated_row(path: Path, line: int, row: dict[str, str | None], schema: TableSchema,
                   numbers: tuple[str, ...]) -> dict[str, Any]:
    record: dict[str, Any] = {key: (value or "").strip() for key, value in row.items() if key is not None}
    for column in schema.required:
        if not record.get(column):
            raise UserError(f"{path} line {line}, column {column!r}: is blank but a value is required; "
                            f"allowed: {'a number as printed' if column in numbers else 'any non-blank text'}")
    for column, allowed in schema.choices.items():
        if record.get(column, "") not in allowed:
            raise UserError(f"{path} line {line}, column {column!r}: {record.get(column, '')!r} is not allowed; "
                            f"allowed: {', '.join(allowed)}")
    for column in numbers:
        text = record.get(column, "")
        record[f"{column}_text"] = text
        try:
            record[column] = float(text.rstrip("%")) if text else math.nan
        except ValueError:
            blank = "" if column in schema.required else ", or blank for a '-' cell"
            raise UserError(f"{path} line {line}, column {column!r}: {text!r} is not a number; allowed: a number "
                            f"as printed (e.g. 51.80 or 22.8%){blank}") from None
    record["_line"] = line
    return record


# ------------------------------------------------------------------------------------------ naming


def table_number(name: str) -> int | None:
    match = re.fullmatch(r"table0*(\d+)", name)
    return int(match.group(1)) if match else None


def table_label(name: str) -> str:
    number = table_number(name)
    return f"Table {number}" if number is not None else name


def source(name: str, line: Any) -> str:
    return f"{table_label(name)} (line {line})"


def table_prefix(name: str) -> str:
    number = table_number(name)
    return f"T{number:02d}" if number is not None else name


def claim_id(name: str, *parts: Any) -> str:
    return "/".join([table_prefix(name), *map(str, parts)])


def base_method(method: str) -> str:
    return re.sub(r" \((FT|RFT|PEFT)\)$", "", method)


# ------------------------------------------------------------------------------------------ rows


@dataclass(frozen=True)
class TableRow:
    """One printed row of a long-format table: its cells by benchmark (``None`` where the paper has '-')."""

    model: str
    method: str
    line: Any
    cells: dict[str, Printed | None]
    ratio: Printed | None = None

    def benchmarks(self) -> dict[str, Printed | None]:
        return {name: cell for name, cell in self.cells.items() if name not in SUMMARY_COLUMNS}

    def printed(self) -> dict[str, Printed]:
        return {name: cell for name, cell in self.benchmarks().items() if cell is not None}


def rows(tables: ClaimsTables, name: str) -> list[TableRow]:
    key = f"rows:{name}"
    if key not in tables.row_cache:
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for record in tables[name].to_dict("records"):
            grouped.setdefault((record["model"], record["method"]), []).append(record)
        tables.row_cache[key] = [_table_row(model, method, records) for (model, method), records in grouped.items()]
    return tables.row_cache[key]


def _table_row(model: str, method: str, records: list[dict[str, Any]]) -> TableRow:
    cells = {r["benchmark"]: (Printed.parse(r["value_text"]) if r["value_text"] else None) for r in records}
    ratio_text = records[0].get("pruning_ratio_text")
    ratio = Printed.parse(ratio_text) if ratio_text else None
    return TableRow(model, method, records[0]["src_line_text"], cells, ratio)


def row(table_rows: Iterable[TableRow], model: str, method: str) -> TableRow | None:
    return next((r for r in table_rows if r.model == model and r.method == method), None)


def score_rows(tables: ClaimsTables) -> list[tuple[str, TableRow]]:
    return [(name, r) for name in tables.of_kind("scores") for r in rows(tables, name)]


def printed_cells(tables: ClaimsTables) -> dict[str, tuple[Printed, str]]:
    """Every printed cell of the score tables by its claim id (``T01/LLaMA-2-7B/Ours/MMLU``, ``.../pruning_ratio``),
    with its source."""
    cells = {}
    for name, table_row in score_rows(tables):
        where = source(name, table_row.line)
        for bench, cell in table_row.cells.items():
            if cell is not None:
                cells[claim_id(name, table_row.model, table_row.method, bench)] = (cell, where)
        if table_row.ratio is not None:
            cells[claim_id(name, table_row.model, table_row.method, "pruning_ratio")] = (table_row.ratio, where)
    return cells


# ------------------------------------------------------------------------------------------ text claims


def claims(tables: ClaimsTables) -> dict[str, dict[str, Any]]:
    if "claims" not in tables:
        return {}
    return {record["claim_id"]: record for record in tables["claims"].to_dict("records")}


def claimed_number(tables: ClaimsTables, claim: Mapping[str, Any], text: str | None = None) -> Printed:
    """A claim's number; a value that is not one is a UserError naming file, line and column."""
    text = claim["value"] if text is None else text
    try:
        return Printed.parse(text)
    except ValueError:
        raise UserError(f"{tables.directory / 'claims.csv'} line {claim['_line']}, column 'value': "
                        f"{text!r} is not a number (claim {claim['claim_id']} needs one)") from None


def claim_source(claim: Mapping[str, Any]) -> str:
    return f"{claim['location']} (claims.csv line {claim['_line']})"


# ------------------------------------------------------------------------------------------ model configs


def _normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@lru_cache(maxsize=None)
def model_config_key(model: str) -> str | None:
    """The ``resources/model_configs`` file a printed model name denotes (``LLaMA-2-7B`` and ``Llama2-7B`` are
    ``llama-2-7b``), or None when none is shipped."""
    keys = {_normalised(key): key for key in flops.model_config_keys()}
    return keys.get(_normalised(model))


@lru_cache(maxsize=None)
def config(model: str) -> Any | None:
    key = model_config_key(model)
    return flops.load_model_config(key) if key else None


@lru_cache(maxsize=None)
def layer_params(model: str) -> int:
    return flops.layer_parameters(config(model))


@lru_cache(maxsize=None)
def total_params(model: str) -> int:
    return flops.model_parameters(config(model))


@lru_cache(maxsize=None)
def layer_gflops(model: str) -> float:
    return flops.layer_flops(config(model)) / 1e9


@lru_cache(maxsize=None)
def dense_gflops(model: str) -> float:
    return flops.model_flops(config(model)) / 1e9
