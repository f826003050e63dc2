"""What the paper's own methods declare to the workflow: the inputs each consumes and its hyperparameters, typed,
with their defaults (`kdp.params`). Read when the workflow loads, so nothing here imports torch; each class
(``kdp.methods.<module>``) is imported only by the jobs that run it, and takes these declarations through
``@register_method``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from kdp.params import Keys
from kdp.registry import MethodSpec

#: The config's ``selection:`` keys, which a variant's ``selection:`` may override, with their types (the config
#: schema's ``selection`` holds the same keys; tests/test_registry.py keeps them equal).
SELECTION_TYPES = {"k_max": int, "edge_fraction": float, "max_blocks": int | None, "blocks": dict[str, Any]}
Selection = Annotated[dict, Keys(SELECTION_TYPES)]

#: The fields of kdp.linearize.KDPConfig with their types, which a ``fit:`` block may set (kept here, light, for
#: the config check; tests/test_registry.py holds the two equal).
KDP_FIT_TYPES = {
    "rff_dim": int, "rank": int, "sigma": str, "input_normalization": str, "outlier_tokens": str,
    "outlier_norm_ratio": float, "cos_weighting": str, "cos_weight_max_exponent": int | None, "gamma_init": float,
    "ols_reinit": str, "kernel_ols_ridge": float, "kernel_lr": float, "kernel_batch_samples": int,
    "kernel_max_epochs": int, "kernel_stop_tol": float, "kernel_stop_patience": int, "kernel_min_lr": float,
    "plateau_factor": float, "plateau_patience": int, "inverse_hidden": int | None, "inverse_activation": str,
    "inverse_loss_space": str, "inverse_lr": float, "inverse_batch_samples": int, "inverse_epochs": int,
    "norm_loss_weight": float, "linear_ols_ridge": float, "held_out_fraction": float, "eval_batch_samples": int,
    "seed": int, "device": str, "dtype": str,
}

#: What a KDP variant folds each selected block with: the kernel fold (the paper), or the OLS fits of Table 3.
FOLDS = ("kernel", "direct_ols", "sequential_ols")


@dataclass(frozen=True)
class PEFTRecipe:
    """Appendix B, "Post training": LoRA with distillation from the dense model."""

    rank: int = 8
    alpha: float = 32.0
    dropout: float = 0.05
    kd_weight: float = 0.5
    temperature: float = 1.0
    lr: float = 1e-4
    weight_decay: float = 0.0
    clip: float = 1.0
    warmup: float = 0.03  # a fraction of the optimiser steps (>= 1: a step count)
    schedule: str = "cosine"
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    eval_every: int = 16
    patience: int | None = 5  # evaluations without improvement before stopping; None: never stop early
    validation_fraction: float = 0.1


@dataclass(frozen=True)
class DenseParams:
    """The unpruned model: nothing to set."""


@dataclass(frozen=True)
class DropBlocksParams:
    selection: Selection = field(default_factory=dict)  # overrides of the config's ``selection``


@dataclass(frozen=True)
class KDPParams:
    calibration: str = "standard"
    selection: Selection = field(default_factory=dict)  # overrides of the config's ``selection``
    fold: Literal[FOLDS] = "kernel"  # type: ignore[valid-type]
    fit: Annotated[dict, Keys(KDP_FIT_TYPES)] = field(default_factory=dict)  # overrides of KDPConfig
    finetune: bool = False  # True: the PEFT recovery of Appendix B (the † row)
    peft: PEFTRecipe = field(default_factory=PEFTRecipe)
    reuse_fits_of: str | None = None  # another variant whose block fits this one uses unchanged


DENSE = MethodSpec("kdp.methods.dense:Dense", params=DenseParams)

DROP_BLOCKS = MethodSpec("kdp.methods.drop_blocks:DropBlocks", requires={"blocks"}, params=DropBlocksParams)

KDP = MethodSpec(
    "kdp.methods.kdp:KDP",
    requires={"hidden_states", "calibration", "blocks", "block_fits", "teacher"},
    fits_blocks=True,
    params=KDPParams,
    # Z, V, b and the inverse network's init, the held-out split (which also decides the OLS folds' training
    # samples), the training order, and the PEFT recovery.
    stochastic=True,
)
