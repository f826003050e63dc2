"""Conflict resolution: where printed numbers disagree, which reading the other printed numbers support, so the
report names the likely typo instead of only the conflict.

Three kinds of conflict are resolved: a row's RP against its Avg and its cells (which of the three is off), the
same cell printed differently in two tables (which one its own table's Avg supports), and for the KDP paper the
layout of the replaced blocks (Table 5's spans against Table 10's FLOPs and Table 1's ratios)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from kdp.audit.claims import (
    ClaimsTables, TableRow, claim_id, config, layer_params, row, rows, source, table_label, table_prefix,
    total_params,
)
from kdp.audit.copies import linked_rows
from kdp.audit.derived import REFERENCES, flops_rows
from kdp.audit.intervals import (
    CONSISTENT, INCONSISTENT, Check, Finding, Item, Printed, check_row, exact, holds, join, mean,
    one_character_apart, point, printed_as,
)
from kdp.audit.layers import BlockPlan, block_plans, fitting_layouts, fold_cells, net_share, removal_share
from kdp.audit.registry import audit_review, audit_rule


def _by_id(items: Sequence[Item]) -> dict[str, Item]:
    return {item.claim_id: item for item in items}


def _typo_hint(printed: Printed, supported: float) -> str:
    text = printed_as(supported, printed)
    return f" ({printed} is one printed digit from {text})" if one_character_apart(str(printed), text) else ""


@audit_review("conflict resolution", needs=("avg_is_mean_of_benchmarks", "rp_is_avg_over_reference"), generic=True)
def likely_typo_in_row(tables: ClaimsTables, items: Sequence[Item]) -> Iterator[Finding]:
    """Score-table rows where RP, Avg and cells disagree: recomputes RP from the printed Avgs and from the cells,
    and the Avg from the cells, and names the printed number the others do not support (the RP when both Avgs
    follow their cells; the Avg when the RP follows the cells; a cell when Avg and RP agree with each other)."""
    checks = _by_id(items)
    for name in tables.of_kind("scores"):
        table_rows = rows(tables, name)
        for table_row in table_rows:
            prefix = claim_id(name, table_row.model, table_row.method)
            avg = checks.get(f"{prefix}/Avg")
            for column, reference_method in REFERENCES.items():
                rp = checks.get(f"{prefix}/{column}")
                reference = row(table_rows, table_row.model, reference_method)
                if rp is None or reference is None:
                    continue
                reference_avg = checks.get(f"{claim_id(name, reference.model, reference.method)}/Avg")
                finding = _resolve_row(rp, avg, reference_avg, table_row, reference)
                if finding is not None:
                    yield finding
            if avg is not None and not holds(avg) and all(
                    checks.get(f"{prefix}/{c}") is None or holds(checks[f"{prefix}/{c}"]) for c in REFERENCES):
                yield _cell_typo(avg, table_row)


def _resolve_row(rp: Item, avg: Item | None, reference_avg: Item | None, table_row: TableRow,
                 reference: TableRow) -> Finding | None:
    if not isinstance(rp, Check) or holds(rp):
        return None
    avgs_hold = all(a is None or holds(a) for a in (avg, reference_avg))
    from_cells = dict(rp.alternatives).get("the cells' means instead of the printed Avgs")
    cells_fit = from_cells is not None and printed_as(from_cells, rp.claimed) == str(rp.claimed)
    from_avgs = point(rp)
    if avgs_hold and printed_as(from_avgs, rp.claimed, "truncated") == str(rp.claimed):
        typo = f"none: {rp.quantity} {rp.claimed} is {from_avgs:.2f} truncated, not rounded"
        note = f"Avg and {reference.method}'s Avg follow their cells"
    elif avgs_hold:
        typo = f"{rp.quantity} {rp.claimed} (the Avgs give {printed_as(from_avgs, rp.claimed)})"
        note = (f"Avg and {reference.method}'s Avg follow their cells; RP from them is {from_avgs:.2f}"
                + _typo_hint(rp.claimed, from_avgs))
    elif cells_fit:
        typo = f"Avg {table_row.cells['Avg']}"
        note = f"the printed {rp.quantity} follows the cells' means ({from_cells:.2f}), not the printed Avg"
    else:
        typo = "undecided"
        note = "neither the printed Avgs nor the cells reproduce the RP"
    return Finding(f"{rp.claim_id}/likely typo", rp.source, f"which of {rp.quantity}, Avg, cells is off",
                   f"{rp.quantity} {rp.claimed}", f"likely typo: {typo}", INCONSISTENT, note, rp.model, rp.method)


def _cell_typo(avg: Check, table_row: TableRow) -> Finding:
    """The Avg fails its cells but agrees with the RP: which single cell, changed in one printed digit, fits."""
    cells = table_row.printed()
    fixes = []
    for bench, cell in cells.items():
        others = [c for b, c in cells.items() if b != bench]
        needed = avg.claimed.value * len(cells) - sum(c.value for c in others)
        text = printed_as(needed, cell)
        candidate = Check("", "", "", avg.claimed, (*others, Printed.parse(text)), mean)
        if one_character_apart(str(cell), text) and holds(candidate):
            fixes.append(f"{bench} {cell} -> {text}")
    typo = " or ".join(fixes) or "undecided (no single one-digit change fits)"
    return Finding(f"{avg.claim_id}/likely typo", avg.source, "which cell is off", f"Avg {avg.claimed}",
                   f"likely typo: {typo}", INCONSISTENT, "the RP agrees with this Avg, so a cell is the likely typo",
                   avg.model, avg.method)


@audit_review("conflict resolution", needs=("same_values_across_tables",), generic=True)
def likely_typo_across_tables(tables: ClaimsTables, items: Sequence[Item]) -> Iterator[Finding]:
    """The same cell printed differently in two tables: recomputes each table's Avg (where the row prints one)
    with its own cell and with the other table's, and names the cell whose own table's Avg does not support it;
    a value equal to another cell of the other row (copied from the wrong column) is named too."""
    failing = {item.claim_id for item in items if isinstance(item, Check) and not holds(item)}
    for left_table, left, right_table, right in linked_rows(tables):
        model, left_method = left.model, left.method
        right_cells = {b.lower(): (b, c) for b, c in right.printed().items()}
        for bench, cell in left.printed().items():
            where = f"{claim_id(left_table, model, left_method, bench)}~{table_prefix(right_table)}"
            if where not in failing or bench.lower() not in right_cells:
                continue
            right_bench, other = right_cells[bench.lower()]
            left_ok = _avg_supports(left, bench, cell, other)
            right_ok = _avg_supports(right, right_bench, other, cell)
            yield _cross_finding(where, source(left_table, left.line), model, left_method, bench,
                                 (table_label(left_table), cell, left_ok), (table_label(right_table), other, right_ok),
                                 [b for b, c in right.printed().items() if c.value == cell.value and b != right_bench])


def _avg_supports(table_row: TableRow, bench: str, own: Printed, other: Printed) -> bool | None:
    """Whether the row's printed Avg holds with its own cell and fails with the other value (None: no Avg, or the
    Avg cannot tell the two apart)."""
    avg = table_row.cells.get("Avg")
    if avg is None:
        return None
    cells = table_row.printed()

    def fits(value: Printed) -> bool:
        return holds(Check("", "", "", avg, tuple(value if b == bench else c for b, c in cells.items()), mean))

    own_fits, other_fits = fits(own), fits(other)
    return None if own_fits == other_fits else own_fits


def _cross_finding(where: str, printed_at: str, model: str, method: str, bench: str, left: tuple, right: tuple,
                   copied_from: list[str]) -> Finding:
    (left_label, left_cell, left_ok), (right_label, right_cell, right_ok) = left, right
    parts = []
    for label, cell, ok in (left, right):
        parts.append(f"{label}'s Avg " + {True: f"supports {cell}", False: f"contradicts {cell}",
                                           None: "cannot tell the two apart or is not printed"}[ok])
    if left_ok is False or (right_ok is True and left_ok is None):
        typo = f"{left_label}'s {left_cell}"
    elif right_ok is False or (left_ok is True and right_ok is None):
        typo = f"{right_label}'s {right_cell}"
    elif copied_from:
        typo = f"{left_label}'s {left_cell}"
    else:
        typo = "undecided"
    if copied_from:
        parts.append(f"{left_cell} is {', '.join(copied_from)} in {right_label}: likely copied from the wrong column")
    return Finding(f"{where}/likely typo", printed_at, f"which {bench} is off", f"{left_cell} vs {right_cell}",
                   f"likely typo: {typo}", INCONSISTENT, join(*parts), model, method)


# ---------------------------------------------------------------------------------- KDP block layout

Layout = tuple[int | None, int | None]  # (layers replaced, folds); None where a printed number says nothing


@audit_rule("conflict resolution")
def likely_typo_in_block_layout(tables: ClaimsTables) -> Iterator[Finding]:
    """KDP: for each model, which (layers replaced, folds) each printed number allows: Table 5's layer count and
    its span count, Table 10's Ours FLOPs (with Table 12's fold FLOPs), Table 1's w/o Kernel ratio (layers
    only) and Ours ratio (with Table 12's fold parameters), each under the rounded or truncated reading. The
    layer count most of them allow (at least two), then the fold count most of the rest allow with it, is the
    supported reading; the printed numbers that do not allow it are the likely typos."""
    if not all(name in tables for name in ("table01", "table05")):
        return
    table_rows = rows(tables, "table01")
    for plan in block_plans(tables):
        if config(plan.model) is None:
            continue
        readings = _layout_readings(tables, plan, table_rows)
        agree = _common_layout(readings)
        layers = _vote(readings, 0, lambda layout: True)
        folds = _vote(readings, 1, lambda layout: layers is None or layout[0] in (None, layers))
        against = [label for label, allowed in readings.items()
                   if (layers is not None and any(l is not None for l, _ in allowed)
                       and layers not in {l for l, _ in allowed})
                   or (folds is not None and any(f is not None for _, f in allowed)
                       and folds not in {f for l, f in allowed if l in (None, layers) or layers is None})]
        supported = (f"{layers if layers is not None else 'undecided'} layers, "
                     f"{folds if folds is not None else 'undecided'} folds")
        allowed = "; ".join(f"{label}: {_described(layouts)}" for label, layouts in readings.items())
        yield Finding(f"T05/{plan.model}/layout/likely typo", source("table05", plan.line), "replaced layout",
                      f"{plan.layers} layers in {len(plan.spans)} spans (Table 5)", supported,
                      CONSISTENT if agree else INCONSISTENT,
                      join(f"likely typo: {', '.join(against)}" if against else "",
                           "no layer count is allowed by two printed numbers more than by any other"
                           if layers is None else "",
                           "no fold count is allowed by two printed numbers more than by any other"
                           if folds is None and not agree else "", allowed,
                           (fold_cells(tables, plan.model, "Params") or (None, ""))[1]), plan.model, "Ours")


def _common_layout(readings: dict[str, set[Layout]]) -> bool:
    """Whether one (layers, folds) is allowed by every printed number (None allows anything)."""
    candidates = {layout for allowed in readings.values() for layout in allowed}
    counts = {c for c, _ in candidates if c is not None}
    folds = {f for _, f in candidates if f is not None}
    return any(all(any(a in (None, c) and b in (None, f) for a, b in allowed) for allowed in readings.values())
               for c in counts or {None} for f in folds or {None})


def _vote(readings: dict[str, set[Layout]], index: int, compatible) -> int | None:
    """The count (layers: index 0, folds: 1) allowed by the most readings, when at least two allow it and no
    other count is allowed as often."""
    votes: dict[int, int] = {}
    for allowed in readings.values():
        for value in {layout[index] for layout in allowed if compatible(layout) and layout[index] is not None}:
            votes[value] = votes.get(value, 0) + 1
    if not votes:
        return None
    ranked = sorted(votes.items(), key=lambda pair: -pair[1])
    if ranked[0][1] < 2 or (len(ranked) > 1 and ranked[1][1] == ranked[0][1]):
        return None
    return ranked[0][0]


def _layout_readings(tables: ClaimsTables, plan: BlockPlan, table_rows: list[TableRow]) -> dict[str, set[Layout]]:
    model, n = plan.model, config(plan.model).num_hidden_layers
    readings: dict[str, set[Layout]] = {"Table 5's layer count": {(plan.layers, None)},
                                        "Table 5's span count": {(None, len(plan.spans))}}
    flops_fold, params_fold = fold_cells(tables, model, "FLOPs"), fold_cells(tables, model, "Params")
    entry = flops_rows(tables, "table10").get((model, "Ours")) if "table10" in tables else None
    if entry is not None and flops_fold is not None:
        readings["Table 10's Ours FLOPs"] = set(fitting_layouts(model, entry["FLOPs_G"], flops_fold[0]))
    without = row(table_rows, model, "w/o Kernel")
    if without is not None and without.ratio is not None:
        readings["Table 1's w/o Kernel ratio"] = {
            (count, None) for count in range(1, n + 1) if _fits(without.ratio, (exact(count),), removal_share(model))}
    ours = row(table_rows, model, "Ours")
    if ours is not None and ours.ratio is not None and params_fold is not None:
        readings["Table 1's Ours ratio"] = {
            (count, folds) for count in range(1, n + 1) for folds in range(1, count + 1)
            if _fits(ours.ratio, (exact(count * layer_params(model)), params_fold[0]),
                     net_share(total_params(model), folds))}
    return readings


def _fits(claimed: Printed, inputs: tuple, formula) -> bool:
    result = check_row(Check("", "", "", claimed, inputs, formula))
    return result["verdict"] == CONSISTENT or "truncated" in result["note"]


def _described(layouts: set[Layout]) -> str:
    if not layouts:
        return "no layout"
    return ", ".join(f"{'?' if count is None else count} layers" + ("" if folds is None else f" + {folds} folds")
                     for count, folds in sorted(layouts, key=lambda l: (l[0] or 0, l[1] or 0)))
