"""Text claims that restate a printed number, and the claims nothing recomputes. Registered last: the reviews
here read every other rule's results."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace

from kdp.audit.claims import ClaimsTables, claim_source, claimed_number, printed_cells
from kdp.audit.claims import claims as claims_of
from kdp.audit.intervals import CONSISTENT, INCONSISTENT, NOT_CHECKABLE, Check, Finding, Item, item_row, join
from kdp.audit.registry import audit_review, audit_rule


@audit_rule("text claims", generic=True)
def claim_restates_cell(tables: ClaimsTables) -> Iterator[Check | Finding]:
    """Claims whose optional ``restates`` column names a printed cell (``T02/LLaMA-2-13B/ShortGPT/MMLU``): the
    claim's number must be that cell as printed, or the cell rounded to the claim's digits."""
    if "claims" not in tables or "restates" not in tables["claims"].columns:
        return
    cells = printed_cells(tables)
    for claim in claims_of(tables).values():
        target = claim.get("restates", "")
        if not target:
            continue
        if target not in cells:
            yield Finding(claim["claim_id"], claim_source(claim), claim["quantity"], claim["value"], "",
                          NOT_CHECKABLE, f"restates {target}, which no loaded table prints")
            continue
        cell, where = cells[target]
        yield Check(claim["claim_id"], claim_source(claim), claim["quantity"], claimed_number(tables, claim),
                    (cell,), lambda x: x, f"restates {target} ({where} prints {cell})")

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


@audit_review("text claims")
def restates_table_cell(tables: ClaimsTables, items: Sequence[Item]) -> Iterator[Item]:
    """KDP claims that repeat a table cell or a rule's results (``RESTATES``): the text row gets the cell's
    recomputation with the text's own printed number, or the count of consistent restated cells."""
    claims = claims_of(tables)
    by_id = {item.claim_id: item for item in items}
    for claim_id, targets in RESTATES.items():
        claim = claims.get(claim_id)
        found = [item for target in targets for item in _targets(target, by_id, items)]
        if claim is None or not found:
            continue
        note = "restates " + ", ".join(targets)
        if len(found) == 1 and isinstance(found[0], Check):
            number = claim["value"].partition(";")[0]
            yield replace(found[0], claim_id=claim_id, source=claim_source(claim),
                          claimed=claimed_number(tables, claim, number), note=join(note, found[0].note),
                          rule="")
            continue
        rows = [item_row(i) for i in found]
        verdicts = {row["verdict"] for row in rows}
        verdict = next(v for v in (INCONSISTENT, CONSISTENT, NOT_CHECKABLE) if v in verdicts)
        failing = [row["claim_id"] for row in rows if row["verdict"] == INCONSISTENT]
        yield Finding(claim_id, claim_source(claim), claim["quantity"], claim["value"],
                      f"{sum(row['verdict'] == CONSISTENT for row in rows)}/{len(rows)} restated cells consistent",
                      verdict, join(note, "inconsistent: " + ", ".join(failing) if failing else ""))


def _targets(target: str, by_id: Mapping[str, Item], items: Sequence[Item]) -> list[Item]:
    if target.startswith("rule:"):
        return [item for item in items if item.rule == target.removeprefix("rule:")]
    return [by_id[target]] if target in by_id else []


@audit_review("text claims", generic=True)
def uncovered_claim(tables: ClaimsTables, items: Sequence[Item]) -> Iterator[Finding]:
    """Every claims.csv claim no rule recomputes gets a not-checkable row, so the audit lists all of them."""
    covered = {item.claim_id.split("/")[0] for item in items}
    if tables.paper.rules == "all":
        covered |= set(RESTATES)
    for claim_id, claim in claims_of(tables).items():
        if claim_id in covered:
            continue
        yield Finding(claim_id, claim_source(claim), claim["quantity"], claim["value"], "", NOT_CHECKABLE,
                      f"no printed numbers determine it (qualitative, or only in a figure); depends on: "
                      f"{claim['depends_on']}")


