"""What the paper's own methods declare to the workflow: the inputs each consumes and its hyperparameters with
their defaults. Read when the workflow loads, so nothing here imports torch; each class (``kdp.methods.<module>``)
is imported only by the jobs that run it, and takes these declarations through ``@register_method``.
"""

from __future__ import annotations

from kdp.registry import MethodSpec
from kdp.selection import SELECTION_KEYS

#: The fields of kdp.linearize.KDPConfig, which a ``fit:`` block may set (kept here, light, for the config check;
#: tests/test_registry.py holds the two lists equal).
KDP_FIT_KEYS = (
    "rff_dim", "rank", "sigma", "input_normalization", "outlier_tokens", "outlier_norm_ratio", "cos_weighting",
    "cos_weight_max_exponent", "gamma_init", "ols_reinit", "kernel_ols_ridge", "kernel_lr", "kernel_batch_samples",
    "kernel_max_epochs", "kernel_stop_tol", "kernel_stop_patience", "kernel_min_lr", "plateau_factor",
    "plateau_patience", "inverse_hidden", "inverse_activation", "inverse_loss_space", "inverse_lr",
    "inverse_batch_samples", "inverse_epochs", "norm_loss_weight", "linear_ols_ridge", "held_out_fraction",
    "eval_batch_samples", "seed", "device", "dtype",
)

# Appendix B, "Post training".
PEFT_DEFAULTS = {
    "rank": 8, "alpha": 32.0, "dropout": 0.05, "kd_weight": 0.5, "temperature": 1.0, "lr": 1e-4,
    "weight_decay": 0.0, "clip": 1.0, "warmup": 0.03, "schedule": "cosine", "epochs": 1.0, "batch_size": 4,
    "grad_accum": 1, "eval_every": 16, "patience": 5, "validation_fraction": 0.1,
}

DENSE = MethodSpec("kdp.methods.dense:Dense")

DROP_BLOCKS = MethodSpec("kdp.methods.drop_blocks:DropBlocks", requires={"blocks"}, defaults={"selection": {}},
                         nested_keys={"selection": SELECTION_KEYS})

KDP = MethodSpec(
    "kdp.methods.kdp:KDP",
    requires={"hidden_states", "calibration", "blocks", "block_fits", "teacher"},
    fits_blocks=True,
    defaults={
        "calibration": "standard",
        "selection": {},
        "fold": "kernel",
        "fit": {},  # overrides of kdp.linearize.KDPConfig (rff_dim, rank, epochs, ...)
        "finetune": False,
        "peft": dict(PEFT_DEFAULTS),
        "reuse_fits_of": None,  # another variant whose block fits this one uses unchanged
    },
    nested_keys={"selection": SELECTION_KEYS, "fit": KDP_FIT_KEYS},
    # Z, V, b and the inverse network's init, the held-out split (which also decides the OLS folds' training
    # samples), the training order, and the PEFT recovery.
    stochastic=True,
)
