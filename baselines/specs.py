"""What each baseline declares to the workflow: the inputs it consumes and its hyperparameters with their
defaults, each with where the official code sets it. Read when the workflow loads, so nothing here imports torch;
each class (``baselines.<module>``) is imported only by the jobs that run it, and takes these declarations through
``@register_method``.
"""

from __future__ import annotations

from typing import Any

from kdp.registry import MethodSpec

#: The README's RFT command for the paper's results (run_finetuning.py; its argparse defaults differ).
SLICEGPT_RECOVERY: dict[str, Any] = {
    "train_samples": 8000,
    "validation_samples": 128,
    "max_length": 1024,
    "batch_size": 3,
    "grad_accum": 4,
    "rank": 32,
    "alpha": 10.0,
    "dropout": 0.05,
    "lr": 2e-4,
    "weight_decay": 0.01,
    "betas": [0.9, 0.95],
    "schedule": "linear",
    "warmup": 400,
    "epochs": 1,
    "clip": 1.0,
    "eval_every": 16,
    "patience": 5,
}

#: post_training.py as run by the README (--lora_r 8 --num_epochs 2 --learning_rate 1e-4 --batch_size 64) with its
#: other defaults (micro-batch 4, cutoff 256, 2000 validation rows, alpha 16, dropout 0.05) and the Trainer settings
#: it passes or inherits (warmup_steps 100, linear decay, AdamW without weight decay, clip 1.0, best validation loss
#: kept among the checkpoints saved every 200 steps, no early stopping). The script's own defaults differ (5 epochs,
#: lr 3e-4, batch 128).
LLM_PRUNER_RECOVERY: dict[str, Any] = {
    "train_samples": None,
    "validation_samples": 2000,
    "max_length": 256,
    "rank": 8,
    "alpha": 16.0,
    "dropout": 0.05,
    "lr": 1e-4,
    "weight_decay": 0.0,
    "epochs": 2,
    "batch_size": 4,
    "grad_accum": 16,
    "warmup": 100,
    "schedule": "linear",
    "clip": 1.0,
    "eval_every": 200,
    "patience": None,
}

#: args.py / train_lightweightnetwork.py (MSE stage).
STREAMLINE_MSE_TRAINING: dict[str, Any] = {
    "batch_size": 8,
    "grad_accum": 16,
    "epochs": 1,
    "lr": 2e-4,
    "min_lr": 5e-5,
    "weight_decay": 1e-3,
    "betas": [0.9, 0.999],
    "warmup": 0.01,
    "clip": 5.0,
    "eval_every": None,  # optimiser steps between validations; None: after each epoch, as the official code
}
#: train_llmloss.py with 4gpu.yaml (DeepSpeed gradient_clipping 1.0).
STREAMLINE_LLM_LOSS_TRAINING: dict[str, Any] = {**STREAMLINE_MSE_TRAINING, "betas": [0.9, 0.95], "clip": 1.0}


def _finetuned(params: dict[str, Any]) -> bool:
    return bool(params["finetune"])


def _trains_or_draws(params: dict[str, Any]) -> bool:
    """Streamline draws at random when it trains (MSE stage or LLM-loss fine-tune: init order, batch order) or
    when its replacement is a freshly initialised FFN; a copied layer without training is deterministic."""
    return params["training"] is not None or params["finetune"] is not None or params["replacement"] == "ffn"


#: The fixed grid LaCo's "largest_reaching_target" rule walks down: 0.95, 0.90, ..., 0.05. T = 0 is left out on
#: purpose: it would let the sign of a near-zero cosine decide.
LACO_THRESHOLD_GRID = [round(0.95 - 0.05 * step, 2) for step in range(19)]

LACO = MethodSpec(
    "baselines.laco:LaCo",
    requires={"calibration"},
    defaults={
        "calibration": "laco",  # 5 Wikipedia prefixes in the notebook; KJV passages in the embedded default
        "layers_per_merge": 4,  # C (MERGE_LAYERS), Llama2-7B setting
        "interval": 2,  # I (INTERVAL)
        "lowest_layer": 1,  # L (LOWEST_LAY)
        "highest_layer_from_top": 0,  # H = num_layers - this (HIGHEST_LAY = 32 for 32 layers)
        "threshold": 0.65,  # T (THRESHOLD), or "largest_reaching_target" (see the module docstring)
        "threshold_grid": LACO_THRESHOLD_GRID,  # the T values "largest_reaching_target" tries
        "merge": "released_code",  # what the notebook computes; "eq1" is the paper's formula
        "batch_size": 1,  # cal_last_hidden_sim runs one sentence at a time
    },
)

LLM_PRUNER = MethodSpec(
    "baselines.llm_pruner:LLMPruner",
    requires={"calibration"},
    defaults={
        "calibration": "llm_pruner",
        "importance_samples": 10,  # hf_prune.py --num_examples
        "importance_length": 64,  # get_examples('bookcorpus', ..., seq_len=64)
        "batch_size": 10,  # the official pass takes the 10 samples as one batch
        "taylor": "param_first",  # --pruner_type taylor --taylor param_first
        "pruning_ratio": None,  # None: solved from target_ratio; a fraction: the official --pruning_ratio
        "layer_range": None,  # None: [4, 30) of 32 scaled to the depth; [first, stop): explicit
        "finetune": False,  # True: LoRA recovery with ``recovery`` (the † row)
        "recovery": dict(LLM_PRUNER_RECOVERY),
    },
    nested_keys={"recovery": ("betas", "max_steps")},  # fine-tuning recipe keys beyond the README command's
    stochastic=_finetuned,  # Taylor importance on fixed samples is deterministic; the LoRA recovery is not
)

SHORTGPT = MethodSpec(
    "baselines.shortgpt:ShortGPT",
    requires={"calibration"},
    defaults={
        "calibration": "shortgpt",  # pg19 validation, 256-token windows (run_shortgpt.py)
        "last_layer": "pre_norm",  # the official code's choice is "post_norm" (see the module docstring)
        "angular": False,  # metrics.block_influence(angular=False)
        "bi_precision": "float32",  # the paper's metric; the official script's is "float16_official"
        "count_rule": "parameters",
        "batch_size": 1,  # run_shortgpt.py DataLoader(batch_size=1)
    },
)

SLEB = MethodSpec(
    "baselines.sleb:SLEB",
    requires={"calibration"},
    defaults={
        "calibration": "sleb",  # WikiText-2 train, nsamples=128, seqlen=2048 (sleb.py / data_utils.py)
        "early_barrier": 1,  # sleb.py
        "latter_barrier": 1,  # sleb.py
        "count_rule": "parameters",  # the official rule is "layers" (num_remove_blocks)
        "batch_size": 1,  # get_loss(bs=1)
    },
)

SLICEGPT = MethodSpec(
    "baselines.slicegpt:SliceGPT",
    requires={"calibration"},
    defaults={
        "calibration": "slicegpt",
        "pca_samples": 128,  # run_slicegpt.py --cal-nsamples
        "batch_size": 16,  # run_slicegpt.py --cal-batch-size
        "round_interval": 8,  # run_slicegpt.py --round-interval
        "slicing": 0.25,  # the official --sparsity (the paper's reading); None: width solved for target_ratio
        "centre_embeddings": "always",  # official fuse_modules; "layernorm_only" keeps RMSNorm models exact
        "finetune": False,  # True: the recovery fine-tuned (†) row
        "recovery": SLICEGPT_RECOVERY,
    },
    nested_keys={"recovery": ("max_steps",)},  # a fine-tuning recipe key beyond the README command's
    stochastic=_finetuned,  # PCA on fixed samples is deterministic; the LoRA recovery is not
)

STREAMLINE = MethodSpec(
    "baselines.streamline:Streamline",
    requires={"calibration"},
    defaults={
        "calibration": "streamline",
        "replacement": "layer",  # layer (README) | ffn (paper, examples/mlp_*)
        "layers_removed": None,  # n; None: the smallest n that reaches target_ratio
        "selection_samples": 500,  # paper; official cosine_num_data 50
        "train_samples": None,  # None: every sample not used for selection or validation
        "validation_samples": 1000,
        "batch_size": 8,  # forward passes of the span choice
        "ffn_expansion": 4,
        "training": STREAMLINE_MSE_TRAINING,  # None: no MSE stage
        "finetune": None,  # None | llm_loss (the † row)
        "llm_loss": STREAMLINE_LLM_LOSS_TRAINING,
    },
    stochastic=_trains_or_draws,
)
