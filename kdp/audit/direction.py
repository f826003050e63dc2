"""Sanity of direction: pruning removes capacity, so a pruned row above its dense model, a retention above 100 and
a larger ratio for fewer removed layers each need a second look. The first two are possible (a benchmark near
chance, a lucky run), so they are ``questionable``; the third is arithmetic, so it is ``inconsistent``."""

from __future__ import annotations

from collections.abc import Iterator

from kdp.audit.claims import DENSE, ClaimsTables, claim_id, row, rows, score_rows, source
from kdp.audit.derived import REFERENCES
from kdp.audit.intervals import CONSISTENT, INCONSISTENT, QUESTIONABLE, Finding, Printed
from kdp.audit.layers import known_layer_counts
from kdp.audit.registry import audit_rule


def _above(a: Printed, b: Printed) -> bool:
    """``a`` is above ``b`` whatever the unprinted digits (the printed intervals do not meet)."""
    return a.value - a.unit / 2 > b.value + b.unit / 2


@audit_rule("direction", generic=True)
def pruned_above_dense(tables: ClaimsTables) -> Iterator[Finding]:
    """Score tables: every benchmark where a pruned row's printed score is above its Dense row's printed score
    beyond both cells' rounding. Generation tables: a perplexity below, or a ROUGE above, the dense model's. One
    questionable row per pruned row, listing the cells and by how many points."""
    for name, table_row in score_rows(tables):
        dense = row(rows(tables, name), table_row.model, DENSE)
        if dense is None or table_row is dense:
            continue
        above = [(bench, cell, dense.cells[bench]) for bench, cell in table_row.printed().items()
                 if dense.cells.get(bench) is not None and _above(cell, dense.cells[bench])]
        if above:
            yield _above_finding(claim_id(name, table_row.model, table_row.method, "above Dense"),
                                 source(name, table_row.line), table_row.model, table_row.method, above)
    for name in tables.of_kind("generation"):
        frame = tables[name]
        cells = frame[~frame["benchmark"].str.startswith("RP(") & (frame["value_text"] != "")]
        dense = {(r["model"], r["benchmark"]): r for r in cells[cells["method"] == DENSE].to_dict("records")}
        better: dict[tuple[str, str], list] = {}
        for record in cells[cells["method"] != DENSE].to_dict("records"):
            reference = dense.get((record["model"], record["benchmark"]))
            if reference is None:
                continue
            mine, theirs = Printed.parse(record["value_text"]), Printed.parse(reference["value_text"])
            lower_is_better = record["metric"] == "PPL"
            if _above(theirs, mine) if lower_is_better else _above(mine, theirs):
                better.setdefault((record["model"], record["method"]), []).append(
                    (record["benchmark"], mine, theirs, record["src_line"]))
        for (model, method), found in better.items():
            yield _above_finding(claim_id(name, model, method, "above Dense"), source(name, found[0][3]), model,
                                 method, [entry[:3] for entry in found], "lower perplexity is better")


def _above_finding(where: str, printed_at: str, model: str, method: str, above: list, note: str = "") -> Finding:
    listed = ", ".join(f"{bench} {cell} vs {dense} ({cell.value - dense.value:+.{max(cell.decimals, dense.decimals)}f})"
                       for bench, cell, dense in above)
    return Finding(where, printed_at, "benchmarks better than Dense", f"{len(above)} benchmark(s)", listed,
                   QUESTIONABLE, note or "a pruned model above its dense model: possible near chance level or by a "
                   "lucky run, worth a second look", model, method)


@audit_rule("direction", generic=True)
def retention_above_100(tables: ClaimsTables) -> Iterator[Finding]:
    """Score tables: a pruned row's printed RP (or RP on Dense) above 100; generation tables: RP(PPL) or
    RP(Rouge) above 100. Retention relative to another pruned row (Table 11's 'RP on std.') may exceed 100 and is
    left out."""
    for name, table_row in score_rows(tables):
        for column, reference in REFERENCES.items():
            cell = table_row.cells.get(column)
            if reference == DENSE and table_row.method != DENSE and cell is not None and cell.value > 100:
                yield Finding(claim_id(name, table_row.model, table_row.method, column, "above 100"),
                              source(name, table_row.line), column, cell, "at most 100 for a pruned model",
                              QUESTIONABLE, "keeps more than the dense model's average", table_row.model,
                              table_row.method)
    for name in tables.of_kind("generation"):
        frame = tables[name]
        for record in frame[frame["benchmark"].str.startswith("RP(") & (frame["method"] != DENSE)].to_dict("records"):
            if record["value_text"] and float(record["value"]) > 100:
                yield Finding(claim_id(name, record["model"], record["method"], record["benchmark"], "above 100"),
                              source(name, record["src_line"]), record["benchmark"], record["value_text"],
                              "at most 100 for a pruned model", QUESTIONABLE, "", record["model"], record["method"])


@audit_rule("direction", generic=True)
def ratio_grows_with_layers(tables: ClaimsTables) -> Iterator[Finding]:
    """Score tables: rows of one model whose removed-layer counts are known from numbers other than their ratio
    (layer spans, FLOPs that pin a whole layer count) and that remove layers outright: a row removing fewer
    layers must not print a larger ratio beyond rounding, and equal counts must print equal ratios. One row per
    violating pair; one consistent row per model when none violates."""
    counts = known_layer_counts(tables)
    for name in tables.of_kind("scores"):
        by_model: dict[str, list] = {}
        for table_row in rows(tables, name):
            known = counts.get((table_row.model, table_row.method))
            if known is not None and table_row.ratio is not None:
                by_model.setdefault(table_row.model, []).append((table_row, *known))
        for model, entries in by_model.items():
            violations = list(_violations(name, entries))
            yield from violations
            if not violations and len(entries) > 1:
                listed = ", ".join(f"{r.method} {n} layers {r.ratio}%" for r, n, _ in entries)
                yield Finding(claim_id(name, model, "ratio order"), source(name, entries[0][0].line),
                              "ratio against layers removed", "ratio grows with layers", listed, CONSISTENT,
                              "", model)


def _violations(name: str, entries: list) -> Iterator[Finding]:
    for i, first in enumerate(entries):
        for second in entries[i + 1:]:
            (a, layers_a, where_a), (b, layers_b, where_b) = sorted((first, second), key=lambda e: e[1])
            if layers_a < layers_b:
                broken = _above(a.ratio, b.ratio)
            else:
                broken = _above(a.ratio, b.ratio) or _above(b.ratio, a.ratio)
            if broken:
                yield Finding(claim_id(name, a.model, "ratio order", f"{a.method}<{b.method}"),
                              f"{source(name, a.line)}; {source(name, b.line)}", "ratio against layers removed",
                              f"{a.method} {a.ratio}% with {layers_a} layers, {b.method} {b.ratio}% with {layers_b}",
                              "a ratio that grows with the layers removed", INCONSISTENT,
                              f"layers: {a.method} from {where_a}; {b.method} from {where_b}", a.model, a.method)
