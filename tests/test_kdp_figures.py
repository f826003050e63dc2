"""Figures 3-5 from KDP fit records: every figure is written as PNG and PDF, reruns are byte-identical, and the
inputs the paper's panels need are read from the records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdp.errors import UserError
from kdp.figures.kdp_fits import KERNEL_SAMPLE, RECORD, grid_shape, load_fits, render_kdp_figures


def _fit_dir(root, first: int, epochs: int = 6, features: int = 64, tokens: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    step1 = [{"epoch": e, "loss": 1.0 / (e + 1), "kstep_cosine": 1 - 0.5 / (e + 1),
              "operator_norms": [3.0 / (e + 1) + 1, 2.0 / (e + 1) + 1],
              "phi_centered_norm_mean": 0.4, "phi_centered_norm_max": 0.9 + 0.01 * e} for e in range(epochs + 1)]
    for entry in step1[1:]:
        entry["train_loss"] = 1.2 * entry["loss"]
    step2 = [{"epoch": e, "mse": 2.0 / (e + 1), **({"train_loss": 2.5 / (e + 1)} if e else {})} for e in range(9)]
    record = {"block": [first, first + 1], "fold": "kernel",
              "step1": {"epochs": step1, "best_epoch": epochs}, "step2": {"epochs": step2}}
    directory = root / f"block_{first}_{first + 1}"
    directory.mkdir(parents=True)
    (directory / RECORD).write_text(json.dumps(record))
    truth = rng.normal(size=(tokens, features))
    np.savez(directory / KERNEL_SAMPLE, truth=truth, predicted=truth + 0.1 * rng.normal(size=truth.shape))
    return directory


def _outputs(root):
    return {f"figure{n}_{fmt}": root / f"figure{n}_m.{fmt}" for n in (3, 4, 5) for fmt in ("png", "pdf")}


def test_every_figure_is_written_as_png_and_pdf_and_reruns_are_identical(tmp_path):
    fits = [_fit_dir(tmp_path / "fits", first) for first in (4, 8)]
    first, second = _outputs(tmp_path / "a"), _outputs(tmp_path / "b")
    render_kdp_figures(fits, first, "Micro", {"git_commit": "abc"})
    render_kdp_figures(fits, second, "Micro", {"git_commit": "abc"})
    for key, path in first.items():
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG" if key.endswith("png") else b"%PDF"), key
        assert len(data) > 5000
        assert data == second[key].read_bytes(), f"{key} differs between identical runs"
    assert b"abc" in first["figure3_png"].read_bytes()  # provenance travels in the metadata


def test_figure4_reshapes_1024_features_to_32_by_32_and_survives_short_samples(tmp_path):
    assert grid_shape(1024) == (32, 32) and grid_shape(512) == (16, 32) and grid_shape(6) == (2, 3)
    fit = _fit_dir(tmp_path / "fits", 2, features=512, tokens=10)
    render_kdp_figures([fit], _outputs(tmp_path / "out"))
    assert (tmp_path / "out" / "figure4_m.png").is_file()


def test_records_without_kdp_curves_are_a_user_error(tmp_path):
    directory = tmp_path / "block_1_2"
    directory.mkdir()
    (directory / RECORD).write_text(json.dumps({"block": [1, 2], "fold": "direct_ols"}))
    with pytest.raises(UserError, match="fold: kernel"):
        load_fits([directory])
    with pytest.raises(UserError, match="no block fits"):
        load_fits([])
