"""The outlier-token gate: an injected attention-sink token collapses the literal fit and CKA; the gate fixes both.

The micro block is residual dynamics h -> h + W2 sin(W1 h) on Gaussian tokens in which the first token of every
sequence carries a massive activation in one dimension (~100x the other tokens' norm) that the dynamics leave
unchanged, as the sink tokens of SmolLM2 and LLaMA pass through their middle layers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdp.errors import UserError
from kdp.linearize import BlockData, KDPConfig, fit_direct_ols, fit_kdp, gate_outliers, reconstruction_metrics
from kdp.outliers import norm_threshold, ordinary
from kdp.similarity import linear_cka, ordinary_tokens, similarity_matrices

D, SINK_DIM, SINK_VALUE = 8, 0, 400.0


def sink_dynamics(n: int = 160, seq_len: int = 16, steps: int = 2, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inner = torch.randn(16, D, generator=generator) * 1.5 / D**0.5
    inner[:, SINK_DIM] = 0  # the massive dimension does not drive the dynamics, as in a real sink
    outer = torch.randn(D, 16, generator=generator) / 16**0.5
    hidden = torch.randn(n, seq_len, D, generator=generator)
    hidden[:, 0, SINK_DIM] = SINK_VALUE
    states = [hidden]
    for _ in range(steps):
        hidden = hidden + torch.sin(hidden @ inner.T) @ outer.T
        states.append(hidden)
    return states


def block(n: int = 160, seed: int = 0) -> BlockData:
    states = sink_dynamics(n, seed=seed)
    return BlockData(states, torch.ones(states[0].shape[:2], dtype=torch.bool))


def config(**overrides) -> KDPConfig:
    values = dict(rff_dim=128, rank=4, kernel_batch_samples=16, inverse_batch_samples=8, kernel_max_epochs=4,
                  inverse_epochs=30, inverse_hidden=64, held_out_fraction=0.25, eval_batch_samples=64)
    return KDPConfig(**{**values, **overrides})


def ordinary_part(data: BlockData) -> BlockData:
    """The held-out view without the sink tokens, where the literal and the gated fits differ."""
    return data.gated(norm_threshold(data.input_norms(), "pass_through", 20.0))


def test_threshold_is_a_multiple_of_the_median_norm_and_infinite_when_literal():
    norms = torch.tensor([1.0, 2.0, 3.0, 400.0])
    assert norm_threshold(norms, "pass_through", 20.0) == pytest.approx(20 * 2.0)
    assert math.isinf(norm_threshold(norms, "literal", 20.0))
    hidden = torch.zeros(2, 3, 4, dtype=torch.float16)
    hidden[0, 0, 0] = 3e4  # its square overflows float16: the norm must be taken in float32
    assert ordinary(hidden, 100.0).tolist() == [[False, True, True], [True, True, True]]


def test_the_gate_leaves_out_exactly_the_sink_tokens():
    data = block(n=40)
    gated, record = gate_outliers(data, config())
    assert record["tokens_left_out"] == 40 and record["tokens"] == 40 * 16
    assert all((batch.positions > 0).all() for batch in gated.batches(8))  # every sink sits at position 0
    assert gate_outliers(data, config(outlier_tokens="literal"))[1]["tokens_left_out"] == 0
    with pytest.raises(UserError, match="outlier_norm_ratio"):
        KDPConfig(outlier_norm_ratio=1.0)
    with pytest.raises(UserError, match="outlier_tokens"):
        KDPConfig(outlier_tokens="drop")


@pytest.fixture(scope="module")
def fits():
    data = block()
    _, held_out = data.split(0.25, 0)
    folds = {mode: fit_kdp(data, config(outlier_tokens=mode))[0] for mode in ("literal", "pass_through")}
    return data, held_out, folds


def test_literal_fit_collapses_on_a_sink_token_and_the_gate_fixes_it(fits):
    _, held_out, folds = fits
    ordinary_tokens_held_out = ordinary_part(held_out)
    literal = reconstruction_metrics(folds["literal"], ordinary_tokens_held_out)
    gated = reconstruction_metrics(folds["pass_through"], ordinary_tokens_held_out)
    print(f"ordinary held-out tokens: removal cosine {gated['identity_cosine']:.3f}, literal KDP "
          f"{literal['cosine']:.3f}, gated KDP {gated['cosine']:.3f}")
    assert gated["cosine"] > gated["identity_cosine"] + 0.05  # the gated fold beats plain removal
    assert gated["mse"] < 0.5 * gated["identity_mse"]
    assert literal["cosine"] < gated["identity_cosine"]  # the literal fold is worse than removing the block
    assert literal["mse"] > gated["identity_mse"]


def test_gated_fold_hands_sink_tokens_on_unchanged_and_saves_its_threshold(fits):
    data, _, folds = fits
    fold = folds["pass_through"]
    hidden = data.states[0][:4]
    with torch.no_grad():
        output = fold(hidden)
    assert torch.equal(output[:, 0], hidden[:, 0])
    assert not torch.allclose(output[:, 1:], hidden[:, 1:])
    assert fold.state_dict()["pass_through_norm"].item() == pytest.approx(ordinary_part(data).max_input_norm)
    assert math.isinf(folds["literal"].pass_through_norm.item())


def test_direct_ols_uses_the_same_gate(fits):
    data, held_out, _ = fits
    train, _ = data.split(0.25, 0)
    literal, _ = fit_direct_ols(train, config(outlier_tokens="literal"))
    gated, record = fit_direct_ols(train, config())
    assert record["outliers"]["tokens_left_out"] == train.num_samples
    with torch.no_grad():
        assert torch.equal(gated(held_out.states[0][:2])[:, 0], held_out.states[0][:2, 0])
    without_sinks = BlockData([torch.as_tensor(state)[train.samples][:, 1:] for state in train.states],
                              torch.ones(train.num_samples, 15, dtype=torch.bool))
    reference, _ = fit_direct_ols(without_sinks, config(outlier_tokens="literal"))
    torch.testing.assert_close(gated.weight, reference.weight, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(literal.weight, reference.weight, rtol=1e-4, atol=1e-5)


class _Captured:
    """Just enough of `kdp.capture.HiddenStates` for the similarity functions."""

    def __init__(self, states: list[torch.Tensor]):
        self._states = states
        self.mask = np.ones(states[0].shape[:2], dtype=bool)

    @property
    def num_states(self) -> int:
        return len(self._states)

    def tokens(self, index: int) -> torch.Tensor:
        return self._states[index].reshape(-1, D)


def test_sink_tokens_make_every_block_look_alike_to_literal_cka_and_the_gate_separates_them():
    states = sink_dynamics(n=64, steps=3)
    captured = _Captured(states)
    kept = ordinary_tokens(captured, "pass_through", 20.0)
    assert len(kept) == 64 * 15 and not np.isin(np.arange(0, 64 * 16, 16), kept).any()
    literal = similarity_matrices(captured, 4096, 0, "literal")
    gated = similarity_matrices(captured, 4096, 0)
    assert literal["cka"][0, 3] > 0.999 and int(literal["outliers_left_out"]) == 0
    assert gated["cka"][0, 3] < 0.99 and int(gated["outliers_left_out"]) == 64
    ordinary_start, ordinary_end = states[0][:, 1:].reshape(-1, D), states[3][:, 1:].reshape(-1, D)
    assert gated["cka"][0, 3] == pytest.approx(linear_cka(ordinary_start, ordinary_end), abs=1e-9)
