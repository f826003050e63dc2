"""FLOPs and parameters: printed costs against analytic counts of the shipped model configs
(``resources/model_configs``, counted by ``kdp.flops`` under ``flops.PAPER_CONVENTION``)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from kdp import flops
from kdp.audit.claims import (
    DENSE, ClaimsTables, base_method, claim_id, config, dense_gflops, layer_gflops, source, table_label,
)
from kdp.audit.derived import flops_rows
from kdp.audit.intervals import (
    CONSISTENT, INCONSISTENT, NOT_CHECKABLE, Check, Finding, Printed, check_row, exact, join,
)
from kdp.audit.registry import audit_rule

# Appendix B: "The dimension of the kernel transformation (2m) is set to 1024."
PAPER_RFF_DIM = 1024
# Baselines that only delete whole decoder layers, so their size follows from a layer count. (KDP's w/o Kernel
# does too; its layers are known from Table 5, see ``layers.ratio_from_table5_blocks``.)
DEPTH_METHODS = ("SLEB", "ShortGPT", "LaCo", "Streamline")
SLICING_METHODS = ("SliceGPT",)
SHORTCUT_CHOICES = (0, 1, 2)


def _flops_entries(tables: ClaimsTables) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    for name in tables.of_kind("flops"):
        for (model, method), entry in flops_rows(tables, name).items():
            if config(model) is not None:
                yield name, model, method, entry


@audit_rule("FLOPs and parameters", generic=True)
def dense_flops_analytic(tables: ClaimsTables) -> Iterator[Check]:
    """FLOPs tables, Dense rows: recomputes the dense model's FLOPs from its config under
    ``flops.PAPER_CONVENTION`` (the convention was found by searching against KDP's Table 10 cells, so on KDP this
    pins it rather than tests the paper)."""
    for name, model, method, entry in _flops_entries(tables):
        if method == DENSE:
            yield Check(claim_id(name, model, method, "FLOPs_G"), source(name, entry["line"]), "FLOPs_G",
                        entry["FLOPs_G"], (exact(dense_gflops(model)),), lambda x: x,
                        flops.PAPER_CONVENTION.describe(), model, method)


def whole_layers_from_flops(model: str, variant_gflops: Printed) -> tuple[float, int, bool]:
    """(implied layers removed, nearest whole number, whether that whole number reproduces the print)."""
    layers = (dense_gflops(model) - variant_gflops.value) / layer_gflops(model)
    whole = round(layers)
    gflops = dense_gflops(model) - whole * layer_gflops(model)
    fits = check_row(Check("", "", "", variant_gflops, (exact(gflops),), lambda x: x))["verdict"] == CONSISTENT
    return layers, whole, fits


def layers_pinned_by_flops(tables: ClaimsTables) -> dict[tuple[str, str], tuple[int, str]]:
    """Depth baselines whose printed FLOPs are the dense count minus a whole number of layers: that number, and
    the printed FLOPs it comes from."""
    pinned = {}
    for name, model, method, entry in _flops_entries(tables):
        if base_method(method) in DEPTH_METHODS and entry.get("FLOPs_G") is not None:
            _, whole, fits = whole_layers_from_flops(model, entry["FLOPs_G"])
            if fits:
                pinned[(model, method)] = (whole, f"{table_label(name)}'s {entry['FLOPs_G']} GFLOPs")
    return pinned


@audit_rule("FLOPs and parameters", generic=True)
def variant_flops_is_whole_layer_removal(tables: ClaimsTables) -> Iterator[Check]:
    """FLOPs tables, depth-pruning baselines: recomputes the variant's FLOPs as the config's dense count minus the
    whole number of analytic layers nearest to what the printed FLOPs imply."""
    for name, model, method, entry in _flops_entries(tables):
        if base_method(method) not in DEPTH_METHODS:
            continue
        layers, whole, _ = whole_layers_from_flops(model, entry["FLOPs_G"])
        note = f"implies {layers:.3f} layers removed; nearest whole number {whole}"
        if base_method(method) == "Streamline":
            note = join(note, "Streamline also adds a lightweight replacement module, counted nowhere here")
        gflops = dense_gflops(model) - whole * layer_gflops(model)
        yield Check(claim_id(name, model, method, "FLOPs_G"), source(name, entry["line"]), "FLOPs_G",
                    entry["FLOPs_G"], (exact(gflops),), lambda x: x, note, model, method)


@audit_rule("FLOPs and parameters", generic=True)
def sliced_flops_width(tables: ClaimsTables) -> Iterator[Finding]:
    """FLOPs tables, width-slicing baselines: recomputes which residual width (with 0, 1 or 2 width x width
    shortcut matrices per layer) gives the printed FLOPs. SliceGPT's exact layout is not printed, so this only
    reports."""
    for name, model, method, entry in _flops_entries(tables):
        if base_method(method) not in SLICING_METHODS:
            continue
        claimed = entry["FLOPs_G"]
        nearest = [_nearest_width(model, claimed.value, shortcuts) for shortcuts in SHORTCUT_CHOICES]
        matching = [(w, sc) for (w, gflops), sc in zip(nearest, SHORTCUT_CHOICES)
                    if abs(gflops - claimed.value) <= 0.5 * 10.0 ** -claimed.decimals]
        d = config(model).hidden_size
        described = "; ".join(f"{sc} shortcut matrices: width {w} ({100 * (1 - w / d):.1f}% sliced) gives "
                              f"{gflops:.2f}" for (w, gflops), sc in zip(nearest, SHORTCUT_CHOICES))
        yield Finding(claim_id(name, model, method, "FLOPs_G"), source(name, entry["line"]), "FLOPs_G", claimed,
                      "width " + ", ".join(str(w) for w, _ in matching) if matching else "no width fits",
                      NOT_CHECKABLE, described, model, method)


def _nearest_width(model: str, gflops: float, shortcuts: int) -> tuple[int, float]:
    """The residual width whose sliced model's FLOPs are closest to ``gflops`` (FLOPs grow with the width)."""
    model_config = config(model)

    def count(width: int) -> float:
        return flops.variant_spec(model_config, residual_width=width, shortcut_matrices=shortcuts).flops() / 1e9

    low, high = 1, model_config.hidden_size
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle) <= gflops else (low, middle)
    return min(((w, count(w)) for w in (low, high)), key=lambda pair: abs(pair[1] - gflops))


# ------------------------------------------------------------------------------------ KDP Table 12


def _block_cells(tables: ClaimsTables) -> Iterator[tuple[dict[str, Any], str, int]]:
    for record in tables["table12"].to_dict("records"):
        yield record, record["model"], int(record["k"])


@audit_rule("FLOPs and parameters")
def block_cost_analytic(tables: ClaimsTables) -> Iterator[Check]:
    """KDP Table 12, 'Transformer Block' rows: recomputes the FLOPs and parameters of k decoder layers from the
    model's config."""
    if "table12" not in tables:
        return
    for record, model, k in _block_cells(tables):
        if record["component"] != "Transformer Block" or config(model) is None:
            continue
        gflops, params = flops.block_cost(config(model), k)
        value = gflops / 1e9 if record["quantity"] == "FLOPs" else params / 1e6
        note = flops.PAPER_CONVENTION.describe() if record["quantity"] == "FLOPs" else "norm weights included"
        yield Check(claim_id("table12", model, "Transformer Block", record["quantity"], f"k={k}"),
                    source("table12", record["src_line_text"]), f"{record['quantity']} (k={k})",
                    Printed.parse(record["value_text"]), (exact(value),), lambda x: x, note, model,
                    "Transformer Block")


@audit_rule("FLOPs and parameters")
def fold_block_size(tables: ClaimsTables) -> Iterator[Finding]:
    """KDP Table 12 fold rows against Appendix I's inference formula. r and d_hidden are not published, so the
    parameter cell is not checkable; the rule recomputes which (r, d_hidden) reproduce it, and whether the FLOPs
    cell is reachable by any of them under the convention that reproduces the transformer-block rows."""
    if "table12" not in tables:
        return
    frame = tables["table12"]
    folds = frame[(frame["component"] == "Fold Block") & (frame["k"] == frame["k"].min())]
    fits_by_model = {}
    for record in folds[folds["quantity"] == "Params"].to_dict("records"):
        model = record["model"]
        if config(model) is None:
            continue
        printed = Printed.parse(record["value_text"])
        fits = flops.fold_fits(config(model).hidden_size, PAPER_RFF_DIM, printed.value, printed.decimals)
        fits_by_model[model] = (printed, fits, record)
    shared = set.intersection(*({(f.rank, f.hidden) for f in fits} for _, fits, _ in fits_by_model.values())) \
        if len(fits_by_model) > 1 else set()
    for model, (printed, fits, record) in fits_by_model.items():
        note = join(_fold_fit_summary(fits, config(model).hidden_size), _shared_summary(shared, fits_by_model))
        yield Finding(claim_id("table12", model, "Fold Block", "Params"), source("table12", record["src_line_text"]),
                      "fold params (M)", printed, f"{len(fits)} (r, d_hidden) pairs fit", NOT_CHECKABLE, note,
                      model, "Fold Block")
    for record in folds[folds["quantity"] == "FLOPs"].to_dict("records"):
        model = record["model"]
        if model in fits_by_model:
            yield _fold_flops_finding(model, Printed.parse(record["value_text"]), fits_by_model[model][1], record)


def _fold_fit_summary(fits: Sequence[flops.FoldFit], d: int) -> str:
    if not fits:
        return "no (r, d_hidden) reproduces the printed count with Appendix I's inference formula"
    round_ones = [f"(r={f.rank}, d_hidden={f.hidden})" for f in fits
                  if 0 < f.rank <= d // 8 and f.rank & (f.rank - 1) == 0 and f.hidden % 64 == 0]
    at_2048 = sorted({f.rank for f in fits if f.hidden == 2048})
    parts = [f"Appendix I inference formula, 2m={PAPER_RFF_DIM}: d_hidden {min(f.hidden for f in fits)}"
             f"-{max(f.hidden for f in fits)} depending on r"]
    if round_ones:
        parts.append("with r <= d/8 a power of two and d_hidden a multiple of 64: " + ", ".join(round_ones))
    if at_2048:
        parts.append(f"d_hidden=2048 needs r={at_2048[0]}-{at_2048[-1]}")
    return "; ".join(parts)


def _shared_summary(shared: set[tuple[int, int]], fits_by_model: Mapping[str, Any]) -> str:
    if len(fits_by_model) < 2:
        return ""
    if not shared:
        return "no single (r, d_hidden) fits all models"
    ranks = sorted(r for r, _ in shared)
    hiddens = sorted(h for _, h in shared)
    return (f"one (r, d_hidden) fits all of {', '.join(fits_by_model)} only for r={ranks[0]}-{ranks[-1]} with "
            f"d_hidden={hiddens[0]}-{hiddens[-1]}")


def _fold_flops_finding(model: str, printed: Printed, fits: Sequence[flops.FoldFit],
                        record: Mapping[str, Any]) -> Finding:
    d = config(model).hidden_size
    claimed = printed.bound("rounded")
    gflops = {(f.rank, f.hidden): flops.FoldSpec(d, PAPER_RFF_DIM, f.rank, f.hidden).flops(flops.PAPER_CONVENTION) / 1e9
              for f in fits}
    reachable = [key for key, value in gflops.items() if claimed.lo <= value <= claimed.hi]
    doubled = sorted(key for key, value in gflops.items() if claimed.lo <= 2 * value <= claimed.hi)
    highest = max(gflops.values(), default=math.nan)
    per_token = flops.fold_macs_per_token(d, PAPER_RFF_DIM, 1) - flops.fold_macs_per_token(d, PAPER_RFF_DIM, 0)
    needed = (printed.value * 1e9 / flops.PAPER_CONVENTION.seq_len - flops.fold_macs_per_token(d, PAPER_RFF_DIM, 0))
    note = (f"under the block rows' convention (Omega precomputed) the fold needs d_hidden={needed / per_token:.0f} "
            f"for {printed} GFLOPs, but its parameter count allows at most d_hidden="
            f"{max((f.hidden for f in fits), default=0)}")
    if doubled:
        note = join(note, f"at two FLOPs per MAC (twice the blocks' convention) r={doubled[0][0]}-{doubled[-1][0]}, "
                          f"d_hidden={min(h for _, h in doubled)}-{max(h for _, h in doubled)} fit both cells")
    verdict = CONSISTENT if reachable else INCONSISTENT
    return Finding(claim_id("table12", model, "Fold Block", "FLOPs"), source("table12", record["src_line_text"]),
                   "fold FLOPs (G)", printed, f"at most {highest:.2f} for any (r, d_hidden) fitting the params",
                   verdict, note, model, "Fold Block",
                   (printed.value - highest) / highest if not reachable and fits else math.nan)
