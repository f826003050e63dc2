"""Table 8: the data each variant consumed, from the ``samples`` its method recorded (purpose -> count).

The paper's "Need Training" column is a judgement about each method, not a recorded fact, so it is not printed;
"Need Fine-tuning" is the variant's ``finetune`` setting, and "Total Sample" the sum over every purpose
(calibration, selection, training, validation, recovery), i.e. what the method actually read.
"""

from __future__ import annotations

from kdp.config import variant_label
from kdp.registry import resolve_params
from kdp.table_kinds.common import grouped, header, latex_table, model_config_label
from kdp.tables import csv_text

FORMULA = "Total Sample = sum over purposes of the samples the variant's method recorded (kdp_variant.json samples)"


def inputs(config: dict, spec: dict) -> dict[str, list[str]]:
    return {"records": [f"results/models/{m}/{v}" for m in spec["models"] for v in spec["variants"]]}


def needs_finetuning(config: dict, model: str, variant: str) -> bool:
    return bool(resolve_params(config, variant, model)[1].get("finetune"))


def render(config: dict, name: str, documents: dict[str, list[dict]]) -> tuple[str, str]:
    spec = config["tables"][name]
    records = {(r["model"], r["variant"]): r for r in documents["records"]}
    rows, body = [], []
    for model in spec["models"]:
        for variant in spec["variants"]:
            record = records[(model, variant)]
            samples = record.get("samples", {})
            finetune = needs_finetuning(config, model, variant)
            base = {"model": model, "variant": variant, "label": variant_label(config, variant),
                    "method": record["method"], "finetune": finetune}
            rows += [{**base, "purpose": purpose, "samples": count} for purpose, count in samples.items()]
            rows.append({**base, "purpose": "total", "samples": sum(samples.values())})
            used = "; ".join(f"{purpose} {count}" for purpose, count in samples.items()) or "none"
            body.append((model, [model_config_label(config, model), variant_label(config, variant),
                                 "yes" if finetune else "no", used, str(sum(samples.values()))]))
    fields = ["model", "variant", "label", "method", "finetune", "purpose", "samples"]
    tex = latex_table(config, name, FORMULA, ["LLM", "Method", "Need Fine-tuning", "Samples by purpose",
                                              "Total Sample"], grouped(body, spec["models"]))
    return header(config, name, FORMULA) + csv_text(fields, rows), tex
