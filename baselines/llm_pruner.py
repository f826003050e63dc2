"""LLM-Pruner (Ma et al., NeurIPS 2023): block-wise structural pruning with first-order Taylor importance, as the
registered method ``llm_pruner``; ``finetune: true`` gives the LoRA-recovered row (LLMPruner† in the KDP
paper's Tables 1 and 6).

Written from horseee/LLM-Pruner (commit 128a07d): ``hf_prune.py``, ``llama3.py`` (GQA),
``LLMPruner/pruner/hf_llama_pruner.py`` (``TaylorImportance``), the ``MetaPruner`` of its vendored torch_pruning,
``LLMPruner/datasets/example_samples.py`` and ``post_training.py``.

1. Units (the official code discovers them with DepGraph, rooted at q_proj and gate_proj of the pruned layers;
   here the adapter names them). An attention unit is one key/value head with the query heads that read it: their
   rows of q, k and v (with biases, OPT) and the matching input columns of the attention output; without GQA
   (LLaMA-2, OPT) that is one head. An MLP unit is one intermediate channel: its row in every MLP input linear
   (gate and up, or fc1 with its bias) and its column in the MLP output linear. Residual width and norms stay.
2. Importance: s = W ⊙ dL/dW for every weight of the pruned layers, L the mean next-token cross-entropy over the
   importance samples (one backward pass). ``param_first`` (the paper's setting): a unit scores the sum of |s| over
   all weights of its rows and columns in every coupled linear. ``vectorize``: per linear and row (or column),
   |sum of s|, then summed over the unit. Biases are not scored, as in the official code.
3. In every pruned layer the lowest-scoring units go, at one ratio r for attention and MLP, rounded as the
   official ``MetaPruner.prune_local``: C - int(C (1 - r)) of C channels, and (W - int(W (1 - r))) // head_dim
   key/value heads of width W = n_kv x head_dim (whole heads, rounded down).
4. Pruned layers: officially 4..29 of 32 (``--block_*_layer_start 4 --block_*_layer_end 30``). For depth L,
   round(4 L / 32) up to (excluding) L - round(2 L / 32), unless ``layer_range`` gives [first, stop).
5. r: ``pruning_ratio`` (the official flag; 0.25 is the README's "~20%" setting), or, when null, solved from the
   target fraction of all parameters: removing a fraction r of every unit removes r x P_units, so
   r = target x P_total / P_units with P_units the parameters of all units in the pruned layers. Whole heads make
   the achieved ratio a little lower: LLaMA-2-7B at 25% gives r = 0.3202, 10 of 32 heads and 3525 of 11008
   channels per pruned layer, 24.80% of all parameters (the ratio the KDP paper prints for LLMPruner†).
6. Recovery (``finetune: true``; the recipe is ``recovery``, defaults ``RECOVERY_DEFAULTS``): LoRA on every decoder
   linear through `kdp.finetune.lora_finetune`, with the README command's recipe (``RECOVERY_DEFAULTS``).

Data. The method reads one calibration set in order: ``importance_samples`` samples cut to ``importance_length``
tokens (official: 10 BookCorpus samples, each a random 64-token window of a text at least that long; here the
first 64 tokens), then ``recovery.train_samples`` (null: all but the validation samples), then
``recovery.validation_samples`` (official: yahma/alpaca-cleaned, 2000 rows held out), both cut to
``recovery.max_length`` (the official cutoff 256).

Departures: GQA grouping (LLaMA-3) - the official ``llama3.py`` roots the groups at k_proj and aligns query-side
scores to key/value heads through a strided sum (``imp.view(-1, min_size).sum(0)`` in ``TaylorImportance``) that
was not verified to match Hugging Face's contiguous grouping (query head h reads key/value head h // n_rep); here
a key/value head is scored and removed with exactly the query heads that read it. The recovery loss covers every
token (a calibration set carries no prompt mask; the official run masks the Alpaca prompt). Gradients are taken in
the model's runtime dtype (the official README run is float32 on CPU); scores are accumulated in float32. OPT is
not supported officially (issue #83); its units follow the same definitions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.specs import TAYLOR_RULES, LLMPrunerRecovery
from kdp.adapters import LayerAdapter, ModelAdapter
from kdp.calibration import CalibrationSet
from kdp.errors import UserError, bad_value
from kdp.finetune import recover, recovery_keys, recovery_recipe
from kdp.hf_custom import apply_edit
from kdp.params import defaults_of
from kdp.registry import PruneContext, PruneRecord, PruningMethod, register_method

STRUCTURE_FACTORY = "baselines.llm_pruner:narrow_layers"
#: hf_prune.py in the README's LLaMA/Llama-2 command: layers [4, 30) of a 32-layer model are pruned.
OFFICIAL_DEPTH, OFFICIAL_FIRST, OFFICIAL_STOP = 32, 4, 30

RECOVERY_DEFAULTS = defaults_of(LLMPrunerRecovery)
_RECOVERY_KEYS = recovery_keys(RECOVERY_DEFAULTS)


@dataclass
class UnitScores:
    attention: torch.Tensor  # one score per key/value head (with the query heads that read it)
    mlp: torch.Tensor  # one score per intermediate channel


# -- which layers, which ratio -------------------------------------------------------------------------------------
def pruned_layers(num_layers: int, layer_range: Sequence[int] | None) -> range:
    """The official [4, 30) of 32 scaled to ``num_layers``, or the configured [first, stop)."""
    if layer_range is None:
        first = round(OFFICIAL_FIRST * num_layers / OFFICIAL_DEPTH)
        stop = num_layers - round((OFFICIAL_DEPTH - OFFICIAL_STOP) * num_layers / OFFICIAL_DEPTH)
    else:
        if len(layer_range) != 2:
            raise bad_value("llm_pruner layer_range", layer_range, "null or [first, stop)")
        first, stop = (int(bound) for bound in layer_range)
    if not 0 <= first < stop <= num_layers:
        raise bad_value("llm_pruner layer_range", [first, stop], f"0 <= first < stop <= {num_layers}")
    return range(first, stop)


def unit_parameters(parts: LayerAdapter) -> tuple[int, int]:
    """Parameters of one attention unit and of one MLP channel of this layer."""
    query, key, value = parts.query_key_value
    head_dim, sharing = parts.head_dim, parts.num_heads // parts.num_kv_heads
    attention = sharing * head_dim * (_row_size(query) + parts.attention_output.out_features)
    attention += head_dim * (_row_size(key) + _row_size(value))
    mlp = sum(_row_size(linear) for linear in parts.mlp_inputs) + parts.mlp_output.out_features
    return attention, mlp


def _row_size(linear: nn.Linear) -> int:
    return linear.in_features + (0 if linear.bias is None else 1)


def solve_ratio(adapter: ModelAdapter, layers: range, target_ratio: float) -> float:
    """The in-layer ratio r that removes ``target_ratio`` of all parameters if units were divisible."""
    prunable = 0
    for index in layers:
        parts = adapter.layer(index)
        attention, mlp = unit_parameters(parts)
        prunable += parts.num_kv_heads * attention + parts.mlp_output.in_features * mlp
    return target_ratio * adapter.parameter_count() / prunable


def units_to_prune(width: int, ratio: float, unit_width: int = 1) -> int:
    """``MetaPruner.prune_local``: width - int(width (1 - ratio)) channels, in whole units of ``unit_width``."""
    return (width - int(width * (1 - ratio))) // unit_width


# -- importance ----------------------------------------------------------------------------------------------------
def taylor_scores(adapter: ModelAdapter, data: CalibrationSet, layers: Sequence[int], rule: str,
                  batch_size: int) -> dict[int, UnitScores]:
    """First-order Taylor scores of every unit of ``layers`` from one backward pass of the mean loss."""
    if rule not in TAYLOR_RULES:
        raise bad_value("llm_pruner taylor", rule, TAYLOR_RULES)
    weights = [linear.weight for index in layers for linear in adapter.layer(index).linears()]
    with _gradients_of(adapter.model, weights):
        _backward_mean_loss(adapter.model, data, batch_size)
        return {index: layer_scores(adapter.layer(index), rule) for index in layers}


@contextmanager
def _gradients_of(model: nn.Module, weights: Sequence[nn.Parameter]) -> Iterator[None]:
    """Only ``weights`` get gradients (nothing else's is needed); flags are restored and gradients dropped after."""
    flags = {param: param.requires_grad for param in model.parameters()}
    wanted = {id(weight) for weight in weights}
    try:
        for param in flags:
            param.requires_grad_(id(param) in wanted)
            param.grad = None
        yield
    finally:
        for param, flag in flags.items():
            param.requires_grad_(flag)
            param.grad = None


def _backward_mean_loss(model: nn.Module, data: CalibrationSet, batch_size: int) -> None:
    """Gradient of the mean next-token cross-entropy over all real tokens, accumulated batch by batch."""
    device = next(model.parameters()).device
    total = int(data.attention_mask[:, 1:].sum())
    for input_ids, attention_mask in data.batches(batch_size):
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
        real = attention_mask[:, 1:].bool()
        loss = F.cross_entropy(logits[real], input_ids[:, 1:][real], reduction="sum") / total
        loss.backward()


def layer_scores(parts: LayerAdapter, rule: str) -> UnitScores:
    query, key, value = parts.query_key_value
    groups = parts.num_kv_heads
    attention = sum(_per_unit(_row_scores(linear, rule), groups) for linear in (query, key, value))
    attention = attention + _per_unit(_column_scores(parts.attention_output, rule), groups)
    mlp = sum(_row_scores(linear, rule) for linear in parts.mlp_inputs) + _column_scores(parts.mlp_output, rule)
    return UnitScores(attention, mlp)


def _per_unit(channel_scores: torch.Tensor, units: int) -> torch.Tensor:
    # Channels are head-major and the query heads of one key/value head are contiguous, so each unit is one slice.
    return channel_scores.view(units, -1).sum(dim=1)


def _salience(linear: nn.Linear) -> torch.Tensor:
    if linear.weight.grad is None:
        raise RuntimeError("no gradient reached a pruned linear; is it part of the model's forward pass?")
    return linear.weight.detach().float() * linear.weight.grad.float()


def _row_scores(linear: nn.Linear, rule: str) -> torch.Tensor:
    salience = _salience(linear)
    return salience.abs().sum(dim=1) if rule == "param_first" else salience.sum(dim=1).abs()


def _column_scores(linear: nn.Linear, rule: str) -> torch.Tensor:
    salience = _salience(linear)
    return salience.abs().sum(dim=0) if rule == "param_first" else salience.sum(dim=0).abs()


# -- pruning -------------------------------------------------------------------------------------------------------
def lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` lowest scores (ties broken by index), ascending."""
    return torch.sort(torch.argsort(scores.cpu(), stable=True)[:count]).values


def prune_layer(parts: LayerAdapter, scores: UnitScores, ratio: float) -> dict[str, list[int]]:
    """Remove the lowest-scoring units of one layer at ``ratio``; returns what was removed."""
    width = parts.num_kv_heads * parts.head_dim
    drop_attention = lowest(scores.attention, units_to_prune(width, ratio, parts.head_dim))
    drop_mlp = lowest(scores.mlp, units_to_prune(len(scores.mlp), ratio))
    keep_units(parts, _complement(drop_attention, len(scores.attention)), _complement(drop_mlp, len(scores.mlp)))
    return {"attention_units": drop_attention.tolist(), "mlp_channels": drop_mlp.tolist()}


def _complement(removed: torch.Tensor, size: int) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[removed] = False
    return keep.nonzero().flatten()


def keep_units(parts: LayerAdapter, attention_units: torch.Tensor, mlp_channels: torch.Tensor) -> None:
    """Keep only the given key/value heads (with their query heads) and MLP channels of one layer."""
    if len(attention_units) == 0 or len(mlp_channels) == 0:
        raise UserError("llm_pruner: the pruning ratio would remove every head or every MLP channel of a layer; "
                        "allowed: a target_ratio or pruning_ratio that keeps at least one of each")
    head_dim, sharing = parts.head_dim, parts.num_heads // parts.num_kv_heads
    heads = (attention_units[:, None] * sharing + torch.arange(sharing)).flatten()
    query_rows, key_value_rows = _channels(heads, head_dim), _channels(attention_units, head_dim)
    query, key, value = parts.query_key_value
    _keep_rows(query, query_rows)
    _keep_rows(key, key_value_rows)
    _keep_rows(value, key_value_rows)
    _keep_columns(parts.attention_output, query_rows)
    for linear in parts.mlp_inputs:
        _keep_rows(linear, mlp_channels)
    _keep_columns(parts.mlp_output, mlp_channels)
    parts.set_head_counts(len(heads), len(attention_units))


def _channels(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    linear.weight = _selected(linear.weight, 0, rows)
    if linear.bias is not None:
        linear.bias = _selected(linear.bias, 0, rows)
    linear.out_features = len(rows)


def _keep_columns(linear: nn.Linear, columns: torch.Tensor) -> None:
    linear.weight = _selected(linear.weight, 1, columns)
    linear.in_features = len(columns)


def _selected(param: nn.Parameter, dim: int, index: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(param.detach().index_select(dim, index.to(param.device)), requires_grad=param.requires_grad)


def narrow_layers(adapter: ModelAdapter, edit: dict[str, Any]) -> None:
    """Structure-edit factory (`kdp.hf_custom`): give a freshly built model the pruned widths (key/value heads and
    MLP channels per layer), so the saved weights load; on the model just pruned nothing changes."""
    for index, (attention_units, mlp_channels) in edit["units"].items():
        parts = adapter.layer(int(index))
        if (parts.num_kv_heads, parts.mlp_output.in_features) != (attention_units, mlp_channels):
            keep_units(parts, torch.arange(attention_units), torch.arange(mlp_channels))


# -- the registered method -----------------------------------------------------------------------------------------
@register_method("llm_pruner")
class LLMPruner(PruningMethod):
    """Inputs and hyperparameters: `baselines.specs.LLM_PRUNER`."""

    def prune(self, ctx: PruneContext) -> PruneRecord:
        params, adapter = self.params, ctx.adapter
        recovery = recovery_recipe(params["recovery"], RECOVERY_DEFAULTS, "llm_pruner") if params["finetune"] else None
        importance, train, validation = _split(ctx.calibration, params, recovery)
        layers = pruned_layers(adapter.num_layers, params["layer_range"])
        ratio = _ratio(params["pruning_ratio"], adapter, layers, ctx.target_ratio)
        dense = adapter.parameter_count()
        scores = taylor_scores(adapter, importance, layers, params["taylor"], int(params["batch_size"]))
        removed = {index: prune_layer(adapter.layer(index), scores[index], ratio) for index in layers}
        units = {str(i): [adapter.layer(i).num_kv_heads, adapter.layer(i).mlp_output.in_features] for i in layers}
        apply_edit(adapter, {"factory": STRUCTURE_FACTORY, "units": units})
        details: dict[str, Any] = {
            "pruned_layers": [layers.start, layers.stop],
            "pruning_ratio": ratio,
            "ratio_after_pruning": 1 - adapter.parameter_count() / dense,
            "kept_units": units,
            "removed_attention_units": {str(i): r["attention_units"] for i, r in removed.items()},
        }
        samples = {"importance": importance.num_samples}
        if ctx.log:
            ctx.log.info("llm_pruner: in-layer ratio %.4f on layers %d..%d removes %.4f of all parameters", ratio,
                         layers.start, layers.stop - 1, details["ratio_after_pruning"])
        if recovery is not None:
            targets = [linear for index in range(adapter.num_layers) for linear in adapter.layer(index).linears()]
            details["recovery"], recovered = recover(adapter.model, targets, train, validation, recovery, ctx.seed,
                                                     ctx.log)
            samples.update(recovered)
        return PruneRecord(samples=samples, details=details)


def _split(data: CalibrationSet, params: dict[str, Any], recovery: dict[str, Any] | None
           ) -> tuple[CalibrationSet, CalibrationSet | None, CalibrationSet | None]:
    if int(params["importance_length"]) < 2:
        raise bad_value("llm_pruner importance_length", params["importance_length"], "an integer >= 2")
    counts: list[int | None] = [int(params["importance_samples"])]
    names = ["importance_samples"]
    if recovery is not None:
        counts += [recovery["train_samples"], int(recovery["validation_samples"])]
        names += ["recovery.train_samples", "recovery.validation_samples"]
    parts = data.consecutive_parts(counts, names, params["calibration"])
    importance = parts[0].truncated(int(params["importance_length"]))
    if recovery is None:
        return importance, None, None
    length = int(recovery["max_length"])
    return importance, parts[1].truncated(length), parts[2].truncated(length)


def _ratio(configured: float | None, adapter: ModelAdapter, layers: range, target_ratio: float) -> float:
    if configured is not None:
        if not 0 < float(configured) < 1:
            raise bad_value("llm_pruner pruning_ratio", configured, "a fraction in (0, 1)")
        return float(configured)
    ratio = solve_ratio(adapter, layers, target_ratio)
    if not 0 < ratio < 1:
        raise UserError(f"llm_pruner: target_ratio {target_ratio} needs in-layer ratio {ratio:.4f} on layers "
                        f"{layers.start}..{layers.stop - 1}, which is not a fraction; allowed: a target that "
                        "pruning those layers can reach (or a wider layer_range)")
    return ratio
