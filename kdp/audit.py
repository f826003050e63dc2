"""Audit of the KDP paper against itself: recompute every printed number that other printed numbers determine.

Why: a reproduction is only meaningful against claims that are internally coherent; and where the paper's own
numbers disagree, the report must say so before blaming (or crediting) a re-run.

Inputs are the tidy CSVs of ``resources/claims/`` (one printed cell per row, printed decimals kept). Each audit
rule is a small named function yielding ``Check``s (a claimed printed number, the printed inputs it should
follow from, and the formula) or ``Finding``s (set or count comparisons). Tolerances are not picked by hand:
every printed input stands for an interval (half a unit in its last printed digit), the formula is evaluated
in interval arithmetic, and a claim is ``consistent`` when its own printed interval meets the recomputed one.
Where a claim fails only because the paper seems to have truncated rather than rounded, the note says so.

``audit_paper(claims_dir)`` returns one tidy row per check (columns ``AUDIT_COLUMNS``);
``attach_reproduced`` puts this project's re-run values beside the claimed ones.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from kdp import flops
from kdp.errors import UserError, bad_value
from kdp.io import atomic_path

CLAIMS_DIR = Path(__file__).resolve().parent.parent / "resources" / "claims"

AUDIT_COLUMNS = (
    "claim_id", "source", "model", "method", "quantity", "claimed", "recomputed", "reproduced", "tolerance",
    "verdict", "rule", "note", "relative_discrepancy",
)
CONSISTENT, INCONSISTENT, NOT_CHECKABLE = "consistent", "inconsistent", "not_checkable"

# Appendix B: "The dimension of the kernel transformation (2m) is set to 1024."
PAPER_RFF_DIM = 1024

MODEL_CONFIGS = {
    "LLaMA-2-7B": "llama-2-7b",
    "LLaMA-2-13B": "llama-2-13b",
    "LLaMA-3-8B": "llama-3-8b",
    "LLaMA-3.1-8B": "llama-3.1-8b",
    "OPT-2.7B": "opt-2.7b",
    "OPT-6.7B": "opt-6.7b",
}

# Baselines that only delete whole decoder layers, so their size follows from a layer count. (w/o Kernel does
# too; its layers are known from Table 5, see ``ratio_from_table5_blocks``.)
DEPTH_METHODS = ("SLEB", "ShortGPT", "LaCo", "Streamline")
NOT_BASELINES = ("Dense", "Ours", "w/o Kernel")
SUMMARY_COLUMNS = ("Avg", "RP", "RP_on_Dense", "RP_on_std")


# ------------------------------------------------------------------------------------------ loading


@dataclass(frozen=True)
class TableSchema:
    columns: tuple[str, ...]
    numbers: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    # Columns the rules branch on: a misspelt value would silently drop the row from every check.
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


SCHEMAS: dict[str, TableSchema] = {
    "claims": TableSchema(("claim_id", "location", "text", "quantity", "value", "depends_on"), (), ("claim_id",)),
    "table01": TableSchema(
        ("model", "method", "marker", "pruning_ratio", "benchmark", "value", "src_line"),
        ("pruning_ratio", "value", "src_line"), ("model", "method", "benchmark", "pruning_ratio", "src_line"),
    ),
    "table02": TableSchema(
        ("model", "method", "benchmark", "metric", "value", "src_line"), ("value", "src_line"),
        ("model", "method", "benchmark", "metric", "value", "src_line"),
    ),
    "table03": TableSchema(("model", "method", "benchmark", "value", "src_line"), ("value", "src_line"),
                           ("model", "method", "benchmark", "value", "src_line")),
    "table04": TableSchema(("model", "K_max", "first_layer", "last_layer", "benchmark", "value", "src_line"),
                           ("K_max", "first_layer", "last_layer", "value", "src_line")),
    "table05": TableSchema(
        ("model", "pruning_ratio", "block_index", "first_layer", "last_layer", "src_line"),
        ("pruning_ratio", "block_index", "first_layer", "last_layer", "src_line"),
        ("model", "pruning_ratio", "first_layer", "last_layer", "src_line"),
    ),
    "table06": TableSchema(("model", "method", "marker", "benchmark", "value", "src_line"), ("value", "src_line"),
                           ("model", "method", "benchmark", "src_line")),
    "table07": TableSchema(
        ("model", "method", "benchmark", "metric", "value", "src_line"), ("value", "src_line"),
        ("model", "method", "benchmark", "metric", "value", "src_line"),
    ),
    "table08": TableSchema(("method", "need_finetuning", "total_sample_numeric", "src_line"),
                           ("total_sample_numeric", "src_line")),
    "table09": TableSchema(("model", "method", "benchmark", "value", "src_line"), ("value", "src_line"),
                           ("model", "method", "benchmark", "value", "src_line")),
    "table10": TableSchema(("model", "method", "quantity", "value", "src_line"), ("value", "src_line"),
                           ("model", "method", "quantity", "src_line"),
                           {"quantity": ("FLOPs_G", "Change_pct", "SpeedUp_x")}),
    "table11": TableSchema(
        ("model", "setting", "n_datasets", "n_samples", "benchmark", "value", "src_line"),
        ("n_datasets", "value", "src_line"), ("model", "setting", "benchmark", "src_line"),
    ),
    "table12": TableSchema(("model", "component", "quantity", "k", "value", "src_line"), ("k", "value", "src_line"),
                           ("model", "component", "quantity", "k", "value", "src_line"),
                           {"component": ("Transformer Block", "Fold Block", "Retention Rate"),
                            "quantity": ("FLOPs", "Params")}),
}


@dataclass(frozen=True)
class Printed:
    """A number as printed: ``decimals`` digits after the point, or ``None`` for an exact number (a count,
    or something computed here rather than read from the paper)."""

    value: float
    decimals: int | None = None

    @staticmethod
    def parse(text: str) -> Printed:
        cleaned = text.strip().rstrip("%")
        value = float(cleaned)
        _, _, fraction = cleaned.partition(".")
        return Printed(value, len(fraction))

    def bound(self, reading: str) -> Bound:
        if self.decimals is None:
            return Bound(self.value, self.value)
        unit = 10.0 ** -self.decimals
        if reading == "rounded":
            return Bound(self.value - unit / 2, self.value + unit / 2)
        return Bound(self.value, self.value + unit) if self.value >= 0 else Bound(self.value - unit, self.value)

    def __str__(self) -> str:
        if self.decimals is None:
            return f"{self.value:g}"
        return f"{self.value:.{self.decimals}f}"


@dataclass(frozen=True)
class ClaimsTables:
    directory: Path
    frames: Mapping[str, pd.DataFrame]
    row_cache: dict[str, list[TableRow]] = field(default_factory=dict, compare=False, repr=False)

    def __contains__(self, name: str) -> bool:
        return name in self.frames

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.frames[name]


def load_claims(directory: str | Path = CLAIMS_DIR, names: Iterable[str] | None = None) -> ClaimsTables:
    """Read and validate the claims CSVs (all of ``SCHEMAS`` unless ``names`` picks some)."""
    directory = Path(directory)
    frames = {name: _read_table(directory / f"{name}.csv", SCHEMAS[name]) for name in (names or SCHEMAS)}
    return ClaimsTables(directory, frames)


def _read_table(path: Path, schema: TableSchema) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: claims table not found")
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in schema.columns if column not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path} line 1: missing column(s) {', '.join(map(repr, missing))}; "
                            f"required: {', '.join(schema.columns)}")
        records = []
        for row in reader:
            records.append(_validated_row(path, reader.line_num, row, schema))
    frame = pd.DataFrame.from_records(records)
    if "setting" in frame.columns:  # Table 11's rows are training set-ups; audit them like methods
        frame["method"] = frame["setting"]
    return frame


def _validated_row(path: Path, line: int, row: dict[str, str | None], schema: TableSchema) -> dict[str, Any]:
    record: dict[str, Any] = {key: (value or "").strip() for key, value in row.items() if key is not None}
    for column in schema.required:
        if not record.get(column):
            raise UserError(f"{path} line {line}, column {column!r}: is blank but a value is required; "
                            f"allowed: {'a number as printed' if column in schema.numbers else 'any non-blank text'}")
    for column, allowed in schema.choices.items():
        if record.get(column, "") not in allowed:
            raise UserError(f"{path} line {line}, column {column!r}: {record.get(column, '')!r} is not allowed; "
                            f"allowed: {', '.join(allowed)}")
    for column in schema.numbers:
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


# --------------------------------------------------------------------------------- interval arithmetic


@dataclass(frozen=True)
class Bound:
    """A closed interval; the arithmetic keeps every value the printed inputs could stand for."""

    lo: float
    hi: float

    @staticmethod
    def of(x: Bound | float) -> Bound:
        return x if isinstance(x, Bound) else Bound(float(x), float(x))

    def __add__(self, other: Bound | float) -> Bound:
        other = Bound.of(other)
        return Bound(self.lo + other.lo, self.hi + other.hi)

    __radd__ = __add__

    def __sub__(self, other: Bound | float) -> Bound:
        other = Bound.of(other)
        return Bound(self.lo - other.hi, self.hi - other.lo)

    def __rsub__(self, other: Bound | float) -> Bound:
        return Bound.of(other) - self

    def __mul__(self, other: Bound | float) -> Bound:
        other = Bound.of(other)
        products = (self.lo * other.lo, self.lo * other.hi, self.hi * other.lo, self.hi * other.hi)
        return Bound(min(products), max(products))

    __rmul__ = __mul__

    def __truediv__(self, other: Bound | float) -> Bound:
        other = Bound.of(other)
        if other.lo <= 0 <= other.hi:
            raise ZeroDivisionError("interval divisor contains zero")
        return self * Bound(1 / other.hi, 1 / other.lo)

    def __rtruediv__(self, other: Bound | float) -> Bound:
        return Bound.of(other) / self


def mean(*values: Bound) -> Bound:
    return sum(values, Bound(0.0, 0.0)) / len(values)


# ---------------------------------------------------------------------------------- checks and rows


Formula = Callable[..., Bound]


@dataclass(frozen=True)
class Check:
    """``claimed`` should equal ``formula(*inputs)``."""

    claim_id: str
    source: str
    quantity: str
    claimed: Printed
    inputs: tuple[Printed, ...]
    formula: Formula
    note: str = ""
    model: str = ""
    method: str = ""
    rule: str = ""


@dataclass(frozen=True)
class Finding:
    """A comparison that is not one formula (sets, counts, orderings); the rule decides the verdict."""

    claim_id: str
    source: str
    quantity: str
    claimed: Any
    recomputed: Any
    verdict: str
    note: str = ""
    model: str = ""
    method: str = ""
    relative_discrepancy: float = math.nan
    rule: str = ""


def _evaluate(formula: Formula, inputs: Sequence[Printed], reading: str | None) -> Bound:
    bounds = [Bound.of(p.value) if reading is None else p.bound(reading) for p in inputs]
    return Bound.of(formula(*bounds))


def _check_row(check: Check) -> dict[str, Any]:
    point = _evaluate(check.formula, check.inputs, None).lo
    recomputed = _evaluate(check.formula, check.inputs, "rounded")
    claimed = check.claimed.bound("rounded")
    slack = 1e-9 * max(1.0, abs(point))
    if check.claimed.value >= point:
        tolerance = (claimed.hi - check.claimed.value) + (recomputed.hi - point)
    else:
        tolerance = (check.claimed.value - claimed.lo) + (point - recomputed.lo)
    consistent = abs(check.claimed.value - point) <= tolerance + slack
    note = check.note
    if not consistent and _meets(check.claimed.bound("truncated"),
                                 _evaluate(check.formula, check.inputs, "truncated"), slack):
        note = _join(note, "consistent if the paper truncated instead of rounding")
    return {
        "claim_id": check.claim_id,
        "source": check.source,
        "model": check.model,
        "method": check.method,
        "quantity": check.quantity,
        "claimed": str(check.claimed),
        "recomputed": _format_like(point, check.claimed),
        "reproduced": "",
        "tolerance": _format_like(tolerance, Printed(tolerance, None if check.claimed.decimals is None else
                                                      check.claimed.decimals + 2)),
        "verdict": CONSISTENT if consistent else INCONSISTENT,
        "rule": check.rule,
        "note": note,
        "relative_discrepancy": (check.claimed.value - point) / abs(point) if point else math.nan,
    }


def _meets(a: Bound, b: Bound, slack: float) -> bool:
    return a.lo <= b.hi + slack and b.lo <= a.hi + slack


def _format_like(value: float, like: Printed) -> str:
    if like.decimals is None:
        return f"{value:.6g}"
    return f"{value:.{like.decimals + 2}f}"


def _finding_row(finding: Finding) -> dict[str, Any]:
    return {
        "claim_id": finding.claim_id,
        "source": finding.source,
        "model": finding.model,
        "method": finding.method,
        "quantity": finding.quantity,
        "claimed": str(finding.claimed),
        "recomputed": str(finding.recomputed),
        "reproduced": "",
        "tolerance": "",
        "verdict": finding.verdict,
        "rule": finding.rule,
        "note": finding.note,
        "relative_discrepancy": finding.relative_discrepancy,
    }


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


# ------------------------------------------------------------------------------------- rule registry

RuleFunction = Callable[[ClaimsTables], Iterator[Check | Finding]]
RULES: dict[str, RuleFunction] = {}


def audit_rule(function: RuleFunction) -> RuleFunction:
    RULES[function.__name__] = function
    return function


def run_rules(tables: ClaimsTables, rules: Iterable[str] | None = None) -> pd.DataFrame:
    """Run the named rules (all by default) on whatever tables are loaded; a rule skips absent tables."""
    names = list(rules) if rules is not None else list(RULES)
    unknown = [name for name in names if name not in RULES]
    if unknown:
        raise bad_value("audit rule", unknown[0], sorted(RULES))
    items: list[Check | Finding] = []
    for name in names:
        items.extend(replace(item, rule=name) for item in RULES[name](tables))
    if "claims" in tables and rules is None:
        items.extend(_restatements(tables, items))
        items.extend(_uncovered_claims(tables, items))
    rows = [_check_row(item) if isinstance(item, Check) else _finding_row(item) for item in items]
    return pd.DataFrame(rows, columns=list(AUDIT_COLUMNS))


def audit_paper(claims_dir: str | Path = CLAIMS_DIR) -> pd.DataFrame:
    """Every rule on every table of ``claims_dir``: the audit of the paper's own numbers."""
    return run_rules(load_claims(claims_dir))


def write_audit(audit: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        audit.to_csv(tmp, index=False)


# ------------------------------------------------------------------------------------------ helpers


def _table_number(name: str) -> int:
    return int(name.removeprefix("table"))


def _source(name: str, line: Any) -> str:
    return f"Table {_table_number(name)} (line {line})"


def _claim_id(name: str, *parts: Any) -> str:
    return "/".join([f"T{_table_number(name):02d}", *map(str, parts)])


def _base_method(method: str) -> str:
    return re.sub(r" \((FT|RFT|PEFT)\)$", "", method)


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


def _rows(tables: ClaimsTables, name: str) -> list[TableRow]:
    if name not in tables.row_cache:
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for record in tables[name].to_dict("records"):
            grouped.setdefault((record["model"], record["method"]), []).append(record)
        tables.row_cache[name] = [_table_row(model, method, records) for (model, method), records in grouped.items()]
    return tables.row_cache[name]


def _table_row(model: str, method: str, records: list[dict[str, Any]]) -> TableRow:
    cells = {r["benchmark"]: (Printed.parse(r["value_text"]) if r["value_text"] else None) for r in records}
    ratio_text = records[0].get("pruning_ratio_text")
    ratio = Printed.parse(ratio_text) if ratio_text else None
    return TableRow(model, method, records[0]["src_line_text"], cells, ratio)


def _row(rows: Iterable[TableRow], model: str, method: str) -> TableRow | None:
    return next((row for row in rows if row.model == model and row.method == method), None)


@lru_cache(maxsize=None)
def _config(model: str) -> Any | None:
    key = MODEL_CONFIGS.get(model)
    return flops.load_model_config(key) if key else None


@lru_cache(maxsize=None)
def _layer_params(model: str) -> int:
    return flops.layer_parameters(_config(model))


@lru_cache(maxsize=None)
def _total_params(model: str) -> int:
    return flops.model_parameters(_config(model))


@lru_cache(maxsize=None)
def _layer_gflops(model: str) -> float:
    return flops.layer_flops(_config(model)) / 1e9


@lru_cache(maxsize=None)
def _dense_gflops(model: str) -> float:
    return flops.model_flops(_config(model)) / 1e9


def _exact(value: float) -> Printed:
    return Printed(value, None)


def _pct_of(part: Bound, whole: Bound) -> Bound:
    return part / whole * 100


# ------------------------------------------------------------------------- rules: table arithmetic


@audit_rule
def avg_is_mean_of_benchmarks(tables: ClaimsTables) -> Iterator[Check]:
    """Tables 1, 6, 11: Avg is the arithmetic mean of the row's printed benchmark values ('-' cells left out)."""
    for name in ("table01", "table06", "table11"):
        if name not in tables:
            continue
        for row in _rows(tables, name):
            if row.cells.get("Avg") is None:
                continue
            values = {bench: cell for bench, cell in row.benchmarks().items() if cell is not None}
            blank = [bench for bench, cell in row.benchmarks().items() if cell is None]
            note = f"mean over the {len(values)} printed benchmarks ({', '.join(blank)}: '-')" if blank else ""
            yield Check(_claim_id(name, row.model, row.method, "Avg"), _source(name, row.line), "Avg",
                        row.cells["Avg"], tuple(values.values()), mean, note, row.model, row.method)


TABLE11_REFERENCES = {"RP_on_Dense": "Dense", "RP_on_std": "Standard"}


@audit_rule
def rp_is_avg_over_reference(tables: ClaimsTables) -> Iterator[Check]:
    """Tables 1 and 6: RP = Avg / Dense Avg x 100. Table 11: 'RP on Dense' and 'RP on std.' divide by the
    Dense and the Standard rows' Avg."""
    for name in ("table01", "table06", "table11"):
        if name not in tables:
            continue
        rows = _rows(tables, name)
        references = TABLE11_REFERENCES if name == "table11" else {"RP": "Dense"}
        for column, reference_method in references.items():
            for row in rows:
                reference = _row(rows, row.model, reference_method)
                if row.method == reference_method or reference is None or row.cells.get(column) is None:
                    continue
                note = _like_for_like_note(row, reference)
                yield Check(_claim_id(name, row.model, row.method, column), _source(name, row.line), column,
                            row.cells[column], (row.cells["Avg"], reference.cells["Avg"]), _pct_of, note,
                            row.model, row.method)


def _like_for_like_note(row: TableRow, reference: TableRow) -> str:
    """Where a row lacks benchmarks, its Avg is over fewer tasks than the Dense Avg it is divided by."""
    shared = [b for b, cell in row.benchmarks().items() if cell is not None and reference.cells.get(b) is not None]
    if len(shared) == len(reference.benchmarks()):
        return ""
    own = sum(row.cells[b].value for b in shared) / len(shared)
    dense = sum(reference.cells[b].value for b in shared) / len(shared)
    return (f"Avg covers {len(shared)} benchmarks but the Dense Avg covers {len(reference.benchmarks())}; "
            f"over the same {len(shared)} benchmarks RP would be {100 * own / dense:.1f}")


GENERATION_DEFINITIONS = ("ratio_of_sums", "mean_of_ratios")


def _generation_rp(definition: str, lower_is_better: bool) -> Formula:
    """RP of a generation metric from (dense..., variant...) bounds, both halves in the same order."""

    def formula(*bounds: Bound) -> Bound:
        half = len(bounds) // 2
        dense, variant = bounds[:half], bounds[half:]
        kept, base = (dense, variant) if lower_is_better else (variant, dense)
        if definition == "ratio_of_sums":
            return sum(kept, Bound(0.0, 0.0)) / sum(base, Bound(0.0, 0.0)) * 100
        return mean(*(k / b for k, b in zip(kept, base))) * 100

    return formula


def _generation_checks(tables: ClaimsTables, name: str, definition: str) -> list[Check]:
    frame = tables[name]
    pooled = (frame["model"] == "all").any()
    scores = frame[~frame["benchmark"].str.startswith("RP(")]
    rp_rows = frame[frame["benchmark"].str.startswith("RP(")]
    checks = []
    for record in rp_rows.to_dict("records"):
        if record["method"] == "Dense":
            continue
        metric = "PPL" if record["benchmark"] == "RP(PPL)" else "ROUGE-1"
        selected = scores[scores["metric"] == metric]
        if not pooled:
            selected = selected[selected["model"] == record["model"]]
        variant = selected[selected["method"] == record["method"]]
        dense = selected[selected["method"] == "Dense"].set_index(["model", "benchmark"])
        keys = [(r["model"], r["benchmark"]) for r in variant.to_dict("records")]
        inputs = tuple(Printed.parse(dense.loc[key, "value_text"]) for key in keys) + tuple(
            Printed.parse(text) for text in variant["value_text"])
        quantity = record["benchmark"]
        checks.append(Check(_claim_id(name, record["model"], record["method"], quantity),
                            _source(name, record["src_line"]), quantity, Printed.parse(record["value_text"]),
                            inputs, _generation_rp(definition, metric == "PPL"),
                            model=record["model"], method=record["method"]))
    return checks


def _table_definition(tables: ClaimsTables, name: str) -> tuple[str, dict[str, int], int]:
    """The definition that fits most RP cells of a generation table (ties: ratio of sums)."""
    fits = {}
    total = 0
    for definition in GENERATION_DEFINITIONS:
        rows = [_check_row(check) for check in _generation_checks(tables, name, definition)]
        fits[definition] = sum(row["verdict"] == CONSISTENT for row in rows)
        total = len(rows)
    best = max(GENERATION_DEFINITIONS, key=lambda d: fits[d])
    return best, fits, total


@audit_rule
def generation_rp_definition(tables: ClaimsTables) -> Iterator[Check | Finding]:
    """Tables 2 and 7: RP(PPL) (dense/variant, lower is better) and RP(Rouge) (variant/dense). The paper does
    not define them; each table is checked under the definition that fits most of its cells, and the two
    tables' definitions are compared."""
    chosen = {}
    for name in ("table02", "table07"):
        if name not in tables:
            continue
        definition, fits, total = _table_definition(tables, name)
        chosen[name] = definition
        other = next(d for d in GENERATION_DEFINITIONS if d != definition)
        note = (f"definition fitting this table: {definition} ({fits[definition]}/{total} cells; "
                f"{other}: {fits[other]}/{total})")
        if name == "table02":
            note = _join(note, "PPL pooled over the three models' WIKI and C4 cells")
        for check in _generation_checks(tables, name, definition):
            yield replace(check, note=note)
    if len(chosen) == 2:
        same = chosen["table02"] == chosen["table07"]
        yield Finding("T02-T07/RP definition", "Tables 2 and 7", "RP(PPL)/RP(Rouge) definition",
                      chosen["table07"], chosen["table02"], CONSISTENT if same else INCONSISTENT,
                      "" if same else "Table 2 and Table 7 compute RP differently for the same column names")


def _flops_rows(tables: ClaimsTables) -> dict[tuple[str, str], dict[str, Any]]:
    """Table 10 as {(model, method): {quantity: Printed | None, 'line': src_line}}."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for record in tables["table10"].to_dict("records"):
        entry = rows.setdefault((record["model"], record["method"]), {"line": record["src_line_text"]})
        entry[record["quantity"]] = Printed.parse(record["value_text"]) if record["value_text"] else None
    return rows


def _reduction(dense: Bound, variant: Bound) -> Bound:
    return (dense - variant) / dense * 100


def _speedup_minus_one(dense: Bound, variant: Bound) -> Bound:
    return (dense / variant - 1) * 100


def _speedup(dense: Bound, variant: Bound) -> Bound:
    return dense / variant


@audit_rule
def flops_change_is_relative_reduction(tables: ClaimsTables) -> Iterator[Check]:
    """Table 10: Change (%) = (dense - variant) / dense x 100 (the text calls it 'FLOPs were reduced by')."""
    if "table10" not in tables:
        return
    rows = _flops_rows(tables)
    for (model, method), entry in rows.items():
        dense = rows.get((model, "Dense"))
        if method == "Dense" or dense is None or entry.get("Change_pct") is None:
            continue
        inputs = (dense["FLOPs_G"], entry["FLOPs_G"])
        alternative = Check("", "", "", entry["Change_pct"], inputs, _speedup_minus_one)
        note = ""
        if _check_row(alternative)["verdict"] == CONSISTENT:
            note = "matches (dense/variant - 1) x 100 instead, i.e. the speed-up minus one, not a reduction"
        yield Check(_claim_id("table10", model, method, "Change_pct"), _source("table10", entry["line"]),
                    "Change_pct", entry["Change_pct"], inputs, _reduction, note, model, method)


@audit_rule
def speedup_is_flops_ratio(tables: ClaimsTables) -> Iterator[Check]:
    """Table 10: SpeedUp = dense FLOPs / variant FLOPs."""
    if "table10" not in tables:
        return
    rows = _flops_rows(tables)
    for (model, method), entry in rows.items():
        dense = rows.get((model, "Dense"))
        if method == "Dense" or dense is None or entry.get("SpeedUp_x") is None:
            continue
        yield Check(_claim_id("table10", model, method, "SpeedUp_x"), _source("table10", entry["line"]),
                    "SpeedUp_x", entry["SpeedUp_x"], (dense["FLOPs_G"], entry["FLOPs_G"]), _speedup,
                    model=model, method=method)


@audit_rule
def dense_flops_analytic(tables: ClaimsTables) -> Iterator[Check]:
    """Table 10 dense rows against the analytic count of the model's config under ``flops.PAPER_CONVENTION``
    (the convention was found by searching against these cells, so this pins it rather than tests the paper)."""
    if "table10" not in tables:
        return
    for (model, method), entry in _flops_rows(tables).items():
        if method != "Dense" or _config(model) is None:
            continue
        yield Check(_claim_id("table10", model, method, "FLOPs_G"), _source("table10", entry["line"]), "FLOPs_G",
                    entry["FLOPs_G"], (_exact(_dense_gflops(model)),), lambda x: x,
                    flops.PAPER_CONVENTION.describe(), model, method)


def _whole_layers_from_flops(model: str, variant_gflops: Printed) -> tuple[float, int, bool]:
    """(implied layers removed, nearest whole number, whether that whole number reproduces the print)."""
    layers = (_dense_gflops(model) - variant_gflops.value) / _layer_gflops(model)
    whole = round(layers)
    gflops = _dense_gflops(model) - whole * _layer_gflops(model)
    fits = _check_row(Check("", "", "", variant_gflops, (_exact(gflops),), lambda x: x))["verdict"] == CONSISTENT
    return layers, whole, fits


@audit_rule
def variant_flops_is_whole_layer_removal(tables: ClaimsTables) -> Iterator[Check]:
    """Table 10, depth-pruning baselines: the variant's FLOPs should be the dense count minus a whole number of
    analytic layers."""
    if "table10" not in tables:
        return
    for (model, method), entry in _flops_rows(tables).items():
        if _base_method(method) not in DEPTH_METHODS or _config(model) is None:
            continue
        layers, whole, _ = _whole_layers_from_flops(model, entry["FLOPs_G"])
        note = f"implies {layers:.3f} layers removed; nearest whole number {whole}"
        if _base_method(method) == "Streamline":
            note = _join(note, "Streamline also adds a lightweight replacement module, counted nowhere here")
        gflops = _dense_gflops(model) - whole * _layer_gflops(model)
        yield Check(_claim_id("table10", model, method, "FLOPs_G"), _source("table10", entry["line"]), "FLOPs_G",
                    entry["FLOPs_G"], (_exact(gflops),), lambda x: x, note, model, method)


SLICING_METHODS = ("SliceGPT",)
SHORTCUT_CHOICES = (0, 1, 2)


@audit_rule
def sliced_flops_width(tables: ClaimsTables) -> Iterator[Finding]:
    """Table 10, width-slicing baselines: which residual width (with 0, 1 or 2 width x width shortcut matrices
    per layer) gives the printed FLOPs. SliceGPT's exact layout is not in the paper, so this only reports."""
    if "table10" not in tables:
        return
    for (model, method), entry in _flops_rows(tables).items():
        if _base_method(method) not in SLICING_METHODS or _config(model) is None:
            continue
        claimed = entry["FLOPs_G"]
        nearest = [_nearest_width(model, claimed.value, shortcuts) for shortcuts in SHORTCUT_CHOICES]
        exact = [(w, sc) for (w, gflops), sc in zip(nearest, SHORTCUT_CHOICES)
                 if abs(gflops - claimed.value) <= 0.5 * 10.0 ** -claimed.decimals]
        d = _config(model).hidden_size
        described = "; ".join(f"{sc} shortcut matrices: width {w} ({100 * (1 - w / d):.1f}% sliced) gives "
                              f"{gflops:.2f}" for (w, gflops), sc in zip(nearest, SHORTCUT_CHOICES))
        yield Finding(_claim_id("table10", model, method, "FLOPs_G"), _source("table10", entry["line"]),
                      "FLOPs_G", claimed, "width " + ", ".join(str(w) for w, _ in exact) if exact else "no width fits",
                      NOT_CHECKABLE, described, model, method)


def _nearest_width(model: str, gflops: float, shortcuts: int) -> tuple[int, float]:
    """The residual width whose sliced model's FLOPs are closest to ``gflops`` (FLOPs grow with the width)."""
    config = _config(model)

    def count(width: int) -> float:
        return flops.variant_spec(config, residual_width=width, shortcut_matrices=shortcuts).flops() / 1e9

    low, high = 1, config.hidden_size
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle) <= gflops else (low, middle)
    return min(((w, count(w)) for w in (low, high)), key=lambda pair: abs(pair[1] - gflops))


@audit_rule
def ratio_matches_layer_count(tables: ClaimsTables) -> Iterator[Check]:
    """Table 1, depth-pruning rows: the Ratio column should be (layers removed x layer params) / total params.
    The layer count comes from Table 10's FLOPs where that gives a whole number, else from the ratio itself
    (nearest whole number)."""
    if "table01" not in tables:
        return
    flops_rows = _flops_rows(tables) if "table10" in tables else {}
    for row in _rows(tables, "table01"):
        if _base_method(row.method) not in DEPTH_METHODS or _config(row.model) is None or row.ratio is None:
            continue
        per_layer, total = _layer_params(row.model), _total_params(row.model)
        from_flops = flops_rows.get((row.model, _base_method(row.method)), {}).get("FLOPs_G")
        if from_flops is not None and _whole_layers_from_flops(row.model, from_flops)[2]:
            layers = _whole_layers_from_flops(row.model, from_flops)[1]
            note = f"{layers} layers, from Table 10's {from_flops} GFLOPs"
        else:
            implied = row.ratio.value / 100 * total / per_layer
            layers = round(implied)
            note = f"ratio implies {implied:.2f} layers; nearest whole number {layers}"
        yield Check(_claim_id("table01", row.model, row.method, "pruning_ratio"), _source("table01", row.line),
                    "pruning_ratio", row.ratio, (_exact(100 * layers * per_layer / total),), lambda x: x, note,
                    row.model, row.method)


@dataclass(frozen=True)
class BlockPlan:
    """Table 5 for one model: the replaced spans (inclusive) and the printed ratio."""

    model: str
    spans: tuple[tuple[int, int], ...]
    ratio: Printed
    line: Any

    @property
    def layers(self) -> int:
        return sum(last - first + 1 for first, last in self.spans)


def _block_plans(tables: ClaimsTables) -> list[BlockPlan]:
    plans = []
    for model, group in tables["table05"].groupby("model", sort=False):
        spans = tuple((int(r["first_layer"]), int(r["last_layer"])) for r in group.to_dict("records"))
        first = group.iloc[0]
        plans.append(BlockPlan(model, spans, Printed.parse(first["pruning_ratio_text"]), first["src_line_text"]))
    return plans


def _fold_cells(tables: ClaimsTables, model: str, quantity: str) -> tuple[Printed, str] | None:
    """Table 12's fold-block cell for ``model``, else for a Table 12 model of the same hidden size."""
    if "table12" not in tables:
        return None
    frame = tables["table12"]
    folds = frame[(frame["component"] == "Fold Block") & (frame["quantity"] == quantity)]
    same_width = [m for m in folds["model"].unique()
                  if _config(m) is not None and _config(model) is not None
                  and _config(m).hidden_size == _config(model).hidden_size]
    donor = model if model in same_width else (same_width[0] if same_width else None)
    if donor is None:
        return None
    cell = folds[folds["model"] == donor].iloc[0]
    note = "" if donor == model else f"fold size taken from {donor} (same hidden size)"
    return Printed.parse(cell["value_text"]), note


@audit_rule
def ratio_from_table5_blocks(tables: ClaimsTables) -> Iterator[Check]:
    """Table 1 ratios of Ours / Ours (PEFT) / w/o Kernel against Table 5's replaced layers: w/o Kernel removes
    them; Ours replaces each span by a fold of Table 12's size. Also Table 5's own ratio vs Table 1's."""
    if "table05" not in tables or "table01" not in tables:
        return
    rows = _rows(tables, "table01")
    for plan in _block_plans(tables):
        if _config(plan.model) is None:
            continue
        removed = plan.layers * _layer_params(plan.model)
        total = _total_params(plan.model)
        spans = ", ".join(f"[{a},{b}]" for a, b in plan.spans)
        layout = f"Table 5: {plan.layers} layers in {len(plan.spans)} spans {spans}"
        fold = _fold_cells(tables, plan.model, "Params")
        for method in ("Ours", "Ours (PEFT)", "w/o Kernel"):
            row = _row(rows, plan.model, method)
            if row is None or row.ratio is None:
                continue
            if method == "w/o Kernel":
                check = Check("", "", "", row.ratio, (_exact(removed), _exact(0)), _net_share(total, 0), layout)
            elif fold is None:
                continue
            else:
                folds = len(plan.spans)
                check = Check("", "", "", row.ratio, (_exact(removed), fold[0]), _net_share(total, folds),
                              _join(layout, f"{folds} folds of {fold[0]} M params", fold[1]))
            yield replace(check, claim_id=_claim_id("table01", plan.model, method, "pruning_ratio"),
                          source=_source("table01", row.line), quantity="pruning_ratio", model=plan.model,
                          method=method)
        ours = _row(rows, plan.model, "Ours")
        if ours is not None and ours.ratio is not None:
            yield Check(_claim_id("table05", plan.model, "pruning_ratio"), _source("table05", plan.line),
                        "pruning_ratio", plan.ratio, (ours.ratio,), lambda x: x,
                        "Table 5's ratio against Table 1's Ours ratio", plan.model, "Ours")


def _net_share(total: int, folds: int) -> Formula:
    """Percent of ``total`` parameters removed: the layers, minus ``folds`` folds of a size given in millions."""
    return lambda removed, fold_millions: (removed - fold_millions * 1e6 * folds) / total * 100


@audit_rule
def ours_flops_from_blocks(tables: ClaimsTables) -> Iterator[Check]:
    """Table 10's Ours FLOPs against Table 5's layers and Table 12's fold FLOPs: dense - layers x layer FLOPs +
    spans x fold FLOPs. Where that fails, the note names the (layers, folds) counts that would fit."""
    if not all(name in tables for name in ("table05", "table10", "table12")):
        return
    rows = _flops_rows(tables)
    for plan in _block_plans(tables):
        entry = rows.get((plan.model, "Ours"))
        fold = _fold_cells(tables, plan.model, "FLOPs")
        if entry is None or fold is None or _config(plan.model) is None:
            continue
        formula = _ours_flops_formula(plan.model, plan.layers, len(plan.spans))
        check = Check(_claim_id("table10", plan.model, "Ours", "FLOPs_G"), _source("table10", entry["line"]),
                      "FLOPs_G", entry["FLOPs_G"], (fold[0],), formula,
                      _join(f"Table 5: {plan.layers} layers, {len(plan.spans)} folds of {fold[0]} GFLOPs", fold[1]),
                      plan.model, "Ours")
        if _check_row(check)["verdict"] == INCONSISTENT:
            fits = _fitting_layouts(plan.model, entry["FLOPs_G"], fold[0])
            if fits:
                check = replace(check, note=_join(check.note, "fits instead: " + ", ".join(
                    f"{n} layers removed + {f} folds" for n, f in fits)))
        yield check


def _ours_flops_formula(model: str, layers: int, folds: int) -> Formula:
    dense, per_layer = _dense_gflops(model), _layer_gflops(model)
    return lambda fold: dense - layers * per_layer + folds * fold


def _fitting_layouts(model: str, claimed: Printed, fold: Printed) -> list[tuple[int, int]]:
    """(layers, folds) pairs, 1 <= folds <= layers, that reproduce ``claimed`` under either rounding reading."""
    fits = []
    for layers in range(1, _config(model).num_hidden_layers + 1):
        for folds in range(1, layers + 1):
            row = _check_row(Check("", "", "", claimed, (fold,), _ours_flops_formula(model, layers, folds)))
            if row["verdict"] == CONSISTENT or "truncated" in row["note"]:
                fits.append((layers, folds))
    return fits


def _block_cells(tables: ClaimsTables) -> Iterator[tuple[dict[str, Any], str, int]]:
    for record in tables["table12"].to_dict("records"):
        yield record, record["model"], int(record["k"])


@audit_rule
def block_cost_analytic(tables: ClaimsTables) -> Iterator[Check]:
    """Table 12 'Transformer Block' FLOPs and parameters against k analytic decoder layers."""
    if "table12" not in tables:
        return
    for record, model, k in _block_cells(tables):
        if record["component"] != "Transformer Block" or _config(model) is None:
            continue
        gflops, params = flops.block_cost(_config(model), k)
        value = gflops / 1e9 if record["quantity"] == "FLOPs" else params / 1e6
        note = flops.PAPER_CONVENTION.describe() if record["quantity"] == "FLOPs" else "norm weights included"
        yield Check(_claim_id("table12", model, "Transformer Block", record["quantity"], f"k={k}"),
                    _source("table12", record["src_line_text"]), f"{record['quantity']} (k={k})",
                    Printed.parse(record["value_text"]), (_exact(value),), lambda x: x, note, model,
                    "Transformer Block")


@audit_rule
def retention_is_fold_over_block(tables: ClaimsTables) -> Iterator[Check]:
    """Table 12: Retention Rate = Fold Block / Transformer Block x 100, for FLOPs and parameters."""
    if "table12" not in tables:
        return
    frame = tables["table12"]
    cells = {(r["model"], r["component"], r["quantity"], int(r["k"])): Printed.parse(r["value_text"])
             for r in frame.to_dict("records")}
    for record, model, k in _block_cells(tables):
        if record["component"] != "Retention Rate":
            continue
        quantity = record["quantity"]
        fold = cells.get((model, "Fold Block", quantity, k))
        block = cells.get((model, "Transformer Block", quantity, k))
        if fold is None or block is None:
            continue
        yield Check(_claim_id("table12", model, "Retention Rate", quantity, f"k={k}"),
                    _source("table12", record["src_line_text"]), f"retention {quantity} (k={k})",
                    Printed.parse(record["value_text"]), (fold, block), _pct_of, model=model,
                    method="Retention Rate")


@audit_rule
def fold_block_size(tables: ClaimsTables) -> Iterator[Finding]:
    """Table 12 fold rows against Appendix I. r and d_hidden are not published, so the parameter cell is
    not checkable; the rule reports which (r, d_hidden) reproduce it, and whether the FLOPs cell is reachable
    by any of them under the convention that reproduces the transformer-block rows."""
    if "table12" not in tables:
        return
    frame = tables["table12"]
    folds = frame[(frame["component"] == "Fold Block") & (frame["k"] == frame["k"].min())]
    fits_by_model = {}
    for record in folds[folds["quantity"] == "Params"].to_dict("records"):
        model = record["model"]
        if _config(model) is None:
            continue
        printed = Printed.parse(record["value_text"])
        fits = flops.fold_fits(_config(model).hidden_size, PAPER_RFF_DIM, printed.value, printed.decimals)
        fits_by_model[model] = (printed, fits, record)
    shared = set.intersection(*({(f.rank, f.hidden) for f in fits} for _, fits, _ in fits_by_model.values())) \
        if len(fits_by_model) > 1 else set()
    for model, (printed, fits, record) in fits_by_model.items():
        note = _join(_fold_fit_summary(fits, _config(model).hidden_size), _shared_summary(shared, fits_by_model))
        yield Finding(_claim_id("table12", model, "Fold Block", "Params"), _source("table12", record["src_line_text"]),
                      "fold params (M)", printed, f"{len(fits)} (r, d_hidden) pairs fit", NOT_CHECKABLE, note,
                      model, "Fold Block")
    for record in folds[folds["quantity"] == "FLOPs"].to_dict("records"):
        model = record["model"]
        if model not in fits_by_model:
            continue
        yield _fold_flops_finding(model, Printed.parse(record["value_text"]), fits_by_model[model][1], record)


def _fold_fit_summary(fits: Sequence[flops.FoldFit], d: int) -> str:
    if not fits:
        return "no (r, d_hidden) reproduces the printed count with Appendix I's inference formula"
    round_ones = [f"(r={f.rank}, d_hidden={f.hidden})" for f in fits
                  if 0 < f.rank <= d // 8 and f.rank & (f.rank - 1) == 0 and f.hidden % 64 == 0]
    at_2048 = sorted({f.rank for f in fits if f.hidden == 2048})
    parts = [f"Appendix I inference formula, 2m={PAPER_RFF_DIM}: d_hidden {min(f.hidden for f in fits)}"
             f"-{max(f.hidden for f in fits)} depending on r"]
    if round_ones:
        parts.append("with r <= d/8 a power of two and d_hidden a multiple of 64: " + ", ".join(round_ones))
    if at_2048:
        parts.append(f"d_hidden=2048 needs r={at_2048[0]}-{at_2048[-1]}")
    return "; ".join(parts)


def _shared_summary(shared: set[tuple[int, int]], fits_by_model: Mapping[str, Any]) -> str:
    if len(fits_by_model) < 2:
        return ""
    if not shared:
        return "no single (r, d_hidden) fits all models"
    ranks = sorted(r for r, _ in shared)
    hiddens = sorted(h for _, h in shared)
    return (f"one (r, d_hidden) fits all of {', '.join(fits_by_model)} only for r={ranks[0]}-{ranks[-1]} with "
            f"d_hidden={hiddens[0]}-{hiddens[-1]}")


def _fold_flops_finding(model: str, printed: Printed, fits: Sequence[flops.FoldFit],
                        record: Mapping[str, Any]) -> Finding:
    d = _config(model).hidden_size
    claimed = printed.bound("rounded")
    gflops = {(f.rank, f.hidden): flops.FoldSpec(d, PAPER_RFF_DIM, f.rank, f.hidden).flops(flops.PAPER_CONVENTION) / 1e9
              for f in fits}
    reachable = [key for key, value in gflops.items() if claimed.lo <= value <= claimed.hi]
    doubled = sorted(key for key, value in gflops.items() if claimed.lo <= 2 * value <= claimed.hi)
    highest = max(gflops.values(), default=math.nan)
    per_token = flops.fold_macs_per_token(d, PAPER_RFF_DIM, 1) - flops.fold_macs_per_token(d, PAPER_RFF_DIM, 0)
    needed = (printed.value * 1e9 / flops.PAPER_CONVENTION.seq_len - flops.fold_macs_per_token(d, PAPER_RFF_DIM, 0))
    note = (f"under the block rows' convention (Omega precomputed) the fold needs d_hidden={needed / per_token:.0f} "
            f"for {printed} GFLOPs, but its parameter count allows at most d_hidden="
            f"{max((f.hidden for f in fits), default=0)}")
    if doubled:
        note = _join(note, f"at two FLOPs per MAC (twice the blocks' convention) r={doubled[0][0]}-{doubled[-1][0]}, "
                           f"d_hidden={min(h for _, h in doubled)}-{max(h for _, h in doubled)} fit both cells")
    verdict = CONSISTENT if reachable else INCONSISTENT
    return Finding(_claim_id("table12", model, "Fold Block", "FLOPs"), _source("table12", record["src_line_text"]),
                   "fold FLOPs (G)", printed, f"at most {highest:.2f} for any (r, d_hidden) fitting the params",
                   verdict, note, model, "Fold Block",
                   (printed.value - highest) / highest if not reachable and fits else math.nan)


CROSS_TABLE_LINKS = (
    # (table, model, method) pairs that print the same evaluation and must agree benchmark by benchmark
    (("table09", "LLaMA-2-7B", "Original"), ("table01", "LLaMA-2-7B", "Ours")),
    (("table11", "LLaMA-2-7B", "Dense"), ("table01", "LLaMA-2-7B", "Dense")),
    (("table11", "LLaMA-2-7B", "Standard"), ("table01", "LLaMA-2-7B", "Ours")),
    (("table03", "LLaMA-3-8B", "Dense"), ("table01", "LLaMA-3-8B", "Dense")),
    (("table03", "LLaMA-3-8B", "Ours"), ("table01", "LLaMA-3-8B", "Ours")),
)


@audit_rule
def same_values_across_tables(tables: ClaimsTables) -> Iterator[Check]:
    """Rows that report the same model and variant in two tables must print the same benchmark values."""
    for (left_table, left_model, left_method), (right_table, right_model, right_method) in CROSS_TABLE_LINKS:
        if left_table not in tables or right_table not in tables:
            continue
        left = _row(_rows(tables, left_table), left_model, left_method)
        right = _row(_rows(tables, right_table), right_model, right_method)
        if left is None or right is None:
            continue
        right_cells = {bench.lower(): cell for bench, cell in right.benchmarks().items()}
        for bench, cell in left.benchmarks().items():
            other = right_cells.get(bench.lower())
            if cell is None or other is None:
                continue
            note = f"{_source(right_table, right.line)} {right_method} prints {other}"
            near = [b for b, c in right.benchmarks().items() if c is not None and c.value == cell.value]
            if cell.value != other.value and near:
                where = f"Table {_table_number(right_table)}"
                note = _join(note, f"{cell} is {right_method}'s {', '.join(near)} in {where}")
            yield Check(f"{_claim_id(left_table, left_model, left_method, bench)}~T{_table_number(right_table):02d}",
                        _source(left_table, left.line), bench, cell, (other,), lambda x: x, note, left_model,
                        left_method)


DUPLICATE_SHARE = 0.5
DUPLICATE_MIN_CELLS = 4
# Table 6 heads Table 1's C3 column "CS"; the other eleven benchmarks are spelled the same.
COLUMN_ALIASES = {"CS": "C3"}


@audit_rule
def cross_model_duplicate_rows(tables: ClaimsTables) -> Iterator[Finding]:
    """Tables 1 and 6: rows of different models sharing half or more identical benchmark values are flagged
    (independent runs of different models agree to 0.1 points by chance only rarely)."""
    rows = [(name, row) for name in ("table01", "table06") if name in tables for row in _rows(tables, name)]
    for (name_a, a), (name_b, b) in _pairs(rows):
        if a.model == b.model:
            continue
        cells_a, cells_b = _canonical_cells(a), _canonical_cells(b)
        shared = [bench for bench in cells_a if bench in cells_b]
        same = [bench for bench in shared if cells_a[bench].value == cells_b[bench].value]
        if len(same) < DUPLICATE_MIN_CELLS or len(same) < DUPLICATE_SHARE * len(shared):
            continue
        differing = [bench for bench in shared if bench not in same]
        one_digit = [bench for bench in differing if _one_character_apart(str(cells_a[bench]), str(cells_b[bench]))]
        note = _join("likely a copied row",
                     "differing: " + ", ".join(f"{b_} {cells_a[b_]} vs {cells_b[b_]}" for b_ in differing),
                     f"{len(one_digit)} of the {len(differing)} differing cells differ in one printed digit"
                     if differing else "")
        yield Finding(f"{_claim_id(name_a, a.model, a.method)}={_claim_id(name_b, b.model, b.method)}",
                      f"{_source(name_a, a.line)}; {_source(name_b, b.line)}", "identical benchmark values",
                      f"{a.model} {a.method}", f"{len(same)}/{len(shared)} shared benchmarks identical to "
                      f"{b.model} {b.method}", INCONSISTENT, note, a.model, a.method)


def _canonical_cells(row: TableRow) -> dict[str, Printed]:
    return {COLUMN_ALIASES.get(bench, bench): cell for bench, cell in row.benchmarks().items() if cell is not None}


def _one_character_apart(a: str, b: str) -> bool:
    return len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1


def _pairs(items: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
    for i, first in enumerate(items):
        for second in items[i + 1:]:
            yield first, second


# ---------------------------------------------------------------------------- rules: textual claims


def _claims(tables: ClaimsTables) -> dict[str, dict[str, Any]]:
    return {record["claim_id"]: record for record in tables["claims"].to_dict("records")}


def _claimed_number(tables: ClaimsTables, claim: Mapping[str, Any], text: str | None = None) -> Printed:
    """A claim's number; a value that is not one is a UserError naming file, line and column."""
    text = claim["value"] if text is None else text
    try:
        return Printed.parse(text)
    except ValueError:
        raise UserError(f"{tables.directory / 'claims.csv'} line {claim['_line']}, column 'value': "
                        f"{text!r} is not a number (claim {claim['claim_id']} needs one)") from None


def _claim_source(claim: Mapping[str, Any]) -> str:
    return f"{claim['location']} (claims.csv line {claim['_line']})"


# The text names the model each of these claims is about.
BEST_BASELINE_CLAIMS = {"C07": "LLaMA-2-7B", "C08": "LLaMA-2-13B", "C09": "LLaMA-3-8B"}
KERNEL_GAIN_CLAIMS = {"C10": "LLaMA-2-7B", "C11": "LLaMA-2-13B", "C12": "LLaMA-3-8B"}


def _text_rp_gap(tables: ClaimsTables, mapping: Mapping[str, str],
                 opponents: Callable[[list[TableRow], str], list[TableRow]]) -> Iterator[tuple]:
    if "claims" not in tables or "table01" not in tables:
        return
    claims, rows = _claims(tables), _rows(tables, "table01")
    for claim_id, model in mapping.items():
        ours = _row(rows, model, "Ours")
        others = [row for row in opponents(rows, model) if row.cells.get("RP") is not None]
        if claim_id not in claims or ours is None or not others:
            continue
        best = max(others, key=lambda row: row.cells["RP"].value)
        yield claims[claim_id], model, ours, best, others


@audit_rule
def text_beats_best_baseline(tables: ClaimsTables) -> Iterator[Check]:
    """Sec 4.2: Ours' RP 'surpasses that of the best-performing baseline by X%' (read as percentage points,
    as the next paragraph's 'percentage points' does; the note gives the relative reading too)."""

    def baselines(rows: list[TableRow], model: str) -> list[TableRow]:
        return [row for row in rows if row.model == model and _base_method(row.method) not in NOT_BASELINES]

    untuned_methods = _untuned_methods(tables)
    for claim, model, ours, best, others in _text_rp_gap(tables, BEST_BASELINE_CLAIMS, baselines):
        untuned = [row for row in others if row.method in untuned_methods]
        best_untuned = max(untuned, key=lambda row: row.cells["RP"].value, default=None)
        relative = 100 * (ours.cells["RP"].value / best.cells["RP"].value - 1)
        note = _join(f"best baseline {best.method} RP {best.cells['RP']}",
                     f"relative reading: {relative:.1f}%",
                     f"against methods without fine-tuning only ({best_untuned.method}): "
                     f"{ours.cells['RP'].value - best_untuned.cells['RP'].value:.1f} pp" if best_untuned else "")
        yield Check(claim["claim_id"], _claim_source(claim), "RP gain over best baseline (pp)",
                    _claimed_number(tables, claim), (ours.cells["RP"], best.cells["RP"]), lambda a, b: a - b,
                    note, model, "Ours")


def _untuned_methods(tables: ClaimsTables) -> set[str]:
    """Methods Table 8 lists as needing no fine-tuning (empty without Table 8)."""
    if "table08" not in tables:
        return set()
    frame = tables["table08"]
    return set(frame.loc[frame["need_finetuning"] == "no", "method"])


@audit_rule
def text_kernel_gain(tables: ClaimsTables) -> Iterator[Check]:
    """Sec 4.2: the kernel 'boosts the average retained performance by X percentage points' over w/o Kernel."""

    def ablation(rows: list[TableRow], model: str) -> list[TableRow]:
        return [row for row in rows if row.model == model and row.method == "w/o Kernel"]

    for claim, model, ours, best, _ in _text_rp_gap(tables, KERNEL_GAIN_CLAIMS, ablation):
        yield Check(claim["claim_id"], _claim_source(claim), "RP gain over w/o Kernel (pp)",
                    _claimed_number(tables, claim), (ours.cells["RP"], best.cells["RP"]), lambda a, b: a - b,
                    model=model, method="Ours")


@audit_rule
def text_counts(tables: ClaimsTables) -> Iterator[Check]:
    """Counts stated in the text against the tables: benchmarks (C01), models (C02), baselines (C06), and the
    'among the three' models of the speed-up paragraph (C37) against Table 10."""
    if "claims" not in tables:
        return
    claims = _claims(tables)
    counts: dict[str, tuple[str, int, str]] = {}
    if "table01" in tables and "table02" in tables:
        classification = [b for b in tables["table01"]["benchmark"].unique() if b not in SUMMARY_COLUMNS]
        generation = [b for b in tables["table02"]["benchmark"].unique() if not b.startswith("RP(")]
        counts["C01"] = ("n_benchmarks", len(classification) + len(generation),
                         f"Table 1: {len(classification)} benchmarks; Table 2: {', '.join(generation)}")
    models = sorted({m for name in ("table01", "table02", "table03", "table06", "table07") if name in tables
                     for m in tables[name]["model"].unique() if m != "all"})
    if models:
        counts["C02"] = ("n_models", len(models), ", ".join(models))
    if "table01" in tables:
        baselines = sorted({_base_method(m) for m in tables["table01"]["method"].unique()} - set(NOT_BASELINES))
        counts["C06"] = ("n_baselines", len(baselines), ", ".join(baselines))
    for claim_id, (quantity, value, note) in counts.items():
        if claim_id in claims:
            yield Check(claim_id, _claim_source(claims[claim_id]), quantity,
                        _exact(_claimed_number(tables, claims[claim_id]).value), (_exact(value),), lambda x: x, note)
    if "C37" in claims and "table10" in tables:
        _, _, stated = claims["C37"]["value"].partition(";")
        n_models = tables["table10"]["model"].nunique()
        yield Check("C37/n_models", _claim_source(claims["C37"]), "models compared ('among the three')",
                    _exact(_claimed_number(tables, claims["C37"], stated).value), (_exact(n_models),), lambda x: x,
                    f"Table 10 has {n_models} models")


TRAINING_SET_CLAIMS = {"C04": "Standard", "C39": "Fewer"}


@audit_rule
def text_training_set_sizes(tables: ClaimsTables) -> Iterator[Check]:
    """Training-set sizes: sources (Table 11's 'Nd') x samples per source (from the claim's text) against the
    stated total; Table 8's 'Ours' total for the standard set."""
    if "claims" not in tables or "table11" not in tables:
        return
    claims = _claims(tables)
    settings = tables["table11"].drop_duplicates("method").set_index("method")
    for claim_id, setting in TRAINING_SET_CLAIMS.items():
        if claim_id not in claims or setting not in settings.index:
            continue
        claim = claims[claim_id]
        per_source = re.search(r"(\d+) (?:samples )?(?:from )?each", claim["text"])
        if per_source is None:
            continue
        sources = int(settings.loc[setting, "n_datasets"])
        yield Check(claim_id, _claim_source(claim), "training samples", _exact(_claimed_number(tables, claim).value),
                    (_exact(sources * int(per_source.group(1))),), lambda x: x,
                    f"Table 11 {setting}: {sources} sources x {per_source.group(1)} samples")
    if "C41" in claims and {"Fewer", "Standard", "More"} <= set(settings.index):
        claim = claims["C41"]
        added = re.findall(r"\+\s*([A-Z][\w-]*)", claim["text"])
        fewer, standard = int(settings.loc["Fewer", "n_datasets"]), int(settings.loc["Standard", "n_datasets"])
        yield Finding("C41", _claim_source(claim), "datasets in 'More'", claim["value"],
                      f"Table 11 More: {int(settings.loc['More', 'n_datasets'])} datasets", NOT_CHECKABLE,
                      f"'this base dataset' read as the Fewer set gives {fewer}+{len(added)}={fewer + len(added)} "
                      f"datasets, read as the standard set {standard}+{len(added)}={standard + len(added)}; the "
                      f"{', '.join(added)} sample counts behind the 11.4k total are not given")
    if "table08" in tables and "C04" in claims:
        ours = tables["table08"][tables["table08"]["method"] == "Ours"]
        if not ours.empty:
            yield Check("C04/Table8", _claim_source(claims["C04"]), "training samples",
                        _exact(_claimed_number(tables, claims["C04"]).value),
                        (_exact(ours.iloc[0]["total_sample_numeric"]),), lambda x: x, "Table 8 'Ours' total")


# Names the text uses for benchmarks, as Table 1 spells them.
BENCHMARK_ALIASES = {"HellaSwag": "HeSw", "CHID": "CHD", "MNLI": "CMNLI", "Race-High/Middle": "Race"}


@audit_rule
def text_benchmark_list(tables: ClaimsTables) -> Iterator[Finding]:
    """C05: 'test sets of the training datasets except SlimPajama + 6 additional' against Table 1's columns."""
    if "claims" not in tables or "table01" not in tables:
        return
    claims = _claims(tables)
    if "C05" not in claims or "C04" not in claims:
        return
    training = _listed_names(claims["C04"]["text"].partition("each of")[2])
    additional_match = re.search(r"\(([^)]*)\)", claims["C05"]["text"])
    if not training or additional_match is None:
        return
    additional = _listed_names(additional_match.group(1))
    evaluated = [name for name in training if name != "SlimPajama"] + additional
    columns = [b for b in tables["table01"]["benchmark"].unique() if b not in SUMMARY_COLUMNS]
    named = {BENCHMARK_ALIASES.get(name, name) for name in evaluated}
    repeated = sorted({name for name in evaluated if evaluated.count(name) > 1})
    unlisted = [column for column in columns if column not in named]
    consistent = not repeated and not unlisted and len(named) == len(columns)
    note = _join(f"text names {len(named)} distinct sets", f"listed twice: {', '.join(repeated)}" if repeated else "",
                 f"in Table 1 but never named: {', '.join(unlisted)}" if unlisted else "",
                 "the text trains on MNLI; Table 1 reports CMNLI" if "MNLI" in evaluated else "")
    yield Finding("C05", _claim_source(claims["C05"]), "classification benchmarks",
                  f"{len(evaluated)} named", f"{len(columns)} in Table 1", CONSISTENT if consistent else INCONSISTENT,
                  note)


def _listed_names(text: str) -> list[str]:
    return [part.strip().rstrip(".") for part in text.split(",") if part.strip()]


@audit_rule
def text_ours_best_on_sst2(tables: ClaimsTables) -> Iterator[Finding]:
    """C13: baselines 'show a notable degradation' on SST-2 'in contrast' to KDP: Ours should beat every
    baseline's SST-2 score."""
    yield from _ours_beats(tables, "C13", "table01", ("SST2",), "SST-2 accuracy")


@audit_rule
def text_ours_beats_ols(tables: ClaimsTables) -> Iterator[Finding]:
    """C22: KDP outperforms both OLS baselines on every task of Table 3."""
    yield from _ours_beats(tables, "C22", "table03", None, "accuracy vs OLS")


@audit_rule
def text_ours_best_rp_on_opt(tables: ClaimsTables) -> Iterator[Finding]:
    """C29: KDP keeps robust performance on OPT: its RP should be the best non-dense RP of Table 6."""
    yield from _ours_beats(tables, "C29", "table06", ("RP",), "RP")


def _ours_beats(tables: ClaimsTables, claim_id: str, name: str, benchmarks: Sequence[str] | None,
                quantity: str) -> Iterator[Finding]:
    if "claims" not in tables or name not in tables or claim_id not in _claims(tables):
        return
    claim = _claims(tables)[claim_id]
    rows = _rows(tables, name)
    for model in dict.fromkeys(row.model for row in rows):
        ours = _row(rows, model, "Ours")
        if ours is None:
            continue
        others = [row for row in rows if row.model == model and _base_method(row.method) not in NOT_BASELINES]
        losses = []
        for bench in benchmarks or list(ours.benchmarks()):
            mine = ours.cells.get(bench)
            for other in others:
                theirs = other.cells.get(bench)
                if mine is not None and theirs is not None and theirs.value > mine.value:
                    losses.append(f"{other.method} {bench} {theirs} > {mine}")
        yield Finding(f"{claim_id}/{model}", _claim_source(claim), quantity, claim["value"] or claim["text"],
                      "Ours best" if not losses else "; ".join(losses), INCONSISTENT if losses else CONSISTENT,
                      f"{_source(name, ours.line)}", model, "Ours")


@audit_rule
def text_replaced_layers(tables: ClaimsTables) -> Iterator[Finding]:
    """C15: 'layers 10 through 14 have been replaced by KDP' (Fig. 4) against Table 5's LLaMA-2-7B spans."""
    if "claims" not in tables or "table05" not in tables or "C15" not in _claims(tables):
        return
    claim = _claims(tables)["C15"]
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", claim["value"])
    plan = next((p for p in _block_plans(tables) if p.model == "LLaMA-2-7B"), None)
    if match is None or plan is None:
        return
    stated = set(range(int(match.group(1)), int(match.group(2)) + 1))
    replaced = {layer for first, last in plan.spans for layer in range(first, last + 1)}
    spans = [f"[{a},{b}]" for a, b in plan.spans if stated & set(range(a, b + 1))]
    missing, extra = sorted(stated - replaced), sorted(replaced & set(range(min(stated), max(stated) + 1)) - stated)
    consistent = not missing and not extra
    yield Finding("C15", _claim_source(claim), "replaced layers", claim["value"],
                  f"Table 5 spans touching them: {', '.join(spans)}", CONSISTENT if consistent else INCONSISTENT,
                  _join(f"not replaced per Table 5: {missing}" if missing else "",
                        f"replaced per Table 5 but not stated: {extra}" if extra else ""), "LLaMA-2-7B", "Ours")


@audit_rule
def text_kernel_dim(tables: ClaimsTables) -> Iterator[Check]:
    """C16: kernel rows 'reshaped into a 32x32 matrix' must hold the 2m = 1024 features of C27."""
    if "claims" not in tables:
        return
    claims = _claims(tables)
    if "C16" not in claims or "C27" not in claims:
        return
    match = re.search(r"(\d+)\s*x\s*(\d+)", claims["C16"]["text"])
    if match is None:
        return
    claimed = _exact(_claimed_number(tables, claims["C16"]).value)
    yield Check("C16", _claim_source(claims["C16"]), "kernel_dim_2m", claimed,
                (_exact(int(match.group(1)) * int(match.group(2))),), lambda x: x, f"{match.group(0)} heat map")


@audit_rule
def text_sequence_length(tables: ClaimsTables) -> Iterator[Check]:
    """C26: representation sequences of 128 tokens; the FLOPs convention reproducing Tables 10 and 12 counts
    128-token sequences."""
    if "claims" not in tables or "C26" not in _claims(tables):
        return
    claim = _claims(tables)["C26"]
    yield Check("C26", _claim_source(claim), "seq_len", _exact(_claimed_number(tables, claim).value),
                (_exact(flops.PAPER_CONVENTION.seq_len),), lambda x: x,
                "Table 10/12 FLOPs are linear-layer MACs of 128 tokens (equivalently 2 FLOPs/MAC at 64 tokens)")


# Sec 4.4 claims >90% of CMMLU kept at a ~28% pruning rate; the paper says performance declines with the rate.
CMMLU_CLAIM_RATE = 28.0


@audit_rule
def text_cmmlu_retention(tables: ClaimsTables) -> Iterator[Finding]:
    """C20: over 90% of dense CMMLU kept at ~28% pruning. Table 1's Ours rows prune less than 28%, so with
    performance falling as the rate grows, each must already keep over 90%."""
    if "claims" not in tables or "table01" not in tables or "C20" not in _claims(tables):
        return
    claim = _claims(tables)["C20"]
    threshold = float(re.search(r"[\d.]+", claim["value"]).group(0))
    rows = _rows(tables, "table01")
    for ours in (row for row in rows if row.method == "Ours"):
        dense = _row(rows, ours.model, "Dense")
        if dense is None or ours.ratio is None or ours.ratio.value > CMMLU_CLAIM_RATE:
            continue
        kept = 100 * ours.cells["CMMLU"].value / dense.cells["CMMLU"].value
        verdict = CONSISTENT if kept > threshold else INCONSISTENT
        yield Finding(f"C20/{ours.model}", _claim_source(claim), "CMMLU retained (%)", claim["value"],
                      f"{kept:.1f} at {ours.ratio}% (Table 1)", verdict,
                      "" if verdict == CONSISTENT else "below the threshold already at a lower rate than 28%; "
                      "Figure 6 may show other models", ours.model, "Ours",
                      (threshold - kept) / kept if verdict == INCONSISTENT else math.nan)


EDGE_EXCLUSION = 0.1  # Sec 3.1: "we exclude the initial and final 10% of the model's layers"


@audit_rule
def text_edge_exclusion(tables: ClaimsTables) -> Iterator[Finding]:
    """C25: no Table 5 span may touch the first or last 10% of layers (index < 0.1 L or >= 0.9 L)."""
    if "claims" not in tables or "table05" not in tables or "C25" not in _claims(tables):
        return
    claim = _claims(tables)["C25"]
    for plan in _block_plans(tables):
        if _config(plan.model) is None:
            continue
        n = _config(plan.model).num_hidden_layers
        inside = [(a, b) for a, b in plan.spans if a < EDGE_EXCLUSION * n or b >= (1 - EDGE_EXCLUSION) * n]
        yield Finding(f"C25/{plan.model}", _claim_source(claim), "spans inside the excluded 10%",
                      f"layers < {EDGE_EXCLUSION * n:g} and >= {(1 - EDGE_EXCLUSION) * n:g} excluded ({n} layers)",
                      ", ".join(f"[{a},{b}]" for a, b in inside) or "none",
                      INCONSISTENT if inside else CONSISTENT,
                      "0-based indices; with 1-based ones the same spans are inside" if inside else "", plan.model,
                      "Ours")


@audit_rule
def text_peft_keeps_ratio(tables: ClaimsTables) -> Iterator[Check]:
    """C28: the LoRA of Ours (PEFT) is merged into the head, so Ours (PEFT) prunes exactly what Ours prunes."""
    if "table01" not in tables:
        return
    rows = _rows(tables, "table01")
    for peft in (row for row in rows if row.method == "Ours (PEFT)"):
        ours = _row(rows, peft.model, "Ours")
        if ours is None or ours.ratio is None or peft.ratio is None:
            continue
        yield Check(f"C28/{peft.model}", _source("table01", peft.line), "pruning_ratio", peft.ratio, (ours.ratio,),
                    lambda x: x, "Ours (PEFT) ratio against Ours ratio", peft.model, "Ours (PEFT)")


@audit_rule
def text_approximate_ratio(tables: ClaimsTables) -> Iterator[Finding]:
    """C03: 'we prune the layers that account for approximately 25% of the original parameters': reports what
    Table 5's layer counts amount to (the claim is too loose for a verdict)."""
    if "claims" not in tables or "table05" not in tables or "C03" not in _claims(tables):
        return
    claim = _claims(tables)["C03"]
    shares = [f"{plan.model} {100 * plan.layers * _layer_params(plan.model) / _total_params(plan.model):.1f}% "
              f"({plan.layers} layers)" for plan in _block_plans(tables) if _config(plan.model) is not None]
    yield Finding("C03", _claim_source(claim), "pruning_ratio_pct", claim["value"], "; ".join(shares),
                  NOT_CHECKABLE, "Table 5's layers as a share of all parameters, before adding the folds back")


# ----------------------------------------------------------------------- text claims restating cells

# Claims that repeat a table cell: the text row gets the cell's recomputation.
RESTATES = {
    "C33": ("T10/LLaMA-2-7B/Ours/Change_pct",),
    "C34": ("T10/LLaMA-2-7B/Ours/SpeedUp_x",),
    "C35": ("T10/LLaMA-2-13B/Ours/Change_pct",),
    "C36": ("T10/LLaMA-2-13B/Ours/SpeedUp_x",),
    "C27": ("C16",),
    "C37": ("T01/LLaMA-2-13B/Ours/RP",),
    "C38": ("T11/LLaMA-2-7B/Standard/RP_on_Dense",),
    "C40": ("T11/LLaMA-2-7B/Fewer/RP_on_std",),
    "C42": ("T11/LLaMA-2-7B/More/RP_on_std",),
    "C43": ("T12/LLaMA-2-7B/Fold Block/Params", "T12/LLaMA-2-13B/Fold Block/Params"),
    "C44": ("T12/LLaMA-2-7B/Fold Block/FLOPs", "T12/LLaMA-2-13B/Fold Block/FLOPs"),
    "C45": ("T12/LLaMA-2-7B/Retention Rate/FLOPs/k=2",),
    "C46": ("T12/LLaMA-2-7B/Retention Rate/FLOPs/k=3",),
    "C47": ("T12/LLaMA-2-7B/Retention Rate/Params/k=2",),
    "C48": ("T12/LLaMA-2-7B/Retention Rate/Params/k=3",),
    "C49": ("T12/LLaMA-2-13B/Retention Rate/FLOPs/k=2",),
    "C50": ("T12/LLaMA-2-13B/Retention Rate/FLOPs/k=3",),
    "C51": ("T12/LLaMA-2-13B/Retention Rate/Params/k=2",),
    "C52": ("T12/LLaMA-2-13B/Retention Rate/Params/k=3",),
    "C56": ("rule:avg_is_mean_of_benchmarks", "rule:rp_is_avg_over_reference"),
}


def _restatements(tables: ClaimsTables, items: Sequence[Check | Finding]) -> Iterator[Check | Finding]:
    claims = _claims(tables)
    by_id = {item.claim_id: item for item in items}
    for claim_id, targets in RESTATES.items():
        claim = claims.get(claim_id)
        found = [item for target in targets for item in _targets(target, by_id, items)]
        if claim is None or not found:
            continue
        note = "restates " + ", ".join(targets)
        if len(found) == 1 and isinstance(found[0], Check):
            number = claim["value"].partition(";")[0]
            yield replace(found[0], claim_id=claim_id, source=_claim_source(claim),
                          claimed=_claimed_number(tables, claim, number), note=_join(note, found[0].note),
                          rule="restates_table_cell")
            continue
        rows = [_check_row(i) if isinstance(i, Check) else _finding_row(i) for i in found]
        verdicts = {row["verdict"] for row in rows}
        verdict = next(v for v in (INCONSISTENT, CONSISTENT, NOT_CHECKABLE) if v in verdicts)
        failing = [row["claim_id"] for row in rows if row["verdict"] == INCONSISTENT]
        yield Finding(claim_id, _claim_source(claim), claim["quantity"], claim["value"],
                      f"{sum(row['verdict'] == CONSISTENT for row in rows)}/{len(rows)} restated cells consistent",
                      verdict, _join(note, "inconsistent: " + ", ".join(failing) if failing else ""),
                      rule="restates_table_cell")


def _targets(target: str, by_id: Mapping[str, Check | Finding], items: Sequence[Check | Finding]):
    if target.startswith("rule:"):
        return [item for item in items if item.rule == target.removeprefix("rule:")]
    return [by_id[target]] if target in by_id else []


def _uncovered_claims(tables: ClaimsTables, items: Sequence[Check | Finding]) -> Iterator[Finding]:
    covered = {item.claim_id.split("/")[0] for item in items} | set(RESTATES)
    for claim_id, claim in _claims(tables).items():
        if claim_id in covered:
            continue
        yield Finding(claim_id, _claim_source(claim), claim["quantity"], claim["value"], "", NOT_CHECKABLE,
                      f"no printed numbers determine it (qualitative, or only in a figure); depends on: "
                      f"{claim['depends_on']}", rule="uncovered_claim")


# ------------------------------------------------------------------------------------ reproduction


@dataclass(frozen=True)
class Tolerance:
    kind: str  # "absolute" or "relative"
    amount: float

    def agrees(self, claimed: float, reproduced: float) -> bool:
        allowed = self.amount if self.kind == "absolute" else self.amount * abs(claimed)
        return abs(reproduced - claimed) <= allowed

    def __str__(self) -> str:
        return f"±{self.amount:g}" if self.kind == "absolute" else f"±{100 * self.amount:g}%"


REPRODUCTION_TOLERANCES: dict[str, Tolerance] = {
    # Analytic counts of the same architecture should agree up to counting details.
    "FLOPs_G": Tolerance("relative", 0.01),
    "pruning_ratio": Tolerance("absolute", 1.0),
    "SpeedUp_x": Tolerance("absolute", 0.05),
    "FLOPs": Tolerance("relative", 0.01),
    "Params": Tolerance("relative", 0.01),
    # Perplexities move multiplicatively.
    "WIKI": Tolerance("relative", 0.25),
    "C4": Tolerance("relative", 0.25),
}
DEFAULT_REPRODUCTION_TOLERANCE = Tolerance("absolute", 5.0)  # accuracy-like percentages, in points


def attach_reproduced(audit: pd.DataFrame, reproduced: pd.DataFrame,
                      tolerances: Mapping[str, Tolerance] | None = None,
                      claims: ClaimsTables | None = None) -> pd.DataFrame:
    """Fill ``reproduced`` from this project's runs and judge it against the claimed number.

    ``reproduced`` has columns model, method, quantity, value, and optionally ``table`` (the claim-id prefix,
    e.g. ``T01``: Table 1 and Table 11 both print a LLaMA-2-7B "Dense" Avg) and ``reproduced_from`` (where the
    value comes from). The verdict says whether the re-run lands within a tolerance of the claimed number:
    ``REPRODUCTION_TOLERANCES`` per quantity, else ``DEFAULT_REPRODUCTION_TOLERANCE`` (5 points for
    accuracy-like percentages). These tolerances are wide on purpose: a re-run differs in seeds and harness
    version, so they separate "same ballpark" from "different result", not noise from signal. A reproduced
    printed cell that no audit rule recomputes (a plain benchmark score) gets its own row when ``claims`` is
    given; rows without a re-run value keep empty cells.
    """
    missing = [c for c in ("model", "method", "quantity", "value") if c not in reproduced.columns]
    if missing:
        raise UserError(f"reproduced values: missing column(s) {', '.join(missing)}; "
                        "required: model, method, quantity, value")
    tolerances = {**REPRODUCTION_TOLERANCES, **(tolerances or {})}
    keyed = "table" in reproduced.columns
    values = {_reproduced_key(r, keyed): r for r in reproduced.to_dict("records")}
    rows = audit.to_dict("records")
    used = set()
    for row in rows:
        key = _audit_key(row, keyed)
        used.add(key)
        _judge(row, values.get(key), tolerances)
    if claims is not None and keyed:
        for key, value in values.items():
            cell = None if key in used else _printed_cell_row(claims, *key)
            if cell is not None:
                rows.append(_judge(cell, value, tolerances))
    columns = [*audit.columns, *(c for c in REPRODUCED_COLUMNS if c not in audit.columns)]
    return pd.DataFrame(rows, columns=columns)


REPRODUCED_COLUMNS = ("reproduced_tolerance", "reproduced_verdict", "reproduced_from")


def _reproduced_key(record: Mapping[str, Any], keyed: bool) -> tuple:
    base = (record["model"], record["method"], record["quantity"])
    return (record["table"], *base) if keyed else base


def _audit_key(row: Mapping[str, Any], keyed: bool) -> tuple:
    base = (row["model"], row["method"], row["quantity"])
    return (str(row["claim_id"]).split("/")[0], *base) if keyed else base


def _tolerance_for(quantity: str, tolerances: Mapping[str, Tolerance]) -> Tolerance:
    # Table 12 quantities carry their block size: "FLOPs (k=2)"; "*" overrides the default for everything else.
    return (tolerances.get(quantity) or tolerances.get(quantity.split(" (")[0])
            or tolerances.get("*", DEFAULT_REPRODUCTION_TOLERANCE))


def _judge(row: dict[str, Any], value: Mapping[str, Any] | None, tolerances: Mapping[str, Tolerance]) -> dict:
    claimed = _as_float(row["claimed"])
    if value is None or claimed is None:
        row.update(reproduced_tolerance="", reproduced_verdict="", reproduced_from="")
        row.setdefault("reproduced", "")
        return row
    tolerance = _tolerance_for(row["quantity"], tolerances)
    reproduced = float(value["value"])
    row.update(reproduced=f"{reproduced:.6g}", reproduced_tolerance=str(tolerance),
               reproduced_verdict="agrees" if tolerance.agrees(claimed, reproduced) else "differs",
               reproduced_from=str(value.get("reproduced_from", "")))
    return row


def _printed_cell_row(claims: ClaimsTables, table: str, model: str, method: str, quantity: str) -> dict | None:
    """The audit row of a printed cell nothing else recomputes (``T01`` + model + method + benchmark column, or
    ``T10`` + model + method + quantity)."""
    name = f"table{table.removeprefix('T')}"
    if name not in claims or "method" not in claims[name].columns:
        return None
    frame = claims[name]
    key = next((column for column in ("benchmark", "quantity") if column in frame.columns), None)
    if key is None:
        return None
    hits = frame[(frame["model"] == model) & (frame["method"] == method) & (frame[key] == quantity)]
    if hits.empty or not hits.iloc[0]["value_text"]:
        return None
    record = hits.iloc[0]
    return {"claim_id": _claim_id(name, model, method, quantity), "source": _source(name, record["src_line_text"]),
            "model": model, "method": method, "quantity": quantity, "claimed": record["value_text"],
            "recomputed": "", "reproduced": "", "tolerance": "", "verdict": NOT_CHECKABLE,
            "rule": "printed_cell", "note": "a measured score: no other printed number determines it",
            "relative_discrepancy": math.nan}


def _as_float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
