"""Representation similarity between layers: token cosine, linear CKA, and ShortGPT's Block Influence.

All computations are in float32/float64 on hidden states taken before the final norm. Linear CKA (Kornblith et
al., 2019) treats each token as an example: CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F) with
column-centred X_c, Y_c. For the inter-layer matrices a seeded subsample of tokens keeps the cost bounded.

Massive-activation tokens (kdp/outliers.py) make every pair of middle layers look alike: one sink token per sequence
with a norm 100x the others' dominates the centred Gram matrices, and every candidate block's CKA reads 0.9999x
(SmolLM2-135M). With ``outlier_tokens = "pass_through"`` (default) the subsample is drawn from the tokens that are no
outlier at any state, the same tokens KDP's fit sees; ``"literal"`` draws from all real tokens, as the paper does.
"""

from __future__ import annotations

import numpy as np
import torch

from kdp.capture import HiddenStates
from kdp.outliers import DEFAULT_NORM_RATIO, norm_threshold, token_norms


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two (n_examples, features) matrices; 1 for identical inputs."""
    x = x.double() - x.double().mean(dim=0, keepdim=True)
    y = y.double() - y.double().mean(dim=0, keepdim=True)
    if x.shape[0] < x.shape[1]:
        # Gram form: the n x n kernels are cheaper than d x d cross-covariances when tokens are fewer than dims.
        kx, ky = x @ x.T, y @ y.T
        hsic, norm_x, norm_y = (kx * ky).sum(), kx.norm(), ky.norm()
    else:
        hsic = (y.T @ x).pow(2).sum()
        norm_x, norm_y = (x.T @ x).norm(), (y.T @ y).norm()
    return float(hsic / (norm_x * norm_y))


def mean_token_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over tokens of cos(a[t], b[t]) for two (n_tokens, d) matrices."""
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).mean())


def token_subsample(candidates: np.ndarray, max_tokens: int, seed: int) -> np.ndarray:
    """At most ``max_tokens`` of the flat token indices ``candidates`` (into the masked-token order), sorted, seeded."""
    if len(candidates) <= max_tokens:
        return np.asarray(candidates)
    return np.sort(np.random.default_rng(seed).choice(candidates, size=max_tokens, replace=False))


def ordinary_tokens(hidden: HiddenStates, mode: str, ratio: float) -> np.ndarray:
    """Flat indices (masked-token order) of the real tokens that are no outlier at any state h_0..h_L."""
    if mode == "literal":
        return np.arange(int(hidden.mask.sum()))
    keep = None
    for index in range(hidden.num_states):
        norms = token_norms(hidden.tokens(index))
        below = (norms <= norm_threshold(norms, mode, ratio)).numpy()
        keep = below if keep is None else keep & below
    return np.flatnonzero(keep)


def layer_tokens(hidden: HiddenStates, index: int, picks: np.ndarray) -> torch.Tensor:
    return hidden.tokens(index)[torch.from_numpy(picks)]


def similarity_matrices(hidden: HiddenStates, max_tokens: int, seed: int, outlier_tokens: str = "pass_through",
                        outlier_norm_ratio: float = DEFAULT_NORM_RATIO) -> dict[str, np.ndarray]:
    """(L+1) x (L+1) token-cosine and linear-CKA matrices over the states h_0..h_L (Figure 1)."""
    candidates = ordinary_tokens(hidden, outlier_tokens, outlier_norm_ratio)
    picks = token_subsample(candidates, max_tokens, seed)
    states = [layer_tokens(hidden, i, picks) for i in range(hidden.num_states)]
    size = len(states)
    cosine, cka = np.eye(size), np.eye(size)
    for i in range(size):
        for j in range(i + 1, size):
            cosine[i, j] = cosine[j, i] = mean_token_cosine(states[i], states[j])
            cka[i, j] = cka[j, i] = linear_cka(states[i], states[j])
    left_out = int(hidden.mask.sum()) - len(candidates)
    return {"cosine": cosine, "cka": cka, "tokens": np.array(len(picks)), "outliers_left_out": np.array(left_out)}


def block_influence(hidden: HiddenStates) -> list[float]:
    """ShortGPT's BI_i = 1 - mean over all real tokens of cos(h_i, h_{i+1}), one value per layer."""
    return [1.0 - mean_token_cosine(hidden.tokens(i), hidden.tokens(i + 1)) for i in range(hidden.num_layers)]
