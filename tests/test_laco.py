"""LaCo: the RDSC merge against its formula, the official walk, and the similarity against HF hidden states."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from baselines.laco import LaCo
from kdp.adapters import adapter_for
from kdp.calibration import CalibrationSet
from kdp.errors import UserError
from kdp.registry import PruneContext
from tests.conftest import MICRO_MODELS
from tests.test_adapters import manual_forward




def calibration_set() -> CalibrationSet:
    """Five short 'sentences' of different lengths, right-padded, like the notebook's Wikipedia prefixes."""
    generator = torch.Generator().manual_seed(11)
    ids = torch.randint(3, 128, (5, 12), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate([12, 7, 9, 5, 10]):
        mask[row, :length] = 1
    return CalibrationSet(ids, mask, ["random"] * 5, {})


def context(model, ratio, **params) -> PruneContext:
    return PruneContext(model=model, adapter=adapter_for(model), tokenizer=None, params={**LaCo.defaults, **params},
                        target_ratio=ratio, seed=0, device="cpu", model_name="micro", calibration=calibration_set())


def is_norm(name: str) -> bool:
    # Named here, independently of the adapter: LLaMA input/post_attention_layernorm, OPT *_layer_norm.
    return "norm" in name


def uneven_norms(model):
    """Distinct norm gains (and biases) per layer, as in trained models: with the initial all-ones gains a
    merged norm would equal a kept one and the test could not tell them apart."""
    generator = torch.Generator().manual_seed(13)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if is_norm(name):
                parameter.copy_(torch.rand(parameter.shape, generator=generator) + 0.5)
    return model


def layer_state(model, index: int) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in adapter_for(model).layers[index].state_dict().items()}


@pytest.mark.parametrize("family", sorted(MICRO_MODELS))
@pytest.mark.parametrize("merge", ["eq1", "released_code"])
def test_merge_on_three_layers_follows_the_formula_and_the_model_matches_a_manual_forward(family, merge):
    model = uneven_norms(MICRO_MODELS[family](layers=3))
    dense = copy.deepcopy(model)
    theta = [layer_state(dense, i) for i in range(3)]
    # C = 3, H = 3: the walk starts at l = 0 and merges layers 1 and 2 into it; T = -1 accepts any similarity.
    ctx = context(model, 0.1, layers_per_merge=3, highest_layer_from_top=0, lowest_layer=0, threshold=-1.0,
                  merge=merge)
    record = LaCo(ctx.params).prune(ctx)

    assert ctx.adapter.num_layers == 1 and model.config.num_hidden_layers == 1
    assert record.layers_removed == [1, 2] and record.blocks == [[0, 2]]
    merged = adapter_for(model).layers[0].state_dict()
    for name, base in theta[0].items():
        if is_norm(name):
            expected = base
        elif merge == "eq1":
            expected = base + (theta[1][name] - base) + (theta[2][name] - base)
        else:  # the released notebook's in-place update: every step overwrites the base, leaving theta_{l+m}
            expected = theta[2][name]
        assert torch.allclose(merged[name], expected, atol=1e-6), name
    assert any(not is_norm(name) and not torch.equal(base, theta[2][name]) for name, base in theta[0].items())

    dense_adapter = adapter_for(dense)
    with torch.no_grad():
        dense_adapter.layers[0].load_state_dict({**theta[0], **{k: v for k, v in merged.items() if not is_norm(k)}})
        ids, mask = ctx.calibration.input_ids, ctx.calibration.attention_mask
        expected_logits = manual_forward(dense_adapter, ids, mask, [0])
        assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits, expected_logits, atol=1e-6)
    generated = model.generate(ids[:1, :5], max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 9)


@torch.no_grad()
def hf_sentence_similarity(original, candidate, calibration) -> float:
    """The notebook's cal_last_hidden_sim: per sentence, cosine of the flattened ``hidden_states[-1]``."""
    values = []
    for ids, mask in zip(calibration.input_ids, calibration.attention_mask, strict=True):
        sentence = ids[mask.bool()][None]
        a = original(input_ids=sentence, output_hidden_states=True).hidden_states[-1].flatten()
        b = candidate(input_ids=sentence, output_hidden_states=True).hidden_states[-1].flatten()
        values.append(F.cosine_similarity(a, b, dim=0).item())
    return float(np.mean(values))


def test_rejected_walk_steps_by_one_and_similarity_matches_hf_hidden_states(micro_model):
    dense = copy.deepcopy(micro_model)
    ctx = context(micro_model, 0.2, layers_per_merge=3, interval=2, lowest_layer=1, threshold=1.01, merge="eq1")
    record = LaCo(ctx.params).prune(ctx)

    # l starts at H - C = 6 - 3 = 3 and falls by one per rejection down to L = 1.
    assert [r["base"] for r in record.details["rejected"]] == [3, 2, 1]
    assert [r["absorbed"] for r in record.details["rejected"]] == [[4, 5], [3, 4], [2, 3]]
    assert record.details["merges"] == [] and record.details["target_reached"] is False
    assert ctx.adapter.num_layers == 6
    ids, mask = ctx.calibration.input_ids, ctx.calibration.attention_mask
    with torch.no_grad():
        assert torch.equal(micro_model(input_ids=ids, attention_mask=mask).logits,
                           dense(input_ids=ids, attention_mask=mask).logits)  # rejected candidates leave no trace

    candidate = copy.deepcopy(dense)
    theta = [layer_state(dense, i) for i in range(6)]
    merged = {k: v if is_norm(k) else v + (theta[4][k] - v) + (theta[5][k] - v) for k, v in theta[3].items()}
    adapter_for(candidate).layers[3].load_state_dict(merged)
    adapter_for(candidate).remove_layers([4, 5])
    expected = hf_sentence_similarity(dense, candidate, ctx.calibration)
    assert record.details["rejected"][0]["similarity"] == pytest.approx(expected, abs=1e-5)


def test_accepted_walk_follows_the_notebook_and_stops_at_the_target(micro_model):
    # Always accept: l = 3 merges 4, 5 (6 -> 4 layers); l -= I gives 1, which merges 2 and the merged 3.
    full = context(copy.deepcopy(micro_model), 0.9, layers_per_merge=3, interval=2, lowest_layer=1, threshold=-1.0)
    record = LaCo(full.params).prune(full)
    assert [(m["base"], m["absorbed"]) for m in record.details["merges"]] == [(3, [4, 5]), (1, [2, 3, 4, 5])]
    assert record.blocks == [[1, 5]] and record.layers_removed == [2, 3, 4, 5]
    assert record.details["target_reached"] is False  # 0.9 is beyond what the walk can remove
    assert record.details["achieved_ratio"] == pytest.approx(1 - full.adapter.parameter_count()
                                                             / adapter_for(micro_model).parameter_count())

    stopped = context(micro_model, 0.2, layers_per_merge=3, interval=2, lowest_layer=1, threshold=-1.0)
    record = LaCo(stopped.params).prune(stopped)
    assert record.blocks == [[3, 5]] and stopped.adapter.num_layers == 4
    assert record.details["target_reached"] is True and record.details["achieved_ratio"] >= 0.2
    assert record.samples == {"calibration": 5}


def test_bad_hyperparameters_are_user_errors(micro_model):
    with pytest.raises(UserError, match="laco.merge.*released_code"):
        ctx = context(micro_model, 0.2, merge="fixed")
        LaCo(ctx.params).prune(ctx)
    with pytest.raises(UserError, match="laco.layers_per_merge.*>= 2"):
        ctx = context(micro_model, 0.2, layers_per_merge=1)
        LaCo(ctx.params).prune(ctx)


@pytest.mark.parametrize("merge", ["eq1", "released_code"])
def test_threshold_search_keeps_the_largest_grid_value_whose_walk_reaches_the_target(micro_model, merge):
    grid = [0.99, 0.9, 0.8, 0.6, 0.4, 0.2, -1.0]
    fixed = {}
    for threshold in grid:  # each T walked on its own, as a user fixing it would
        ctx = context(copy.deepcopy(micro_model), 0.3, layers_per_merge=3, interval=1, lowest_layer=0,
                      threshold=threshold, merge=merge)
        fixed[threshold] = (LaCo(ctx.params).prune(ctx), ctx)
    reaching = [t for t in grid if fixed[t][0].details["target_reached"]]
    assert reaching and reaching[0] != grid[0]  # the grid brackets the rule's answer on this model
    expected, (expected_record, expected_ctx) = reaching[0], fixed[reaching[0]]

    ctx = context(micro_model, 0.3, layers_per_merge=3, interval=1, lowest_layer=0, merge=merge,
                  threshold="largest_reaching_target", threshold_grid=[0.2, 0.99, -1.0, 0.4, 0.8, 0.6, 0.9])
    record = LaCo(ctx.params).prune(ctx)

    assert record.details["threshold"] == expected and record.details["threshold_rule"] == "largest_reaching_target"
    tried = record.details["threshold_search"]
    assert [t["threshold"] for t in tried] == grid[: grid.index(expected) + 1]  # from the largest T down
    assert [t["target_reached"] for t in tried] == [False] * (len(tried) - 1) + [True]
    assert record.blocks == expected_record.blocks and record.details["merges"] == expected_record.details["merges"]
    for mine, theirs in zip(ctx.adapter.layers, expected_ctx.adapter.layers, strict=True):
        for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
            assert torch.equal(a, b), name


def test_threshold_search_that_never_reaches_the_target_keeps_the_smallest_value(micro_model):
    ctx = context(micro_model, 0.2, threshold="largest_reaching_target", threshold_grid=[1.02, 1.01])
    record = LaCo(ctx.params).prune(ctx)
    assert record.details["threshold"] == 1.01 and record.details["target_reached"] is False
    assert [t["threshold"] for t in record.details["threshold_search"]] == [1.02, 1.01]
    assert record.details["merges"] == [] and ctx.adapter.num_layers == 6


@pytest.mark.parametrize("threshold, grid, match", [("largest", None, "laco.threshold.*largest_reaching_target"),
                                                    ("largest_reaching_target", [], "laco.threshold_grid"),
                                                    ("largest_reaching_target", ["high"], "laco.threshold_grid")])
def test_bad_threshold_settings_are_user_errors(micro_model, threshold, grid, match):
    ctx = context(micro_model, 0.2, threshold=threshold, threshold_grid=grid)
    with pytest.raises(UserError, match=match):
        LaCo(ctx.params).prune(ctx)
