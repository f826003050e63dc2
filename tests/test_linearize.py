"""Fitting a KDP fold: data access, OLS, W, stopping, and the whole fit on synthetic residual dynamics."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
import torch

from kdp.errors import UserError
from kdp.fold import FoldedBlock
from kdp.kernel import LearnableRFF
from kdp.linearize import (
    BlockData,
    ConvergenceStop,
    KDPConfig,
    StepOperators,
    fit_direct_ols,
    fit_inverse_network,
    fit_kdp,
    fit_kernel_linearization,
    fit_sequential_ols,
    ols_operator,
    position_weights,
    reconstruction_metrics,
    step_weights,
)

D = 8


def residual_dynamics(n: int = 128, seq_len: int = 16, steps: int = 2, gain: float = 1.5, seed: int = 0) -> BlockData:
    """h -> h + W2 sin(W1 h), applied ``steps`` times to Gaussian tokens; ``gain`` sets how nonlinear it is."""
    generator = torch.Generator().manual_seed(seed)
    inner = torch.randn(16, D, generator=generator) * gain / D**0.5
    outer = torch.randn(D, 16, generator=generator) / 16**0.5
    hidden = torch.randn(n, seq_len, D, generator=generator)
    states = [hidden]
    for _ in range(steps):
        hidden = hidden + torch.sin(hidden @ inner.T) @ outer.T
        states.append(hidden)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (n,), generator=generator)
    return BlockData(states, torch.arange(seq_len)[None] < lengths[:, None])


def small_config(**overrides) -> KDPConfig:
    values = dict(
        rff_dim=128,
        rank=4,
        kernel_batch_samples=16,
        inverse_batch_samples=8,
        kernel_max_epochs=5,
        inverse_epochs=40,
        inverse_hidden=64,
        held_out_fraction=0.25,
        eval_batch_samples=64,
    )
    return KDPConfig(**{**values, **overrides})


# ------------------------------------------------------------------------------------------------------- data


def test_split_is_seeded_disjoint_and_complete():
    data = residual_dynamics(n=40)
    train, held_out = data.split(0.25, seed=3)
    assert held_out.num_samples == 10 and train.num_samples == 30
    assert set(train.samples.tolist()).isdisjoint(held_out.samples.tolist())
    assert sorted(train.samples.tolist() + held_out.samples.tolist()) == list(range(40))
    assert torch.equal(data.split(0.25, seed=3)[1].samples, held_out.samples)
    assert not torch.equal(data.split(0.25, seed=4)[1].samples, held_out.samples)
    assert train.states[0] is data.states[0]  # a view, not a copy


def test_batches_yield_exactly_the_real_tokens_with_their_positions():
    states = [torch.arange(3 * 4 * 2, dtype=torch.float32).reshape(3, 4, 2) + 100 * i for i in range(2)]
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)  # right, left, no padding
    batches = list(BlockData(states, mask).batches(2))
    assert [b.positions.tolist() for b in batches] == [[0, 1, 2, 0, 1], [0, 1, 2, 3]]
    tokens = torch.cat([b.states[1] for b in batches])
    torch.testing.assert_close(tokens, states[1][mask])


def test_numpy_memmaps_serve_the_same_batches(tmp_path):
    data = residual_dynamics(n=12)
    arrays = []
    for i, state in enumerate(data.states):
        array = np.lib.format.open_memmap(tmp_path / f"h{i}.npy", mode="w+", dtype=np.float16, shape=tuple(state.shape))
        array[:] = state.numpy()
        arrays.append(array)
    mapped = BlockData(arrays, data.mask.numpy())
    for ours, theirs in zip(mapped.batches(5, shuffle=True, seed=1), data.batches(5, shuffle=True, seed=1)):
        assert ours.states[0].dtype == torch.float32
        torch.testing.assert_close(ours.states[2], theirs.states[2], atol=1e-2, rtol=1e-2)
        assert torch.equal(ours.positions, theirs.positions)


def test_mismatched_shapes_are_user_errors():
    with pytest.raises(UserError, match="block states"):
        BlockData([torch.zeros(2, 3, 4), torch.zeros(2, 3, 5)], torch.ones(2, 3, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------ OLS and W


def test_ols_operator_equals_lstsq_on_kernel_features():
    kernel = LearnableRFF(D, 32, 2, seed=0)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(500, D, generator=generator)
    inputs, targets = kernel(x).detach().double(), kernel(x + 0.3 * torch.tanh(x)).detach().double()
    expected = torch.linalg.lstsq(inputs, targets).solution.T
    torch.testing.assert_close(ols_operator(inputs, targets), expected, rtol=1e-6, atol=1e-6)
    ridged = ols_operator(inputs, targets, ridge=1.0)
    assert (ridged - expected).abs().max() > 1e-2


def _assert_operators_are_ols_on_the_training_set(kernel, operators, data, config) -> None:
    train, _ = data.split(config.held_out_fraction, config.seed)
    with torch.no_grad():
        features = [torch.cat([kernel(b.states[i].double()) for b in train.batches(100)]) for i in range(3)]
    for step in range(2):
        expected = torch.linalg.lstsq(features[step], features[step + 1]).solution.T
        torch.testing.assert_close(operators.matrix(step).double(), expected, rtol=1e-4, atol=1e-4)


def test_epoch_reinitialisation_sets_each_operator_to_ols_in_the_current_kernel_space():
    data = residual_dynamics(n=48)
    config = small_config(kernel_lr=0.0, kernel_ols_ridge=0.0, kernel_max_epochs=2, gamma_init=0.5, dtype="float64",
                          ols_reinit="epoch")
    kernel, operators, _ = fit_kernel_linearization(data, config)
    _assert_operators_are_ols_on_the_training_set(kernel, operators, data, config)
    assert operators.gamma.tolist() == [0.5, 0.5]


def test_batch_reinitialisation_trains_the_spectrum_and_keeps_whole_set_ols_operators():
    data = residual_dynamics(n=48)
    config = small_config(kernel_ols_ridge=0.0, kernel_max_epochs=3, dtype="float64", ols_reinit="batch")
    kernel, operators, record = fit_kernel_linearization(data, config)
    assert record["best_epoch"] > 0  # the spectrum learned something the OLS start did not have
    assert kernel.log_diagonal.abs().max() > 0
    _assert_operators_are_ols_on_the_training_set(kernel, operators, data, config)
    assert not operators.update.requires_grad  # re-solved before every step, never stepped by Adam


def test_operators_product_runs_from_the_first_step():
    operators = StepOperators(3, 4)
    with torch.no_grad():
        for step in range(3):
            operators.set_matrix(step, torch.randn(4, 4))
    a1, a2, a3 = (operators.matrix(i) for i in range(3))
    torch.testing.assert_close(operators.product(), a3 @ a2 @ a1)


def test_position_weights_favour_later_tokens_and_average_one():
    weights = position_weights(128, max_exponent=1)
    assert torch.all(weights[1:] > weights[:-1])
    assert weights.mean().item() == pytest.approx(1.0)
    assert (weights[-1] / weights[0]).item() == pytest.approx(2.0)
    assert (position_weights(10, 3)[-1] / position_weights(10, 3)[0]).item() == pytest.approx(8.0)
    torch.testing.assert_close(step_weights(2), torch.tensor([2 / 3, 4 / 3]))


def test_convergence_rule_stops_on_plateau_on_lr_floor_and_at_the_cap():
    stop = ConvergenceStop(KDPConfig(kernel_stop_patience=2, kernel_stop_tol=0.01, kernel_max_epochs=100), 2.0)
    reasons = [stop.reason(epoch, loss, 1e-2) for epoch, loss in enumerate([1.0, 0.5, 0.499, 0.498])]
    assert reasons == [None, None, None, "no_improvement"]
    assert ConvergenceStop(KDPConfig(kernel_min_lr=1e-3), 2.0).reason(0, 1.0, 5e-4) == "min_lr"
    assert ConvergenceStop(KDPConfig(kernel_max_epochs=1), 2.0).reason(0, 1.0, 1e-2) == "max_epochs"


def test_convergence_rule_counts_epochs_that_never_beat_the_ols_start():
    stop = ConvergenceStop(KDPConfig(kernel_stop_patience=2, kernel_stop_tol=0.01, kernel_max_epochs=100), 0.4)
    assert [stop.reason(epoch, loss, 1e-2) for epoch, loss in enumerate([0.5, 0.45])] == [None, "no_improvement"]


def test_barely_trained_runs_do_exactly_the_requested_epochs():
    data = residual_dynamics(n=24)
    config = small_config(kernel_max_epochs=1, inverse_epochs=5)
    fold, record = fit_kdp(data, config)
    assert [e["epoch"] for e in record["step1"]["epochs"]] == [0, 1]
    assert len(record["step2"]["epochs"]) == 6
    assert record["step1"]["stopped"] == "max_epochs"
    json.dumps(record)


def test_config_rejects_unknown_keys_and_values():
    with pytest.raises(UserError, match="cos_weighting"):
        KDPConfig(cos_weighting="tokens")
    with pytest.raises(UserError, match="kdp config key"):
        KDPConfig.from_dict({"rff_dims": 8})
    assert KDPConfig.from_dict(KDPConfig(rank=3).to_dict()) == KDPConfig(rank=3)


# ------------------------------------------------------------------------------ Table 3: original-space fits


def test_direct_ols_recovers_an_affine_block_and_sequential_ols_composes_the_steps():
    generator = torch.Generator().manual_seed(0)
    h0 = torch.randn(20, 6, D, generator=generator)
    maps = [
        (torch.eye(D) + 0.2 * torch.randn(D, D, generator=generator), torch.randn(D, generator=generator))
        for _ in range(2)
    ]
    states = [h0]
    for weight, bias in maps:
        states.append(states[-1] @ weight.T + bias)
    data = BlockData(states, torch.ones(20, 6, dtype=torch.bool))
    composed = maps[1][0] @ maps[0][0]
    for fold, _ in (fit_direct_ols(data), fit_sequential_ols(data)):
        torch.testing.assert_close(fold.weight, composed, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fold(h0), states[-1], atol=1e-3, rtol=1e-3)


# -------------------------------------------------------------------------------- the whole fit, synthetic


@cache
def _synthetic_fit():
    data = residual_dynamics()
    fold, record = fit_kdp(data, small_config())
    return data, fold, record


def test_inverse_network_record_matches_the_returned_network_of_its_best_held_out_epoch():
    data, fold, record = _synthetic_fit()
    _, held_out = data.split(0.25, 0)
    epochs = record["step2"]["epochs"]
    final = epochs[record["step2"]["best_epoch"]]
    assert final["loss"] == min(entry["loss"] for entry in epochs)
    metrics = reconstruction_metrics(fold, held_out)
    assert metrics["cosine"] == pytest.approx(final["cosine"], abs=1e-5)
    assert metrics["mse"] == pytest.approx(final["mse"], rel=1e-4)


def test_kdp_beats_layer_removal_original_space_ols_and_its_own_untrained_parts():
    data, fold, record = _synthetic_fit()
    train, held_out = data.split(0.25, 0)
    kdp = reconstruction_metrics(fold, held_out)
    direct = reconstruction_metrics(fit_direct_ols(train)[0], held_out)
    sequential = reconstruction_metrics(fit_sequential_ols(train)[0], held_out)
    untrained_kernel = LearnableRFF(D, 128, 4, seed=1)
    untrained_kernel.load_state_dict(
        {
            **untrained_kernel.state_dict(),
            "input_shift": fold.kernel.input_shift,
            "input_scale": fold.kernel.input_scale,
        }
    )
    swapped = reconstruction_metrics(FoldedBlock(untrained_kernel, torch.eye(128), fold.inverse), held_out)
    print(
        f"held-out cosine: KDP {kdp['cosine']:.3f}, identity {kdp['identity_cosine']:.3f}, direct OLS "
        f"{direct['cosine']:.3f}, sequential OLS {sequential['cosine']:.3f}, untrained kernel/P {swapped['cosine']:.3f}"
    )
    assert kdp["cosine"] > kdp["identity_cosine"] + 0.1
    assert kdp["mse"] < 0.5 * kdp["identity_mse"]
    assert kdp["cosine"] > direct["cosine"] + 0.02
    assert kdp["cosine"] > sequential["cosine"] + 0.02
    assert kdp["mse"] < direct["mse"]
    assert kdp["cosine"] > swapped["cosine"] + 0.1


def test_step1_record_has_the_figure_3_and_5_quantities():
    _, _, record = _synthetic_fit()
    epochs = record["step1"]["epochs"]
    for entry in epochs:
        assert len(entry["operator_norms"]) == 2 and all(norm > 0 for norm in entry["operator_norms"])
        assert entry["phi_norm_max"] == pytest.approx(1.0, abs=1e-4)  # ||phi|| = 1 for cos/sin features
        assert 0 < entry["phi_centered_norm_mean"] <= entry["phi_centered_norm_max"] < 2
        assert -1 <= entry["kstep_cosine"] <= 1
    assert all("train_loss" in entry and entry["wall_s"] > 0 for entry in epochs[1:])
    assert record["step1"]["best_epoch"] in [entry["epoch"] for entry in epochs]
    assert record["step1"]["wall_s"] > 0
    step1 = record["step1"]
    assert step1["start"] == "ols" and step1["start_loss"] == epochs[0]["loss"]
    assert step1["best_loss"] == min(entry["loss"] for entry in epochs) == epochs[step1["best_epoch"]]["loss"]
    assert step1["gain_over_start"] == pytest.approx(1 - step1["best_loss"] / step1["start_loss"])


def test_inverse_network_alone_trains_on_a_given_kernel():
    data = residual_dynamics(n=32)
    config = small_config(inverse_epochs=3)
    kernel, operators, _ = fit_kernel_linearization(data, small_config(kernel_max_epochs=1))
    inverse, record = fit_inverse_network(kernel, operators, data, config)
    assert record["hidden"] == 64 and len(record["epochs"]) == 4
    assert record["epochs"][-1]["mse"] < record["epochs"][0]["mse"]
    assert inverse(torch.zeros(5, 128)).shape == (5, D)


def test_float64_fit_gives_a_float64_fold_that_returns_the_callers_dtype():
    fold, _ = fit_kdp(residual_dynamics(n=24), small_config(kernel_max_epochs=1, inverse_epochs=1, dtype="float64"))
    assert fold.transition.dtype == torch.float64
    assert fold(torch.zeros(3, D)).dtype == torch.float32


def test_step2_token_cache_serves_exactly_the_streamed_batches():
    from kdp.linearize import _FrozenKernelTokens

    data = residual_dynamics(n=30).gated(3.5)  # a gate that leaves some tokens out
    train, _ = data.split(0.25, 0)
    config = small_config(eval_batch_samples=7)
    cache = _FrozenKernelTokens(train, lambda h: 2 * h, lambda h: h - 1, config)
    cached = list(cache.batches(4, shuffle_seed=5))
    streamed = list(train.batches(4, shuffle=True, seed=5))
    assert len(cached) == len(streamed)
    for (inputs, targets), batch in zip(cached, streamed):
        torch.testing.assert_close(inputs, 2 * batch.states[0])
        torch.testing.assert_close(targets, batch.states[-1] - 1)
