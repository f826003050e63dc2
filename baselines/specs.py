"""What each baseline declares to the workflow: the inputs it consumes and its hyperparameters, typed (`kdp.params`),
with their defaults, each with where the official code sets it. Read when the workflow loads, so nothing here imports torch;
each class (``baselines.<module>``) is imported only by the jobs that run it, and takes these declarations through
``@register_method``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from kdp.params import Keys
from kdp.registry import MethodSpec

#: Enumerated choices, declared here so that the config check and the job read the same list.
MERGE_RULES = ("released_code", "eq1")  # LaCo: what the notebook computes, and the paper's Eq. 1
SEARCH_RULE = "largest_reaching_target"  # LaCo's threshold search (see baselines/laco.py)
TAYLOR_RULES = ("param_first", "vectorize")  # LLM-Pruner's Taylor importance
LAST_LAYER_STATES = ("pre_norm", "post_norm")  # ShortGPT: the last layer's output before or after the final norm
BI_PRECISIONS = ("float32", "float16_official")  # ShortGPT's Block Influence arithmetic
CENTRINGS = ("always", "layernorm_only")  # SliceGPT's embedding centring
REPLACEMENTS = ("layer", "ffn")  # Streamline's replacement: a copied layer (README) or a fresh FFN (paper)
FINETUNES = (None, "llm_loss")  # Streamline's † fine-tune


@dataclass(frozen=True)
class SliceGPTRecovery:
    """The README's RFT command for the paper's results (run_finetuning.py; its argparse defaults differ)."""

    train_samples: int = 8000
    validation_samples: int = 128
    max_length: int = 1024
    batch_size: int = 3
    grad_accum: int = 4
    rank: int = 32
    alpha: float = 10.0
    dropout: float = 0.05
    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    schedule: str = "linear"
    warmup: float = 400  # >= 1: a step count (kdp.finetune)
    epochs: float = 1
    clip: float = 1.0
    eval_every: int = 16
    patience: int | None = 5


@dataclass(frozen=True)
class LLMPrunerRecovery:
    """post_training.py as run by the README (--lora_r 8 --num_epochs 2 --learning_rate 1e-4 --batch_size 64) with
    its other defaults (micro-batch 4, cutoff 256, 2000 validation rows, alpha 16, dropout 0.05) and the Trainer
    settings it passes or inherits (warmup_steps 100, linear decay, AdamW without weight decay, clip 1.0, best
    validation loss kept among the checkpoints saved every 200 steps, no early stopping). The script's own
    defaults differ (5 epochs, lr 3e-4, batch 128)."""

    train_samples: int | None = None
    validation_samples: int = 2000
    max_length: int = 256
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    lr: float = 1e-4
    weight_decay: float = 0.0
    epochs: float = 2
    batch_size: int = 4
    grad_accum: int = 16
    warmup: float = 100  # >= 1: a step count (kdp.finetune)
    schedule: str = "linear"
    clip: float = 1.0
    eval_every: int = 200
    patience: int | None = None


#: Fine-tuning recipe keys a recovery may set beyond the README commands' (kdp.finetune.FinetuneRecipe).
SLICEGPT_RECOVERY_EXTRA = {"max_steps": int | None}
LLM_PRUNER_RECOVERY_EXTRA = {"betas": list[float], "max_steps": int | None}


@dataclass(frozen=True)
class StreamlineMSETraining:
    """args.py / train_lightweightnetwork.py (MSE stage)."""

    batch_size: int = 8
    grad_accum: int = 16
    epochs: int = 1
    lr: float = 2e-4
    min_lr: float = 5e-5
    weight_decay: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup: float = 0.01  # a fraction of the optimiser steps
    clip: float | None = 5.0
    eval_every: int | None = None  # optimiser steps between validations; None: after each epoch, as the official code


@dataclass(frozen=True)
class StreamlineLLMLossTraining(StreamlineMSETraining):
    """train_llmloss.py with 4gpu.yaml (DeepSpeed gradient_clipping 1.0)."""

    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip: float | None = 1.0


def _finetuned(params: dict[str, Any]) -> bool:
    return bool(params["finetune"])


def _trains_or_draws(params: dict[str, Any]) -> bool:
    """Streamline draws at random when it trains (MSE stage or LLM-loss fine-tune: init order, batch order) or
    when its replacement is a freshly initialised FFN; a copied layer without training is deterministic."""
    return params["training"] is not None or params["finetune"] is not None or params["replacement"] == "ffn"


#: The fixed grid LaCo's "largest_reaching_target" rule walks down: 0.95, 0.90, ..., 0.05. T = 0 is left out on
#: purpose: it would let the sign of a near-zero cosine decide.
LACO_THRESHOLD_GRID = [round(0.95 - 0.05 * step, 2) for step in range(19)]

@dataclass(frozen=True)
class LaCoParams:
    calibration: str = "laco"  # 5 Wikipedia prefixes in the notebook; KJV passages in the embedded default
    layers_per_merge: int = 4  # C (MERGE_LAYERS), Llama2-7B setting
    interval: int = 2  # I (INTERVAL)
    lowest_layer: int = 1  # L (LOWEST_LAY)
    highest_layer_from_top: int = 0  # H = num_layers - this (HIGHEST_LAY = 32 for 32 layers)
    threshold: float | Literal[SEARCH_RULE] = 0.65  # T (THRESHOLD), or the search (see the module docstring)
    threshold_grid: list[float] = field(default_factory=lambda: list(LACO_THRESHOLD_GRID))  # what the search tries
    merge: Literal[MERGE_RULES] = "released_code"  # what the notebook computes; "eq1" is the paper's formula
    batch_size: int = 1  # cal_last_hidden_sim runs one sentence at a time


@dataclass(frozen=True)
class LLMPrunerParams:
    calibration: str = "llm_pruner"
    importance_samples: int = 10  # hf_prune.py --num_examples
    importance_length: int = 64  # get_examples('bookcorpus', ..., seq_len=64)
    batch_size: int = 10  # the official pass takes the 10 samples as one batch
    taylor: Literal[TAYLOR_RULES] = "param_first"  # --pruner_type taylor --taylor param_first
    pruning_ratio: float | None = None  # None: solved from target_ratio; a fraction: the official --pruning_ratio
    layer_range: list[int] | None = None  # None: [4, 30) of 32 scaled to the depth; [first, stop): explicit
    finetune: bool = False  # True: LoRA recovery with ``recovery`` (the † row)
    recovery: Annotated[LLMPrunerRecovery, Keys(LLM_PRUNER_RECOVERY_EXTRA)] = field(default_factory=LLMPrunerRecovery)


@dataclass(frozen=True)
class ShortGPTParams:
    calibration: str = "shortgpt"  # pg19 validation, 256-token windows (run_shortgpt.py)
    last_layer: Literal[LAST_LAYER_STATES] = "pre_norm"  # the official code's is "post_norm" (module docstring)
    angular: bool = False  # metrics.block_influence(angular=False)
    bi_precision: Literal[BI_PRECISIONS] = "float32"  # the paper's metric; the official script's is "float16_official"
    count_rule: str = "parameters"  # kdp.layer_scoring.COUNT_RULES
    batch_size: int = 1  # run_shortgpt.py DataLoader(batch_size=1)


@dataclass(frozen=True)
class SLEBParams:
    calibration: str = "sleb"  # WikiText-2 train, nsamples=128, seqlen=2048 (sleb.py / data_utils.py)
    early_barrier: int = 1  # sleb.py
    latter_barrier: int = 1  # sleb.py
    count_rule: str = "parameters"  # the official rule is "layers" (num_remove_blocks)
    batch_size: int = 1  # get_loss(bs=1)


@dataclass(frozen=True)
class SliceGPTParams:
    calibration: str = "slicegpt"
    pca_samples: int = 128  # run_slicegpt.py --cal-nsamples
    batch_size: int = 16  # run_slicegpt.py --cal-batch-size
    round_interval: int = 8  # run_slicegpt.py --round-interval
    slicing: float | None = 0.25  # the official --sparsity (the paper's reading); None: width solved for target_ratio
    centre_embeddings: Literal[CENTRINGS] = "always"  # official fuse_modules; "layernorm_only" keeps RMSNorm exact
    finetune: bool = False  # True: the recovery fine-tuned (†) row
    recovery: Annotated[SliceGPTRecovery, Keys(SLICEGPT_RECOVERY_EXTRA)] = field(default_factory=SliceGPTRecovery)


@dataclass(frozen=True)
class StreamlineParams:
    calibration: str = "streamline"
    replacement: Literal[REPLACEMENTS] = "layer"  # layer (README) | ffn (paper, examples/mlp_*)
    layers_removed: int | None = None  # n; None: the smallest n that reaches target_ratio
    selection_samples: int = 500  # paper; official cosine_num_data 50
    train_samples: int | None = None  # None: every sample not used for selection or validation
    validation_samples: int = 1000
    batch_size: int = 8  # forward passes of the span choice
    ffn_expansion: int = 4
    training: StreamlineMSETraining | None = field(default_factory=StreamlineMSETraining)  # None: no MSE stage
    finetune: Literal[FINETUNES] = None  # None | llm_loss (the † row)
    llm_loss: StreamlineLLMLossTraining = field(default_factory=StreamlineLLMLossTraining)


LACO = MethodSpec("baselines.laco:LaCo", requires={"calibration"}, params=LaCoParams)

LLM_PRUNER = MethodSpec(
    "baselines.llm_pruner:LLMPruner",
    requires={"calibration"},
    params=LLMPrunerParams,
    stochastic=_finetuned,  # Taylor importance on fixed samples is deterministic; the LoRA recovery is not
)

SHORTGPT = MethodSpec("baselines.shortgpt:ShortGPT", requires={"calibration"}, params=ShortGPTParams)

SLEB = MethodSpec("baselines.sleb:SLEB", requires={"calibration"}, params=SLEBParams)

SLICEGPT = MethodSpec(
    "baselines.slicegpt:SliceGPT",
    requires={"calibration"},
    params=SliceGPTParams,
    stochastic=_finetuned,  # PCA on fixed samples is deterministic; the LoRA recovery is not
)

STREAMLINE = MethodSpec(
    "baselines.streamline:Streamline",
    requires={"calibration"},
    params=StreamlineParams,
    stochastic=_trains_or_draws,
)
