"""What every figure shares: the Agg backend, one look, and byte-stable PNG/PDF output.

Saving goes through `save_figure` (Figures 3-5 use it too): no creation date in PDFs, no
matplotlib version in PNGs, so the same inputs give the same bytes on a rerun; provenance goes into the files'
description fields instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from kdp.errors import UserError  # noqa: E402
from kdp.io import atomic_path  # noqa: E402

FORMATS = ("png", "pdf")

STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8, "svg.hashsalt": "kdp",
         "pdf.fonttype": 42}


def save_figure(figure, outputs: dict[str, str | Path], provenance: dict[str, Any] | None = None) -> None:
    """Write ``figure`` to every path of ``outputs`` ({"png": path, "pdf": path}) atomically, without dates."""
    text = json.dumps(provenance or {}, sort_keys=True)
    metadata = {
        "png": {"Software": None, "Description": text},
        "pdf": {"Creator": None, "Producer": None, "CreationDate": None, "ModDate": None, "Subject": text},
    }
    for fmt, path in outputs.items():
        if fmt not in metadata:
            raise UserError(f"figure output format {fmt!r} ({path}); allowed: {', '.join(FORMATS)}")
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=fmt, dpi=150, metadata=metadata[fmt], bbox_inches="tight")
    plt.close(figure)


def new_figure(rows: int, cols: int, width: float, height: float):
    plt.rcParams.update(STYLE)
    return plt.subplots(rows, cols, figsize=(width, height), squeeze=False, layout="constrained")


def save_png_pdf(figure, out_png: str | Path, out_pdf: str | Path, provenance: Mapping[str, Any] | None = None) -> None:
    save_figure(figure, {"png": out_png, "pdf": out_pdf}, dict(provenance or {}))


def score_column(evals: Sequence[Mapping[str, Any]], benchmark: str) -> tuple[str, str]:
    """(printed column name, score kind) of a benchmark, from the first evaluation that has it."""
    score = next((e["scores"][benchmark] for e in evals if benchmark in e["scores"]), None)
    return (score["column"], score["kind"]) if score else (benchmark, "accuracy")


def style_score_axis(axis, column: str, kind: str, xlabel: str) -> None:
    """Labels every score panel alike; perplexities on a log scale, where their spread lives."""
    axis.set_xlabel(xlabel)
    axis.set_ylabel(column + (" perplexity" if kind == "perplexity" else ""))
    axis.set_title(column)
    if kind == "perplexity":
        axis.set_yscale("log")
    axis.grid(alpha=0.3)


def finish(figure, axes, title: str, out_png: str | Path, out_pdf: str | Path,
           provenance: Mapping[str, Any] | None = None) -> None:
    axes[0][-1].legend(loc="best")
    if title:
        figure.suptitle(title)
    save_png_pdf(figure, out_png, out_pdf, provenance)

