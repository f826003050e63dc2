"""The procedure behind each derived column, inferred from the rows and then enforced.

Interval arithmetic asks whether some reading of the unprinted digits reproduces a printed number. A paper
usually computes a column one way: from its printed cells or from unrounded ones, rounding or truncating the
result, by one formula or another (Change as a reduction or as the speed-up minus one). For every derived
column of every table this review counts how many rows each candidate procedure reproduces digit for digit.
A procedure reproducing at least ``PROCEDURE_SHARE`` of at least ``MIN_ROWS`` rows is the inferred one. It is
enforced (every row it does not reproduce becomes a finding, even one interval arithmetic lets pass) only when
the rows tell it apart from computing on unrounded inputs: when the inputs are exact, or when unrounded inputs
would land on the same printed digits in at most ``CHANCE_CEILING`` of the rows (estimated from how far each
row's inputs' rounding can move its result).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from kdp.audit.claims import ClaimsTables
from kdp.audit.intervals import (
    CONSISTENT, INCONSISTENT, NOT_CHECKABLE, Bound, Check, Finding, Item, holds, point, printed_as,
)
from kdp.audit.registry import audit_review

PROCEDURE_SHARE = 0.9
MIN_ROWS = 5
CHANCE_CEILING = 0.5

# The derived-column rules, and what each recomputes (the report prints it beside the inferred procedure).
DERIVED = {
    "avg_is_mean_of_benchmarks": "mean of the row's printed cells",
    "rp_is_avg_over_reference": "printed Avg / printed reference Avg x 100",
    "flops_change_is_relative_reduction": "(dense - variant) / dense x 100 from the printed FLOPs",
    "speedup_is_flops_ratio": "dense / variant from the printed FLOPs",
    "retention_is_fold_over_block": "printed fold / printed block x 100",
    "ratio_from_layer_spans": "listed layers x layer parameters / total parameters x 100",
    "ratio_matches_layer_count": "layers x layer parameters / total parameters x 100",
    "ratio_from_table5_blocks": "(layers x layer parameters - folds x fold size) / total parameters x 100",
}
# Rules whose checks are one column although their quantities name the cell (Table 12's "retention FLOPs (k=2)").
COLUMNS = {"retention_is_fold_over_block": "Retention Rate"}
MODES = ("rounded", "truncated")


MAIN = "its rule's formula"


def _candidates(check: Check) -> dict[str, float]:
    return {MAIN: point(check), **dict(check.alternatives)}


def chance_of_same_digits(check: Check) -> float:
    """How often the formula on unrounded inputs prints the same digits as on the printed ones: 1 - E|error| /
    unit, the error's spread propagated from each input's rounding (uniform, half a unit) to first order."""
    if check.claimed.decimals is None:
        return 1.0
    variance = 0.0
    for i, cell in enumerate(check.inputs):
        if cell.decimals is None:
            continue
        step = max(abs(cell.value), 1.0) * 1e-6
        up = [Bound.of(c.value + (step if j == i else 0.0)) for j, c in enumerate(check.inputs)]
        down = [Bound.of(c.value - (step if j == i else 0.0)) for j, c in enumerate(check.inputs)]
        slope = (Bound.of(check.formula(*up)).lo - Bound.of(check.formula(*down)).lo) / (2 * step)
        variance += slope ** 2 * cell.unit ** 2 / 12
    expected_error = math.sqrt(variance) * math.sqrt(2 / math.pi)
    return max(0.0, 1.0 - expected_error / check.claimed.unit)


@audit_review("derived columns", needs=tuple(DERIVED), generic=True)
def derived_column_procedure(tables: ClaimsTables, items: Sequence[Item]) -> Iterator[Finding]:
    """Per table and derived column (Avg, RP, Change, SpeedUp, Retention, pruning ratio): recomputes the column
    from the same printed inputs as its rule under each candidate procedure (the rule's formula or a named
    alternative, rounded half up or truncated to the printed digits), reports which one reproduces the printed
    digits and how often, and holds every row to it where the rows pin it down (see the module docstring)."""
    groups: dict[tuple[str, str], list[Check]] = {}
    for item in items:
        if isinstance(item, Check) and item.rule in DERIVED and item.claimed.decimals is not None:
            groups.setdefault((item.claim_id.split("/")[0], COLUMNS.get(item.rule, item.quantity)), []).append(item)
    for (table, quantity), checks in groups.items():
        yield from _review_column(table, quantity, checks)


def _review_column(table: str, quantity: str, checks: list[Check]) -> Iterator[Finding]:
    labels = list(dict.fromkeys(label for check in checks for label in _candidates(check)))
    procedures = [(label, mode) for label in labels for mode in MODES]
    matched = {procedure: [_reproduces(check, *procedure) for check in checks] for procedure in procedures}
    share = {procedure: sum(hits) / len(checks) for procedure, hits in matched.items()}
    best = max(procedures, key=lambda p: share[p])
    chance = sum(chance_of_same_digits(check) for check in checks) / len(checks)
    exact_inputs = all(cell.decimals is None for check in checks for cell in check.inputs)
    inferred = len(checks) >= MIN_ROWS and share[best] >= PROCEDURE_SHARE
    enforced = inferred and (exact_inputs or chance <= CHANCE_CEILING)
    exceptions = [check for check, hit in zip(checks, matched[best]) if not hit] if enforced else []
    passing = [check for check in exceptions if holds(check)]
    verdict, why = _verdict(inferred, enforced, exact_inputs, chance, len(passing), len(exceptions))
    ranking = "; ".join(f"{label}, {mode}: {sum(matched[(label, mode)])}/{len(checks)}"
                        for label, mode in sorted(procedures, key=lambda p: -share[p]))
    formulas = " / ".join(sorted({DERIVED[check.rule] for check in checks}))
    named = formulas if best[0] == MAIN else best[0]
    yield Finding(f"{table}/{quantity}/procedure", table, f"procedure of {quantity}", f"{len(checks)} rows",
                  f"{named}, {best[1]}" if inferred else "none inferred", verdict,
                  f"{why}; {ranking}; {MAIN}: {formulas}")
    for check in passing:
        value = _candidates(check)[best[0]]
        yield Finding(f"{check.claim_id}/procedure", check.source, f"{quantity} by the inferred procedure",
                      check.claimed, printed_as(value, check.claimed, best[1]), INCONSISTENT,
                      f"the column's other rows follow '{named}, {best[1]}' ({sum(matched[best])}/{len(checks)}); "
                      "interval arithmetic alone lets this row pass" + _fits_instead(check, procedures),
                      check.model, check.method, (check.claimed.value - value) / value if value else math.nan)


def _verdict(inferred: bool, enforced: bool, exact_inputs: bool, chance: float, passing: int,
             exceptions: int) -> tuple[str, str]:
    if not inferred:
        return NOT_CHECKABLE, f"no procedure reproduces {100 * PROCEDURE_SHARE:.0f}% of at least {MIN_ROWS} rows"
    if not enforced:
        return NOT_CHECKABLE, (f"inferred but not enforced: on unrounded inputs about {100 * chance:.0f}% of rows "
                               "would print the same digits, so an exception cannot be told from rounding")
    basis = "exact inputs" if exact_inputs else f"unrounded inputs would match only about {100 * chance:.0f}% of rows"
    already = f", {exceptions - passing} that already fail it" if exceptions > passing else ""
    return (INCONSISTENT if passing else CONSISTENT,
            f"enforced ({basis}); {passing} exception(s) that interval arithmetic lets pass{already}")


def _reproduces(check: Check, label: str, mode: str) -> bool:
    """Whether the procedure prints the claimed digits. A value exactly halfway may go either way when rounding:
    which way depends on the float noise of the paper's own sum (half up and half down differ only there)."""
    value = _candidates(check).get(label)
    if value is None:
        return False
    modes = ("rounded", "rounded half down") if mode == "rounded" else (mode,)
    return any(printed_as(value, check.claimed, m) == str(check.claimed) for m in modes)


def _fits_instead(check: Check, procedures: list[tuple[str, str]]) -> str:
    fitting = [f"{label}, {mode}" for label, mode in procedures if _reproduces(check, label, mode)]
    return f"; reproduced instead by: {' / '.join(fitting)}" if fitting else ""
