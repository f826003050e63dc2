"""Figures 1, 3-5, 6-7 and 8: valid PNG/PDF from synthetic results, identical bytes on a rerun, config checks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from kdp import config as kdp_config
from kdp.errors import UserError
from kdp.figures import check_figures, draw_figure, figure_inputs, rff_dim
from kdp.figures.ratio_sweep import sweep_points
from kdp.figures.similarity import plot_similarity

REPO = Path(__file__).resolve().parent.parent
PNG, PDF = b"\x89PNG\r\n\x1a\n", b"%PDF-"


@pytest.fixture(scope="module")
def embedded():
    return kdp_config.load(REPO / "config" / "config.yaml")


def similarity_npz(path: Path, states: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    distance = np.abs(np.subtract.outer(np.arange(states), np.arange(states)))
    cosine = np.exp(-distance / 4.0) * 0.9 + 0.1 * np.eye(states)
    cka = np.clip(cosine + 0.05 + rng.uniform(0, 0.01, cosine.shape), 0, 1)
    np.savez(path, cosine=cosine, cka=cka, tokens=np.array(128))
    return str(path)


def assert_png_pdf(png: Path, pdf: Path) -> None:
    assert png.read_bytes().startswith(PNG) and png.stat().st_size > 5000
    assert pdf.read_bytes().startswith(PDF) and pdf.read_bytes().rstrip().endswith(b"%%EOF")


def test_similarity_figure_is_valid_and_byte_identical(tmp_path):
    inputs = {"A": similarity_npz(tmp_path / "a.npz", 13, 0), "B": similarity_npz(tmp_path / "b.npz", 9, 1)}
    first = (tmp_path / "1.png", tmp_path / "1.pdf")
    second = (tmp_path / "2.png", tmp_path / "2.pdf")
    plot_similarity(inputs, *first, title="t", provenance={"seed": 0})
    plot_similarity(inputs, *second, title="t", provenance={"seed": 0})
    assert_png_pdf(*first)
    assert first[0].read_bytes() == second[0].read_bytes()
    assert first[1].read_bytes() == second[1].read_bytes()
    assert b"CreationDate" not in first[1].read_bytes()


def test_similarity_npz_without_cka_is_a_user_error(tmp_path):
    np.savez(tmp_path / "bad.npz", cosine=np.eye(3))
    with pytest.raises(UserError, match=r"bad\.npz: missing array\(s\) cka; allowed"):
        plot_similarity({"A": tmp_path / "bad.npz"}, tmp_path / "x.png", tmp_path / "x.pdf")


def evaluation(model: str, variant: str, ratio: float, values: dict[str, float]) -> dict:
    kinds = {"kjv_perplexity": ("KJV", "perplexity")}
    scores = {b: {"value": v, "column": kinds.get(b, (b, ""))[0], "kind": kinds.get(b, ("", "accuracy"))[1]}
              for b, v in values.items()}
    return {"model": model, "variant": variant, "ratio": ratio, "scores": scores}


def test_sweep_points_group_by_label_and_start_at_dense():
    evals = [evaluation("m", "dense", 0.0, {"acc": 60.0}), evaluation("m", "kdp_r40", 0.41, {"acc": 40.0}),
             evaluation("m", "kdp", 0.24, {"acc": 52.0}), evaluation("m", "wo_kernel", 0.25, {"acc": 30.0})]
    methods = {"dense": "dense", "kdp_r40": "kdp", "kdp": "kdp", "wo_kernel": "drop_blocks"}
    labels = {"dense": "Dense", "kdp_r40": "Ours", "kdp": "Ours", "wo_kernel": "w/o Kernel"}
    lines = sweep_points(evals, "acc", methods, labels)
    assert lines == {("m", "Ours"): [(0.0, 60.0), (0.24, 52.0), (0.41, 40.0)],
                     ("m", "w/o Kernel"): [(0.0, 60.0), (0.25, 30.0)]}
    with pytest.raises(UserError, match="no 'other' score"):
        sweep_points(evals, "other", methods, labels)


def write_evals(tmp_path: Path, config: dict, name: str, values) -> list[str]:
    paths = []
    for path in figure_inputs(config, name):
        _, model, variant = Path(path).with_suffix("").parts[-3:]
        ratio = config["variants"][variant].get("target_ratio", 0.0 if variant == "dense" else 0.25)
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(evaluation(model, variant, ratio, values(variant, ratio))))
        paths.append(str(target))
    return paths


def test_ratio_sweep_figure_from_the_embedded_config(embedded, tmp_path):
    inputs = write_evals(tmp_path, embedded, "figure6",
                         lambda v, r: {"bb_bbq_lite_json_gender_identity_disambig": 50 - 40 * r,
                                       "kjv_perplexity": 30 * (1 + 5 * r)})
    assert len(inputs) == 13 and inputs[0].endswith("results/eval/opt-kjv/dense.json")
    draw_figure(embedded, "figure6", inputs, str(tmp_path / "f6.png"), str(tmp_path / "f6.pdf"))
    assert_png_pdf(tmp_path / "f6.png", tmp_path / "f6.pdf")


def test_kernel_size_figure_reads_resolved_rff_dim(embedded, tmp_path):
    assert [rff_dim(embedded, v, "smollm2-135m") for v in embedded["figures"]["figure8"]["variants"]] == [
        128, 256, 512, 1024]
    assert rff_dim(embedded, "kdp", "opt-kjv") == 512  # the model override wins over the default
    inputs = write_evals(tmp_path, embedded, "figure8", lambda v, r: {
        "bb_bbq_lite_json_gender_identity_disambig": 40.0, "kjv_cloze": 30.0 + len(v), "kjv_next_verse": 25.0})
    draw_figure(embedded, "figure8", inputs, str(tmp_path / "f8.png"), str(tmp_path / "f8.pdf"))
    assert_png_pdf(tmp_path / "f8.png", tmp_path / "f8.pdf")


def test_similarity_inputs_follow_the_capture_set(embedded):
    assert figure_inputs(embedded, "figure1") == ["results/similarity/smollm2-135m/standard.npz",
                                                  "results/similarity/opt-kjv/standard.npz"]


@pytest.mark.parametrize("edit,message", [
    (lambda f: f["figure8"].update(models=["opt-kjv"]),
     "config key figures.figure8.models: 'opt-kjv' gives the same 2m to several variants ([512, 512, 512, 512])"),
    (lambda f: f["figure6"].update(variants=["dense", "nope"]),
     "config key figures.figure6.variants: 'nope' is not a configured variant; allowed: dense"),
    (lambda f: f["figure7"].update(benchmarks=["kjv_word_order"]),
     "config key figures.figure7.benchmarks: 'kjv_word_order' is not evaluated for variant 'wo_kernel_r10'"),
    (lambda f: f["figure8"].update(variants=["kdp", "wo_kernel"]),
     "config key figures.figure8.variants: 'wo_kernel' is a 'drop_blocks' variant; allowed: kdp variants"),
    (lambda f: f["figure1"].update(calibration="nope"),
     "config key figures.figure1.calibration: 'nope' is not a calibration set; allowed: standard"),
    (lambda f: f["figure3"].update(variant="ols_direct"),
     "config key figures.figure3.variant: 'ols_direct' has no KDP kernel fits on 'smollm2-135m' (method 'kdp', fold "
     "'direct_ols'); allowed: a kdp variant with fold: kernel"),
    (lambda f: f["figure4"].update(variant="wo_kernel"),
     "config key figures.figure4.variant: 'wo_kernel' has no KDP kernel fits"),
    (lambda f: f["figure5"].update(models=["nope"]),
     "config key figures.figure5.models: 'nope' is not a configured model"),
])
def test_bad_figure_config_is_one_line(embedded, edit, message):
    config = copy.deepcopy(embedded)
    edit(config["figures"])
    with pytest.raises(UserError) as caught:
        check_figures(config)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_training_figures_draw_every_models_fits_from_the_config(embedded, tmp_path):
    """Figures 3-5 are ordinary `figures:` entries: each draws the block fits of its models (grouped by the path
    results/kdp/{model}/{variant}/block_*), valid and byte-identical on a rerun."""
    from tests.test_kdp_figures import _fit_dir

    inputs = [str(_fit_dir(tmp_path / "results" / "kdp" / model / "kdp", first, seed=first))
              for model, firsts in (("smollm2-135m", (14, 20)), ("opt-kjv", (4,))) for first in firsts]
    for name in ("figure3", "figure4", "figure5"):
        outputs = [(tmp_path / f"{name}{run}.png", tmp_path / f"{name}{run}.pdf") for run in (1, 2)]
        for out in outputs:
            draw_figure(embedded, name, inputs, *map(str, out))
        assert_png_pdf(*outputs[0])
        assert outputs[0][0].read_bytes() == outputs[1][0].read_bytes(), name


def test_training_figures_group_block_fits_by_model(embedded, monkeypatch):
    import kdp.figures.kdp_fits

    seen = {}
    monkeypatch.setattr(kdp.figures.kdp_fits, "draw_fit_figure", lambda kind, fits, *_: seen.update(kind=kind, fits=fits))
    inputs = ["results/kdp/smollm2-135m/kdp/block_14_15", "results/kdp/opt-kjv/kdp/block_4_5",
              "results/kdp/smollm2-135m/kdp/block_20_21"]
    draw_figure(embedded, "figure5", inputs, "x.png", "x.pdf")
    assert seen == {"kind": "operator_norms", "fits": {
        "SmolLM2-135M": ["results/kdp/smollm2-135m/kdp/block_14_15", "results/kdp/smollm2-135m/kdp/block_20_21"],
        "OPT-KJV": ["results/kdp/opt-kjv/kdp/block_4_5"]}}
