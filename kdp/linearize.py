"""Fitting a KDP fold for one block of k decoder layers (paper Section 3, Algorithm 1, Eq. 5-6, Appendix B), and the
original-space least-squares fits of the Table 3 ablations.

Data: `BlockData` holds the k + 1 residual streams h_l .. h_{l+k} of one block (before the final norm) for the
calibration samples, plus the padding mask, and serves minibatches of real tokens with their positions. The arrays
may be torch tensors or numpy memmaps (the hidden-state cache); only one minibatch is ever converted to float32.

Step 1 (`fit_kernel_linearization`) trains the kernel spectrum (lambda, L) jointly with A_i = I + gamma_i B_i on
Eq. 5. Step 2 (`fit_inverse_network`) trains I(x) = alpha MLP(x) from (A_k ... A_1) phi(h_l) to h_{l+k}.
`fit_kdp` runs both and returns the `FoldedBlock`.

Choices the paper leaves open (all are `KDPConfig` keys; README-level reasons in the field comments):
- Massive-activation tokens (`outlier_tokens`, kdp/outliers.py): "pass_through" (default) leaves tokens whose
  block-input norm exceeds `outlier_norm_ratio` x the median out of phi's normalisation statistics, both steps'
  losses and the OLS solves, and the fold hands them on unchanged; "literal" fits every token, as the paper's text
  does. With one sink token per sequence at ~100x the others' norm, the literal fit spends phi's standardisation,
  the least squares and the MSE on that token (SmolLM2-135M: held-out perplexity 429 against 44 for plain removal).
- Batch sizes (100 in step 1, 128 in step 2) count calibration *samples*, all their real tokens included: the paper
  trains on 4000 samples of <= 128 tokens and its "batch" is most naturally a batch of samples. With fewer samples
  the same batch size gives far fewer optimiser steps (step 2 of the paper: 100 epochs x 32 batches), so the
  embedded config sets smaller batches.
- W of Eq. 5 (`cos_weighting`): "positions" (default) weights token t by 2^(e_t), e_t spread evenly from 0 at the
  first position to `num_layers - 1` at the last (num_layers = k, the block's layers), normalised to mean 1 over
  positions: Section 3.1 and Fig. 4 say W favours later tokens, and Appendix B gives the base-2 geometric form.
  "steps" weights step i by 2^(i-1) (normalised to mean 1), the other reading of "exponents 0 .. num_layers - 1".
  The term is implemented as W (1 - cos), which has the same gradient as Eq. 5's 1 - W cos and stays >= 0.
- OLS re-initialisation (`ols_reinit`), "initialise A_i with OLS at the start of each iteration":
  "batch" reads an iteration as one minibatch: every A_i is re-solved by ridge-stabilised least squares on the
  minibatch's kernel features before each step, and only the spectrum (lambda, L) takes the gradient step (a step
  on A_i would be overwritten by the next solve); after each epoch the A_i are solved on the whole training set,
  which is what is evaluated and kept. "epoch" reads it as one epoch: every A_i is set to its least-squares
  estimate at the start of each epoch, gamma_i back at `gamma_init` (B_i = (A_OLS - I) / gamma_init) with Adam's
  moments for gamma and B cleared, and Adam then moves A_i, lambda and L together; its first step at lr 0.01 moves
  every entry of B by ~0.01, for a (2m x 2m) matrix a large move away from the least-squares solution (the held-out
  Eq. 5 loss of SmolLM2's block [14, 15] went from 0.22 to 9.8), so on the embedded models no epoch ever beat the
  OLS start. "start" solves only before the first epoch; "never" starts from A_i = I.
- Eq. 5 can be lowered by widening the kernel alone (lambda -> -inf maps every h to the same phi, the "trivial
  kernel" of Appendix F), and the held-out loss does not see that. The records keep `log_diagonal_mean` and the
  mean-subtracted feature norm `phi_centered_norm_mean` (-> 0 under collapse) per epoch so a run shows whether it
  drifted that way; `kstep_explained_variance` is the scale-free measure of the k-step fit.
- "Until convergence": stop when the held-out loss has not beaten the best so far (the start, OLS, included) by a
  relative `kernel_stop_tol` for `kernel_stop_patience` epochs, or the plateau scheduler has cut the lr below
  `kernel_min_lr`, or at `kernel_max_epochs`; the state of the best held-out epoch is kept, and the record states
  that epoch and its held-out gain over the start. Step 2 runs its fixed `inverse_epochs` and keeps the network of
  its best held-out epoch.
- L_norm of Algorithm 1: mean over tokens of (||h_hat|| - ||h||)^2 / d, measured in the same space and per-element
  units as the MSE (so L_norm <= MSE: it re-weights the radial part of the error), with weight `norm_loss_weight`
  = 1 (Algorithm 1 adds the two terms unweighted). Step 2 measures both in the kernel's normalised coordinates by
  default (`inverse_loss_space`, see `_InverseTraining`); the fold is the paper's alpha * MLP either way.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from kdp.errors import UserError, bad_value
from kdp.fold import ACTIVATIONS, FoldedBlock, InverseNetwork, LinearFold
from kdp.kernel import NORMALIZATIONS, SIGMA_ROLES, LearnableRFF, normalization_from_tokens
from kdp.outliers import DEFAULT_NORM_RATIO, check_mode, norm_threshold, ordinary, token_norms

COS_WEIGHTINGS = ("positions", "steps")
OLS_REINITS = ("batch", "epoch", "start", "never")
INVERSE_LOSS_SPACES = ("kernel", "raw")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class KDPConfig:
    """Every hyperparameter of one KDP block fit. Defaults are the paper's where it gives one (Appendix B)."""

    rff_dim: int = 1024  # 2m (Appendix B; Fig. 8: 256/512 lose information)
    rank: int = 16  # r of L; the paper only says r << d
    sigma: str = "precision"  # Sigma as the kernel's precision (Appendix B's sampling) or covariance (Sec. 2.1)
    input_normalization: str = "standardize"  # what phi sees; see kdp/kernel.py
    outlier_tokens: str = "pass_through"  # massive-activation tokens: left out and passed on, or "literal"
    outlier_norm_ratio: float = DEFAULT_NORM_RATIO  # outlier: block-input norm above this x the median
    cos_weighting: str = "positions"  # reading of W in Eq. 5
    cos_weight_max_exponent: int | None = None  # None: num_layers - 1 with num_layers = k
    gamma_init: float = 1.0  # gamma_i at the start; B_i = (A_OLS - I) / gamma_i at each re-initialisation
    ols_reinit: str = "batch"  # "at the start of each iteration", an iteration read as one minibatch
    kernel_ols_ridge: float = 1e-4  # ridge of the kernel-space OLS, relative to the mean eigenvalue of the Gram
    kernel_lr: float = 0.01  # Adam, Appendix B
    kernel_batch_samples: int = 100  # Appendix B "batch size 100", counted in samples
    kernel_max_epochs: int = 200  # Fig. 3 converges in ~100 epochs
    kernel_stop_tol: float = 1e-3
    kernel_stop_patience: int = 10
    kernel_min_lr: float = 1e-5
    plateau_factor: float = 0.5  # ReduceLROnPlateau, Appendix B
    plateau_patience: int = 3
    inverse_hidden: int | None = None  # None: hidden_size // 2 (2048 for d = 4096, about Appendix I's 12.4M)
    inverse_activation: str = "gelu"
    inverse_loss_space: str = "kernel"  # where step 2's MSE is measured; see _InverseTraining
    inverse_lr: float = 1e-3  # Adam, fixed (Appendix B)
    inverse_batch_samples: int = 128
    inverse_epochs: int = 100
    norm_loss_weight: float = 1.0
    linear_ols_ridge: float = 1e-6  # ridge of the original-space ablation fits, relative like kernel_ols_ridge
    held_out_fraction: float = 0.1  # samples kept out of training for the scheduler, stopping and records
    eval_batch_samples: int = 256
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_mode(self.outlier_tokens, self.outlier_norm_ratio, "kdp")
        choices = {
            "sigma": SIGMA_ROLES,
            "input_normalization": NORMALIZATIONS,
            "cos_weighting": COS_WEIGHTINGS,
            "ols_reinit": OLS_REINITS,
            "inverse_loss_space": INVERSE_LOSS_SPACES,
            "inverse_activation": tuple(ACTIVATIONS),
            "dtype": tuple(DTYPES),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise bad_value(f"kdp.{key}", getattr(self, key), allowed)
        for key in (
            "rff_dim",
            "kernel_batch_samples",
            "kernel_max_epochs",
            "inverse_batch_samples",
            "inverse_epochs",
            "eval_batch_samples",
            "kernel_stop_patience",
        ):
            if getattr(self, key) < 1:
                raise bad_value(f"kdp.{key}", getattr(self, key), "an integer >= 1")
        if self.rff_dim % 2:
            raise bad_value("kdp.rff_dim", self.rff_dim, "an even number (cos and sin halves)")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise bad_value("kdp.held_out_fraction", self.held_out_fraction, "a number in [0, 1)")

    @classmethod
    def from_dict(cls, values: dict) -> "KDPConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise bad_value("kdp config key", unknown[0], sorted(known))
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


# ----------------------------------------------------------------------------------------------------------- data


@dataclass
class TokenBatch:
    """Real tokens of a few samples: ``states[i]`` is (N, d) for h_{l+i}; ``positions`` (N,) is each token's index
    among the real tokens of its sequence (0 = first real token, whatever the padding side); ``samples`` (N,) the
    sample each token belongs to."""

    states: list[torch.Tensor]
    positions: torch.Tensor
    samples: torch.Tensor


@dataclass
class BlockData:
    """The k + 1 residual streams of one block: ``states[i]`` is (n_samples, seq_len, d), ``mask`` (n_samples,
    seq_len) is True on real tokens. ``samples`` selects the rows this view covers (all when None), so splits share
    the arrays instead of copying them; ``max_input_norm`` (see `gated`) leaves outlier tokens out of the batches."""

    states: Sequence[torch.Tensor | np.ndarray]
    mask: torch.Tensor | np.ndarray
    samples: torch.Tensor | None = None
    max_input_norm: float = math.inf  # tokens whose h_l norm exceeds it are left out of every batch


    def __post_init__(self) -> None:
        if len(self.states) < 2:
            raise bad_value("block states", len(self.states), "at least 2 (h_l and h_{l+k})")
        self.mask = torch.as_tensor(np.asarray(self.mask), dtype=torch.bool)
        shape = tuple(self.states[0].shape)
        if len(shape) != 3 or any(tuple(s.shape) != shape for s in self.states) or tuple(self.mask.shape) != shape[:2]:
            raise UserError(
                f"block states: shapes {[tuple(s.shape) for s in self.states]} with mask {tuple(self.mask.shape)}; "
                "expected equal (n_samples, seq_len, d) arrays and a (n_samples, seq_len) mask"
            )
        if self.samples is None:
            self.samples = torch.arange(shape[0])

    @property
    def num_steps(self) -> int:
        return len(self.states) - 1

    @property
    def hidden_size(self) -> int:
        return self.states[0].shape[2]

    @property
    def seq_len(self) -> int:
        return self.states[0].shape[1]

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    def num_tokens(self) -> int:
        """Real tokens of the covered samples, outliers left out by the gate included."""
        return int(self.mask[self.samples].sum())

    def subset(self, samples: torch.Tensor) -> "BlockData":
        return BlockData(self.states, self.mask, self.samples[samples], self.max_input_norm)

    def gated(self, max_input_norm: float) -> "BlockData":
        """The same samples, serving only tokens whose block-input norm is at most ``max_input_norm``."""
        return BlockData(self.states, self.mask, self.samples, max_input_norm)

    def input_norms(self, batch_samples: int = 256) -> torch.Tensor:
        """The norms of h_l over every real token of the covered samples (the gate's reference population)."""
        return torch.cat([token_norms(batch.states[0]) for batch in self.ungated().batches(batch_samples)])

    def ungated(self) -> "BlockData":
        return self.gated(math.inf)

    def split(self, held_out_fraction: float, seed: int) -> tuple["BlockData", "BlockData"]:
        """(train, held_out) by sample, seeded; held-out gets round(fraction * n) samples, at least one if > 0."""
        n = self.num_samples
        held = min(n - 1, max(1, round(held_out_fraction * n))) if held_out_fraction > 0 else 0
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return self.subset(order[held:].sort().values), self.subset(order[:held].sort().values)

    def batches(
        self,
        batch_samples: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Iterator[TokenBatch]:
        for rows in self.sample_groups(batch_samples, shuffle=shuffle, seed=seed):
            mask = self.mask[rows]
            positions = (mask.cumsum(1) - 1)[mask]
            samples = rows[:, None].expand(mask.shape)[mask]
            states = [_rows(s, rows)[mask] for s in self.states]
            keep = ordinary(states[0], self.max_input_norm)
            if not keep.all():
                states, positions, samples = [state[keep] for state in states], positions[keep], samples[keep]
            yield TokenBatch([state.to(device, dtype) for state in states], positions.to(device), samples)

    def sample_groups(self, batch_samples: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[torch.Tensor]:
        """The sorted sample indices of each batch, in the order `batches` serves them."""
        order = self.samples
        if shuffle:
            order = order[torch.randperm(len(order), generator=torch.Generator().manual_seed(seed))]
        for start in range(0, len(order), batch_samples):
            yield order[start : start + batch_samples].sort().values


def _rows(array: torch.Tensor | np.ndarray, rows: torch.Tensor) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array[rows].float()
    return torch.from_numpy(np.asarray(array[rows.numpy()], dtype=np.float32))


def _batches(data: BlockData, batch_samples: int, config: KDPConfig, shuffle_seed: int | None = None):
    return data.batches(
        batch_samples,
        shuffle=shuffle_seed is not None,
        seed=shuffle_seed or 0,
        device=config.device,
        dtype=config.torch_dtype,
    )


def _token_statistics(data: BlockData, config: KDPConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std over all tokens of all k + 1 states, and a random subsample of those tokens."""
    total = torch.zeros(data.hidden_size, dtype=torch.float64)
    squares = torch.zeros(data.hidden_size, dtype=torch.float64)
    count = 0
    for batch in data.batches(config.eval_batch_samples):
        for state in batch.states:
            total += state.double().sum(0)
            squares += state.double().pow(2).sum(0)
            count += state.shape[0]
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp_min(0).sqrt()
    generator = torch.Generator().manual_seed(config.seed)
    picked = data.subset(torch.randperm(data.num_samples, generator=generator)[:64])
    pool = torch.cat([s for batch in picked.batches(64) for s in batch.states])
    sample = pool[torch.randperm(len(pool), generator=generator)[:4096]]
    return mean.float(), std.float(), sample


# ------------------------------------------------------------------------------------------------ least squares


class LeastSquares:
    """Streaming least squares Y ~= X W^T (+ c) from accumulated moments, solved in float64.

    ``ridge`` is relative: the penalty added to the (centred, when fitting a bias) Gram matrix is ``ridge`` times
    its mean eigenvalue, so it means the same at every feature scale. ``batch_dtype`` is the precision of each added
    batch's products (summed in float64): float64 for raw residual streams, whose massive activations (~2e4) square
    past float32's precision; the kernel features are bounded by 1/sqrt(m), so float32 halves the cost there.
    """

    def __init__(self, fit_bias: bool = False, batch_dtype: torch.dtype = torch.float64):
        self.fit_bias = fit_bias
        self.batch_dtype = batch_dtype
        self.count = 0
        self._xtx = self._ytx = self._xsum = self._ysum = None

    def add(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        x, y = inputs.to(self.batch_dtype), targets.to(self.batch_dtype)
        if self._xtx is None:
            self._xtx = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
            self._ytx = torch.zeros(y.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
            self._xsum = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            self._ysum = torch.zeros(y.shape[1], dtype=torch.float64, device=x.device)
        self._xtx += (x.T @ x).double()
        self._ytx += (y.T @ x).double()
        self._xsum += x.double().sum(0)
        self._ysum += y.double().sum(0)
        self.count += x.shape[0]

    def solve(self, ridge: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W, c), c None without a bias; W has shape (targets, inputs), float64."""
        if self._xtx is None:
            raise UserError("least squares: no tokens were added; the block data has no real tokens")
        gram, cross = self._xtx, self._ytx
        if self.fit_bias:
            x_mean, y_mean = self._xsum / self.count, self._ysum / self.count
            gram = gram - self.count * torch.outer(x_mean, x_mean)
            cross = cross - self.count * torch.outer(y_mean, x_mean)
        penalty = ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
        weight = torch.linalg.solve(gram + penalty, cross.T).T
        bias = y_mean - weight @ x_mean if self.fit_bias else None
        return weight, bias


def ols_operator(inputs: torch.Tensor, targets: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """A minimising sum_t ||A x_t - y_t||^2 (+ relative ridge) for rows x_t of ``inputs``, y_t of ``targets``."""
    solver = LeastSquares()
    solver.add(inputs, targets)
    return solver.solve(ridge)[0]


# --------------------------------------------------------------------------------------------- step 1: operators


class StepOperators(nn.Module):
    """A_i = I + gamma_i B_i for the k steps of a block (Section 3.1)."""

    def __init__(self, num_steps: int, feature_dim: int, gamma_init: float = 1.0):
        super().__init__()
        self.gamma_init = gamma_init
        self.gamma = nn.Parameter(torch.full((num_steps,), float(gamma_init)))
        self.update = nn.Parameter(torch.zeros(num_steps, feature_dim, feature_dim))

    @property
    def num_steps(self) -> int:
        return self.gamma.shape[0]

    def matrix(self, step: int) -> torch.Tensor:
        """A_{step + 1} (0-based step)."""
        identity = torch.eye(self.update.shape[1], dtype=self.update.dtype, device=self.update.device)
        return identity + self.gamma[step] * self.update[step]

    def product(self) -> torch.Tensor:
        """A_k ... A_1: the map from phi(h_l) to the prediction of phi(h_{l+k})."""
        result = self.matrix(0)
        for step in range(1, self.num_steps):
            result = self.matrix(step) @ result
        return result

    def set_matrix(self, step: int, matrix: torch.Tensor) -> None:
        """Make A_{step + 1} equal ``matrix`` with gamma back at its initial value (B = (matrix - I) / gamma_init)."""
        with torch.no_grad():
            self.gamma[step] = self.gamma_init
            identity = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
            self.update[step] = ((matrix - identity) / self.gamma_init).to(self.update.dtype)


def position_weights(seq_len: int, max_exponent: float) -> torch.Tensor:
    """2^(e_t), e_t spread evenly from 0 (first position) to ``max_exponent`` (last), normalised to mean 1."""
    exponents = torch.linspace(0.0, float(max_exponent), seq_len) if seq_len > 1 else torch.zeros(1)
    weights = torch.pow(2.0, exponents)
    return weights / weights.mean()


def step_weights(num_steps: int) -> torch.Tensor:
    """2^(i - 1) for steps i = 1..k, normalised to mean 1."""
    weights = torch.pow(2.0, torch.arange(num_steps, dtype=torch.float32))
    return weights / weights.mean()


class _CosineWeights:
    def __init__(self, data: BlockData, config: KDPConfig, device: torch.device | str):
        max_exponent = config.cos_weight_max_exponent
        if max_exponent is None:
            max_exponent = data.num_steps - 1
        self.mode = config.cos_weighting
        self.positions = position_weights(data.seq_len, max_exponent).to(device)
        self.steps = step_weights(data.num_steps).to(device)

    def __call__(self, step: int, positions: torch.Tensor) -> torch.Tensor:
        if self.mode == "positions":
            return self.positions[positions]
        return self.steps[step].expand(positions.shape)


def _linearization_loss(
    kernel: LearnableRFF, operators: StepOperators, batch: TokenBatch, weights: _CosineWeights
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 5 on one batch: (total, squared-error part, cosine part), each a mean over tokens summed over steps."""
    return _linearization_loss_of([kernel(state) for state in batch.states], operators, batch.positions, weights)


def _linearization_loss_of(
    features: list[torch.Tensor], operators: StepOperators, positions: torch.Tensor, weights: _CosineWeights
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    squared = features[0].new_zeros(())
    cosine = features[0].new_zeros(())
    for step in range(operators.num_steps):
        predicted = features[step] @ operators.matrix(step).T
        target = features[step + 1]
        squared = squared + (predicted - target).pow(2).sum(-1).mean()
        similarity = F.cosine_similarity(predicted, target, dim=-1)
        cosine = cosine + (weights(step, positions) * (1 - similarity)).mean()
    return squared + cosine, squared, cosine


def _solve_operators(kernel: LearnableRFF, operators: StepOperators, batches, config: KDPConfig) -> None:
    """Set every A_i to its ridge-stabilised least-squares estimate in the current kernel space over ``batches``."""
    solvers = [LeastSquares(batch_dtype=config.torch_dtype) for _ in range(operators.num_steps)]
    with torch.no_grad():
        for batch in batches:
            features = [kernel(state) for state in batch.states]
            for step, solver in enumerate(solvers):
                solver.add(features[step], features[step + 1])
    for step, solver in enumerate(solvers):
        operators.set_matrix(step, solver.solve(config.kernel_ols_ridge)[0])


def _reinitialize_operators(kernel: LearnableRFF, operators: StepOperators, data: BlockData, config: KDPConfig) -> None:
    _solve_operators(kernel, operators, _batches(data, config.eval_batch_samples, config), config)


def spectral_norm(matrix: torch.Tensor) -> float:
    """||matrix||_2 as the square root of the largest eigenvalue of M^T M: exact like an SVD, several times faster
    for the (2m x 2m) operators on a CPU."""
    gram = matrix.T @ matrix
    return torch.linalg.eigvalsh(gram.double())[-1].clamp_min(0).sqrt().item()


@torch.no_grad()
def _evaluate_linearization(
    kernel: LearnableRFF, operators: StepOperators, data: BlockData, config: KDPConfig, weights: _CosineWeights
) -> dict:
    """Held-out loss and the quantities of Fig. 3 (k-step cosine) and Fig. 5 (||A_i||_op, R_phi)."""
    product = operators.product()
    batches, means, count = [], None, 0
    for batch in _batches(data, config.eval_batch_samples, config):
        features = [kernel(state) for state in batch.states]
        sums = [f.double().sum(0) for f in features]
        means = sums if means is None else [m + s for m, s in zip(means, sums)]
        count += batch.positions.shape[0]
        batches.append((batch, features))
    means = [(m / max(count, 1)).to(config.torch_dtype) for m in means]
    totals = dict.fromkeys(
        ("loss", "squared", "cosine_term", "kstep_cos", "kstep_centered_cos", "residual", "spread", "norm",
         "centered_norm"),
        0.0,
    )
    norm_max = centered_norm_max = 0.0
    feature_count = 0
    for batch, features in batches:
        n = batch.positions.shape[0]
        loss, squared, cosine = _linearization_loss_of(features, operators, batch.positions, weights)
        start, end = features[0], features[-1]
        predicted = start @ product.T
        totals["loss"] += loss.item() * n
        totals["squared"] += squared.item() * n
        totals["cosine_term"] += cosine.item() * n
        totals["kstep_cos"] += F.cosine_similarity(predicted, end, dim=-1).sum().item()
        totals["kstep_centered_cos"] += F.cosine_similarity(predicted - means[-1], end - means[-1], dim=-1).sum().item()
        totals["residual"] += (predicted - end).pow(2).sum().item()
        totals["spread"] += (end - means[-1]).pow(2).sum().item()
        for state_features, mean in zip(features, means):
            norms, centered = state_features.norm(dim=-1), (state_features - mean).norm(dim=-1)
            totals["norm"] += norms.sum().item()
            totals["centered_norm"] += centered.sum().item()
            norm_max = max(norm_max, norms.max().item())
            centered_norm_max = max(centered_norm_max, centered.max().item())
            feature_count += n
    return {
        "loss": totals["loss"] / count,
        "squared_error": totals["squared"] / count,
        "cosine_term": totals["cosine_term"] / count,
        "kstep_cosine": totals["kstep_cos"] / count,
        "kstep_centered_cosine": totals["kstep_centered_cos"] / count,
        "kstep_explained_variance": 1.0 - totals["residual"] / max(totals["spread"], 1e-30),
        "operator_norms": [spectral_norm(operators.matrix(i)) for i in range(operators.num_steps)],
        "product_norm": spectral_norm(product),
        "phi_norm_mean": totals["norm"] / feature_count,
        "phi_norm_max": norm_max,
        "phi_centered_norm_mean": totals["centered_norm"] / feature_count,
        "phi_centered_norm_max": centered_norm_max,
        "gamma": operators.gamma.tolist(),
        "log_diagonal_mean": kernel.log_diagonal.mean().item(),
        "low_rank_norm": kernel.low_rank.norm().item(),
    }


class ConvergenceStop:
    """The explicit "until convergence" rule of step 1 (see the module docstring): an epoch improves when its
    held-out loss beats the best so far, the OLS start included, by a relative ``kernel_stop_tol``."""

    def __init__(self, config: KDPConfig, start_loss: float):
        self.tol, self.patience, self.min_lr = config.kernel_stop_tol, config.kernel_stop_patience, config.kernel_min_lr
        self.max_epochs = config.kernel_max_epochs
        self.reference = start_loss
        self.stale = 0

    def reason(self, epoch: int, held_out_loss: float, lr: float) -> str | None:
        if held_out_loss < self.reference * (1 - self.tol):
            self.reference, self.stale = held_out_loss, 0
        else:
            self.stale += 1
        if epoch + 1 >= self.max_epochs:
            return "max_epochs"
        if self.stale >= self.patience:
            return "no_improvement"
        if lr < self.min_lr:
            return "min_lr"
        return None


def _new_kernel(data: BlockData, config: KDPConfig) -> LearnableRFF:
    kernel = LearnableRFF(data.hidden_size, config.rff_dim, config.rank, seed=config.seed, sigma=config.sigma)
    mean, std, sample = _token_statistics(data, config)
    kernel.set_input_normalization(*normalization_from_tokens(sample, mean, std, config.input_normalization))
    return kernel.to(device=config.device, dtype=config.torch_dtype)


def fit_kernel_linearization(data: BlockData, config: KDPConfig) -> tuple[LearnableRFF, StepOperators, dict]:
    """Step 1: jointly fit the kernel spectrum and the step operators on Eq. 5; returns the best held-out state
    (the OLS start, epoch 0, when no epoch beats it)."""
    began = time.perf_counter()
    train, held_out = data.split(config.held_out_fraction, config.seed)
    evaluation = held_out if held_out.num_samples else train
    torch.manual_seed(config.seed)
    kernel = _new_kernel(train, config)
    operators = StepOperators(data.num_steps, config.rff_dim, config.gamma_init).to(config.device, config.torch_dtype)
    weights = _CosineWeights(data, config, config.device)
    per_batch = config.ols_reinit == "batch"
    # Re-solved before every step, the operators would lose any gradient step taken on them: only the spectrum
    # is optimised then, against operators that are always least squares in the current kernel space.
    trained = [*kernel.parameters()] + ([] if per_batch else [*operators.parameters()])
    operators.requires_grad_(not per_batch)
    optimizer = torch.optim.Adam(trained, lr=config.kernel_lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=config.plateau_factor, patience=config.plateau_patience
    )
    if config.ols_reinit != "never":
        _reinitialize_operators(kernel, operators, train, config)
    epochs = [{"epoch": 0, **_evaluate_linearization(kernel, operators, evaluation, config, weights)}]
    best = (epochs[0]["loss"], 0, copy.deepcopy(kernel.state_dict()), copy.deepcopy(operators.state_dict()))
    stop = ConvergenceStop(config, epochs[0]["loss"])
    stopped = "max_epochs"
    steps = 0
    for epoch in tqdm(range(config.kernel_max_epochs), desc="KDP kernel linearization", unit="epoch"):
        epoch_began = time.perf_counter()
        if config.ols_reinit == "epoch" and epoch > 0:
            _reinitialize_operators(kernel, operators, train, config)
            for parameter in operators.parameters():
                optimizer.state.pop(parameter, None)
        train_loss, train_tokens = 0.0, 0
        for batch in _batches(train, config.kernel_batch_samples, config, shuffle_seed=config.seed + epoch):
            if per_batch:
                _solve_operators(kernel, operators, [batch], config)
            loss = _linearization_loss(kernel, operators, batch, weights)[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            train_loss += loss.item() * batch.positions.shape[0]
            train_tokens += batch.positions.shape[0]
        if per_batch:  # what is evaluated and kept: the operators of the whole training set in the learned space
            _reinitialize_operators(kernel, operators, train, config)
        held = _evaluate_linearization(kernel, operators, evaluation, config, weights)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step(held["loss"])
        epochs.append(
            {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": train_loss / max(train_tokens, 1),
                **held,
                "wall_s": time.perf_counter() - epoch_began,
            }
        )
        if held["loss"] < best[0]:
            best = (held["loss"], epoch + 1, copy.deepcopy(kernel.state_dict()), copy.deepcopy(operators.state_dict()))
        reason = stop.reason(epoch, held["loss"], optimizer.param_groups[0]["lr"])
        if reason:
            stopped = reason
            break
    kernel.load_state_dict(best[2])
    operators.load_state_dict(best[3])
    record = {
        "epochs": epochs,
        "best_epoch": best[1],
        "start": "identity" if config.ols_reinit == "never" else "ols",
        "start_loss": epochs[0]["loss"],
        "best_loss": best[0],
        "gain_over_start": 1.0 - best[0] / epochs[0]["loss"],
        "stopped": stopped,
        "optimizer_steps": steps,
        "train_samples": train.num_samples,
        "held_out_samples": held_out.num_samples,
        "train_tokens": train.num_tokens(),
        "wall_s": time.perf_counter() - began,
    }
    return kernel, operators, record


# ------------------------------------------------------------------------------------------ step 2: inverse map


class _InverseTraining:
    """The inverse network while it trains: it reads standardised inputs and predicts h in the loss space.

    Both are fixed affine maps, so `fold_into_network` can merge them into the first and last linear layers
    afterwards and the result is exactly the paper's alpha * MLP(x), with the same parameter count. Standardising
    the input matters: P phi(h) varies by a small fraction around a large constant part (cos b, sin b), which
    left Adam's steps on the first layer badly scaled (SmolLM2-135M, recovering h_12 from phi(h_12) with 2m = 1024:
    held-out cosine 0.48 without, 0.72 with, same budget). The loss space is ``inverse_loss_space``:
    "kernel" (default) = the normalised coordinates phi reads (per-dimension standardised), where the MSE is not
    dominated by the few massive-activation dimensions and tokens; "raw" = residual-stream units, Eq. 6 literally.
    """

    def __init__(self, inverse: InverseNetwork, input_mean, input_std, output_shift, output_scale):
        self.inverse = inverse
        self.input_mean, self.input_std = input_mean, input_std
        self.output_shift, self.output_scale = output_shift, output_scale

    def to_loss_space(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden - self.output_shift) / self.output_scale

    def forward_loss_space(self, features: torch.Tensor) -> torch.Tensor:
        return self.inverse((features - self.input_mean) / self.input_std)

    def from_loss_space(self, values: torch.Tensor) -> torch.Tensor:
        return values * self.output_scale + self.output_shift

    @torch.no_grad()
    def fold_into_network(self) -> InverseNetwork:
        """Merge the two affine maps into the linear layers: afterwards ``inverse(features)`` equals
        ``from_loss_space(forward_loss_space(features))``."""
        first, last, alpha = self.inverse.mlp[0], self.inverse.mlp[2], self.inverse.scale
        first.bias -= first.weight @ (self.input_mean / self.input_std)
        first.weight /= self.input_std
        last.weight *= self.output_scale[:, None]
        last.bias.copy_(last.bias * self.output_scale + self.output_shift / alpha)
        return self.inverse


def _feature_moments(kernel, transition, data: BlockData, config: KDPConfig) -> tuple[torch.Tensor, torch.Tensor]:
    total = torch.zeros(kernel.feature_dim, dtype=torch.float64, device=config.device)
    squares = torch.zeros_like(total)
    count = 0
    with torch.no_grad():
        for batch in _batches(data, config.eval_batch_samples, config):
            features = (kernel(batch.states[0]) @ transition.T).double()
            total += features.sum(0)
            squares += features.pow(2).sum(0)
            count += features.shape[0]
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp_min(0).sqrt()
    std = std.clamp_min(max(1e-6 * std.max().item(), torch.finfo(torch.float32).tiny))
    return mean.to(config.torch_dtype), std.to(config.torch_dtype)


def _inverse_losses(predicted: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSE, L_norm), both per element of the space they are given in."""
    mse = (predicted - target).pow(2).mean()
    norm_gap = (predicted.norm(dim=-1) - target.norm(dim=-1)).pow(2).mean() / target.shape[-1]
    return mse, norm_gap


def _initialize_inverse(training: _InverseTraining, features: torch.Tensor, target: torch.Tensor) -> None:
    """alpha from the ratio of spreads of target and untrained output; last bias so that the means already agree."""
    inverse = training.inverse
    with torch.no_grad():
        inverse.scale.fill_(1.0)
        output = training.forward_loss_space(features)
        ratio = (target - target.mean(0)).pow(2).mean().sqrt() / (output - output.mean(0)).pow(2).mean().sqrt()
        inverse.scale.fill_(ratio.clamp_min(1e-6).item())
        inverse.mlp[2].bias += target.mean(0) / inverse.scale - output.mean(0)


@torch.no_grad()
def reconstruction_metrics(
    predict, data: BlockData, batch_samples: int = 256, device: str | torch.device = "cpu"
) -> dict:
    """How well ``predict(h_l)`` matches h_{l+k} over ``data``'s tokens, next to plain removal (h_l itself):
    mean squared error per element and mean per-token cosine."""
    totals = dict.fromkeys(("mse", "cosine", "identity_mse", "identity_cosine"), 0.0)
    count = 0
    for batch in data.batches(batch_samples, device=device):
        start, target = batch.states[0], batch.states[-1]
        predicted = predict(start).to(target.dtype)
        n = target.shape[0]
        totals["mse"] += (predicted - target).pow(2).mean(-1).sum().item()
        totals["cosine"] += F.cosine_similarity(predicted, target, dim=-1).sum().item()
        totals["identity_mse"] += (start - target).pow(2).mean(-1).sum().item()
        totals["identity_cosine"] += F.cosine_similarity(start, target, dim=-1).sum().item()
        count += n
    return {key: value / max(count, 1) for key, value in totals.items()}


class _FrozenKernelTokens:
    """Step 2's inputs P phi(h_l) and targets h_{l+k} (in the loss space) for every token of ``data``, computed
    once: the kernel and the operators are frozen in Step 2, so recomputing them every epoch (and re-reading the
    hidden-state cache) would only repeat work. Batches are the ones `BlockData.batches` would serve, in its order.
    Holds tokens x (2m + d) numbers in the fit's dtype (SmolLM2, 512 samples: ~0.4 GB in float32)."""

    def __init__(self, data: BlockData, features_of, targets_of, config: KDPConfig):
        self.data, self.config = data, config
        inputs, targets, samples = [], [], []
        for batch in _batches(data, config.eval_batch_samples, config):
            inputs.append(features_of(batch.states[0]))
            targets.append(targets_of(batch.states[-1]))
            samples.append(batch.samples)
        self.inputs, self.targets = torch.cat(inputs), torch.cat(targets)
        sample_of_token = torch.cat(samples)
        counts = torch.bincount(sample_of_token, minlength=int(data.mask.shape[0]))
        self.starts = torch.cumsum(counts, 0) - counts  # tokens are stored in sample order
        self.counts = counts

    def batches(self, batch_samples: int, shuffle_seed: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        groups = self.data.sample_groups(batch_samples, shuffle=shuffle_seed is not None, seed=shuffle_seed or 0)
        for rows in groups:
            index = torch.cat([torch.arange(self.starts[r], self.starts[r] + self.counts[r]) for r in rows.tolist()])
            index = index.to(self.inputs.device)
            yield self.inputs[index], self.targets[index]


def fit_inverse_network(
    kernel: LearnableRFF, operators: StepOperators, data: BlockData, config: KDPConfig
) -> tuple[InverseNetwork, dict]:
    """Step 2: I(x) = alpha MLP(x) from (A_k ... A_1) phi(h_l) to h_{l+k}, loss MSE + w L_norm, kernel frozen.

    Trains for exactly ``inverse_epochs`` epochs (1 or 5 give the barely-trained rows of Table 9) and returns the
    network of the epoch with the lowest held-out loss (the initialised network, epoch 0, included).
    """
    began = time.perf_counter()
    train, held_out = data.split(config.held_out_fraction, config.seed)
    evaluation = held_out if held_out.num_samples else train
    torch.manual_seed(config.seed)
    with torch.no_grad():
        transition = operators.product().detach()
    hidden = config.inverse_hidden or max(1, data.hidden_size // 2)
    inverse = InverseNetwork(kernel.feature_dim, hidden, data.hidden_size, config.inverse_activation)
    inverse = inverse.to(config.device, config.torch_dtype)
    if config.inverse_loss_space == "kernel":
        shift, scale = kernel.input_shift.detach(), kernel.input_scale.detach()
    else:
        shift = torch.zeros(data.hidden_size, device=config.device, dtype=config.torch_dtype)
        scale = torch.ones_like(shift)
    training = _InverseTraining(inverse, *_feature_moments(kernel, transition, train, config), shift, scale)

    def features_of(start: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return kernel(start) @ transition.T

    tokens = {name: _FrozenKernelTokens(part, features_of, training.to_loss_space, config)
              for name, part in (("train", train), ("evaluation", evaluation))}

    def loss_of(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mse, norm_gap = _inverse_losses(training.forward_loss_space(features), target)
        return mse + config.norm_loss_weight * norm_gap

    identity = reconstruction_metrics(lambda start: start, evaluation, config.eval_batch_samples, config.device)

    @torch.no_grad()
    def evaluate() -> dict:
        """Held-out loss, and the raw-space MSE and cosine of `reconstruction_metrics`, from the cached tokens."""
        held = tokens["evaluation"]
        predicted = training.forward_loss_space(held.inputs)
        mse, norm_gap = _inverse_losses(predicted, held.targets)
        raw_predicted, raw_target = training.from_loss_space(predicted), training.from_loss_space(held.targets)
        return {"loss": (mse + config.norm_loss_weight * norm_gap).item(),
                "mse": (raw_predicted - raw_target).pow(2).mean().item(),
                "cosine": F.cosine_similarity(raw_predicted, raw_target, dim=-1).mean().item(),
                "identity_mse": identity["identity_mse"], "identity_cosine": identity["identity_cosine"]}

    first_features, first_targets = next(tokens["train"].batches(config.inverse_batch_samples, config.seed))
    _initialize_inverse(training, first_features, first_targets)
    optimizer = torch.optim.Adam(inverse.parameters(), lr=config.inverse_lr)
    epochs = [{"epoch": 0, **evaluate()}]
    best = (epochs[0]["loss"], 0, copy.deepcopy(inverse.state_dict()))
    steps = 0
    for epoch in tqdm(range(config.inverse_epochs), desc="KDP inverse network", unit="epoch"):
        epoch_began = time.perf_counter()
        train_loss, train_tokens = 0.0, 0
        for features, target in tokens["train"].batches(config.inverse_batch_samples, config.seed + epoch):
            loss = loss_of(features, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            train_loss += loss.item() * features.shape[0]
            train_tokens += features.shape[0]
        epochs.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss / max(train_tokens, 1),
                **evaluate(),
                "wall_s": time.perf_counter() - epoch_began,
            }
        )
        if epochs[-1]["loss"] < best[0]:
            best = (epochs[-1]["loss"], epoch + 1, copy.deepcopy(inverse.state_dict()))
    inverse.load_state_dict(best[2])
    record = {"epochs": epochs, "best_epoch": best[1], "optimizer_steps": steps, "hidden": hidden,
              "wall_s": time.perf_counter() - began}
    return training.fold_into_network(), record


def gate_outliers(data: BlockData, config: KDPConfig) -> tuple[BlockData, dict]:
    """``data`` serving only the tokens a fit may see (kdp/outliers.py), and a record of what the gate left out."""
    norms = data.input_norms(config.eval_batch_samples)
    threshold = norm_threshold(norms, config.outlier_tokens, config.outlier_norm_ratio)
    record = {"mode": config.outlier_tokens, "norm_ratio": config.outlier_norm_ratio,
              "threshold": threshold if math.isfinite(threshold) else None,
              "median_norm": norms.median().item(), "tokens": norms.numel(),
              "tokens_left_out": int((norms > threshold).sum())}
    return data.gated(threshold), record


def fit_kdp(data: BlockData, config: KDPConfig) -> tuple[FoldedBlock, dict]:
    """Steps 1 and 2 for one block on the tokens the gate admits; the fold keeps only the product of the operators
    and hands the other tokens on unchanged."""
    gated, outliers = gate_outliers(data, config)
    kernel, operators, step1 = fit_kernel_linearization(gated, config)
    for parameter in kernel.parameters():
        parameter.requires_grad_(False)
    inverse, step2 = fit_inverse_network(kernel, operators, gated, config)
    with torch.no_grad():
        fold = FoldedBlock(kernel, operators.product(), inverse, gated.max_input_norm)
    fold.requires_grad_(False)
    return fold, {"config": config.to_dict(), "outliers": outliers, "step1": step1, "step2": step2}


# ------------------------------------------------------------------------------ Table 3: original-space ablations


def fit_direct_ols(data: BlockData, config: KDPConfig | None = None) -> tuple[LinearFold, dict]:
    """One affine map h_l -> h_{l+k} by least squares over the tokens the gate admits."""
    config = config or KDPConfig()
    gated, outliers = gate_outliers(data, config)
    solver = LeastSquares(fit_bias=True)
    for batch in gated.batches(config.eval_batch_samples):
        solver.add(batch.states[0], batch.states[-1])
    weight, bias = solver.solve(config.linear_ols_ridge)
    return LinearFold(weight.float(), bias.float(), gated.max_input_norm), {"outliers": outliers}


def fit_sequential_ols(data: BlockData, config: KDPConfig | None = None) -> tuple[LinearFold, dict]:
    """Affine maps h_{l+i-1} -> h_{l+i} fitted step by step on the true states (of the tokens the gate admits),
    composed into one."""
    config = config or KDPConfig()
    gated, outliers = gate_outliers(data, config)
    solvers = [LeastSquares(fit_bias=True) for _ in range(data.num_steps)]
    for batch in gated.batches(config.eval_batch_samples):
        for step, solver in enumerate(solvers):
            solver.add(batch.states[step], batch.states[step + 1])
    weight = torch.eye(data.hidden_size, dtype=torch.float64)
    bias = torch.zeros(data.hidden_size, dtype=torch.float64)
    for solver in solvers:
        step_weight, step_bias = solver.solve(config.linear_ols_ridge)
        weight, bias = step_weight @ weight, step_weight @ bias + step_bias
    return LinearFold(weight.float(), bias.float(), gated.max_input_norm), {"outliers": outliers}
