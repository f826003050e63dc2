"""Pruning ratios from layer spans: a printed ratio against the layers the paper says were removed or replaced,
counted with the model's config (layer and total parameters, analytic FLOPs)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from kdp.audit.claims import (
    ClaimsTables, base_method, claim_id, config, dense_gflops, layer_gflops, layer_params, row, rows, score_rows,
    source, table_label, total_params,
)
from kdp.audit.costs import DEPTH_METHODS, layers_pinned_by_flops
from kdp.audit.derived import flops_rows
from kdp.audit.intervals import (
    CONSISTENT, INCONSISTENT, NOT_CHECKABLE, Check, Finding, Formula, Printed, check_row, exact, join,
)
from kdp.audit.registry import audit_rule

# Depth baselines that add a replacement module, so their layer count does not give their size on its own.
REPLACING_METHODS = ("Streamline",)


@dataclass(frozen=True)
class LayerSpans:
    """Inclusive layer spans a (model, method) removes or replaces, and where they are printed."""

    model: str
    method: str
    spans: tuple[tuple[int, int], ...]
    where: str

    @property
    def layers(self) -> int:
        return sum(last - first + 1 for first, last in self.spans)

    def described(self) -> str:
        spans = ", ".join(f"[{a},{b}]" for a, b in self.spans)
        return f"{self.where}: {self.layers} layers in {len(self.spans)} span{'s' * (len(self.spans) > 1)} {spans}"


def layer_spans(tables: ClaimsTables) -> dict[tuple[str, str], LayerSpans]:
    """The ``layers`` tables' spans by (model, method)."""
    found: dict[tuple[str, str], LayerSpans] = {}
    for name in tables.of_kind("layers"):
        for (model, method), group in tables[name].groupby(["model", "method"], sort=False):
            spans = tuple((int(r["first_layer"]), int(r["last_layer"])) for r in group.to_dict("records"))
            found[(model, method)] = LayerSpans(model, method, spans, table_label(name))
    return found


def known_layer_counts(tables: ClaimsTables) -> dict[tuple[str, str], tuple[int, str]]:
    """Layers removed outright (no replacement module), by (model, method) as the score tables name it, from
    numbers other than the ratio itself: ``layers`` tables, FLOPs that pin a whole layer count, KDP's Table 5 (the
    layers w/o Kernel removes)."""
    counts = {key: (spans.layers, spans.described()) for key, spans in layer_spans(tables).items()}
    pinned = layers_pinned_by_flops(tables)
    for name, table_row in score_rows(tables):
        key = (table_row.model, base_method(table_row.method))
        if key in pinned and key[1] not in REPLACING_METHODS:
            counts.setdefault((table_row.model, table_row.method), pinned[key])
    if "table05" in tables:
        for plan in block_plans(tables):
            counts.setdefault((plan.model, "w/o Kernel"), (plan.layers, f"Table 5's {plan.layers} layers"))
    return counts


def removal_share(model: str) -> Formula:
    """Percent of the model's parameters that ``layers`` whole decoder layers hold."""
    return lambda layers: 100 * layers * layer_params(model) / total_params(model)


@audit_rule("pruning ratios from layer spans", generic=True)
def ratio_from_layer_spans(tables: ClaimsTables) -> Iterator[Check | Finding]:
    """Score-table ratios of rows whose removed layers a ``layers`` table lists: recomputes the ratio as the
    listed layers' parameters / the model's parameters x 100, both counted from the model's shipped config."""
    spans = layer_spans(tables)
    for name, table_row in score_rows(tables):
        listed = spans.get((table_row.model, table_row.method))
        if listed is None or table_row.ratio is None:
            continue
        where = claim_id(name, table_row.model, table_row.method, "pruning_ratio")
        if config(table_row.model) is None:
            yield Finding(where, source(name, table_row.line), "pruning_ratio", table_row.ratio, "",
                          NOT_CHECKABLE, f"no config for {table_row.model} in resources/model_configs",
                          table_row.model, table_row.method)
            continue
        yield Check(where, source(name, table_row.line), "pruning_ratio", table_row.ratio,
                    (exact(listed.layers),), removal_share(table_row.model), listed.described(), table_row.model,
                    table_row.method)


@audit_rule("pruning ratios from layer spans", generic=True)
def ratio_matches_layer_count(tables: ClaimsTables) -> Iterator[Check]:
    """Score-table ratios of depth-pruning baselines whose layers no table lists: recomputes the ratio as (layers
    removed x layer params) / total params x 100. The layer count comes from a FLOPs table where that gives a
    whole number, else from the ratio itself (nearest whole number)."""
    pinned = layers_pinned_by_flops(tables)
    listed = layer_spans(tables)
    for name, table_row in score_rows(tables):
        if (base_method(table_row.method) not in DEPTH_METHODS or config(table_row.model) is None
                or table_row.ratio is None or (table_row.model, table_row.method) in listed):
            continue
        from_flops = pinned.get((table_row.model, base_method(table_row.method)))
        if from_flops is not None:
            layers = from_flops[0]
            note = f"{layers} layers, from {from_flops[1]}"
        else:
            implied = table_row.ratio.value / 100 * total_params(table_row.model) / layer_params(table_row.model)
            layers = round(implied)
            note = f"ratio implies {implied:.2f} layers; nearest whole number {layers}"
        yield Check(claim_id(name, table_row.model, table_row.method, "pruning_ratio"), source(name, table_row.line),
                    "pruning_ratio", table_row.ratio, (exact(removal_share(table_row.model)(layers)),), lambda x: x,
                    note, table_row.model, table_row.method)


# --------------------------------------------------------------------------------- KDP Tables 5, 10, 12


@dataclass(frozen=True)
class BlockPlan:
    """KDP Table 5 for one model: the replaced spans (inclusive) and the printed ratio."""

    model: str
    spans: tuple[tuple[int, int], ...]
    ratio: Printed
    line: Any

    @property
    def layers(self) -> int:
        return sum(last - first + 1 for first, last in self.spans)


def block_plans(tables: ClaimsTables) -> list[BlockPlan]:
    plans = []
    for model, group in tables["table05"].groupby("model", sort=False):
        spans = tuple((int(r["first_layer"]), int(r["last_layer"])) for r in group.to_dict("records"))
        first = group.iloc[0]
        plans.append(BlockPlan(model, spans, Printed.parse(first["pruning_ratio_text"]), first["src_line_text"]))
    return plans


def fold_cells(tables: ClaimsTables, model: str, quantity: str) -> tuple[Printed, str] | None:
    """KDP Table 12's fold-block cell for ``model``, else for a Table 12 model of the same hidden size."""
    if "table12" not in tables:
        return None
    frame = tables["table12"]
    folds = frame[(frame["component"] == "Fold Block") & (frame["quantity"] == quantity)]
    same_width = [m for m in folds["model"].unique()
                  if config(m) is not None and config(model) is not None
                  and config(m).hidden_size == config(model).hidden_size]
    donor = model if model in same_width else (same_width[0] if same_width else None)
    if donor is None:
        return None
    cell = folds[folds["model"] == donor].iloc[0]
    note = "" if donor == model else f"fold size taken from {donor} (same hidden size)"
    return Printed.parse(cell["value_text"]), note


def net_share(total: int, folds: int) -> Formula:
    """Percent of ``total`` parameters removed: the layers, minus ``folds`` folds of a size given in millions."""
    return lambda removed, fold_millions: (removed - fold_millions * 1e6 * folds) / total * 100


@audit_rule("pruning ratios from layer spans")
def ratio_from_table5_blocks(tables: ClaimsTables) -> Iterator[Check]:
    """KDP Table 1 ratios of Ours / Ours (PEFT) / w/o Kernel against Table 5's replaced layers: recomputes w/o
    Kernel's as the layers' parameters / total parameters x 100, and Ours' as the same minus one fold of Table
    12's printed size per span. Also Table 5's own printed ratio against Table 1's."""
    if "table05" not in tables or "table01" not in tables:
        return
    table_rows = rows(tables, "table01")
    for plan in block_plans(tables):
        if config(plan.model) is None:
            continue
        removed = plan.layers * layer_params(plan.model)
        total = total_params(plan.model)
        spans = ", ".join(f"[{a},{b}]" for a, b in plan.spans)
        layout = f"Table 5: {plan.layers} layers in {len(plan.spans)} spans {spans}"
        fold = fold_cells(tables, plan.model, "Params")
        for method in ("Ours", "Ours (PEFT)", "w/o Kernel"):
            table_row = row(table_rows, plan.model, method)
            if table_row is None or table_row.ratio is None:
                continue
            if method == "w/o Kernel":
                check = Check("", "", "", table_row.ratio, (exact(removed), exact(0)), net_share(total, 0), layout)
            elif fold is None:
                continue
            else:
                folds = len(plan.spans)
                check = Check("", "", "", table_row.ratio, (exact(removed), fold[0]), net_share(total, folds),
                              join(layout, f"{folds} folds of {fold[0]} M params", fold[1]))
            yield replace(check, claim_id=claim_id("table01", plan.model, method, "pruning_ratio"),
                          source=source("table01", table_row.line), quantity="pruning_ratio", model=plan.model,
                          method=method)
        ours = row(table_rows, plan.model, "Ours")
        if ours is not None and ours.ratio is not None:
            yield Check(claim_id("table05", plan.model, "pruning_ratio"), source("table05", plan.line),
                        "pruning_ratio", plan.ratio, (ours.ratio,), lambda x: x,
                        "Table 5's ratio against Table 1's Ours ratio", plan.model, "Ours")


@audit_rule("FLOPs and parameters")
def ours_flops_from_blocks(tables: ClaimsTables) -> Iterator[Check]:
    """KDP Table 10's Ours FLOPs: recomputes dense - Table 5's layers x layer FLOPs + spans x Table 12's printed
    fold FLOPs. Where that fails, the note names the (layers, folds) counts that would fit."""
    if not all(name in tables for name in ("table05", "table10", "table12")):
        return
    entries = flops_rows(tables, "table10")
    for plan in block_plans(tables):
        entry = entries.get((plan.model, "Ours"))
        fold = fold_cells(tables, plan.model, "FLOPs")
        if entry is None or fold is None or config(plan.model) is None:
            continue
        formula = ours_flops_formula(plan.model, plan.layers, len(plan.spans))
        check = Check(claim_id("table10", plan.model, "Ours", "FLOPs_G"), source("table10", entry["line"]),
                      "FLOPs_G", entry["FLOPs_G"], (fold[0],), formula,
                      join(f"Table 5: {plan.layers} layers, {len(plan.spans)} folds of {fold[0]} GFLOPs", fold[1]),
                      plan.model, "Ours")
        if check_row(check)["verdict"] == INCONSISTENT:
            fits = fitting_layouts(plan.model, entry["FLOPs_G"], fold[0])
            if fits:
                check = replace(check, note=join(check.note, "fits instead: " + ", ".join(
                    f"{n} layers removed + {f} folds" for n, f in fits)))
        yield check


def ours_flops_formula(model: str, layers: int, folds: int) -> Formula:
    dense, per_layer = dense_gflops(model), layer_gflops(model)
    return lambda fold: dense - layers * per_layer + folds * fold


def fitting_layouts(model: str, claimed: Printed, fold: Printed) -> list[tuple[int, int]]:
    """(layers, folds) pairs, 1 <= folds <= layers, that reproduce ``claimed`` under either rounding reading."""
    fits = []
    for layers in range(1, config(model).num_hidden_layers + 1):
        for folds in range(1, layers + 1):
            result = check_row(Check("", "", "", claimed, (fold,), ours_flops_formula(model, layers, folds)))
            if result["verdict"] == CONSISTENT or "truncated" in result["note"]:
                fits.append((layers, folds))
    return fits
