"""Figures 6-7: a benchmark's score against the pruning ratio actually reached, one line per model and method.

Each point is one evaluated variant (``results/eval/{model}/{variant}.json``); its x is the measured ratio
(1 - parameters / dense parameters), not the requested one, since block-granular methods land near but not on
their target. Variants sharing a label (e.g. every "Ours" at 10-40%) form one line; the dense variant, when
listed, is the ratio-0 start of every line. Perplexity panels use a log axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdp.errors import UserError
from kdp.figures.common import finish, new_figure, score_column, style_score_axis

DENSE_METHOD = "dense"


def sweep_points(evals: Sequence[Mapping[str, Any]], benchmark: str, methods: Mapping[str, str],
                 labels: Mapping[str, str]) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """{(model, line label): [(ratio, value), ...] sorted by ratio} for one benchmark."""
    dense = {e["model"]: e for e in evals if methods[e["variant"]] == DENSE_METHOD}
    lines: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for result in evals:
        if methods[result["variant"]] == DENSE_METHOD:
            continue
        score = result["scores"].get(benchmark)
        if score is None:
            raise UserError(f"evaluation of {result['model']}/{result['variant']}: no {benchmark!r} score; allowed: "
                            f"{', '.join(result['scores'])} (list the benchmark in the variant's benchmarks)")
        points = lines.setdefault((result["model"], labels[result["variant"]]), [])
        points.append((float(result["ratio"]), float(score["value"])))
    for (model, _), points in lines.items():
        if model in dense and benchmark in dense[model]["scores"]:
            points.append((0.0, float(dense[model]["scores"][benchmark]["value"])))
        points.sort()
    return lines


def plot_ratio_sweep(evals: Sequence[Mapping[str, Any]], benchmarks: Sequence[str], methods: Mapping[str, str],
                     labels: Mapping[str, str], model_labels: Mapping[str, str], out_png: str | Path,
                     out_pdf: str | Path, title: str = "", provenance: Mapping | None = None) -> None:
    figure, axes = new_figure(1, len(benchmarks), 3.6 * len(benchmarks), 3.2)
    for axis, benchmark in zip(axes[0], benchmarks):
        column, kind = score_column(evals, benchmark)
        for (model, label), points in sweep_points(evals, benchmark, methods, labels).items():
            xs, ys = zip(*points)
            axis.plot([100 * x for x in xs], ys, marker="o", label=f"{model_labels[model]} {label}")
        style_score_axis(axis, column, kind, "pruning ratio (%)")
    finish(figure, axes, title, out_png, out_pdf, provenance)
