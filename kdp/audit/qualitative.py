"""Qualitative words in the KDP paper's text ("outperforms", "comparable", "marginal", "stable", "exponential",
"almost on par", "minimal"), each tested against the tables under an explicit criterion stated here. The
criteria are fixed in advance and shared between words that mean the same (marginal / almost on par / stable:
within 5%; comparable: within 10%); a reader who prefers another threshold changes the constant and sees
which verdicts move."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from kdp.audit.claims import DENSE, ClaimsTables, base_method, claim_source, source
from kdp.audit.claims import claims as claims_of
from kdp.audit.claims import row as row_of
from kdp.audit.claims import rows as rows_of
from kdp.audit.intervals import CONSISTENT, INCONSISTENT, Finding, join
from kdp.audit.registry import audit_rule

NOT_BASELINES = (DENSE, "Ours", "w/o Kernel")
WITHIN_MARGINAL = 0.95  # "marginal decline", "almost on par", "stable": keeps at least 95% of the reference
WITHIN_COMPARABLE = 0.90  # "comparable": at least 90% of the reference
CONSIDERABLY_SHORT = 0.90  # "considerably short": below 90% of the reference on some benchmark
MARGINALLY_MORE = 1.10  # "marginally more": at most 10% more
MINIMAL_PERCENT = 10.0  # "minimal overhead": under 10% of what it replaces


def _claim(tables: ClaimsTables, claim_id: str, *needed: str) -> dict | None:
    if any(name not in tables for name in needed):
        return None
    return claims_of(tables).get(claim_id)


def _finding(claim: dict, quantity: str, recomputed: str, holds: bool, note: str, model: str = "",
             method: str = "Ours") -> Finding:
    return Finding(claim["claim_id"], claim_source(claim), quantity, claim["value"], recomputed,
                   CONSISTENT if holds else INCONSISTENT, note, model, method)


# ------------------------------------------------------------------------------- "outperforms"


@audit_rule("qualitative words")
def text_ours_best_on_sst2(tables: ClaimsTables) -> Iterator[Finding]:
    """C13: baselines 'show a notable degradation' on SST-2 'in contrast' to KDP. Criterion: Ours' printed SST-2
    score is above every baseline's (Table 1, per model)."""
    yield from _ours_beats(tables, "C13", "table01", ("SST2",), "SST-2 accuracy")


@audit_rule("qualitative words")
def text_ours_beats_ols(tables: ClaimsTables) -> Iterator[Finding]:
    """C22: KDP 'significantly outperforms' both OLS baselines 'across all tasks'. Criterion: Ours is above both
    on every printed task of Table 3."""
    yield from _ours_beats(tables, "C22", "table03", None, "accuracy vs OLS")


@audit_rule("qualitative words")
def text_ours_best_rp_on_opt(tables: ClaimsTables) -> Iterator[Finding]:
    """C29: KDP 'maintains robust performance' on OPT. Criterion: its printed RP is the best non-dense RP of
    Table 6 for each model."""
    yield from _ours_beats(tables, "C29", "table06", ("RP",), "RP")


def _ours_beats(tables: ClaimsTables, claim_id: str, name: str, benchmarks: Sequence[str] | None,
                quantity: str) -> Iterator[Finding]:
    claim = _claim(tables, claim_id, "claims", name)
    if claim is None:
        return
    table_rows = rows_of(tables, name)
    for model in dict.fromkeys(r.model for r in table_rows):
        ours = row_of(table_rows, model, "Ours")
        if ours is None:
            continue
        others = [r for r in table_rows if r.model == model and base_method(r.method) not in NOT_BASELINES]
        losses = []
        for bench in benchmarks or list(ours.benchmarks()):
            mine = ours.cells.get(bench)
            for other in others:
                theirs = other.cells.get(bench)
                if mine is not None and theirs is not None and theirs.value > mine.value:
                    losses.append(f"{other.method} {bench} {theirs} > {mine}")
        yield Finding(f"{claim_id}/{model}", claim_source(claim), quantity, claim["value"] or claim["text"],
                      "Ours best" if not losses else "; ".join(losses), INCONSISTENT if losses else CONSISTENT,
                      f"{source(name, ours.line)}", model, "Ours")


# ------------------------------------------------------------------------ "comparable", "marginal"


@audit_rule("qualitative words")
def text_comparable_generation(tables: ClaimsTables) -> Iterator[Finding]:
    """C14: 'our method also achieves comparable performance on generative tasks' (after comparing with the best
    baseline). Criterion: in each of Table 2's RP columns, Ours keeps at least 90% of the best baseline's RP."""
    claim = _claim(tables, "C14", "claims", "table02")
    if claim is None:
        return
    frame = tables["table02"]
    parts, holds = [], True
    for column in ("RP(PPL)", "RP(Rouge)"):
        cells = {r["method"]: float(r["value"]) for r in frame[frame["benchmark"] == column].to_dict("records")}
        baselines = {m: v for m, v in cells.items() if base_method(m) not in NOT_BASELINES}
        if "Ours" not in cells or not baselines:
            continue
        best = max(baselines, key=baselines.get)
        share = cells["Ours"] / baselines[best]
        holds &= share >= WITHIN_COMPARABLE
        parts.append(f"{column}: Ours {cells['Ours']:g} is {100 * share:.0f}% of {best}'s {baselines[best]:g}")
    yield _finding(claim, "RP against the best baseline", "; ".join(parts), holds,
                   f"comparable = at least {100 * WITHIN_COMPARABLE:.0f}% of the best baseline in every RP column")


@audit_rule("qualitative words")
def text_marginal_generation_decline(tables: ClaimsTables) -> Iterator[Finding]:
    """C30: on OPT, 'a marginal decline on generation tasks'. Criterion: Ours keeps at least 95% of Dense in each
    of Table 7's RP columns (RP(PPL), RP(Rouge)), for each model."""
    claim = _claim(tables, "C30", "claims", "table07")
    if claim is None:
        return
    frame = tables["table07"]
    ours = frame[(frame["method"] == "Ours") & frame["benchmark"].str.startswith("RP(")]
    kept = [(r["model"], r["benchmark"], float(r["value"])) for r in ours.to_dict("records")]
    below = [f"{m} {b} {v:g}" for m, b, v in kept if v < 100 * WITHIN_MARGINAL]
    yield _finding(claim, "RP on generation (OPT)", ", ".join(f"{m} {b} {v:g}" for m, b, v in kept), not below,
                   join(f"marginal = keeps at least {100 * WITHIN_MARGINAL:.0f}% (RP >= {100 * WITHIN_MARGINAL:.0f})",
                        f"below: {', '.join(below)}" if below else ""))


@audit_rule("qualitative words")
def text_marginally_more_data(tables: ClaimsTables) -> Iterator[Finding]:
    """C31: KDP uses 'only marginally more data than SliceGPT'. Criterion: Ours' total samples in Table 8 are at
    most 10% more than SliceGPT's."""
    claim = _claim(tables, "C31", "claims", "table08")
    if claim is None:
        return
    totals = dict(zip(tables["table08"]["method"], tables["table08"]["total_sample_numeric"]))
    ours, slicegpt = totals.get("Ours", math.nan), totals.get("SliceGPT", math.nan)
    if math.isnan(ours) or math.isnan(slicegpt):
        return
    ratio = ours / slicegpt
    yield _finding(claim, "training samples, Ours / SliceGPT", f"{ours:g} / {slicegpt:g} = {ratio:.2f}x",
                   ratio <= MARGINALLY_MORE, f"marginally more = at most {MARGINALLY_MORE:.2f}x")


@audit_rule("qualitative words")
def text_minimal_overhead(tables: ClaimsTables) -> Iterator[Finding]:
    """C53: 'the additional overhead introduced by KDP is minimal'. Criterion: every printed Retention Rate of
    Table 12 (fold cost as a percent of the block it replaces) is under 10%."""
    claim = _claim(tables, "C53", "claims", "table12")
    if claim is None:
        return
    frame = tables["table12"]
    rates = frame[frame["component"] == "Retention Rate"]["value"].astype(float)
    if rates.empty:
        return
    yield _finding(claim, "retention rate (%)", f"{rates.min():g}-{rates.max():g}", rates.max() < MINIMAL_PERCENT,
                   f"minimal = under {MINIMAL_PERCENT:g}% of the replaced block's FLOPs and parameters")


# ----------------------------------------------------------------- Table 4 and Table 9 ablations


def _dense_cells(tables: ClaimsTables, model: str) -> dict[str, float]:
    dense = row_of(rows_of(tables, "table01"), model, DENSE) if "table01" in tables else None
    return {} if dense is None else {b.lower(): c.value for b, c in dense.printed().items()}


def _table4_rows(tables: ClaimsTables) -> list[tuple[int, str, int, dict[str, float]]]:
    """(K_max, printed layers, layer count, {benchmark: score}) per Table 4 row."""
    found = []
    frame = tables["table04"]
    for (k_max, first, last), group in frame.groupby(["K_max", "first_layer", "last_layer"], sort=False):
        scores = {r["benchmark"].lower(): float(r["value"]) for r in group.to_dict("records")}
        found.append((int(k_max), f"[{int(first)}..{int(last)}]", int(last - first + 1), scores))
    return found


@audit_rule("qualitative words")
def text_stable_k_max(tables: ClaimsTables) -> Iterator[Finding]:
    """C23: 'performance is stable when replacing few layers (K_max <= 3) but degrades catastrophically as more
    layers are replaced'. Criterion: a Table 4 row is stable when it keeps at least 95% of Table 1's dense
    LLaMA-2-7B score on every benchmark; the claim holds when exactly the rows with K_max <= 3 are stable."""
    claim = _claim(tables, "C23", "claims", "table04", "table01")
    if claim is None:
        return
    model = tables["table04"]["model"].iloc[0]
    dense = _dense_cells(tables, model)
    stable, unstable, wrong = [], [], []
    for k_max, layers, _, scores in _table4_rows(tables):
        kept = min(score / dense[bench] for bench, score in scores.items() if bench in dense)
        label = f"K_max={k_max} {layers} ({100 * kept:.1f}%)"
        (stable if kept >= WITHIN_MARGINAL else unstable).append(label)
        if (kept >= WITHIN_MARGINAL) != (k_max <= 3):
            wrong.append(label)
    yield _finding(claim, "largest stable K_max", f"stable: {', '.join(stable) or 'none'}",
                   not wrong, join(f"stable = keeps at least {100 * WITHIN_MARGINAL:.0f}% of dense on every benchmark "
                                   f"(worst benchmark in brackets); not stable: {', '.join(unstable) or 'none'}",
                                   f"against the stated boundary: {', '.join(wrong)}" if wrong else ""), model)


@audit_rule("qualitative words")
def text_exponential_degradation(tables: ClaimsTables) -> Iterator[Finding]:
    """C24: Table 4's degradation as more layers are replaced is read as the error 'grows exponentially with the
    number of layers'. Criterion: per benchmark, the drop from Table 1's dense score against the number of
    replaced layers is fitted both by an exponential (least squares on log drop) and by a straight line; the
    claim holds where the exponential leaves the smaller squared error in points, on every benchmark."""
    claim = _claim(tables, "C24", "claims", "table04", "table01")
    if claim is None:
        return
    model = tables["table04"]["model"].iloc[0]
    dense = _dense_cells(tables, model)
    table4 = _table4_rows(tables)
    parts, holds = [], True
    for bench in dict.fromkeys(b for *_, scores in table4 for b in scores):
        if bench not in dense:
            continue
        n = np.array([count for _, _, count, scores in table4 if bench in scores], dtype=float)
        drop = np.array([dense[bench] - scores[bench] for *_, scores in table4 if bench in scores])
        if (drop <= 0).any() or len(set(n)) < 3:
            parts.append(f"{bench}: not fitted (a drop <= 0 or fewer than 3 layer counts)")
            holds = False
            continue
        linear = np.polyval(np.polyfit(n, drop, 1), n)
        exponential = np.exp(np.polyval(np.polyfit(n, np.log(drop), 1), n))
        sse_linear, sse_exp = float(((drop - linear) ** 2).sum()), float(((drop - exponential) ** 2).sum())
        holds &= sse_exp < sse_linear
        parts.append(f"{bench}: exponential SSE {sse_exp:.1f} vs linear {sse_linear:.1f}")
    yield _finding(claim, "growth of the drop with replaced layers", "; ".join(parts), holds,
                   "drop = Table 1 dense score - Table 4 score, against the printed layers' count", model)


@audit_rule("qualitative words")
def text_step2_on_par(tables: ClaimsTables) -> Iterator[Finding]:
    """C32: 'training Step 2 for five epochs achieves performance almost on par with the fully trained method',
    while Step 1 for 5 epochs 'still falls considerably short'. Criterion: Barely Step 2 (5 Epoch) keeps at least
    95% of Table 9's Original on every benchmark, and Barely Step 1 (5 Epoch) keeps under 90% on at least one."""
    claim = _claim(tables, "C32", "claims", "table09")
    if claim is None:
        return
    table_rows = rows_of(tables, "table09")
    original = row_of(table_rows, "LLaMA-2-7B", "Original")
    step1 = row_of(table_rows, "LLaMA-2-7B", "Barely Step 1 (5 Epoch)")
    step2 = row_of(table_rows, "LLaMA-2-7B", "Barely Step 2 (5 Epoch)")
    if original is None or step1 is None or step2 is None:
        return

    def kept(subject) -> dict[str, float]:
        return {b: c.value / original.cells[b].value for b, c in subject.printed().items() if b in original.cells}

    step2_kept, step1_kept = kept(step2), kept(step1)
    on_par = min(step2_kept.values()) >= WITHIN_MARGINAL
    short = min(step1_kept.values()) < CONSIDERABLY_SHORT

    def listed(shares: dict[str, float]) -> str:
        return ", ".join(f"{b} {100 * s:.1f}%" for b, s in shares.items())

    yield _finding(claim, "share of Original kept", f"Step 2 (5 epochs): {listed(step2_kept)}; Step 1 (5 epochs): "
                   f"{listed(step1_kept)}", on_par and short,
                   join(f"almost on par = at least {100 * WITHIN_MARGINAL:.0f}% on every benchmark"
                        + ("" if on_par else " (fails)"),
                        f"considerably short = under {100 * CONSIDERABLY_SHORT:.0f}% on some benchmark"
                        + ("" if short else " (fails)")), "LLaMA-2-7B")
