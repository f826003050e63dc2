"""ShortGPT against its official algorithm (icip-cas/ShortGPT@9a2ee8d), on micro models built for the purpose.

How the expected values were computed: `official_block_influence` re-runs, by hand, what the official
``eval_importance`` / ``compute_bi`` / ``block_influence`` do: one plain Hugging Face forward per calibration window
(batch size 1, ``output_hidden_states=True``), for every layer i the states ``hidden_states[i]`` and
``hidden_states[i + 1]`` (so the last layer is compared with the *post-norm* state, as there), per token the
diagonal of their matrix product divided by the product of the two norms, NaN mapped to 0.5, 1 - cos summed over
the window's tokens and the windows' sums added up; the official ``remove_layers`` then takes the layers of lowest
sum first. With ``bi_precision: float16_official`` the states are cast to float16 first and every step is float16,
as in the official script's float16 model. The fixture also fixes part of the answer by construction: layers whose
writes to the residual stream are scaled by a small factor change the stream little, so their BI is lowest.

Every assertion is made twice: once on the method as it is, and once with a deliberately broken piece (the
selection metric, the candidate range, the compared state, the tie rule), which must fail the same assertions.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import baselines.shortgpt as shortgpt
from baselines.shortgpt import ShortGPT, removal_order
from kdp.adapters import adapter_for
from kdp.calibration import CalibrationSet
from kdp.registry import PruneContext
from tests.conftest import MICRO_MODELS

#: Layers whose writes are scaled down (by these factors), so that they are the two a 2-layer cut must remove.
QUIET_LAYERS = {3: 1e-3, 0: 1e-2}
MASSIVE = 3.0e4  # an injected activation of the size of SmolLM2's (~26,500) and LLaMA-2's first-token ones


def windows() -> CalibrationSet:
    """Four full 16-token windows (the official windows are never padded)."""
    ids = torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(21))
    return CalibrationSet(ids, torch.ones_like(ids), ["random"] * 4, {})


@torch.no_grad()
def scale_writes(model, factors: dict[int, float]):
    """Scale what each listed layer adds to the residual stream (attention and MLP outputs, with biases)."""
    adapter = adapter_for(model)
    for index, factor in factors.items():
        parts = adapter.layer(index)
        for linear in (parts.attention_output, parts.mlp_output):
            linear.weight.mul_(factor)
            if linear.bias is not None:
                linear.bias.mul_(factor)
    return model


def fixture(family: str):
    return scale_writes(MICRO_MODELS[family](), QUIET_LAYERS)


@torch.no_grad()
def official_block_influence(model, data: CalibrationSet, dtype: torch.dtype = torch.float32) -> list[float]:
    """The official importances (sums over every token of every window), re-run by hand as the docstring says."""
    sums = [0.0] * model.config.num_hidden_layers
    for window in data.input_ids:
        states = model(input_ids=window[None], output_hidden_states=True).hidden_states
        for index in range(len(sums)):
            before, after = states[index][0].to(dtype), states[index + 1][0].to(dtype)
            products = before @ after.T
            norms = before.norm(dim=-1, keepdim=True) * after.norm(dim=-1, keepdim=True)
            cosine = (products / norms).diagonal().nan_to_num(nan=0.5)
            sums[index] += (1 - cosine).sum().item()
    return sums


def official_removal(sums: list[float], count: int) -> list[int]:
    """The official ``remove_layers``: the ``count`` layers of lowest importance."""
    return sorted(sorted(range(len(sums)), key=sums.__getitem__)[:count])


def prune(model, data: CalibrationSet, layers: int, **params):
    """ShortGPT removing ``layers`` layers (count rule ``layers``, the official fixed count)."""
    num_layers = adapter_for(model).num_layers
    params = {**ShortGPT.defaults, "count_rule": "layers", "batch_size": 1, **params}
    ctx = PruneContext(model=model, adapter=adapter_for(model), tokenizer=None, params=params,
                       target_ratio=layers / num_layers, seed=0, device="cpu", model_name="micro", calibration=data)
    return ShortGPT(params).prune(ctx)


def check_parity(record, expected_sums: list[float], expected_removed: list[int], tokens: int, tolerance: float):
    assert record.layers_removed == expected_removed
    assert record.details["removal_order"] == sorted(range(len(expected_sums)), key=expected_sums.__getitem__)
    assert record.details["block_influence"] == pytest.approx([s / tokens for s in expected_sums], abs=tolerance)


def _cosine_not_distance(before, after, angular):
    return F.cosine_similarity(before.float(), after.float(), dim=-1)


def _first_layer_never_scored(scores):
    return [index for index in removal_order(scores) if index != 0] + [0]


BREAKAGES = {
    "metric: cos instead of 1 - cos": ("token_distance", _cosine_not_distance),
    "range: the first layer is never a candidate": ("removal_order", _first_layer_never_scored),
}


@pytest.mark.parametrize("breakage", [None, *BREAKAGES])
@pytest.mark.parametrize("family", sorted(MICRO_MODELS))
def test_float32_choice_and_scores_match_the_official_algorithm(family, breakage, monkeypatch):
    data = windows()
    expected_sums = official_block_influence(fixture(family), data)
    expected = official_removal(expected_sums, 2)
    assert expected == sorted(QUIET_LAYERS)  # the hand answer: the quiet layers go
    if breakage is not None:
        monkeypatch.setattr(shortgpt, *BREAKAGES[breakage])
    record = prune(fixture(family), data, 2, last_layer="post_norm")  # the official hidden_states[-1]
    if breakage is None:
        check_parity(record, expected_sums, expected, data.num_tokens, 1e-6)
    else:
        with pytest.raises(AssertionError):
            check_parity(record, expected_sums, expected, data.num_tokens, 1e-6)


@pytest.mark.parametrize("last_layer, matches", [("post_norm", True), ("pre_norm", False)])
def test_only_the_post_norm_last_layer_scores_as_the_official_code(last_layer, matches):
    """The official last-layer score compares with the post-norm state; the default (the paper's pre-norm) does not,
    so its last score differs and a parity check on it fails."""
    data = windows()
    model = fixture("llama")
    with torch.no_grad():
        adapter_for(model).final_norm.weight.uniform_(0.2, 3.0, generator=torch.Generator().manual_seed(9))
    expected_sums = official_block_influence(model, data)
    record = prune(model, data, 2, last_layer=last_layer)
    if matches:
        check_parity(record, expected_sums, official_removal(expected_sums, 2), data.num_tokens, 1e-6)
    else:
        with pytest.raises(AssertionError):
            check_parity(record, expected_sums, official_removal(expected_sums, 2), data.num_tokens, 1e-6)


def inject_massive_activation(model, after_layer: int):
    """Add MASSIVE to coordinate 0 of every token's residual stream leaving ``after_layer`` (a forward hook, as a
    massive activation appears in a real model), so the layers after it all carry it."""
    def add(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        shifted = hidden.clone()
        shifted[..., 0] += MASSIVE
        return (shifted, *output[1:]) if isinstance(output, tuple) else shifted

    adapter_for(model).layers[after_layer].register_forward_hook(add)
    return model


@pytest.mark.parametrize("breakage", [None, "float32 instead of float16"])
def test_float16_official_maps_the_massive_activation_layers_to_one_half_as_the_official_script(breakage):
    """With a massive activation leaving layer 2, every token entering layers 3-5 has a norm near 3e4: in float16
    the dot product and the norm product overflow, the cosine is inf/inf = NaN, and the official code scores the
    token 0.5. Those layers then score exactly 0.5 and can never be chosen, while float32 (the paper's metric) finds
    them the most redundant (the activation dominates input and output alike) and removes two of them."""
    data = windows()
    model = inject_massive_activation(MICRO_MODELS["llama"](), after_layer=2)
    official_sums = official_block_influence(model, data, torch.float16)
    official = official_removal(official_sums, 2)
    float32 = prune(inject_massive_activation(MICRO_MODELS["llama"](), 2), data, 2)
    precision = "float32" if breakage else "float16_official"
    record = prune(inject_massive_activation(MICRO_MODELS["llama"](), 2), data, 2, bi_precision=precision,
                   last_layer="post_norm")

    def check():
        assert record.details["block_influence"][3:] == [0.5, 0.5, 0.5]
        assert record.layers_removed == official and set(official) <= {0, 1}
        assert record.details["block_influence"] == pytest.approx([s / data.num_tokens for s in official_sums],
                                                                  abs=2e-3)

    assert [s / data.num_tokens for s in official_sums][3:] == [0.5, 0.5, 0.5]
    assert set(float32.layers_removed) <= {3, 4, 5}  # the paper's metric chooses among the massive layers
    if breakage is None:
        check()
    else:
        with pytest.raises(AssertionError):
            check()


@pytest.mark.parametrize("breakage", [None, "ties to the higher index"])
def test_exact_ties_go_to_the_lower_index(breakage, monkeypatch):
    """The official order is numpy's default argsort, which is not stable (with AVX-512 even six equal values come
    out in no fixed order), so ties have no official answer; the harness's documented rule is the lower index."""
    if breakage is not None:
        monkeypatch.setattr(shortgpt, "removal_order",
                            lambda scores: sorted(range(len(scores)), key=lambda i: (scores[i], -i)))
    scores = [0.3, 0.1, 0.2, 0.1, 0.1, 0.4]

    def check():
        assert shortgpt.removal_order(scores) == [1, 3, 4, 2, 0, 5]

    if breakage is None:
        check()
    else:
        with pytest.raises(AssertionError):
            check()
