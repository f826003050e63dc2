"""Benchmark-score tables (kinds classification, generation, ablation, kmax), rendered by `kdp.tables`; a
stochastic variant's row averages its evaluations over the configured ``seeds``."""

from __future__ import annotations

from kdp.experiment import variant_runs
from kdp.tables import FORMULAS, render_results_table

FORMULA = FORMULAS


def inputs(config: dict, spec: dict) -> dict[str, list[str]]:
    """Every seed's evaluation of each row (one for a deterministic variant); pruned layers from the first seed."""
    pairs = [(m, v) for m in spec["models"] for v in spec["variants"]]
    files = {"evals": [f"results/eval/{m}/{run.name}.json" for m, v in pairs for run in variant_runs(config, m, v)]}
    if spec["kind"] == "kmax":
        files["records"] = [f"results/models/{m}/{v}" for m, v in pairs]
    return files


def render(config: dict, name: str, documents: dict[str, list[dict]]) -> tuple[str, str]:
    records = {(r["model"], r["variant"]): r for r in documents.get("records", [])}
    return render_results_table(config, name, documents["evals"], records)
