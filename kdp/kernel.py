"""KDP's kernel map: random Fourier features with a learnable anisotropic spectrum (paper Eq. 2, Appendix B).

phi(x) = (1/sqrt(m)) [cos(Omega^T u + b), sin(Omega^T u + b)] with u = (x - shift) / scale the normalised input and
Omega = D^(1/2) Z + L V, D = diag(exp(lambda)). Z (d x m), V (r x m) and b ~ U(0, 2 pi) are drawn once from a seeded
generator and kept as buffers; only lambda (d) and L (d x r) are learned, so the spectrum moves but the random
directions never get resampled.

Which kernel this is. The columns of Omega have covariance Sigma = D + L L^T, and for features built from cos and
sin of the same phase, phi(x) . phi(y) = (1/m) sum_j cos(omega_j^T (u - v)) -> exp(-1/2 (u - v)^T Sigma (u - v)).
Sigma is therefore the *precision* of the Gaussian kernel. Section 2.1 of the paper writes the kernel as
exp(-1/2 (x - y)^T Sigma^-1 (x - y)), which would need frequencies drawn from N(0, Sigma^-1); with the frequencies
that Appendix B fixes (Omega = D^(1/2) Z + L V) it is Sigma itself. `kernel_exact` returns what the features
actually converge to, and tests/test_kernel.py shows the paper's form is not it. (The phase b cancels in the
cos/sin pair; it is kept because the paper defines it and it sets which phases each feature starts from.)
The two readings are the key ``sigma``: "precision" (default) samples as Appendix B does; "covariance" draws the
frequencies from N(0, Sigma^-1), Omega = C^-T Z with Sigma = C C^T (V unused), so that the kernel is Section 2.1's
exp(-1/2 (u - v)^T Sigma^-1 (u - v)).

Input scale. Residual streams have norms of hundreds to tens of thousands and a few outlier dimensions whose spread
is 100-1000x the median (SmolLM2-135M, LLaMA: "massive activations" on the first tokens). Fed raw, the phases
Omega^T x would span many periods and cos/sin would be noise, or the outlier dimensions would be the only ones the
kernel sees. So phi normalises its input with a fixed affine map stored as buffers, computed once from calibration
tokens (`normalization_from_tokens`), which keeps the fold a pure function of h:

- ``standardize`` (default): centre and divide each dimension by its standard deviation, then divide everything by
  one scalar so that the median squared distance between two calibration tokens is 1. All dimensions start with
  equal say and the median pair gets kernel value exp(-1/2) at lambda = 0 (the median heuristic), so lambda = 0
  and L = 0 are a sensible start and lambda, L live on an O(1) scale where Adam's lr of 0.01 is a small step.
- ``scalar``: centre, and divide by the one scalar of the median heuristic; keeps the raw anisotropy (outlier
  dimensions dominate distances).
- ``none``: the raw residual stream, as the paper may have done; the median heuristic then goes into lambda's
  initial value instead (lambda = -log(median squared distance)), and L's O(1) Adam steps are large relative to it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kdp.errors import bad_value

NORMALIZATIONS = ("standardize", "scalar", "none")
SIGMA_ROLES = ("precision", "covariance")

# A dimension whose spread is below this fraction of the median spread is treated as constant, not blown up.
_MIN_RELATIVE_STD = 1e-2


class LearnableRFF(nn.Module):
    """phi: R^d -> R^(2m) with learnable spectrum Sigma = diag(exp(lambda)) + L L^T in normalised coordinates."""

    def __init__(self, hidden_size: int, rff_dim: int = 1024, rank: int = 16, *, seed: int = 0,
                 sigma: str = "precision"):
        super().__init__()
        if rff_dim < 2 or rff_dim % 2:
            raise bad_value("rff_dim", rff_dim, "an even number >= 2 (cos and sin halves)")
        if rank < 0:
            raise bad_value("rank", rank, "an integer >= 0")
        if sigma not in SIGMA_ROLES:
            raise bad_value("sigma", sigma, SIGMA_ROLES)
        self.sigma = sigma
        num_frequencies = rff_dim // 2
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("base_frequencies", torch.randn(hidden_size, num_frequencies, generator=generator))
        self.register_buffer("low_rank_base", torch.randn(rank, num_frequencies, generator=generator))
        self.register_buffer("phase", 2 * math.pi * torch.rand(num_frequencies, generator=generator))
        self.register_buffer("input_shift", torch.zeros(hidden_size))
        self.register_buffer("input_scale", torch.ones(hidden_size))
        self.log_diagonal = nn.Parameter(torch.zeros(hidden_size))
        self.low_rank = nn.Parameter(torch.zeros(hidden_size, rank))

    @property
    def hidden_size(self) -> int:
        return self.base_frequencies.shape[0]

    @property
    def feature_dim(self) -> int:
        return 2 * self.base_frequencies.shape[1]

    @property
    def rank(self) -> int:
        return self.low_rank_base.shape[0]

    def set_input_normalization(self, shift: torch.Tensor, scale: torch.Tensor, log_diagonal: float = 0.0) -> None:
        """Fix u = (x - shift) / scale and restart the spectrum at diag(exp(log_diagonal)), L = 0."""
        with torch.no_grad():
            self.input_shift.copy_(shift)
            self.input_scale.copy_(scale)
            self.log_diagonal.fill_(log_diagonal)
            self.low_rank.zero_()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_shift) / self.input_scale

    def frequencies(self) -> torch.Tensor:
        """Omega, shape (d, m): D^(1/2) Z + L V (columns ~ N(0, Sigma)), or C^-T Z (columns ~ N(0, Sigma^-1))."""
        if self.sigma == "covariance":
            factor = torch.linalg.cholesky(self.covariance())
            return torch.linalg.solve_triangular(factor.T, self.base_frequencies, upper=True)
        return torch.exp(0.5 * self.log_diagonal)[:, None] * self.base_frequencies + self.low_rank @ self.low_rank_base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phases = self.normalize(x) @ self.frequencies() + self.phase
        return torch.cat([torch.cos(phases), torch.sin(phases)], dim=-1) / math.sqrt(self.phase.shape[0])

    def covariance(self) -> torch.Tensor:
        """Sigma = D + L L^T."""
        return torch.diag(torch.exp(self.log_diagonal)) + self.low_rank @ self.low_rank.T

    def kernel_precision(self) -> torch.Tensor:
        """The precision of the Gaussian kernel in u-space: Sigma, or Sigma^-1 with ``sigma = "covariance"``."""
        return torch.linalg.inv(self.covariance()) if self.sigma == "covariance" else self.covariance()

    def kernel_exact(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """exp(-1/2 (u - v)^T P (u - v)), P = `kernel_precision`, for matching rows of x and y: the limit of
        phi(x) . phi(y) as m grows."""
        delta = self.normalize(x) - self.normalize(y)
        return torch.exp(-0.5 * ((delta @ self.kernel_precision()) * delta).sum(-1))

    def config(self) -> dict:
        return {"hidden_size": self.hidden_size, "rff_dim": self.feature_dim, "rank": self.rank, "sigma": self.sigma}


def median_squared_distance(tokens: torch.Tensor, seed: int = 0) -> float:
    """Median of ||a - b||^2 over random pairs of distinct rows of ``tokens`` (n, d)."""
    if tokens.shape[0] < 2:
        raise bad_value("calibration tokens", tokens.shape[0], "at least 2 tokens to set the kernel bandwidth")
    generator = torch.Generator().manual_seed(seed)
    n = tokens.shape[0]
    first = torch.randint(n, (4 * n,), generator=generator)
    offset = torch.randint(1, n, (4 * n,), generator=generator)
    second = (first + offset) % n
    distances = (tokens[first] - tokens[second]).double().pow(2).sum(-1)
    return max(distances.median().item(), torch.finfo(torch.float32).tiny)


def normalization_from_tokens(
    tokens: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(shift, scale, initial lambda) for `LearnableRFF.set_input_normalization`, see the module docstring.

    ``mean`` and ``std`` are per-dimension moments over all calibration tokens; ``tokens`` is a random subsample of
    them, used only for the median pairwise distance.
    """
    if mode not in NORMALIZATIONS:
        raise bad_value("input_normalization", mode, NORMALIZATIONS)
    if mode == "none":
        shift, scale = torch.zeros_like(mean), torch.ones_like(std)
        return shift, scale, -math.log(median_squared_distance(tokens))
    if mode == "standardize":
        scale = std.clamp_min(_MIN_RELATIVE_STD * std.median().clamp_min(torch.finfo(std.dtype).tiny))
    else:
        scale = torch.ones_like(std)
    scale = scale * math.sqrt(median_squared_distance((tokens - mean) / scale))
    return mean, scale, 0.0
