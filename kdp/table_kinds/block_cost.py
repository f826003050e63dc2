"""Table 12: FLOPs and parameters of k dense decoder layers against the KDP fold block that replaces them.

Analytic from the model config alone (``resources/model_configs/{model}.json`` for the paper's models, else the
base model's config.json), so it needs no weights. The fold's shape is what this project would build for the
table's KDP variant: 2m = ``fit.rff_dim``, r = ``fit.rank``, d_hidden = ``fit.inverse_hidden`` (default d/2).

Counting conventions, each named in the CSV's ``counting`` column:
  paper_convention  Linear-layer MACs counted once for one 128-token sequence (``kdp.flops.PAPER_CONVENTION``,
                    which reproduces the paper's dense and transformer-block rows); for the fold: Omega^T h, the
                    (2m x 2m) operator product and the two MLP layers (``kdp.flops.fold_macs_per_token``);
  direct            every arithmetic operation of one fold forward at 128 tokens, two FLOPs per multiply-add
                    (``kdp.flops.fold_flops_direct``); parameters the fold must hold (Omega precomputed, operator
                    product, inverse MLP: ``kdp.flops.fold_parameters_direct``);
  appendix_i        Appendix I's formula: inference d(1+r) + (2m)^2 + (1 + d_h(2m+d+1) + d), training with k
                    operators k(1 + (2m)^2) in place of (2m)^2.
Retention Rate = fold / transformer block x 100, in the same counting for both.
"""

from __future__ import annotations

from kdp import flops
from kdp.registry import resolve_params
from kdp.table_kinds.common import header, latex_table, model_config_label
from kdp.tables import csv_text, fmt

DEFAULT_K = (2, 3)
FORMULA = ("Transformer Block = k dense decoder layers; FLOPs in G, Params in M; counting conventions in the "
           "counting column (see kdp/table_kinds/block_cost.py); Retention Rate = fold / block * 100")


def has_shipped_config(model: str) -> bool:
    return (flops.MODEL_CONFIG_DIR / f"{model}.json").is_file()


def inputs(config: dict, spec: dict) -> dict[str, list[str]]:
    return {"configs": [f"results/models/{m}/base" for m in spec["models"] if not has_shipped_config(m)]}


def fold_shape(config: dict, variant: str, model: str, hidden_size: int) -> dict[str, int]:
    from kdp.linearize import KDPConfig  # imports torch: only the table job needs it, not the workflow's planning

    fit = KDPConfig.from_dict(resolve_params(config, variant, model)[1].get("fit", {}))
    return {"d": hidden_size, "rff_dim": fit.rff_dim, "rank": fit.rank,
            "hidden": fit.inverse_hidden or max(1, hidden_size // 2)}


def block_rows(model_config, shape: dict[str, int], ks=DEFAULT_K) -> list[dict]:
    """Tidy rows for one model: (component, quantity, counting, k, value, unit)."""
    d, m2, r, h = shape["d"], shape["rff_dim"], shape["rank"], shape["hidden"]
    fold_flops = {"paper_convention": flops.FoldSpec(d, m2, r, h).flops(flops.PAPER_CONVENTION),
                  "direct": flops.fold_flops_direct(d, m2, r, h, flops.PAPER_CONVENTION.seq_len)}
    fold_params = {"appendix_i": flops.fold_parameters(d, m2, r, h),
                   "direct": flops.fold_parameters_direct(d, m2, r, h)}
    rows = []
    for k in ks:
        block_flops, block_params = flops.block_cost(model_config, k)
        training = flops.fold_parameters(d, m2, r, h, k, "training")
        cells = [
            ("Transformer Block", "FLOPs", "paper_convention", block_flops / 1e9, "G"),
            ("Transformer Block", "Params", "exact", block_params / 1e6, "M"),
            *[("Fold Block", "FLOPs", how, value / 1e9, "G") for how, value in fold_flops.items()],
            ("Fold Block", "Params", "appendix_i", fold_params["appendix_i"] / 1e6, "M"),
            ("Fold Block", "Params", "appendix_i_training", training / 1e6, "M"),
            ("Fold Block", "Params", "direct", fold_params["direct"] / 1e6, "M"),
            ("Retention Rate", "FLOPs", "paper_convention", 100 * fold_flops["paper_convention"] / block_flops, "pct"),
            *[("Retention Rate", "Params", how, 100 * value / block_params, "pct")
              for how, value in fold_params.items()],
        ]
        rows += [{"component": c, "quantity": q, "counting": how, "k": k, "value": v, "unit": u}
                 for c, q, how, v, u in cells]
    return rows


def model_config_of(model: str, loaded: dict[str, dict]):
    """The shipped config of a paper model, else the config.json read from the model's base directory."""
    if has_shipped_config(model):
        return flops.load_model_config(model)
    from transformers import AutoConfig

    return AutoConfig.for_model(**loaded[model])


def render(config: dict, name: str, documents: dict[str, list[dict]]) -> tuple[str, str]:
    spec = config["tables"][name]
    ks = spec.get("k", list(DEFAULT_K))
    variant = spec["variants"][0]
    # base-directory configs arrive in the table's model order, models with a shipped config left out
    loaded = dict(zip([m for m in spec["models"] if not has_shipped_config(m)], documents.get("configs", [])))
    rows, body = [], []
    for position, model in enumerate(spec["models"]):
        model_config = model_config_of(model, loaded)
        shape = fold_shape(config, variant, model, model_config.hidden_size)
        mine = [{"model": model, **row, **{f"fold_{key}": value for key, value in shape.items()}}
                for row in block_rows(model_config, shape, ks)]
        rows += mine
        if position:
            body.append(None)
        body += _latex_rows(config, model, mine, ks)
    fields = ["model", "component", "quantity", "counting", "k", "value", "unit", "fold_d", "fold_rff_dim",
              "fold_rank", "fold_hidden"]
    head = ["LLM", "Component", *[f"FLOPs (G) k={k}" for k in ks], *[f"Params (M) k={k}" for k in ks]]
    return header(config, name, FORMULA) + csv_text(fields, rows), latex_table(config, name, FORMULA, head, body)


def _latex_rows(config: dict, model: str, rows: list[dict], ks) -> list[list[str]]:
    def pick(component: str, quantity: str, counting: str, k: int) -> str:
        value = next((r["value"] for r in rows if (r["component"], r["quantity"], r["counting"], r["k"])
                      == (component, quantity, counting, k)), None)
        return fmt(value) + ("%" if component == "Retention Rate" and value is not None else "")

    lines = [("Transformer Block", "paper_convention", "exact"), ("Fold Block (Appendix I)", "paper_convention",
             "appendix_i"), ("Fold Block (direct)", "direct", "direct"), ("Retention Rate", "paper_convention",
             "appendix_i")]
    out = []
    for label, flops_counting, params_counting in lines:
        component = label.split(" (")[0]
        out.append([model_config_label(config, model) if not out else "", label,
                    *[pick(component, "FLOPs", flops_counting, k) for k in ks],
                    *[pick(component, "Params", params_counting, k) for k in ks]])
    return out
