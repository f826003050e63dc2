"""Figure 1: inter-layer token-cosine and linear-CKA similarity, one row per model.

Reads ``results/similarity/{model}/{set}.npz`` (``cosine`` and ``cka``: square matrices over the hidden states,
embedding output first, as `kdp.similarity.similarity_matrices` writes them). The paper's point is that
consecutive layers are highly similar and that CKA sits above cosine; both panels share one colour scale so
that the comparison is visible.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from kdp.errors import UserError
from kdp.figures.common import new_figure, save_png_pdf

MEASURES = (("cosine", "token cosine"), ("cka", "linear CKA"))


def load_matrices(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        missing = [key for key, _ in MEASURES if key not in data]
        if missing:
            raise UserError(f"{path}: missing array(s) {', '.join(missing)}; allowed: an npz with cosine and cka")
        matrices = {key: np.asarray(data[key], dtype=np.float64) for key, _ in MEASURES}
    for key, matrix in matrices.items():
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise UserError(f"{path}: {key} has shape {matrix.shape}; allowed: a square matrix")
    return matrices


def plot_similarity(npz_by_label: Mapping[str, str | Path], out_png: str | Path, out_pdf: str | Path,
                    title: str = "", provenance: Mapping | None = None) -> None:
    """One row per model (label -> npz), columns cosine and CKA, colour scale [lowest value, 1]."""
    matrices = {label: load_matrices(path) for label, path in npz_by_label.items()}
    low = min(min(float(m.min()) for m in pair.values()) for pair in matrices.values())
    figure, axes = new_figure(len(matrices), len(MEASURES), 7.5, 3.3 * len(matrices))
    image = None
    for row, (label, pair) in enumerate(matrices.items()):
        for col, (key, name) in enumerate(MEASURES):
            axis = axes[row][col]
            image = axis.imshow(pair[key], vmin=low, vmax=1.0, cmap="viridis",
                                origin="upper", interpolation="nearest")
            axis.set_title(f"{label}: {name}")
            axis.set_xlabel("hidden state (0 = embeddings)")
            axis.set_ylabel("hidden state")
            for ticks in (axis.xaxis, axis.yaxis):
                ticks.set_major_locator(MaxNLocator(integer=True))
    figure.colorbar(image, ax=[a for row in axes for a in row], shrink=0.8, label="similarity")
    if title:
        figure.suptitle(title)
    save_png_pdf(figure, out_png, out_pdf, provenance)
