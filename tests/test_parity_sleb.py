"""SLEB against its official algorithm (jiwonsong-dev/SLEB@d07129a, ``sleb.py``), on micro models built for it.

How the expected values were computed: `official_sleb` re-runs, by hand, the official ``sleb()`` loop: ``alive``
starts as every block; each round tries every alive block from position ``early_barrier`` to
``len(alive) - latter_barrier`` (exclusive), measures the official ``get_loss`` of the model without it (here a
deep copy with the block deleted, which is what the official on/off wrapper computes: per full window, the mean
next-token cross-entropy times the window length, summed over windows), keeps the first block whose loss is
strictly lower than the best so far, and removes it from ``alive``. The harness's per-candidate NLL sums the
same cross-entropies without the mean, i.e. the official loss times (T - 1) / T.

The fixture fixes the answer by construction as well: the calibration windows are the dense model's own greedy
continuations (so deleting a real block raises the loss), and blocks 0, 2 and 4 write nothing to the residual
stream (exact identities). Deleting 0, 2 or 4 therefore gives exactly the dense loss, the lowest of all; block 0
is behind the early barrier, and 2 and 4 tie exactly, so the official strict ``<`` removes 2, then 4.

Every assertion is made twice: once on the method as it is, and once with a deliberately broken piece (the
selection metric, the candidate range, the tie rule), which must fail the same assertions.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import baselines.sleb as sleb
from baselines.sleb import SLEB
from kdp.adapters import adapter_for
from kdp.calibration import CalibrationSet
from kdp.registry import PruneContext
from tests.conftest import MICRO_MODELS
from tests.test_parity_shortgpt import scale_writes

IDENTITY_BLOCKS = (0, 2, 4)
WINDOW = 16


def fixture(family: str):
    model = scale_writes(MICRO_MODELS[family](), dict.fromkeys(IDENTITY_BLOCKS, 0.0))
    with torch.no_grad():
        adapter_for(model).lm_head.weight.mul_(8.0)  # confident predictions: a deleted block costs likelihood
    return model


@torch.no_grad()
def own_continuations(model) -> CalibrationSet:
    """Four full windows: two random tokens, then the dense model's greedy continuation."""
    prompts = torch.randint(3, 128, (4, 2), generator=torch.Generator().manual_seed(23))
    ids = model.generate(prompts, max_new_tokens=WINDOW - 2, do_sample=False, pad_token_id=0)
    return CalibrationSet(ids, torch.ones_like(ids), ["greedy"] * 4, {})


@torch.no_grad()
def official_loss(model, deleted: list[int], data: CalibrationSet) -> float:
    pruned = copy.deepcopy(model)
    adapter_for(pruned).remove_layers(deleted)
    total = 0.0
    for window in data.input_ids:
        logits = pruned(input_ids=window[None]).logits[0, :-1]
        total += float(F.cross_entropy(logits, window[1:]).float() * WINDOW)
    return total


def official_sleb(model, data: CalibrationSet, rounds: int, early: int = 1, latter: int = 1):
    """(removal list, per round {original block: official loss}), re-run by hand as the docstring says."""
    alive, removed, losses = list(range(adapter_for(model).num_layers)), [], []
    for _ in range(rounds):
        best, best_loss, tried = -1, 1e99, {}
        for position in range(early, len(alive) - latter):
            tried[alive[position]] = official_loss(model, removed + [alive[position]], data)
            if tried[alive[position]] < best_loss:
                best, best_loss = position, tried[alive[position]]
        losses.append(tried)
        removed.append(alive.pop(best))
    return removed, losses


def prune(model, data: CalibrationSet, rounds: int):
    """SLEB removing ``rounds`` blocks (count rule ``layers``: the official ``num_remove_blocks``)."""
    params = {**SLEB.defaults, "count_rule": "layers"}
    ratio = rounds / adapter_for(model).num_layers
    ctx = PruneContext(model=model, adapter=adapter_for(model), tokenizer=None, params=params, target_ratio=ratio,
                       seed=0, device="cpu", model_name="micro", calibration=data)
    return SLEB(params).prune(ctx)


def check_parity(record, expected_order: list[int], expected_losses: list[dict[int, float]]):
    assert record.details["removal_order"] == expected_order
    per_token = (WINDOW - 1) / WINDOW  # the harness sums what the official code averages and scales by T
    for harness, official in zip(record.details["rounds"], expected_losses, strict=True):
        assert harness["candidates"] == pytest.approx({b: loss * per_token for b, loss in official.items()}, rel=1e-5)


BREAKAGES = {
    "metric: the highest loss": ("lowest_loss", lambda losses: max(losses, key=losses.__getitem__)),
    "range: the first block may go": ("candidates", lambda layers, early, latter: range(0, layers - latter)),
    "ties: the last of equal losses": ("lowest_loss",
                                       lambda losses: min(sorted(losses, reverse=True), key=losses.__getitem__)),
}


@pytest.mark.parametrize("breakage", [None, *BREAKAGES])
@pytest.mark.parametrize("family", sorted(MICRO_MODELS))
def test_removal_order_and_losses_match_the_official_algorithm(family, breakage, monkeypatch):
    data = own_continuations(fixture(family))
    expected_order, expected_losses = official_sleb(fixture(family), data, rounds=2)
    assert expected_order == [2, 4]  # the hand answer: the identity blocks, the tie going to the first
    assert expected_losses[0][2] == expected_losses[0][4]
    if breakage is not None:
        monkeypatch.setattr(sleb, *BREAKAGES[breakage])
    record = prune(fixture(family), data, rounds=2)
    if breakage is None:
        check_parity(record, expected_order, expected_losses)
    else:
        with pytest.raises(AssertionError):
            check_parity(record, expected_order, expected_losses)
