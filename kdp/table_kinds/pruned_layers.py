"""Table 5: the blocks each model's variant pruned, and the pruning ratio it reached.

Blocks come from the variant's block choice (``results/blocks``; CKA of each block's input and output states) when
its method selects blocks, else from the variant record's removed layers; the ratio always from the record. The CSV
also gives the spread (min, median, max) of the CKA over all candidate blocks, so a reader sees whether the ranking
separates blocks at all.
"""

from __future__ import annotations

from kdp.config import variant_label
from kdp.registry import resolve_params
from kdp.table_kinds.common import grouped, header, latex_table, model_config_label
from kdp.tables import csv_text

FORMULA = ("Pruning Ratio = 1 - parameters(variant) / parameters(dense); Pruned Layers = [first,last] of each "
           "replaced block, dense-model indices, inclusive")


def block_source(config: dict, model: str, variant: str) -> str | None:
    """The variant whose block choice this variant uses, or None when its method chooses no blocks."""
    cls, params = resolve_params(config, variant, model)
    if "blocks" not in cls.requires and "block_fits" not in cls.requires:
        return None
    return params.get("reuse_fits_of") or variant


def inputs(config: dict, spec: dict) -> dict[str, list[str]]:
    pairs = [(m, v) for m in spec["models"] for v in spec["variants"]]
    blocks = {(m, block_source(config, m, v)) for m, v in pairs} - {(m, None) for m in spec["models"]}
    return {"records": [f"results/models/{m}/{v}" for m, v in pairs],
            "blocks": [f"results/blocks/{m}/{v}.json" for m, v in sorted(blocks)]}


def _candidates(config: dict, record: dict, choices: dict) -> dict:
    source = block_source(config, record["model"], record["variant"])
    return choices[(record["model"], source)]["candidates"] if source is not None else {}


def _blocks(config: dict, record: dict, choices: dict) -> list[dict]:
    source = block_source(config, record["model"], record["variant"])
    if source is not None:
        return choices[(record["model"], source)]["blocks"]
    if record.get("blocks"):
        return [{"first": first, "last": last, "cka": None} for first, last in record["blocks"]]
    return [{"first": i, "last": i, "cka": None} for i in sorted(record.get("layers_removed", []))]


def render(config: dict, name: str, documents: dict[str, list[dict]]) -> tuple[str, str]:
    spec = config["tables"][name]
    records = {(r["model"], r["variant"]): r for r in documents["records"]}
    choices = {(c["model"], c["variant"]): c for c in documents.get("blocks", [])}
    rows, body = [], []
    for model in spec["models"]:
        for variant in spec["variants"]:
            record = records[(model, variant)]
            blocks = _blocks(config, record, choices)
            spread = _candidates(config, record, choices)
            for index, block in enumerate(blocks, 1):
                rows.append({"model": model, "variant": variant, "label": variant_label(config, variant),
                             "ratio": record["ratio"], "block": index, "first": block["first"],
                             "last": block["last"], "layers": block["last"] - block["first"] + 1,
                             "cka": block.get("cka"), "candidates": spread.get("count"),
                             "candidate_cka_min": spread.get("min"), "candidate_cka_median": spread.get("median"),
                             "candidate_cka_max": spread.get("max")})
            printed = ", ".join(f"[{b['first']},{b['last']}]" for b in blocks)
            body.append((model, [model_config_label(config, model), variant_label(config, variant),
                                 f"{100 * record['ratio']:.1f}%", printed]))
    fields = ["model", "variant", "label", "ratio", "block", "first", "last", "layers", "cka", "candidates",
              "candidate_cka_min", "candidate_cka_median", "candidate_cka_max"]
    tex = latex_table(config, name, FORMULA, ["LLM", "Method", "Pruning Ratio", "Pruned Layers"],
                      grouped(body, spec["models"]))
    return header(config, name, FORMULA) + csv_text(fields, rows), tex
