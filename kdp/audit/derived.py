"""Derived columns: every printed number that is arithmetic on other printed numbers of the same table (Avg, RP,
RP(PPL)/RP(Rouge), Change, SpeedUp, Retention Rate), and like-for-like RP where a row lacks a benchmark."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from kdp.audit.claims import (
    DENSE, ClaimsTables, TableRow, claim_id, rows, row, source, table_label, table_prefix,
)
from kdp.audit.intervals import (
    CONSISTENT, INCONSISTENT, Bound, Check, Finding, Formula, Item, Printed, check_row, join, mean,
)
from kdp.audit.registry import audit_rule

# The row each retention column divides by (Table 11 prints two: on Dense and on its standard training set).
REFERENCES = {"RP": DENSE, "RP_on_Dense": DENSE, "RP_on_std": "Standard"}


def pct_of(part: Bound, whole: Bound) -> Bound:
    return part / whole * 100


@audit_rule("derived columns", generic=True)
def avg_is_mean_of_benchmarks(tables: ClaimsTables) -> Iterator[Check]:
    """Score tables (KDP Tables 1, 6, 11): recomputes each printed Avg as the arithmetic mean of the same row's
    printed benchmark cells ('-' cells left out)."""
    for name in tables.of_kind("scores"):
        for table_row in rows(tables, name):
            if table_row.cells.get("Avg") is None:
                continue
            values = table_row.printed()
            blank = [bench for bench, cell in table_row.benchmarks().items() if cell is None]
            note = f"mean over the {len(values)} printed benchmarks ({', '.join(blank)}: '-')" if blank else ""
            yield Check(claim_id(name, table_row.model, table_row.method, "Avg"), source(name, table_row.line),
                        "Avg", table_row.cells["Avg"], tuple(values.values()), mean, note, table_row.model,
                        table_row.method)


@audit_rule("derived columns", generic=True)
def rp_is_avg_over_reference(tables: ClaimsTables) -> Iterator[Check]:
    """Score tables: recomputes RP as the row's printed Avg / the printed Avg of the reference row x 100 (RP and
    'RP on Dense': the Dense row; 'RP on std.': Table 11's Standard row)."""
    for name in tables.of_kind("scores"):
        table_rows = rows(tables, name)
        for column, reference_method in REFERENCES.items():
            for table_row in table_rows:
                reference = row(table_rows, table_row.model, reference_method)
                if (table_row.method == reference_method or reference is None
                        or table_row.cells.get(column) is None):
                    continue
                note = _like_for_like_note(table_row, reference)
                yield Check(claim_id(name, table_row.model, table_row.method, column),
                            source(name, table_row.line), column, table_row.cells[column],
                            (table_row.cells["Avg"], reference.cells["Avg"]), pct_of, note, table_row.model,
                            table_row.method, alternatives=(("the cells' means instead of the printed Avgs",
                                                             _cells_rp(table_row, reference)),))


def _cells_rp(table_row: TableRow, reference: TableRow) -> float:
    """RP from the two rows' printed cells instead of their printed Avgs."""
    def cells_mean(r: TableRow) -> float:
        return sum(c.value for c in r.printed().values()) / len(r.printed())

    return 100 * cells_mean(table_row) / cells_mean(reference)


def _shared_benchmarks(table_row: TableRow, reference: TableRow) -> list[str]:
    return [b for b, cell in table_row.benchmarks().items() if cell is not None and reference.cells.get(b) is not None]


def like_for_like_rp(table_row: TableRow, reference: TableRow) -> tuple[float, list[str]]:
    shared = _shared_benchmarks(table_row, reference)
    own = sum(table_row.cells[b].value for b in shared) / len(shared)
    dense = sum(reference.cells[b].value for b in shared) / len(shared)
    return 100 * own / dense, shared


def _like_for_like_note(table_row: TableRow, reference: TableRow) -> str:
    """Where a row lacks benchmarks, its Avg is over fewer tasks than the Dense Avg it is divided by."""
    rp, shared = like_for_like_rp(table_row, reference)
    if len(shared) == len(reference.benchmarks()):
        return ""
    return (f"Avg covers {len(shared)} benchmarks but the Dense Avg covers {len(reference.benchmarks())}; "
            f"over the same {len(shared)} benchmarks RP would be {rp:.1f}")


@audit_rule("derived columns", generic=True)
def rp_like_for_like(tables: ClaimsTables) -> Iterator[Finding]:
    """Score tables, rows with a '-' where Dense prints a score: recomputes RP over only the benchmarks both rows
    print (the row's cells' mean / Dense's mean over the same cells x 100) and compares it with the printed RP,
    which divides an Avg over fewer tasks by Dense's Avg over all of them. Inconsistent when the two differ by
    more than the RP's printed rounding (half a unit) plus the cells' rounding; the note says whether the row's
    rank among the same model's rows changes."""
    for name in tables.of_kind("scores"):
        table_rows = rows(tables, name)
        for table_row in table_rows:
            dense = row(table_rows, table_row.model, DENSE)
            printed = table_row.cells.get("RP")
            if dense is None or table_row is dense or printed is None:
                continue
            like, shared = like_for_like_rp(table_row, dense)
            if len(shared) == len(dense.printed()):
                continue
            slack = printed.unit / 2 + 100 * 0.5 * max(c.unit for c in table_row.printed().values()) / (
                sum(dense.cells[b].value for b in shared) / len(shared))
            off = abs(like - printed.value) > slack
            missing = [b for b in dense.printed() if b not in shared]
            note = join(f"{', '.join(missing)} printed as '-'; over the {len(shared)} shared benchmarks",
                        _rank_change(table_rows, table_row, printed.value, like))
            yield Finding(claim_id(name, table_row.model, table_row.method, "RP/like-for-like"),
                          source(name, table_row.line), "RP over shared benchmarks", printed, f"{like:.1f}",
                          INCONSISTENT if off else CONSISTENT, note, table_row.model, table_row.method,
                          (printed.value - like) / like if off else math.nan)


def _rank_change(table_rows: list[TableRow], subject: TableRow, printed: float, like: float) -> str:
    others = [r.cells["RP"].value for r in table_rows
              if r.model == subject.model and r is not subject and r.method != DENSE and r.cells.get("RP")]
    before = 1 + sum(value > printed for value in others)
    after = 1 + sum(value > like for value in others)
    return "" if before == after else f"its RP rank among {subject.model}'s rows moves from {before} to {after}"


# ------------------------------------------------------------------------------- generation tables

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
        if record["method"] == DENSE:
            continue
        metric = "PPL" if record["benchmark"] == "RP(PPL)" else "ROUGE-1"
        selected = scores[scores["metric"] == metric]
        if not pooled:
            selected = selected[selected["model"] == record["model"]]
        variant = selected[selected["method"] == record["method"]]
        dense = selected[selected["method"] == DENSE].set_index(["model", "benchmark"])
        keys = [(r["model"], r["benchmark"]) for r in variant.to_dict("records")]
        inputs = tuple(Printed.parse(dense.loc[key, "value_text"]) for key in keys) + tuple(
            Printed.parse(text) for text in variant["value_text"])
        quantity = record["benchmark"]
        checks.append(Check(claim_id(name, record["model"], record["method"], quantity),
                            source(name, record["src_line"]), quantity, Printed.parse(record["value_text"]),
                            inputs, _generation_rp(definition, metric == "PPL"),
                            model=record["model"], method=record["method"]))
    return checks


def _table_definition(tables: ClaimsTables, name: str) -> tuple[str, dict[str, int], int]:
    """The definition that fits most RP cells of a generation table (ties: ratio of sums)."""
    fits = {}
    total = 0
    for definition in GENERATION_DEFINITIONS:
        results = [check_row(check) for check in _generation_checks(tables, name, definition)]
        fits[definition] = sum(r["verdict"] == CONSISTENT for r in results)
        total = len(results)
    best = max(GENERATION_DEFINITIONS, key=lambda d: fits[d])
    return best, fits, total


@audit_rule("derived columns", generic=True)
def generation_rp_definition(tables: ClaimsTables) -> Iterator[Item]:
    """Generation tables (KDP Tables 2 and 7): recomputes RP(PPL) from the printed perplexities (dense/variant,
    lower is better) and RP(Rouge) from the printed ROUGE cells (variant/dense). The paper does not define how
    cells are pooled; each table is checked under the definition that fits most of its cells (pooled ratio of
    sums, or mean of per-cell ratios), and the tables' definitions are compared."""
    chosen = {}
    for name in tables.of_kind("generation"):
        definition, fits, total = _table_definition(tables, name)
        chosen[name] = definition
        other = next(d for d in GENERATION_DEFINITIONS if d != definition)
        note = (f"definition fitting this table: {definition} ({fits[definition]}/{total} cells; "
                f"{other}: {fits[other]}/{total})")
        if (tables[name]["model"] == "all").any():
            pooled = tables[name][tables[name]["model"] != "all"]["model"].nunique()
            note = join(note, f"PPL pooled over the {_spelled(pooled)} models' WIKI and C4 cells")
        for check in _generation_checks(tables, name, definition):
            yield replace(check, note=note)
    if len(chosen) >= 2:
        names = list(chosen)
        same = len(set(chosen.values())) == 1
        labels = [table_label(name) for name in names]
        yield Finding("-".join(table_prefix(name) for name in names) + "/RP definition",
                      _tables_label(names), "RP(PPL)/RP(Rouge) definition", chosen[names[-1]], chosen[names[0]],
                      CONSISTENT if same else INCONSISTENT,
                      "" if same else f"{' and '.join(labels)} compute RP differently for the same column names")


def _tables_label(names: list[str]) -> str:
    numbers = [table_label(name).removeprefix("Table ") for name in names]
    return f"Tables {', '.join(numbers[:-1])} and {numbers[-1]}"


def _spelled(n: int) -> str:
    return {2: "two", 3: "three", 4: "four"}.get(n, str(n))


# ------------------------------------------------------------------------------------ FLOPs tables


def flops_rows(tables: ClaimsTables, name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """A FLOPs table as {(model, method): {quantity: Printed | None, 'line': src_line}}."""
    key = f"flops:{name}"
    if key not in tables.row_cache:
        entries: dict[tuple[str, str], dict[str, Any]] = {}
        for record in tables[name].to_dict("records"):
            entry = entries.setdefault((record["model"], record["method"]), {"line": record["src_line_text"]})
            entry[record["quantity"]] = Printed.parse(record["value_text"]) if record["value_text"] else None
        tables.row_cache[key] = entries
    return tables.row_cache[key]


def reduction(dense: Bound, variant: Bound) -> Bound:
    return (dense - variant) / dense * 100


def speedup_minus_one(dense: Bound, variant: Bound) -> Bound:
    return (dense / variant - 1) * 100


def speedup(dense: Bound, variant: Bound) -> Bound:
    return dense / variant


def _against_dense(tables: ClaimsTables, quantity: str) -> Iterator[tuple[str, str, str, dict, dict]]:
    for name in tables.of_kind("flops"):
        entries = flops_rows(tables, name)
        for (model, method), entry in entries.items():
            dense = entries.get((model, DENSE))
            if method != DENSE and dense is not None and entry.get(quantity) is not None:
                yield name, model, method, entry, dense


@audit_rule("derived columns", generic=True)
def flops_change_is_relative_reduction(tables: ClaimsTables) -> Iterator[Check]:
    """FLOPs tables (KDP Table 10): recomputes Change (%) = (dense - variant) / dense x 100 from the two printed
    FLOPs (the text calls it 'FLOPs were reduced by'); the note says when the speed-up minus one fits instead."""
    for name, model, method, entry, dense in _against_dense(tables, "Change_pct"):
        inputs = (dense["FLOPs_G"], entry["FLOPs_G"])
        alternative = Check("", "", "", entry["Change_pct"], inputs, speedup_minus_one)
        note = ""
        if check_row(alternative)["verdict"] == CONSISTENT:
            note = "matches (dense/variant - 1) x 100 instead, i.e. the speed-up minus one, not a reduction"
        yield Check(claim_id(name, model, method, "Change_pct"), source(name, entry["line"]), "Change_pct",
                    entry["Change_pct"], inputs, reduction, note, model, method,
                    alternatives=(("the speed-up minus one", speedup_minus_one(
                        Bound.of(inputs[0].value), Bound.of(inputs[1].value)).lo),))


@audit_rule("derived columns", generic=True)
def speedup_is_flops_ratio(tables: ClaimsTables) -> Iterator[Check]:
    """FLOPs tables: recomputes SpeedUp = dense FLOPs / variant FLOPs from the two printed FLOPs."""
    for name, model, method, entry, dense in _against_dense(tables, "SpeedUp_x"):
        yield Check(claim_id(name, model, method, "SpeedUp_x"), source(name, entry["line"]), "SpeedUp_x",
                    entry["SpeedUp_x"], (dense["FLOPs_G"], entry["FLOPs_G"]), speedup, model=model, method=method)


@audit_rule("derived columns")
def retention_is_fold_over_block(tables: ClaimsTables) -> Iterator[Check]:
    """KDP Table 12: recomputes each Retention Rate as the printed Fold Block cell / the printed Transformer Block
    cell x 100, for FLOPs and parameters."""
    if "table12" not in tables:
        return
    frame = tables["table12"]
    cells = {(r["model"], r["component"], r["quantity"], int(r["k"])): Printed.parse(r["value_text"])
             for r in frame.to_dict("records")}
    for record in frame.to_dict("records"):
        if record["component"] != "Retention Rate":
            continue
        model, quantity, k = record["model"], record["quantity"], int(record["k"])
        fold = cells.get((model, "Fold Block", quantity, k))
        block = cells.get((model, "Transformer Block", quantity, k))
        if fold is None or block is None:
            continue
        yield Check(claim_id("table12", model, "Retention Rate", quantity, f"k={k}"),
                    source("table12", record["src_line_text"]), f"retention {quantity} (k={k})",
                    Printed.parse(record["value_text"]), (fold, block), pct_of, model=model, method="Retention Rate")
