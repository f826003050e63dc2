"""Modules that stand in for a span of decoder layers: the KDP fold S(h) = I((A_k ... A_1) phi(h)) and the affine
folds of the Table 3 ablations (least squares in the original space).

Each is called like a decoder layer, ``module(hidden_states, *args, **kwargs)``, acts on every token on its own
(no attention, so masks, position embeddings and the KV cache are ignored) and returns a tensor of the input's
shape, dtype and device. A token whose norm exceeds the fold's ``pass_through_norm`` (a massive-activation token,
see kdp/outliers.py; inf when the gate is off) is handed on unchanged: the fit never saw such tokens, and the
dense block barely changes them. Each can be rebuilt empty from ``fold_config()`` (JSON-able) and then filled by
``load_state_dict``, so a saved model directory holds everything needed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kdp.errors import bad_value
from kdp.kernel import LearnableRFF
from kdp.outliers import ordinary

ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}


class InverseNetwork(nn.Module):
    """I(x) = alpha * MLP(x): maps a kernel-space prediction (2m) back to the residual stream (d) (paper Eq. 6).

    The MLP is Linear(2m, hidden) -> activation -> Linear(hidden, d). GELU is the default activation: smooth, no
    dead units, and the one the paper's models use; the choice is not stated in the paper.
    """

    def __init__(self, feature_dim: int, hidden_dim: int, output_dim: int, activation: str = "gelu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise bad_value("inverse_activation", activation, sorted(ACTIVATIONS))
        self.activation_name = activation
        self.scale = nn.Parameter(torch.ones(()))
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim), ACTIVATIONS[activation](), nn.Linear(hidden_dim, output_dim)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * self.mlp(features)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


class _OutlierPassThrough(nn.Module):
    """Keeps ``pass_through_norm`` as a buffer (saved with the fold) and hands outlier tokens on unchanged."""

    def __init__(self, pass_through_norm: float):
        super().__init__()
        self.register_buffer("pass_through_norm", torch.tensor(float(pass_through_norm)))

    def gated(self, hidden_states: torch.Tensor, replaced: torch.Tensor) -> torch.Tensor:
        keep = ordinary(hidden_states, self.pass_through_norm.item())
        return torch.where(keep[..., None], replaced, hidden_states)


class FoldedBlock(_OutlierPassThrough):
    """S(h) = I(P phi(h)) with P = A_k ... A_1 stored as one (2m x 2m) buffer (Appendix I: only the product is kept)."""

    def __init__(self, kernel: LearnableRFF, transition: torch.Tensor, inverse: InverseNetwork,
                 pass_through_norm: float = math.inf):
        super().__init__(pass_through_norm)
        if transition.shape != (kernel.feature_dim, kernel.feature_dim):
            raise bad_value(
                "fold transition shape", tuple(transition.shape), f"({kernel.feature_dim}, {kernel.feature_dim})"
            )
        self.kernel = kernel
        # A frozen parameter rather than a buffer: it is part of the model's size (Appendix I counts (2m)^2), so
        # every parameter count, and with it the reported pruning ratio, has to see it.
        self.transition = nn.Parameter(transition.detach().clone(), requires_grad=False)
        self.inverse = inverse

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        compute_dtype = self.transition.dtype
        features = self.kernel(hidden_states.to(compute_dtype))
        return self.gated(hidden_states, self.inverse(features @ self.transition.T).to(hidden_states.dtype))

    def fold_config(self) -> dict:
        mlp_in, mlp_out = self.inverse.mlp[0], self.inverse.mlp[2]
        return {
            "kind": "kdp",
            **self.kernel.config(),
            "inverse_hidden": mlp_in.out_features,
            "inverse_activation": self.inverse.activation_name,
            "output_size": mlp_out.out_features,
        }

    @classmethod
    def from_config(cls, config: dict) -> "FoldedBlock":
        """An untrained fold of the right shapes, to be filled by ``load_state_dict``."""
        kernel = LearnableRFF(config["hidden_size"], config["rff_dim"], config["rank"], sigma=config["sigma"])
        inverse = InverseNetwork(
            config["rff_dim"], config["inverse_hidden"], config["output_size"], config["inverse_activation"]
        )
        return cls(kernel, torch.eye(config["rff_dim"]), inverse)

    def parameter_count(self) -> dict[str, int]:
        """Counts per component. ``appendix_i`` is what the paper's Appendix I formula counts at inference:
        lambda and L (d(1 + r)), the product matrix ((2m)^2) and the inverse network; ``fixed_random`` are the
        Z, V, b buffers, which the formula leaves out but the fold needs (they can be regenerated from the seed);
        ``normalization`` is the input shift and scale and the outlier gate's norm threshold."""
        kernel_params = sum(p.numel() for p in self.kernel.parameters())
        counts = {
            "kernel": kernel_params,
            "transition": self.transition.numel(),
            "inverse": self.inverse.parameter_count(),
            "fixed_random": sum(
                b.numel() for b in (self.kernel.base_frequencies, self.kernel.low_rank_base, self.kernel.phase)
            ),
            "normalization": self.kernel.input_shift.numel() + self.kernel.input_scale.numel() + 1,
        }
        counts["appendix_i"] = counts["kernel"] + counts["transition"] + counts["inverse"]
        counts["stored"] = counts["appendix_i"] + counts["fixed_random"] + counts["normalization"]
        return counts


class LinearFold(_OutlierPassThrough):
    """h -> W h + c: the original-space replacement of the Direct / Sequential OLS ablations (Table 3)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, pass_through_norm: float = math.inf):
        super().__init__(pass_through_norm)
        # Frozen parameters, not buffers, so that model parameter counts (the pruning ratio) include the fold.
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        x = hidden_states.to(self.weight.dtype)
        return self.gated(hidden_states, (x @ self.weight.T + self.bias).to(hidden_states.dtype))

    def fold_config(self) -> dict:
        return {"kind": "linear", "hidden_size": self.weight.shape[1], "output_size": self.weight.shape[0]}

    @classmethod
    def from_config(cls, config: dict) -> "LinearFold":
        return cls(torch.zeros(config["output_size"], config["hidden_size"]), torch.zeros(config["output_size"]))

    def parameter_count(self) -> dict[str, int]:
        return {"stored": self.weight.numel() + self.bias.numel() + 1}  # + the gate's norm threshold


def fold_from_config(config: dict) -> FoldedBlock | LinearFold:
    """Rebuild an empty fold of either kind from its ``fold_config()``."""
    kinds = {"kdp": FoldedBlock, "linear": LinearFold}
    if config.get("kind") not in kinds:
        raise bad_value("fold_config kind", config.get("kind"), sorted(kinds))
    return kinds[config["kind"]].from_config(config)


def identity_fold(kernel: LearnableRFF, activation: str = "gelu") -> FoldedBlock:
    """A fold with P = I whose inverse network undoes phi, so S(h) ~= h: for wiring tests (a model with it must
    behave like the model with the span simply removed).

    For every frequency j, sin(theta_j - b_j) = cos(b_j) s_j - sin(b_j) c_j (c, s: the unscaled cos/sin halves),
    which is omega_j^T u when the phases are small; u is then pinv(Omega^T) of that, and h = shift + scale * u. The
    MLP carries this linear map exactly: hidden = [z, -z] and output z = act(z) - act(-z), true for GELU and SiLU
    (x * g(x) with g(x) + g(-x) = 1) and ReLU. Accuracy needs m >= d (Omega^T has full column rank) and phases well
    below 1 radian on the data, i.e. a small ``log_diagonal`` relative to the normalised inputs.
    """
    d, two_m = kernel.hidden_size, kernel.feature_dim
    m = two_m // 2
    if m < d:
        raise bad_value("identity_fold rff_dim", two_m, f"at least 2 * hidden_size = {2 * d}")
    with torch.no_grad():
        omega = kernel.frequencies()
        phase_readout = math.sqrt(m) * torch.cat(
            [-torch.diag(torch.sin(kernel.phase)), torch.diag(torch.cos(kernel.phase))], 1
        )
        to_u = torch.linalg.pinv(omega.T) @ phase_readout  # (d, 2m)
        inverse = InverseNetwork(two_m, 2 * d, d, activation)
        inverse.mlp[0].weight.copy_(torch.cat([to_u, -to_u]))
        inverse.mlp[0].bias.zero_()
        out = torch.diag(kernel.input_scale)
        inverse.mlp[2].weight.copy_(torch.cat([out, -out], 1))
        inverse.mlp[2].bias.copy_(kernel.input_shift)
    return FoldedBlock(kernel, torch.eye(two_m), inverse)
