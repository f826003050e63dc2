"""Figures 3, 4 and 5 of the paper, drawn from the per-block KDP fit records (results/kdp/{model}/{variant}/block_*/);
the workflow draws them as ``figures:`` entries of kinds ``kdp_training``, ``kernel_space`` and ``operator_norms``.

* Figure 3 (training dynamics): Step 1 loss (train and held-out), Step 1 held-out k-step cosine between the
  predicted (A_k ... A_1) phi(h_l) and the true phi(h_{l+k}), and the Step 2 loss: the training loss in the space
  it is trained in (``inverse_loss_space``) and the held-out MSE of the fold in residual-stream units.
* Figure 4 (kernel-space representations): for one held-out sample, token rows 0, 25 and 50 of the predicted and
  the true phi(h_{l+k}), each reshaped to a near-square grid (32 x 32 for 2m = 1024), and their difference; the
  first two panels of a row share one colour range, as in the paper.
* Figure 5 (the quantities of Theorem 1): ||A_i||_op per step over Step 1 epochs (lines; B_A is their maximum) and
  R_phi, the norm of the mean-subtracted features phi(h) - mean, as a band from its mean to its maximum over
  held-out tokens (the paper's shaded region "calculated from mean-subtracted samples").

Every curve is one block; all come from ``record.json`` (``step1.epochs``, ``step2.epochs``) and
``kernel_space_sample.npz`` that `kdp.methods.kdp.KDP.fit_block` writes. Output is PNG and PDF, rendered with the
Agg backend and written without timestamps, so a rerun from the same records gives identical files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kdp.errors import UserError  # noqa: E402
from kdp.figures.common import FORMATS, save_figure  # noqa: E402
from kdp.io import read_json  # noqa: E402

FIGURE4_ROWS = (0, 25, 50)  # the token rows the paper shows
RECORD = "record.json"
KERNEL_SAMPLE = "kernel_space_sample.npz"


def load_fits(fit_dirs: list[str | Path]) -> list[tuple[str, dict]]:
    """(block label, record) for every KDP fit directory, in block order; a non-kernel fit is a user error."""
    fits = []
    for directory in sorted(Path(d) for d in fit_dirs):
        record = read_json(directory / RECORD)
        if "step1" not in record:
            raise UserError(f"{directory / RECORD}: fold {record.get('fold')!r} has no KDP training curves; "
                            "allowed: a variant with fold: kernel")
        first, last = record["block"]
        fits.append((f"layers {first}-{last}", record))
    if not fits:
        raise UserError("kdp figures: no block fits were given; allowed: at least one results/kdp/.../block_* dir")
    return fits


def figure3(fits: list[tuple[str, dict]], title: str = ""):
    """Step 1 loss, Step 1 k-step cosine, Step 2 loss, one colour per block."""
    figure, (loss, cosine, inverse) = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    for index, (label, record) in enumerate(fits):
        color = f"C{index}"
        step1 = record["step1"]["epochs"]
        epochs = [e["epoch"] for e in step1]
        trained = [e for e in step1 if "train_loss" in e]
        loss.plot([e["epoch"] for e in trained], [e["train_loss"] for e in trained], color=color, ls="--",
                  label=f"{label} train")
        loss.plot(epochs, [e["loss"] for e in step1], color=color, label=f"{label} held-out")
        best = record["step1"]["best_epoch"]
        loss.plot([best], [step1[best]["loss"]], "o", color=color, ms=4)
        cosine.plot(epochs, [e["kstep_cosine"] for e in step1], color=color, label=label)
        step2 = record["step2"]["epochs"]
        trained2 = [e for e in step2 if "train_loss" in e]
        inverse.plot([e["epoch"] for e in trained2], [e["train_loss"] for e in trained2], color=color, ls="--",
                     label=f"{label} train, MSE + L_norm (training space)")
        inverse.plot([e["epoch"] for e in step2], [e["mse"] for e in step2], color=color,
                     label=f"{label} held-out MSE (residual-stream units)")
    loss.set(title="(a) Step 1 loss (Eq. 5)", xlabel="epoch", ylabel="loss", yscale="log")
    cosine.set(title="(b) Step 1 held-out k-step cosine", xlabel="epoch", ylabel="cos(P phi(h_l), phi(h_l+k))")
    inverse.set(title="(c) Step 2 loss (Eq. 6)", xlabel="epoch", ylabel="loss", yscale="log")
    for axis in (loss, cosine, inverse):
        axis.legend(fontsize=6)
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    return figure


def grid_shape(size: int) -> tuple[int, int]:
    """The most square (rows, cols) with rows * cols == size: 32 x 32 for the paper's 1024 features."""
    rows = int(math.isqrt(size))
    while size % rows:
        rows -= 1
    return rows, size // rows


def figure4(samples: list[tuple[str, np.ndarray, np.ndarray]], title: str = "", rows: tuple[int, ...] = FIGURE4_ROWS):
    """Predicted, true and difference heatmaps of the chosen token rows of one held-out sample per (label,
    predicted, truth) entry (one model's first block each)."""
    for label, predicted, truth in samples:
        if predicted.shape != truth.shape or predicted.ndim != 2:
            raise UserError(f"figure 4 ({label}): predicted {predicted.shape} and true {truth.shape} features; "
                            "allowed: equal (tokens, 2m) arrays")
    panels = [(label, predicted, truth, token) for label, predicted, truth in samples
              for token in ([row for row in rows if row < truth.shape[0]] or [truth.shape[0] - 1])]
    figure, axes = plt.subplots(len(panels), 3, figsize=(9.5, 3.0 * len(panels)), squeeze=False,
                                layout="constrained")
    for axes_row, (label, predicted, truth, token) in zip(axes, panels):
        shape = grid_shape(truth.shape[1])
        pred, true = predicted[token].reshape(shape), truth[token].reshape(shape)
        low, high = min(pred.min(), true.min()), max(pred.max(), true.max())
        for axis, values, name, extra in (
            (axes_row[0], pred, "predicted", {"vmin": low, "vmax": high}),
            (axes_row[1], true, "ground truth", {"vmin": low, "vmax": high}),
            (axes_row[2], pred - true, "difference", {"cmap": "coolwarm"}),
        ):
            image = axis.imshow(values, aspect="auto", interpolation="nearest", **extra)
            axis.set_title(f"{label}, token {token}: {name}", fontsize=8)
            axis.set_xticks([])
            axis.set_yticks([])
            figure.colorbar(image, ax=axis, fraction=0.046)
    if title:
        figure.suptitle(title)
    return figure


def figure5(fits: list[tuple[str, dict]], title: str = ""):
    """||A_i||_op per step over Step 1 (lines) and the mean..max band of ||phi(h) - mean|| (R_phi), per block."""
    figure, axes = plt.subplots(1, len(fits), figsize=(4.2 * len(fits), 3.6), squeeze=False, layout="constrained")
    for axis, (label, record) in zip(axes[0], fits):
        step1 = record["step1"]["epochs"]
        epochs = [e["epoch"] for e in step1]
        norms = np.array([e["operator_norms"] for e in step1])
        for step in range(norms.shape[1]):
            axis.plot(epochs, norms[:, step], label=f"||A_{step + 1}||_op")
        axis.plot(epochs, norms.max(1), color="k", lw=0.8, ls=":", label="B_A = max_i ||A_i||_op")
        axis.fill_between(epochs, [e["phi_centered_norm_mean"] for e in step1],
                          [e["phi_centered_norm_max"] for e in step1], color="C7", alpha=0.35,
                          label="||phi(h) - mean||: mean..max (R_phi)")
        axis.set(title=label, xlabel="Step 1 epoch", ylabel="norm")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6)
    if title:
        figure.suptitle(title)
    return figure


# Figures 3-5 as `figures:` config kinds (kdp/figures): each draws every block fit of the figure's models.
FIT_FIGURES = {"kdp_training": "figure3", "kernel_space": "figure4", "operator_norms": "figure5"}


def draw_fit_figure(kind: str, fit_dirs: dict[str, list[str | Path]], outputs: dict[str, str | Path],
                    title: str = "", provenance: dict[str, Any] | None = None) -> None:
    """One of Figures 3-5 from ``{model label: its block fit directories}``; ``outputs`` maps png/pdf to paths.

    Every block's curves are labelled "<model>, layers a-b"; Figure 4 shows one held-out sample of each model's
    first block, as the paper shows one of LLaMA-2-7B.
    """
    fits = [(f"{model}, {label}" if model else label, record)
            for model, dirs in fit_dirs.items() for label, record in load_fits(dirs)]
    if kind == "kdp_training":
        figure = figure3(fits, title)
    elif kind == "operator_norms":
        figure = figure5(fits, title)
    elif kind == "kernel_space":
        samples = []
        for model, dirs in fit_dirs.items():
            first = sorted(Path(d) for d in dirs)[0]
            sample = np.load(first / KERNEL_SAMPLE)
            block = load_fits([first])[0][0]
            samples.append((f"{model}, {block}" if model else block, sample["predicted"], sample["truth"]))
        figure = figure4(samples, title)
    else:
        raise UserError(f"figure kind {kind!r}; allowed: {', '.join(FIT_FIGURES)}")
    save_figure(figure, outputs, provenance)


def render_kdp_figures(fit_dirs: list[str | Path], outputs: dict[str, str | Path], label: str = "",
                       provenance: dict[str, Any] | None = None) -> None:
    """Figures 3-5 of one model's block fits. ``outputs`` maps "figure{3,4,5}_{png,pdf}" to paths."""
    titles = {"kdp_training": "KDP training", "kernel_space": "kernel space, one held-out sample",
              "operator_norms": "Theorem 1 quantities during Step 1"}
    for kind, number in FIT_FIGURES.items():
        paths = {fmt: outputs[f"{number}_{fmt}"] for fmt in FORMATS}
        draw_fit_figure(kind, {label: list(fit_dirs)}, paths, f"{label}: {titles[kind]}".strip(": "), provenance)
