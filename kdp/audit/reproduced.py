"""The join with reproduced results: this project's re-run values beside the claimed ones, and a verdict on
whether the re-run lands near the claim (a per-cell confidence interval where the results table gives one, a
fixed band per quantity otherwise)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from kdp.audit.claims import ClaimsTables, claim_id, source, table_number
from kdp.audit.intervals import NOT_CHECKABLE, Printed
from kdp.errors import UserError

REPRODUCED_COLUMNS = ("reproduced_tolerance", "reproduced_verdict", "reproduced_from")
INTERVAL_COLUMNS = ("ci_low", "ci_high")


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
    e.g. ``T01``: Table 1 and Table 11 both print a LLaMA-2-7B "Dense" Avg), ``reproduced_from`` (where the
    value comes from) and ``ci_low``/``ci_high`` (a confidence interval of the re-run value). With an interval,
    the re-run "agrees" when it meets the claimed number's printed interval (the claim, half a unit either
    side); without one, when it lands within ``REPRODUCTION_TOLERANCES`` of the claim per quantity, else
    ``DEFAULT_REPRODUCTION_TOLERANCE`` (5 points for accuracy-like percentages). The fixed bands are wide on
    purpose: a re-run differs in seeds and harness version, so they separate "same ballpark" from "different
    result", not noise from signal. A reproduced printed cell that no audit rule recomputes (a plain benchmark
    score) gets its own row when ``claims`` is given; rows without a re-run value keep empty cells.
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
    for audit_row in rows:
        key = _audit_key(audit_row, keyed)
        used.add(key)
        _judge(audit_row, values.get(key), tolerances)
    if claims is not None and keyed:
        for key, value in values.items():
            cell = None if key in used else _printed_cell_row(claims, *key)
            if cell is not None:
                rows.append(_judge(cell, value, tolerances))
    columns = [*audit.columns, *(c for c in REPRODUCED_COLUMNS if c not in audit.columns)]
    return pd.DataFrame(rows, columns=columns)


def _reproduced_key(record: Mapping[str, Any], keyed: bool) -> tuple:
    base = (record["model"], record["method"], record["quantity"])
    return (record["table"], *base) if keyed else base


def _audit_key(audit_row: Mapping[str, Any], keyed: bool) -> tuple:
    base = (audit_row["model"], audit_row["method"], audit_row["quantity"])
    return (str(audit_row["claim_id"]).split("/")[0], *base) if keyed else base


def _tolerance_for(quantity: str, tolerances: Mapping[str, Tolerance]) -> Tolerance:
    # Table 12 quantities carry their block size: "FLOPs (k=2)"; "*" overrides the default for everything else.
    return (tolerances.get(quantity) or tolerances.get(quantity.split(" (")[0])
            or tolerances.get("*", DEFAULT_REPRODUCTION_TOLERANCE))


def _interval(value: Mapping[str, Any]) -> tuple[float, float] | None:
    bounds = [_as_float(value.get(column)) for column in INTERVAL_COLUMNS]
    if any(b is None or math.isnan(b) for b in bounds):
        return None
    return bounds[0], bounds[1]


def _judge(audit_row: dict[str, Any], value: Mapping[str, Any] | None, tolerances: Mapping[str, Tolerance]) -> dict:
    claimed = _as_float(audit_row["claimed"])
    if value is None or claimed is None:
        audit_row.update(reproduced_tolerance="", reproduced_verdict="", reproduced_from="")
        audit_row.setdefault("reproduced", "")
        return audit_row
    reproduced = float(value["value"])
    interval = _interval(value)
    if interval is not None:
        half = Printed.parse(str(audit_row["claimed"])).unit / 2
        agrees = interval[0] <= claimed + half and claimed - half <= interval[1]
        band = f"CI [{interval[0]:.4g}, {interval[1]:.4g}]"
    else:
        tolerance = _tolerance_for(audit_row["quantity"], tolerances)
        agrees, band = tolerance.agrees(claimed, reproduced), str(tolerance)
    audit_row.update(reproduced=f"{reproduced:.6g}", reproduced_tolerance=band,
                     reproduced_verdict="agrees" if agrees else "differs",
                     reproduced_from=str(value.get("reproduced_from", "")))
    return audit_row


def _printed_cell_row(claims: ClaimsTables, table: str, model: str, method: str, quantity: str) -> dict | None:
    """The audit row of a printed cell nothing else recomputes (``T01`` + model + method + benchmark column, or
    ``T10`` + model + method + quantity)."""
    name = next((n for n in claims.frames if table_number(n) is not None
                 and f"T{table_number(n):02d}" == table), None)
    if name is None or "method" not in claims[name].columns:
        return None
    frame = claims[name]
    key = next((column for column in ("benchmark", "quantity") if column in frame.columns), None)
    if key is None:
        return None
    hits = frame[(frame["model"] == model) & (frame["method"] == method) & (frame[key] == quantity)]
    if hits.empty or not hits.iloc[0]["value_text"]:
        return None
    record = hits.iloc[0]
    return {"claim_id": claim_id(name, model, method, quantity), "source": source(name, record["src_line_text"]),
            "model": model, "method": method, "quantity": quantity, "claimed": record["value_text"],
            "recomputed": "", "reproduced": "", "tolerance": "", "verdict": NOT_CHECKABLE,
            "rule": "printed_cell", "note": "a measured score: no other printed number determines it",
            "relative_discrepancy": math.nan}


def _as_float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
