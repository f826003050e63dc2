"""Printed numbers as intervals, and the two kinds of audit result (a formula ``Check``, a ``Finding``).

Tolerances are not picked by hand: every printed input stands for an interval (half a unit in its last printed
digit), the formula is evaluated in interval arithmetic, and a claim is ``consistent`` when its own printed
interval meets the recomputed one. Where a claim fails only because the paper seems to have truncated rather
than rounded, the note says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_DOWN, ROUND_HALF_UP, Decimal
from typing import Any

AUDIT_COLUMNS = (
    "claim_id", "source", "model", "method", "quantity", "claimed", "recomputed", "reproduced", "tolerance",
    "verdict", "rule", "note", "relative_discrepancy",
)
# ``questionable``: nothing printed contradicts it, but it runs against what pruning does (a pruned model above
# its dense one, a retention above 100): listed for a reader to look at, never counted as an inconsistency.
CONSISTENT, INCONSISTENT, NOT_CHECKABLE, QUESTIONABLE = "consistent", "inconsistent", "not_checkable", "questionable"
VERDICTS = (INCONSISTENT, QUESTIONABLE, NOT_CHECKABLE, CONSISTENT)


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

    @property
    def unit(self) -> float:
        return 0.0 if self.decimals is None else 10.0 ** -self.decimals

    def bound(self, reading: str) -> Bound:
        if self.decimals is None:
            return Bound(self.value, self.value)
        if reading == "rounded":
            return Bound(self.value - self.unit / 2, self.value + self.unit / 2)
        if self.value >= 0:
            return Bound(self.value, self.value + self.unit)
        return Bound(self.value - self.unit, self.value)

    def __str__(self) -> str:
        if self.decimals is None:
            return f"{self.value:g}"
        return f"{self.value:.{self.decimals}f}"


def exact(value: float) -> Printed:
    return Printed(value, None)


ROUNDING = {"rounded": ROUND_HALF_UP, "rounded half down": ROUND_HALF_DOWN, "truncated": ROUND_DOWN}


def printed_as(value: float, like: Printed, mode: str = "rounded") -> str:
    """``value`` written with ``like``'s decimals: ``mode`` is one of ``ROUNDING`` (half up, half down, or
    truncated towards zero)."""
    if like.decimals is None:
        return f"{value:g}"
    step = Decimal(1).scaleb(-like.decimals)
    # Twelve significant digits drop the float noise of a sum, so a mean of exactly 38.125 is a tie, not 38.1249.
    quantized = Decimal(f"{value:.12g}").quantize(step, rounding=ROUNDING[mode])
    return f"{quantized:.{like.decimals}f}"


Formula = Callable[..., Bound]


@dataclass(frozen=True)
class Check:
    """``claimed`` should equal ``formula(*inputs)``. ``alternatives`` are other readings of the same column
    (a label and the value it gives from the printed numbers), read by the procedure inference, never judged."""

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
    alternatives: tuple[tuple[str, float], ...] = ()


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


Item = Check | Finding


def evaluate(formula: Formula, inputs: Sequence[Printed], reading: str | None) -> Bound:
    """``formula`` over the inputs as printed (``reading=None``) or over the intervals they stand for."""
    bounds = [Bound.of(p.value) if reading is None else p.bound(reading) for p in inputs]
    return Bound.of(formula(*bounds))


def point(check: Check) -> float:
    return evaluate(check.formula, check.inputs, None).lo


def check_row(check: Check) -> dict[str, Any]:
    value = point(check)
    recomputed = evaluate(check.formula, check.inputs, "rounded")
    claimed = check.claimed.bound("rounded")
    slack = 1e-9 * max(1.0, abs(value))
    if check.claimed.value >= value:
        tolerance = (claimed.hi - check.claimed.value) + (recomputed.hi - value)
    else:
        tolerance = (check.claimed.value - claimed.lo) + (value - recomputed.lo)
    consistent = abs(check.claimed.value - value) <= tolerance + slack
    note = check.note
    if not consistent and meets(check.claimed.bound("truncated"),
                                evaluate(check.formula, check.inputs, "truncated"), slack):
        note = join(note, "consistent if the paper truncated instead of rounding")
    return {
        "claim_id": check.claim_id,
        "source": check.source,
        "model": check.model,
        "method": check.method,
        "quantity": check.quantity,
        "claimed": str(check.claimed),
        "recomputed": format_like(value, check.claimed),
        "reproduced": "",
        "tolerance": format_like(tolerance, Printed(tolerance, None if check.claimed.decimals is None else
                                                     check.claimed.decimals + 2)),
        "verdict": CONSISTENT if consistent else INCONSISTENT,
        "rule": check.rule,
        "note": note,
        "relative_discrepancy": (check.claimed.value - value) / abs(value) if value else math.nan,
    }


def holds(check: Check) -> bool:
    return check_row(check)["verdict"] == CONSISTENT


def meets(a: Bound, b: Bound, slack: float) -> bool:
    return a.lo <= b.hi + slack and b.lo <= a.hi + slack


def format_like(value: float, like: Printed) -> str:
    if like.decimals is None:
        return f"{value:.6g}"
    return f"{value:.{like.decimals + 2}f}"


def finding_row(finding: Finding) -> dict[str, Any]:
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


def item_row(item: Item) -> dict[str, Any]:
    return check_row(item) if isinstance(item, Check) else finding_row(item)


def join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def one_character_apart(a: str, b: str) -> bool:
    return len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1
