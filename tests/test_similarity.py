"""Linear CKA and token cosine against their definitions and invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdp.similarity import linear_cka, mean_token_cosine, token_subsample


def naive_cka(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC form with explicit centring matrix (Kornblith et al., 2019, Eq. 3 with linear kernels)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    kx, ky = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(kx, ky) / np.sqrt(hsic(kx, kx) * hsic(ky, ky))


@pytest.fixture
def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=generator, dtype=torch.float64)
    y = x @ torch.randn(8, 8, generator=generator, dtype=torch.float64) + 0.5 * torch.randn(50, 8, generator=generator, dtype=torch.float64)
    return x, y


def test_cka_is_one_for_identical_inputs(data):
    x, _ = data
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_matches_the_hsic_definition_in_both_forms(data):
    x, y = data
    expected = naive_cka(x.numpy(), y.numpy())
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-10)  # n > d: feature form
    assert linear_cka(x[:6], y[:6]) == pytest.approx(naive_cka(x[:6].numpy(), y[:6].numpy()), rel=1e-10)  # Gram form
    assert expected < 0.99


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(data):
    x, y = data
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    base = linear_cka(x, y)
    assert linear_cka(x @ q, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, 7.5 * y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x + 3.0, y) == pytest.approx(base, rel=1e-10)  # centring removes offsets
    stretch = torch.diag(torch.tensor([10.0, 1, 1, 1, 1, 1, 1, 0.1], dtype=torch.float64))
    assert abs(linear_cka(x @ stretch, y) - base) > 1e-3  # but not to anisotropic scaling


def test_mean_token_cosine():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    assert mean_token_cosine(a, b) == pytest.approx(0.5)


def test_token_subsample_is_seeded_and_bounded():
    candidates = np.arange(200)
    picks = token_subsample(candidates, 50, seed=1)
    assert len(picks) == 50 and len(set(picks)) == 50 and picks.max() < 200
    assert np.array_equal(picks, token_subsample(candidates, 50, seed=1))
    assert not np.array_equal(picks, token_subsample(candidates, 50, seed=2))
    assert len(token_subsample(candidates, 500, seed=1)) == 200
    assert set(token_subsample(np.arange(0, 200, 2), 50, seed=1)) <= set(range(0, 200, 2))
