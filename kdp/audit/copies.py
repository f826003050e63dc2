"""Copied rows: the same evaluation printed twice must agree, and different models' rows should not."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from kdp.audit.claims import (
    ClaimsTables, TableRow, claim_id, row, rows, score_rows, source, table_label, table_prefix,
)
from kdp.audit.intervals import INCONSISTENT, Check, Finding, Printed, join, one_character_apart
from kdp.audit.registry import audit_rule

Link = tuple[tuple[str, str, str], tuple[str, str, str]]

# KDP: (table, model, method) pairs that print the same evaluation under different names.
KDP_LINKS: tuple[Link, ...] = (
    (("table09", "LLaMA-2-7B", "Original"), ("table01", "LLaMA-2-7B", "Ours")),
    (("table11", "LLaMA-2-7B", "Dense"), ("table01", "LLaMA-2-7B", "Dense")),
    (("table11", "LLaMA-2-7B", "Standard"), ("table01", "LLaMA-2-7B", "Ours")),
    (("table03", "LLaMA-3-8B", "Dense"), ("table01", "LLaMA-3-8B", "Dense")),
    (("table03", "LLaMA-3-8B", "Ours"), ("table01", "LLaMA-3-8B", "Ours")),
)


def cross_table_links(tables: ClaimsTables) -> list[Link]:
    """Rows printing the same evaluation in two tables: the same (model, method) in two score tables, plus, for
    the KDP paper, the rows it prints under other names (Table 9's 'Original' is Table 1's 'Ours')."""
    links = list(KDP_LINKS) if tables.paper.rules == "all" else []
    seen = {frozenset(link) for link in links}
    found = score_rows(tables)
    for i, (name_a, a) in enumerate(found):
        for name_b, b in found[i + 1:]:
            link = ((name_b, b.model, b.method), (name_a, a.model, a.method))
            if name_a != name_b and (a.model, a.method) == (b.model, b.method) and frozenset(link) not in seen:
                links.append(link)
                seen.add(frozenset(link))
    return links


def linked_rows(tables: ClaimsTables) -> Iterator[tuple[str, TableRow, str, TableRow]]:
    """(table, row, other table, other row) for every cross-table link whose two rows are loaded."""
    for (left_table, left_model, left_method), (right_table, right_model, right_method) in cross_table_links(tables):
        if left_table not in tables or right_table not in tables:
            continue
        left = row(rows(tables, left_table), left_model, left_method)
        right = row(rows(tables, right_table), right_model, right_method)
        if left is not None and right is not None:
            yield left_table, left, right_table, right


@audit_rule("copied rows", generic=True)
def same_values_across_tables(tables: ClaimsTables) -> Iterator[Check]:
    """Rows that print the same model and variant in two tables: each printed benchmark cell of one must agree
    with the other's printed cell within both cells' rounding; the note names any other cell of the other row
    that holds the printed value (a cell copied from the wrong column)."""
    for left_table, left, right_table, right in linked_rows(tables):
        left_model, left_method, right_method = left.model, left.method, right.method
        right_cells = {bench.lower(): cell for bench, cell in right.benchmarks().items()}
        for bench, cell in left.benchmarks().items():
            other = right_cells.get(bench.lower())
            if cell is None or other is None:
                continue
            note = f"{source(right_table, right.line)} {right_method} prints {other}"
            near = [b for b, c in right.benchmarks().items() if c is not None and c.value == cell.value]
            if cell.value != other.value and near:
                note = join(note, f"{cell} is {right_method}'s {', '.join(near)} in {table_label(right_table)}")
            yield Check(f"{claim_id(left_table, left_model, left_method, bench)}~{table_prefix(right_table)}",
                        source(left_table, left.line), bench, cell, (other,), lambda x: x, note, left_model,
                        left_method)


DUPLICATE_SHARE = 0.5
DUPLICATE_MIN_CELLS = 4
# KDP's Table 6 heads Table 1's C3 column "CS"; the other eleven benchmarks are spelled the same.
COLUMN_ALIASES = {"CS": "C3"}


@audit_rule("copied rows", generic=True)
def cross_model_duplicate_rows(tables: ClaimsTables) -> Iterator[Finding]:
    """Score tables: rows of different models that share half or more identical printed benchmark values (at least
    four) are flagged; independent runs of different models agree to the printed digit only rarely."""
    for (name_a, a), (name_b, b) in _pairs(score_rows(tables)):
        if a.model == b.model:
            continue
        cells_a, cells_b = _canonical_cells(a), _canonical_cells(b)
        shared = [bench for bench in cells_a if bench in cells_b]
        same = [bench for bench in shared if cells_a[bench].value == cells_b[bench].value]
        if len(same) < DUPLICATE_MIN_CELLS or len(same) < DUPLICATE_SHARE * len(shared):
            continue
        differing = [bench for bench in shared if bench not in same]
        one_digit = [bench for bench in differing if one_character_apart(str(cells_a[bench]), str(cells_b[bench]))]
        note = join("likely a copied row",
                    "differing: " + ", ".join(f"{b_} {cells_a[b_]} vs {cells_b[b_]}" for b_ in differing),
                    f"{len(one_digit)} of the {len(differing)} differing cells differ in one printed digit"
                    if differing else "")
        yield Finding(f"{claim_id(name_a, a.model, a.method)}={claim_id(name_b, b.model, b.method)}",
                      f"{source(name_a, a.line)}; {source(name_b, b.line)}", "identical benchmark values",
                      f"{a.model} {a.method}", f"{len(same)}/{len(shared)} shared benchmarks identical to "
                      f"{b.model} {b.method}", INCONSISTENT, note, a.model, a.method)


def _canonical_cells(table_row: TableRow) -> dict[str, Printed]:
    return {COLUMN_ALIASES.get(bench, bench): cell for bench, cell in table_row.printed().items()}


def _pairs(items: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
    for i, first in enumerate(items):
        for second in items[i + 1:]:
            yield first, second
