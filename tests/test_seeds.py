"""Seeds: which variants are built once per seed, the runs' names and seeds through the steps, KDP folds that
differ by seed and repeat for one seed, the tables' mean and across-seed spread, and bad ``seeds`` values."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from kdp import steps, table_kinds
from kdp.adapters import adapter_for
from kdp.capture import HiddenStates, capture
from kdp.config import load, typed_as_in_a_file, validate
from kdp.errors import UserError
from kdp.methods.kdp import FOLD_WEIGHTS
from kdp.experiment import Experiment, resolve_run, variant_runs
from kdp.registry import PruneContext, resolve_params
from kdp.selection import Block
from tests.conftest import micro_llama
from tests.synthetic import random_calibration

REPO = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"
BBQ_G = "bb_bbq_lite_json_gender_identity_disambig"  # a multiple-choice benchmark of the embedded list


@pytest.fixture(scope="module")
def two_seeds():
    """The embedded default, which builds stochastic variants with seeds 0 and 1."""
    config = load(REPO / "config" / "config.yaml")
    assert config["seeds"] == [0, 1]
    return config


# -- planning ------------------------------------------------------------------------------------------------------
def test_stochastic_variants_get_a_run_per_seed_and_deterministic_ones_one(two_seeds):
    assert [(run.name, run.seed) for run in variant_runs(two_seeds, MODEL, "kdp")] == [("kdp", 0), ("kdp~s1", 1)]
    assert [(run.name, run.seed) for run in variant_runs(two_seeds, MODEL, "shortgpt")] == [("shortgpt", 0)]
    evals = table_kinds.table_inputs(two_seeds, "table1")["evals"]
    seeded = {Path(path).stem.split("~")[0] for path in evals if "~s1" in path}
    # the trained rows: KDP (Z, V, b, inverse init), KDP+PEFT, and every baseline's recovery fine-tune or training
    assert seeded == {"kdp", "kdp_peft", "streamline", "streamline_ft", "slicegpt_rft", "llm_pruner_ft"}
    assert len(evals) == 2 * (15 + len(seeded))
    assert f"results/eval/{MODEL}/shortgpt.json" in evals and f"results/eval/{MODEL}/slicegpt~s1.json" not in evals


def test_one_seed_keeps_every_path_and_defaults_to_the_base_seed(two_seeds):
    single = copy.deepcopy(two_seeds)
    del single["seeds"]
    single = validate({**single, "seed": 5})
    assert single["seeds"] == [5] and [(r.name, r.seed) for r in variant_runs(single, MODEL, "kdp")] == [("kdp", 5)]
    assert all("~" not in path for paths in table_kinds.table_inputs(single, "table1").values() for path in paths)


def test_run_names_resolve_to_variant_and_seed(two_seeds):
    assert (resolve_run(two_seeds, MODEL, "kdp").variant, resolve_run(two_seeds, MODEL, "kdp").seed) == ("kdp", 0)
    assert (resolve_run(two_seeds, MODEL, "kdp~s1").variant, resolve_run(two_seeds, MODEL, "kdp~s1").seed) == ("kdp", 1)
    # a deterministic variant has no further seed's run
    for run in ("kdp~s7", "kdp~s0", "kdp~sx", "nope~s1", "shortgpt~s1"):
        with pytest.raises(UserError, match=f"run '{run}': not a configured variant"):
            resolve_run(two_seeds, MODEL, run)


def test_the_experiment_resolves_every_run_once_with_the_jobs_resolution(two_seeds):
    experiment = Experiment.from_config(two_seeds)
    assert experiment.config == two_seeds
    assert "kdp~s1" in experiment.run_names and "shortgpt~s1" not in experiment.run_names
    for (model, name), run in experiment.runs.items():
        assert run == resolve_run(two_seeds, model, name)
    assert experiment.run(MODEL, "kdp_peft~s1").fitted_variant == "kdp"
    with pytest.raises(UserError, match="run 'shortgpt~s1' of model 'smollm2-135m' is not in the experiment"):
        experiment.run(MODEL, "shortgpt~s1")


def test_a_further_seed_seeds_the_method_and_names_its_folds(two_seeds, monkeypatch):
    monkeypatch.setattr(steps, "_load_base", lambda config, base_dir: (micro_llama(layers=4, hidden=32), None))
    for run, seed in (("kdp", 0), ("kdp~s1", 1)):
        method, ctx = steps._context(two_seeds, resolve_run(two_seeds, MODEL, run), "unused", {})
        assert ctx.seed == seed and method.params == resolve_params(two_seeds, "kdp", MODEL)[1]
        key = steps.fold_key(resolve_run(two_seeds, MODEL, run), "block_2_3", None)
        assert (key["variant"], key["seed"]) == (run, seed)


# -- KDP folds by seed ---------------------------------------------------------------------------------------------
BLOCK = Block(1, 2)
FIT = {"rff_dim": 32, "rank": 4, "inverse_hidden": 16, "kernel_max_epochs": 2, "inverse_epochs": 4,
       "kernel_batch_samples": 8, "inverse_batch_samples": 8, "held_out_fraction": 0.25}


def _fold(hidden: HiddenStates, seed: int, out_dir: Path) -> dict[str, torch.Tensor]:
    config = {"variants": {"kdp": {"method": "kdp", "fit": FIT}}}
    spec, params = resolve_params(config, "kdp")
    model = micro_llama(layers=4, hidden=32)
    ctx = PruneContext(model=model, adapter=adapter_for(model), tokenizer=None, params=params, target_ratio=0.25,
                       seed=seed, device=torch.device("cpu"), model_name="micro", hidden=hidden)
    out_dir.mkdir()
    spec.build(params).fit_block(ctx, BLOCK, out_dir)
    return load_file(str(out_dir / FOLD_WEIGHTS))


def test_kdp_folds_differ_between_seeds_and_repeat_for_one(tmp_path):
    model = micro_llama(layers=4, hidden=32)
    capture(adapter_for(model), random_calibration(32, 8, low=3, high=128, pad_id=0), tmp_path / "hidden",
            {"test": "seeds"}, "float32", 8)
    hidden = HiddenStates.open(tmp_path / "hidden")
    first, again, other = (_fold(hidden, seed, tmp_path / name) for seed, name in ((0, "a"), (0, "b"), (1, "c")))
    assert first.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.allclose(first["transition"], other["transition"])
    assert any(not torch.equal(first[k], other[k]) for k in first if k != "transition")  # Z, V, b, inverse net


# -- tables ----------------------------------------------------------------------------------------------------
def _evaluation(variant: str, seed: int, scores: dict[str, float], ratio: float = 0.25) -> dict:
    return {"model": MODEL, "variant": variant, "seed": seed, "ratio": ratio, "parameters": 1000,
            "scores": {b: {"value": v, "stderr": 0.1, "kind": "accuracy", "column": b.upper(),
                           "table": "classification", "chance": None, "n": 10} for b, v in scores.items()}}


def test_a_seeded_cell_is_the_mean_with_its_spread_and_a_deterministic_row_one_seed(two_seeds):
    config = copy.deepcopy(two_seeds)
    config["tables"] = {"table99": {"kind": "classification", "title": "t", "models": [MODEL],
                                    "variants": ["dense", "shortgpt", "kdp"],
                                    "benchmarks": [BBQ_G, "kjv_cloze"]}}
    config = validate(config)
    evals = [_evaluation("dense", 0, {BBQ_G: 60.0, "kjv_cloze": 40.0}, 0.0),
             _evaluation("shortgpt", 0, {BBQ_G: 40.0, "kjv_cloze": 20.0}),
             _evaluation("kdp", 0, {BBQ_G: 50.0, "kjv_cloze": 34.0}),
             _evaluation("kdp", 1, {BBQ_G: 30.0, "kjv_cloze": 30.0})]
    csv_text, tex = table_kinds.render(config, "table99", {"evals": evals})
    table = pd.read_csv(io.StringIO(csv_text), comment="#").set_index(["variant", "benchmark"])
    cell = table.loc[("kdp", BBQ_G)]
    assert cell["value"] == pytest.approx(40.0) and cell["seeds"] == 2
    assert cell["seed_sd"] == pytest.approx(np.std([50.0, 30.0], ddof=1), rel=1e-5)  # CSV: 6 significant digits
    assert (cell["seed_min"], cell["seed_max"]) == (30, 50)
    avg = table.loc[("kdp", "Avg")]  # per seed: 42 and 30
    assert avg["value"] == pytest.approx(36.0) and avg["seed_sd"] == pytest.approx(np.std([42.0, 30.0], ddof=1), rel=1e-5)
    rp = table.loc[("kdp", "RP")]  # per seed against dense's single build: 84 and 60
    assert (rp["value"], rp["seed_min"], rp["seed_max"]) == pytest.approx((72.0, 60.0, 84.0))
    for row in (table.loc[("shortgpt", "kjv_cloze")], table.loc[("shortgpt", "Avg")], table.loc[("dense", "RP")]):
        assert row["seeds"] == 1 and pd.isna(row["seed_sd"])
    lines = {line.split(" & ")[1]: line for line in tex.splitlines() if line.count(" & ") > 3}
    assert r"40.00{\scriptsize$\sigma$14.1}" in lines["Ours"] and r"\sigma" not in lines["ShortGPT"]
    assert "Rows built with 2 seeds print the mean over seeds" in tex
    with pytest.raises(UserError, match=r"smollm2-135m/kdp: seeds \[0, 0\] repeat"):
        table_kinds.render(config, "table99", {"evals": [*evals[:3], evals[2]]})


# -- bad values ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seeds,message", [
    ([], "config key seeds: [] is too short; allowed: at least 1 item(s)"),
    ([0, 1, 0], "config key seeds: [0, 1, 0] repeats a value; allowed: distinct values"),
    ([0, -1], "config key seeds.1: -1 is out of range; allowed: >= 0"),
    ([0, 1.5], "config key seeds.1: 1.5 is not of type 'integer'"),
    (3, "config key seeds: 3 is not of type 'array'"),
])
def test_bad_seeds_are_one_line(two_seeds, seeds, message):
    with pytest.raises(UserError) as caught:
        validate({**two_seeds, "seeds": seeds})
    assert str(caught.value) == message


def test_command_line_values_are_typed_as_a_config_file_types_them():
    given = {"seeds": ["0", "2"], "evaluation": {"items_per_task": "null", "batch_size": "8"},
             "audit": {"claims": "resources/claims_shortgpt"}, "models": {"m": {"source": "embedded:smollm2-135m"}},
             "methods": {"slicegpt": {"recovery": {"lr": "2e-4"}}}, "seed": 3}
    assert typed_as_in_a_file(given) == {
        "seeds": [0, 2], "evaluation": {"items_per_task": None, "batch_size": 8},
        "audit": {"claims": "resources/claims_shortgpt"}, "models": {"m": {"source": "embedded:smollm2-135m"}},
        "methods": {"slicegpt": {"recovery": {"lr": "2e-4"}}},  # YAML 1.1 reads 2e-4 as text in a file too
        "seed": 3}
