"""Figure 8: KDP's scores against the kernel size 2m (``fit.rff_dim``), one panel per benchmark, one line per model.

The x of each point is the variant's resolved ``rff_dim`` for that model (variant entry, then the model's
``overrides.kdp``); `kdp.figures.check_figures` rejects a sweep whose 2m a model override pins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdp.figures.common import finish, new_figure, score_column, style_score_axis


def plot_kernel_size(evals: Sequence[Mapping[str, Any]], rff_dims: Mapping[tuple[str, str], int],
                     benchmarks: Sequence[str], model_labels: Mapping[str, str], out_png: str | Path,
                     out_pdf: str | Path, title: str = "", provenance: Mapping | None = None) -> None:
    """``rff_dims``: {(model, variant): 2m}."""
    figure, axes = new_figure(1, len(benchmarks), 3.6 * len(benchmarks), 3.2)
    models = list(dict.fromkeys(e["model"] for e in evals))
    for axis, benchmark in zip(axes[0], benchmarks):
        column, kind = score_column(evals, benchmark)
        for model in models:
            points = sorted((rff_dims[(e["model"], e["variant"])], float(e["scores"][benchmark]["value"]))
                            for e in evals if e["model"] == model and benchmark in e["scores"])
            if points:
                xs, ys = zip(*points)
                axis.plot(xs, ys, marker="o", label=model_labels[model])
        axis.set_xscale("log", base=2)
        dims = sorted({d for d in rff_dims.values()})
        axis.set_xticks(dims, [str(d) for d in dims])
        style_score_axis(axis, column, kind, "kernel size 2m")
    finish(figure, axes, title, out_png, out_pdf, provenance)
