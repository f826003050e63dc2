"""Text claims: numbers and statements in the KDP paper's prose, recomputed from its tables. Each rule names the
claim ids of ``resources/claims/claims.csv`` it reads, so these rules are specific to that paper."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping

from kdp import flops
from kdp.audit.claims import (
    SUMMARY_COLUMNS, ClaimsTables, TableRow, base_method, claim_source, claimed_number, config, layer_params,
    source, total_params,
)
from kdp.audit.claims import claims as claims_of
from kdp.audit.claims import row as row_of
from kdp.audit.claims import rows as rows_of
from kdp.audit.intervals import CONSISTENT, INCONSISTENT, NOT_CHECKABLE, Check, Finding, exact, join
from kdp.audit.layers import block_plans
from kdp.audit.registry import audit_rule

NOT_BASELINES = ("Dense", "Ours", "w/o Kernel")
# The text names the model each of these claims is about.
BEST_BASELINE_CLAIMS = {"C07": "LLaMA-2-7B", "C08": "LLaMA-2-13B", "C09": "LLaMA-3-8B"}
KERNEL_GAIN_CLAIMS = {"C10": "LLaMA-2-7B", "C11": "LLaMA-2-13B", "C12": "LLaMA-3-8B"}


def _text_rp_gap(tables: ClaimsTables, mapping: Mapping[str, str],
                 opponents: Callable[[list[TableRow], str], list[TableRow]]) -> Iterator[tuple]:
    if "claims" not in tables or "table01" not in tables:
        return
    claims, rows = claims_of(tables), rows_of(tables, "table01")
    for claim_id, model in mapping.items():
        ours = row_of(rows, model, "Ours")
        others = [row for row in opponents(rows, model) if row.cells.get("RP") is not None]
        if claim_id not in claims or ours is None or not others:
            continue
        best = max(others, key=lambda row: row.cells["RP"].value)
        yield claims[claim_id], model, ours, best, others


@audit_rule("text claims")
def text_beats_best_baseline(tables: ClaimsTables) -> Iterator[Check]:
    """Sec 4.2: Ours' RP 'surpasses that of the best-performing baseline by X%' (read as percentage points,
    as the next paragraph's 'percentage points' does; the note gives the relative reading too)."""

    def baselines(rows: list[TableRow], model: str) -> list[TableRow]:
        return [row for row in rows if row.model == model and base_method(row.method) not in NOT_BASELINES]

    untuned_methods = _untuned_methods(tables)
    for claim, model, ours, best, others in _text_rp_gap(tables, BEST_BASELINE_CLAIMS, baselines):
        untuned = [row for row in others if row.method in untuned_methods]
        best_untuned = max(untuned, key=lambda row: row.cells["RP"].value, default=None)
        relative = 100 * (ours.cells["RP"].value / best.cells["RP"].value - 1)
        note = join(f"best baseline {best.method} RP {best.cells['RP']}",
                     f"relative reading: {relative:.1f}%",
                     f"against methods without fine-tuning only ({best_untuned.method}): "
                     f"{ours.cells['RP'].value - best_untuned.cells['RP'].value:.1f} pp" if best_untuned else "")
        yield Check(claim["claim_id"], claim_source(claim), "RP gain over best baseline (pp)",
                    claimed_number(tables, claim), (ours.cells["RP"], best.cells["RP"]), lambda a, b: a - b,
                    note, model, "Ours")


def _untuned_methods(tables: ClaimsTables) -> set[str]:
    """Methods Table 8 lists as needing no fine-tuning (empty without Table 8)."""
    if "table08" not in tables:
        return set()
    frame = tables["table08"]
    return set(frame.loc[frame["need_finetuning"] == "no", "method"])


@audit_rule("text claims")
def text_kernel_gain(tables: ClaimsTables) -> Iterator[Check]:
    """Sec 4.2: the kernel 'boosts the average retained performance by X percentage points' over w/o Kernel."""

    def ablation(rows: list[TableRow], model: str) -> list[TableRow]:
        return [row for row in rows if row.model == model and row.method == "w/o Kernel"]

    for claim, model, ours, best, _ in _text_rp_gap(tables, KERNEL_GAIN_CLAIMS, ablation):
        yield Check(claim["claim_id"], claim_source(claim), "RP gain over w/o Kernel (pp)",
                    claimed_number(tables, claim), (ours.cells["RP"], best.cells["RP"]), lambda a, b: a - b,
                    model=model, method="Ours")


@audit_rule("text claims")
def text_counts(tables: ClaimsTables) -> Iterator[Check]:
    """Counts stated in the text against the tables: benchmarks (C01), models (C02), baselines (C06), and the
    'among the three' models of the speed-up paragraph (C37) against Table 10."""
    if "claims" not in tables:
        return
    claims = claims_of(tables)
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
        baselines = sorted({base_method(m) for m in tables["table01"]["method"].unique()} - set(NOT_BASELINES))
        counts["C06"] = ("n_baselines", len(baselines), ", ".join(baselines))
    for claim_id, (quantity, value, note) in counts.items():
        if claim_id in claims:
            yield Check(claim_id, claim_source(claims[claim_id]), quantity,
                        exact(claimed_number(tables, claims[claim_id]).value), (exact(value),), lambda x: x, note)
    if "C37" in claims and "table10" in tables:
        _, _, stated = claims["C37"]["value"].partition(";")
        n_models = tables["table10"]["model"].nunique()
        yield Check("C37/n_models", claim_source(claims["C37"]), "models compared ('among the three')",
                    exact(claimed_number(tables, claims["C37"], stated).value), (exact(n_models),), lambda x: x,
                    f"Table 10 has {n_models} models")


TRAINING_SET_CLAIMS = {"C04": "Standard", "C39": "Fewer"}


@audit_rule("text claims")
def text_training_set_sizes(tables: ClaimsTables) -> Iterator[Check]:
    """Training-set sizes: sources (Table 11's 'Nd') x samples per source (from the claim's text) against the
    stated total; Table 8's 'Ours' total for the standard set."""
    if "claims" not in tables or "table11" not in tables:
        return
    claims = claims_of(tables)
    settings = tables["table11"].drop_duplicates("method").set_index("method")
    for claim_id, setting in TRAINING_SET_CLAIMS.items():
        if claim_id not in claims or setting not in settings.index:
            continue
        claim = claims[claim_id]
        per_source = re.search(r"(\d+) (?:samples )?(?:from )?each", claim["text"])
        if per_source is None:
            continue
        sources = int(settings.loc[setting, "n_datasets"])
        yield Check(claim_id, claim_source(claim), "training samples", exact(claimed_number(tables, claim).value),
                    (exact(sources * int(per_source.group(1))),), lambda x: x,
                    f"Table 11 {setting}: {sources} sources x {per_source.group(1)} samples")
    if "C41" in claims and {"Fewer", "Standard", "More"} <= set(settings.index):
        claim = claims["C41"]
        added = re.findall(r"\+\s*([A-Z][\w-]*)", claim["text"])
        fewer, standard = int(settings.loc["Fewer", "n_datasets"]), int(settings.loc["Standard", "n_datasets"])
        yield Finding("C41", claim_source(claim), "datasets in 'More'", claim["value"],
                      f"Table 11 More: {int(settings.loc['More', 'n_datasets'])} datasets", NOT_CHECKABLE,
                      f"'this base dataset' read as the Fewer set gives {fewer}+{len(added)}={fewer + len(added)} "
                      f"datasets, read as the standard set {standard}+{len(added)}={standard + len(added)}; the "
                      f"{', '.join(added)} sample counts behind the 11.4k total are not given")
    if "table08" in tables and "C04" in claims:
        ours = tables["table08"][tables["table08"]["method"] == "Ours"]
        if not ours.empty:
            yield Check("C04/Table8", claim_source(claims["C04"]), "training samples",
                        exact(claimed_number(tables, claims["C04"]).value),
                        (exact(ours.iloc[0]["total_sample_numeric"]),), lambda x: x, "Table 8 'Ours' total")


# Names the text uses for benchmarks, as Table 1 spells them.
BENCHMARK_ALIASES = {"HellaSwag": "HeSw", "CHID": "CHD", "MNLI": "CMNLI", "Race-High/Middle": "Race"}


@audit_rule("text claims")
def text_benchmark_list(tables: ClaimsTables) -> Iterator[Finding]:
    """C05: 'test sets of the training datasets except SlimPajama + 6 additional' against Table 1's columns."""
    if "claims" not in tables or "table01" not in tables:
        return
    claims = claims_of(tables)
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
    note = join(f"text names {len(named)} distinct sets", f"listed twice: {', '.join(repeated)}" if repeated else "",
                 f"in Table 1 but never named: {', '.join(unlisted)}" if unlisted else "",
                 "the text trains on MNLI; Table 1 reports CMNLI" if "MNLI" in evaluated else "")
    yield Finding("C05", claim_source(claims["C05"]), "classification benchmarks",
                  f"{len(evaluated)} named", f"{len(columns)} in Table 1", CONSISTENT if consistent else INCONSISTENT,
                  note)


def _listed_names(text: str) -> list[str]:
    return [part.strip().rstrip(".") for part in text.split(",") if part.strip()]


@audit_rule("text claims")
def text_replaced_layers(tables: ClaimsTables) -> Iterator[Finding]:
    """C15: 'layers 10 through 14 have been replaced by KDP' (Fig. 4) against Table 5's LLaMA-2-7B spans."""
    if "claims" not in tables or "table05" not in tables or "C15" not in claims_of(tables):
        return
    claim = claims_of(tables)["C15"]
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", claim["value"])
    plan = next((p for p in block_plans(tables) if p.model == "LLaMA-2-7B"), None)
    if match is None or plan is None:
        return
    stated = set(range(int(match.group(1)), int(match.group(2)) + 1))
    replaced = {layer for first, last in plan.spans for layer in range(first, last + 1)}
    spans = [f"[{a},{b}]" for a, b in plan.spans if stated & set(range(a, b + 1))]
    missing, extra = sorted(stated - replaced), sorted(replaced & set(range(min(stated), max(stated) + 1)) - stated)
    consistent = not missing and not extra
    yield Finding("C15", claim_source(claim), "replaced layers", claim["value"],
                  f"Table 5 spans touching them: {', '.join(spans)}", CONSISTENT if consistent else INCONSISTENT,
                  join(f"not replaced per Table 5: {missing}" if missing else "",
                        f"replaced per Table 5 but not stated: {extra}" if extra else ""), "LLaMA-2-7B", "Ours")


@audit_rule("text claims")
def text_kernel_dim(tables: ClaimsTables) -> Iterator[Check]:
    """C16: kernel rows 'reshaped into a 32x32 matrix' must hold the 2m = 1024 features of C27."""
    if "claims" not in tables:
        return
    claims = claims_of(tables)
    if "C16" not in claims or "C27" not in claims:
        return
    match = re.search(r"(\d+)\s*x\s*(\d+)", claims["C16"]["text"])
    if match is None:
        return
    claimed = exact(claimed_number(tables, claims["C16"]).value)
    yield Check("C16", claim_source(claims["C16"]), "kernel_dim_2m", claimed,
                (exact(int(match.group(1)) * int(match.group(2))),), lambda x: x, f"{match.group(0)} heat map")


@audit_rule("text claims")
def text_sequence_length(tables: ClaimsTables) -> Iterator[Check]:
    """C26: representation sequences of 128 tokens; the FLOPs convention reproducing Tables 10 and 12 counts
    128-token sequences."""
    if "claims" not in tables or "C26" not in claims_of(tables):
        return
    claim = claims_of(tables)["C26"]
    yield Check("C26", claim_source(claim), "seq_len", exact(claimed_number(tables, claim).value),
                (exact(flops.PAPER_CONVENTION.seq_len),), lambda x: x,
                "Table 10/12 FLOPs are linear-layer MACs of 128 tokens (equivalently 2 FLOPs/MAC at 64 tokens)")


# Sec 4.4 claims >90% of CMMLU kept at a ~28% pruning rate; the paper says performance declines with the rate.
CMMLU_CLAIM_RATE = 28.0


@audit_rule("text claims")
def text_cmmlu_retention(tables: ClaimsTables) -> Iterator[Finding]:
    """C20: over 90% of dense CMMLU kept at ~28% pruning. Table 1's Ours rows prune less than 28%, so with
    performance falling as the rate grows, each must already keep over 90%."""
    if "claims" not in tables or "table01" not in tables or "C20" not in claims_of(tables):
        return
    claim = claims_of(tables)["C20"]
    threshold = float(re.search(r"[\d.]+", claim["value"]).group(0))
    rows = rows_of(tables, "table01")
    for ours in (row for row in rows if row.method == "Ours"):
        dense = row_of(rows, ours.model, "Dense")
        if dense is None or ours.ratio is None or ours.ratio.value > CMMLU_CLAIM_RATE:
            continue
        kept = 100 * ours.cells["CMMLU"].value / dense.cells["CMMLU"].value
        verdict = CONSISTENT if kept > threshold else INCONSISTENT
        yield Finding(f"C20/{ours.model}", claim_source(claim), "CMMLU retained (%)", claim["value"],
                      f"{kept:.1f} at {ours.ratio}% (Table 1)", verdict,
                      "" if verdict == CONSISTENT else "below the threshold already at a lower rate than 28%; "
                      "Figure 6 may show other models", ours.model, "Ours",
                      (threshold - kept) / kept if verdict == INCONSISTENT else math.nan)


EDGE_EXCLUSION = 0.1  # Sec 3.1: "we exclude the initial and final 10% of the model's layers"


@audit_rule("text claims")
def text_edge_exclusion(tables: ClaimsTables) -> Iterator[Finding]:
    """C25: no Table 5 span may touch the first or last 10% of layers (index < 0.1 L or >= 0.9 L)."""
    if "claims" not in tables or "table05" not in tables or "C25" not in claims_of(tables):
        return
    claim = claims_of(tables)["C25"]
    for plan in block_plans(tables):
        if config(plan.model) is None:
            continue
        n = config(plan.model).num_hidden_layers
        inside = [(a, b) for a, b in plan.spans if a < EDGE_EXCLUSION * n or b >= (1 - EDGE_EXCLUSION) * n]
        yield Finding(f"C25/{plan.model}", claim_source(claim), "spans inside the excluded 10%",
                      f"layers < {EDGE_EXCLUSION * n:g} and >= {(1 - EDGE_EXCLUSION) * n:g} excluded ({n} layers)",
                      ", ".join(f"[{a},{b}]" for a, b in inside) or "none",
                      INCONSISTENT if inside else CONSISTENT,
                      "0-based indices; with 1-based ones the same spans are inside" if inside else "", plan.model,
                      "Ours")


@audit_rule("text claims")
def text_peft_keeps_ratio(tables: ClaimsTables) -> Iterator[Check]:
    """C28: the LoRA of Ours (PEFT) is merged into the head, so Ours (PEFT) prunes exactly what Ours prunes."""
    if "table01" not in tables:
        return
    rows = rows_of(tables, "table01")
    for peft in (row for row in rows if row.method == "Ours (PEFT)"):
        ours = row_of(rows, peft.model, "Ours")
        if ours is None or ours.ratio is None or peft.ratio is None:
            continue
        yield Check(f"C28/{peft.model}", source("table01", peft.line), "pruning_ratio", peft.ratio, (ours.ratio,),
                    lambda x: x, "Ours (PEFT) ratio against Ours ratio", peft.model, "Ours (PEFT)")


@audit_rule("text claims")
def text_approximate_ratio(tables: ClaimsTables) -> Iterator[Finding]:
    """C03: 'we prune the layers that account for approximately 25% of the original parameters': reports what
    Table 5's layer counts amount to (the claim is too loose for a verdict)."""
    if "claims" not in tables or "table05" not in tables or "C03" not in claims_of(tables):
        return
    claim = claims_of(tables)["C03"]
    shares = [f"{plan.model} {100 * plan.layers * layer_params(plan.model) / total_params(plan.model):.1f}% "
              f"({plan.layers} layers)" for plan in block_plans(tables) if config(plan.model) is not None]
    yield Finding("C03", claim_source(claim), "pruning_ratio_pct", claim["value"], "; ".join(shares),
                  NOT_CHECKABLE, "Table 5's layers as a share of all parameters, before adding the folds back")
