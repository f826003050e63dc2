"""Table 10: analytic FLOPs per variant with the paper's Change and SpeedUp, beside the measured speed-up.

Analytic columns follow ``kdp.flops.PAPER_CONVENTION`` on the architecture each variant actually has
(``kdp.speed.model_spec_of``). Measured columns come from ``results/speed``: dense and variant timed alternately
in one job on the same token ids; latency at batch 1, throughput at a larger batch, medians over repeats.
"""

from __future__ import annotations

from kdp.config import variant_label
from kdp.table_kinds.common import grouped, header, latex_table, model_config_label
from kdp.tables import csv_text, fmt

FORMULA = ("FLOPs = Linear MACs at 128 tokens, LM head included (kdp.flops.PAPER_CONVENTION); Change = "
           "(1 - FLOPs/FLOPs(dense)) * 100; SpeedUp = FLOPs(dense)/FLOPs; measured = median dense time / median "
           "variant time on the same input, timed alternately in one job")


def inputs(config: dict, spec: dict) -> dict[str, list[str]]:
    return {"speed": [f"results/speed/{m}/{v}.json" for m in spec["models"] for v in spec["variants"]]}


def quantities(run: dict) -> dict[str, float]:
    """The numbers one speed run contributes to the table."""
    dense, variant = run["analytic"]["dense"]["flops"], run["analytic"]["variant"]["flops"]
    latency, throughput = run["measured"]["latency"], run["measured"]["throughput"]
    return {
        "flops_g": variant / 1e9,
        "dense_flops_g": dense / 1e9,
        "change_pct": 100.0 * (1.0 - variant / dense),
        "flops_speedup": dense / variant,
        "parameters": run["analytic"]["variant"]["parameters"],
        "latency_speedup": latency["speedup"],
        "dense_latency_ms": 1000.0 * latency["dense"]["median_s"],
        "variant_latency_ms": 1000.0 * latency["variant"]["median_s"],
        "throughput_speedup": throughput["speedup"],
        "dense_tokens_per_s": throughput["dense_tokens_per_s"],
        "variant_tokens_per_s": throughput["variant_tokens_per_s"],
    }


def _setting(runs: list[dict]) -> str:
    settings = sorted({(r["device"]["name"], r["settings"]["dtype"], r["settings"]["torch_threads"],
                        r["measured"]["latency"]["batch"], r["measured"]["throughput"]["batch"],
                        r["settings"]["seq_len"], r["settings"]["repeats"]) for r in runs})
    return "; ".join(f"measured on {device} ({dtype}, {threads} threads): latency at batch {lb}, throughput at "
                     f"batch {tb}, {seq} tokens, median of {repeats} alternating repeats"
                     for device, dtype, threads, lb, tb, seq, repeats in settings)


def render(config: dict, name: str, documents: dict[str, list[dict]]) -> tuple[str, str]:
    spec = config["tables"][name]
    runs = {(r["model"], r["variant"]): r for r in documents["speed"]}
    rows, body = [], []
    for model in spec["models"]:
        for variant in spec["variants"]:
            run = runs[(model, variant)]
            values = quantities(run)
            dense = run["analytic"]["dense"]["flops"] == run["analytic"]["variant"]["flops"]
            rows += [{"model": model, "variant": variant, "label": variant_label(config, variant), "quantity": key,
                      "value": value} for key, value in values.items()]
            analytic = ["-", "-"] if dense else [fmt(values["change_pct"]), f"{values['flops_speedup']:.2f}x"]
            body.append((model, [model_config_label(config, model), variant_label(config, variant),
                                 fmt(values["flops_g"]), *analytic, f"{values['latency_speedup']:.2f}x",
                                 f"{values['throughput_speedup']:.2f}x"]))
    setting = _setting(list(runs.values()))
    tex = latex_table(config, name, FORMULA, ["Model", "Method", "FLOPs (G)", "Change (%)", "SpeedUp",
                                              "Measured latency", "Measured throughput"],
                      grouped(body, spec["models"]), note=setting)
    return header(config, name, FORMULA, measured=setting) + csv_text(
        ["model", "variant", "label", "quantity", "value"], rows), tex
