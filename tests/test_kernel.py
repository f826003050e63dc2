"""The learnable RFF map: convergence to its Gaussian kernel, fixed random draws, input normalisation."""

from __future__ import annotations

import math
from functools import cache

import pytest
import torch

from kdp.errors import UserError
from kdp.kernel import LearnableRFF, median_squared_distance, normalization_from_tokens

D, RANK = 6, 2


def _anisotropic_kernel(rff_dim: int, seed: int, sigma: str = "precision") -> LearnableRFF:
    kernel = LearnableRFF(D, rff_dim, RANK, seed=seed, sigma=sigma)
    spectrum = torch.Generator().manual_seed(123)  # the same Sigma for every m
    with torch.no_grad():
        kernel.log_diagonal.copy_(0.8 * torch.randn(D, generator=spectrum))
        kernel.low_rank.copy_(0.5 * torch.randn(D, RANK, generator=spectrum))
        kernel.input_shift.copy_(torch.randn(D, generator=spectrum))
        kernel.input_scale.copy_(torch.rand(D, generator=spectrum) + 0.5)
    return kernel


def _pairs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(400, D, generator=generator)
    return x, x + 0.6 * torch.randn(400, D, generator=generator)


def _exact(kernel: LearnableRFF, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return kernel.kernel_exact(x, y)


@cache
def _mean_error(rff_dim: int, reference, sigma: str = "precision") -> float:
    x, y = _pairs()
    errors = []
    for seed in range(4):
        kernel = _anisotropic_kernel(rff_dim, seed, sigma).double()
        with torch.no_grad():
            approx = (kernel(x.double()) * kernel(y.double())).sum(-1)
            errors.append((approx - reference(kernel, x.double(), y.double())).abs().mean().item())
    return sum(errors) / len(errors)


def _paper_form(kernel: LearnableRFF, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    delta = kernel.normalize(x) - kernel.normalize(y)
    return torch.exp(-0.5 * ((delta @ torch.linalg.inv(kernel.covariance())) * delta).sum(-1))


def test_features_converge_to_the_anisotropic_gaussian_kernel_at_the_monte_carlo_rate():
    kernel = _anisotropic_kernel(64, 0).double()
    x, y = _pairs()
    values = kernel.kernel_exact(x.double(), y.double())
    assert 0.05 < values.median() < 0.95  # pairs are neither identical nor unrelated under this Sigma
    errors = [_mean_error(rff_dim, _exact) for rff_dim in (128, 2048, 32768)]  # m = 64, 1024, 16384
    assert errors[0] > errors[1] > errors[2]
    for coarse, fine in zip(errors, errors[1:]):
        assert 2.5 < coarse / fine < 6.5  # sqrt(16) = 4
    assert errors[2] < 0.01


def test_sigma_is_the_kernel_precision_not_its_covariance_as_section_2_1_writes():
    # With Omega = D^(1/2) Z + L V (Appendix B) the features converge to exp(-1/2 d^T Sigma d), not Sigma^-1.
    assert _mean_error(32768, _paper_form) > 10 * _mean_error(32768, _exact)


def test_covariance_reading_draws_frequencies_from_sigma_inverse_and_converges_to_the_papers_form():
    # sigma = "covariance": Omega = C^-T Z with Sigma = C C^T, so phi . phi -> exp(-1/2 d^T Sigma^-1 d) (Section 2.1).
    assert _mean_error(32768, _paper_form, "covariance") < 0.01
    assert _mean_error(32768, _exact, "covariance") < 0.01  # kernel_exact follows the reading
    assert _mean_error(32768, _exact, "precision") * 10 < _mean_error(32768, _paper_form, "precision")


def test_covariance_is_diagonal_plus_low_rank():
    kernel = _anisotropic_kernel(64, 0)
    expected = torch.diag(kernel.log_diagonal.exp()) + kernel.low_rank @ kernel.low_rank.T
    torch.testing.assert_close(kernel.covariance(), expected)
    frequencies = kernel.frequencies().detach()
    torch.testing.assert_close(
        frequencies,
        kernel.log_diagonal.detach().exp().sqrt()[:, None] * kernel.base_frequencies
        + kernel.low_rank.detach() @ kernel.low_rank_base,
    )


def test_random_draws_stay_fixed_while_the_spectrum_learns():
    kernel = LearnableRFF(D, 64, RANK, seed=3)
    fixed = {name: buffer.clone() for name, buffer in kernel.named_buffers()}
    learned = {name: parameter.detach().clone() for name, parameter in kernel.named_parameters()}
    assert set(learned) == {"log_diagonal", "low_rank"}
    assert {"base_frequencies", "low_rank_base", "phase"} <= set(fixed)
    optimizer = torch.optim.Adam(kernel.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    x, target = torch.randn(50, D, generator=generator), torch.randn(50, 64, generator=generator)
    for _ in range(3):
        loss = (kernel(x) - 0.1 * target).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, buffer in kernel.named_buffers():
        assert torch.equal(buffer, fixed[name]), name
    for name, parameter in kernel.named_parameters():
        assert not torch.equal(parameter.detach(), learned[name]), name


def test_draws_are_reproducible_from_the_seed():
    assert torch.equal(
        LearnableRFF(D, 64, RANK, seed=5).base_frequencies, LearnableRFF(D, 64, RANK, seed=5).base_frequencies
    )
    assert not torch.equal(LearnableRFF(D, 64, RANK, seed=5).phase, LearnableRFF(D, 64, RANK, seed=6).phase)


def test_feature_norm_is_one():
    kernel = _anisotropic_kernel(64, 0)
    norms = kernel(torch.randn(20, D) * 100).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(20))


def _residual_like_tokens() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randn(2000, D, generator=generator) * torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0]) + 40.0
    tokens[:, 0] += 300.0 * (torch.rand(2000, generator=generator) < 0.05)  # a massive-activation dimension
    return tokens


def test_standardize_gives_every_dimension_equal_spread_and_median_distance_one():
    tokens = _residual_like_tokens()
    shift, scale, log_diagonal = normalization_from_tokens(tokens, tokens.mean(0), tokens.std(0), "standardize")
    normalised = (tokens - shift) / scale
    spreads = normalised.std(0)
    torch.testing.assert_close(spreads, spreads.mean().expand(D), rtol=1e-3, atol=0)
    assert median_squared_distance(normalised) == pytest.approx(1.0, rel=0.05)
    assert log_diagonal == 0.0


def test_scalar_keeps_the_anisotropy_and_none_moves_the_bandwidth_into_lambda():
    tokens = _residual_like_tokens()
    shift, scale, _ = normalization_from_tokens(tokens, tokens.mean(0), tokens.std(0), "scalar")
    assert torch.all(scale == scale[0])
    assert median_squared_distance((tokens - shift) / scale) == pytest.approx(1.0, rel=0.05)
    shift, scale, log_diagonal = normalization_from_tokens(tokens, tokens.mean(0), tokens.std(0), "none")
    assert torch.all(shift == 0) and torch.all(scale == 1)
    assert log_diagonal == pytest.approx(-math.log(median_squared_distance(tokens)))


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="rff_dim"):
        LearnableRFF(D, 63)
    tokens = _residual_like_tokens()
    with pytest.raises(UserError, match="input_normalization"):
        normalization_from_tokens(tokens, tokens.mean(0), tokens.std(0), "whiten")
