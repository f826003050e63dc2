"""LaCo against its official algorithm (yangyifei729/LaCo@8483587, ``laco_llama-13b.ipynb``), both merges.

How the expected values were computed: `notebook_walk` re-runs, by hand, the notebook's main loop on a plain
Hugging Face model: l = H - C; while l >= L, a deep copy of the current model gets layer l merged with its
min(C - 1, layers after l) followers, the followers deleted; its similarity to the *original* model is the mean
(numpy) over the calibration sentences, each run alone and unpadded, of the cosine between the flattened
``hidden_states[-1]`` of the two models; if it is strictly above T the copy becomes the current model and
l -= I (with the notebook's reset when l passes the end), else l -= 1. The merge is the notebook's in-place loop:
``released_code`` adds (follower - *the copy being updated*) for each follower in turn, so the base ends up as the
last follower's weights; ``eq1`` adds (follower - the base as it was), the paper's Eq. (1). Every parameter of
the attention and MLP is merged; the norms stay layer l's. The walk runs to the bottom, as the notebook's does:
the harness's target ratio is set out of reach.

Every assertion is made twice: once on the method as it is, and once with a deliberately broken piece (the merge
formula, the candidate range, the acceptance rule), which must fail the same assertions.
"""

from __future__ import annotations

import copy

import pytest
import torch

import baselines.laco as laco
from baselines.laco import LaCo
from kdp.adapters import adapter_for
from kdp.calibration import CalibrationSet
from kdp.registry import PruneContext
from tests.conftest import MICRO_MODELS
from tests.test_laco import calibration_set, hf_sentence_similarity, uneven_norms

LAYERS = 8
#: C, I, L and H = num_layers (highest_layer_from_top 0): the Llama2-7B setting but for C, which is 3 so that the
#: two merges differ (with C = 2 both give the one follower's weights).
WALK = {"layers_per_merge": 3, "interval": 2, "lowest_layer": 1, "highest_layer_from_top": 0}
#: T per merge, between the similarities this fixture produces, so that the walk both accepts and rejects.
THRESHOLDS = {"released_code": 0.6, "eq1": 0.3}


def fixture():
    return uneven_norms(MICRO_MODELS["llama"](layers=LAYERS))


def is_norm(name: str) -> bool:
    return "norm" in name


@torch.no_grad()
def notebook_merge(current, base: int, wanted: int, rule: str):
    count = min(wanted, len(adapter_for(current).layers) - base - 1)
    merged = copy.deepcopy(current)
    layers, updated = adapter_for(current).layers, dict(adapter_for(merged).layers[base].named_parameters())
    before = dict(layers[base].named_parameters())
    for follower in range(base + 1, base + 1 + count):
        for name, value in layers[follower].named_parameters():
            if not is_norm(name):
                updated[name].add_(value - (updated[name] if rule == "released_code" else before[name]))
    adapter_for(merged).remove_layers(range(base + 1, base + 1 + count))
    return merged, count


def notebook_walk(model, data: CalibrationSet, rule: str, threshold: float):
    """(final model, [(original base, similarity, accepted)] in visiting order)."""
    span, interval, lowest = WALK["layers_per_merge"], WALK["interval"], WALK["lowest_layer"]
    current, origins, trace = copy.deepcopy(model), [[i] for i in range(LAYERS)], []
    layer = LAYERS - WALK["highest_layer_from_top"] - span
    while layer >= lowest:
        candidate, count = notebook_merge(current, layer, span - 1, rule)
        similarity = hf_sentence_similarity(model, candidate, data)
        accepted = similarity > threshold
        trace.append((origins[layer][0], similarity, accepted))
        if accepted:
            current = candidate
            origins[layer] += [i for group in origins[layer + 1 : layer + 1 + count] for i in group]
            del origins[layer + 1 : layer + 1 + count]
            layer -= interval
            if layer >= len(origins):
                layer = len(origins) - 1 - span
        else:
            layer -= 1
    return current, trace


def prune(model, data: CalibrationSet, rule: str, threshold: float):
    params = {**LaCo.defaults, **WALK, "merge": rule, "threshold": threshold}
    ctx = PruneContext(model=model, adapter=adapter_for(model), tokenizer=None, params=params, target_ratio=0.95,
                       seed=0, device="cpu", model_name="micro", calibration=data)
    return LaCo(params).prune(ctx)


def check_parity(record, model, expected_model, trace):
    visited = sorted([(m["base"], m["similarity"], True) for m in record.details["merges"]]
                     + [(r["base"], r["similarity"], False) for r in record.details["rejected"]],
                     key=lambda entry: -entry[0])
    assert [(base, accepted) for base, _, accepted in visited] == [(base, accepted) for base, _, accepted in trace]
    assert [s for _, s, _ in visited] == pytest.approx([s for _, s, _ in trace], abs=1e-5)
    layers, expected = adapter_for(model).layers, adapter_for(expected_model).layers
    assert len(layers) == len(expected)
    for mine, theirs in zip(layers, expected, strict=True):
        for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
            assert torch.allclose(a, b, rtol=0, atol=1e-6), name


BREAKAGES = {
    "merge: only the first follower": ("rdsc_merge", lambda adapter, base, followers, rule:
                                       ORIGINAL_MERGE(adapter, base, followers[:1], rule)),
    "range: the walk starts one layer lower": ("first_base", lambda layers, span, from_top:
                                               layers - from_top - span - 1),
}
ORIGINAL_MERGE = laco.rdsc_merge


@pytest.mark.parametrize("breakage", [None, *BREAKAGES])
@pytest.mark.parametrize("rule", ["released_code", "eq1"])
def test_walk_and_merged_weights_match_the_notebook(rule, breakage, monkeypatch):
    data = calibration_set()
    expected_model, trace = notebook_walk(fixture(), data, rule, THRESHOLDS[rule])
    accepted = [entry[2] for entry in trace]
    assert any(accepted) and not all(accepted)  # the fixture exercises both branches of the walk
    if breakage is not None:
        monkeypatch.setattr(laco, *BREAKAGES[breakage])
    model = fixture()
    record = prune(model, data, rule, THRESHOLDS[rule])
    if breakage is None:
        check_parity(record, model, expected_model, trace)
    else:
        with pytest.raises(AssertionError):
            check_parity(record, model, expected_model, trace)


def test_the_two_merges_differ_as_the_notebook_and_the_formula_do():
    """On one base with two followers the released merge is the last follower's weights and Eq. (1) is
    theta_l + (theta_{l+1} - theta_l) + (theta_{l+2} - theta_l); the harness gives both."""
    model, data = fixture(), calibration_set()
    for rule in ("released_code", "eq1"):
        expected, _ = notebook_merge(model, 5, 2, rule)
        record = prune(copy.deepcopy(model), data, rule, -1.0)
        assert record.details["merges"][0]["base"] == 5
    theta = [dict(layer.named_parameters()) for layer in adapter_for(model).layers]
    released, _ = notebook_merge(model, 5, 2, "released_code")
    formula, _ = notebook_merge(model, 5, 2, "eq1")
    merged = [dict(adapter_for(m).layers[5].named_parameters()) for m in (released, formula)]
    for name, value in theta[5].items():
        if is_norm(name):
            assert torch.equal(merged[0][name], value) and torch.equal(merged[1][name], value)
            continue
        assert torch.allclose(merged[0][name], theta[7][name], atol=1e-6)
        assert torch.allclose(merged[1][name], theta[6][name] + theta[7][name] - value, atol=1e-6)


@pytest.mark.parametrize("breakage", [None, "an equal similarity is accepted"])
def test_a_similarity_equal_to_the_threshold_is_rejected(breakage, monkeypatch):
    """The notebook accepts only ``sim_value > THRESHOLD``. With T set to exactly the first candidate's similarity
    (measured by the harness on the same fixture), that candidate must be rejected and the walk step down by one."""
    data = calibration_set()
    first = prune(fixture(), data, "released_code", -1.0).details["merges"][0]
    if breakage is not None:
        monkeypatch.setattr(laco, "accepts", lambda similarity, threshold: similarity >= threshold)
    record = prune(fixture(), data, "released_code", first["similarity"])

    def check():
        assert record.details["rejected"][0] == first
        assert all(merge["base"] != first["base"] for merge in record.details["merges"])

    if breakage is None:
        check()
    else:
        with pytest.raises(AssertionError):
            check()
