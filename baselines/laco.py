"""LaCo (Yang et al., EMNLP Findings 2024): collapse runs of later layers into an earlier one by weight merging.

RDSC merge of layer l with its m followers, as printed (the paper's Eq. (1)): theta*_l = theta_l + sum_{k=1..m}
(theta_{l+k} - theta_l) for every parameter of layer l except its norms, which are kept from layer l; layers
l+1..l+m are then deleted. Biases (OPT) are parameters of the attention and MLP like the weights, so they are merged
by the same formula.

The walk follows the official notebook (yangyifei729/LaCo@8483587, ``laco_llama-13b.ipynb``): l <- H - C; while
l >= L: merge min(C - 1, layers after l) followers into l; s = mean over calibration sentences of the cosine
between the flattened final hidden states (all real tokens x dims as one vector) of the *original* model and of
the candidate; if s > T accept it and set l <- l - I, else l <- l - 1. (The notebook also resets l to n - 1 - C
when l >= n after an accepted merge; a merge keeps layers 0..l, so with I >= 1 that branch never fires and is
left out.) The hidden state compared is ``hidden_states[-1]`` in the official code, i.e. after the final norm,
and that is what is compared here. Merges read the current (possibly already merged) weights, as there.

Which merge, and which threshold:

* ``merge: released_code`` (default) is what the released notebook computes and what produced LaCo's published
  numbers: it updates the base in place and subtracts the *updated* base inside its loop, so the result is just
  theta_{l+m}, i.e. layer dropping that keeps layer l's norms (the repository's open issues #4 and #5). Its
  similarities sit where the paper's thresholds (0.45-0.65) can decide (0.59-0.69 on SmolLM2-135M).
  ``merge: eq1`` is the formula as printed. On SmolLM2 it leaves the final states nearly orthogonal to the dense
  model's (similarities below 0.1, issue #4 reports the same), so no threshold the paper uses accepts a merge.
* ``threshold``: a number is T, fixed (the paper's Llama2-7B setting 0.65 by default). ``largest_reaching_target``
  runs the walk at each T of ``threshold_grid`` from the largest down and keeps the first walk that reaches
  ``target_ratio``; if none does, the walk at the grid's smallest T is kept and falls short. The T used and every
  walk tried are recorded (``details.threshold``, ``details.threshold_search``). A candidate's similarity depends
  only on the merges accepted before it, so walks at different T share them (computed once).
* The walk stops as soon as ``target_ratio`` of all parameters is removed (the notebook walks on down to L); if
  the threshold stops it first, the achieved ratio is reported (``details.target_reached`` false). A merge always
  takes its C - 1 followers, so the achieved ratio can overshoot the target by up to C - 2 layers.
* Hyperparameters are depth-relative: H = num_layers - ``highest_layer_from_top``. For Llama2-7B the paper's
  setting (as reported by the third-party reproduction YashwanthYS/11711_LaCo_Pruning) is C=4, I=2, L=1, H=32,
  T=0.65, i.e. ``highest_layer_from_top: 0``; the released Llama2-13B notebook uses C=7, I=1, L=0, H=39 (of
  40 layers, ``highest_layer_from_top: 1``), T=0.45. With the defaults, a 30-layer model first tries merging
  layers 27-29 into 26, a 12-layer model layers 9-11 into 8.
* Official calibration: 5 hard-coded English-Wikipedia sentence prefixes, one at a time (``calibration: laco``).
* Not reproduced: the paper's optional post-training of the pruned model (KDP Table 8 lists 1B tokens for it);
  the KDP paper's LaCo rows are the LaCo paper's own numbers without it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.specs import MERGE_RULES, SEARCH_RULE
from kdp.adapters import ModelAdapter, adapter_for
from kdp.calibration import CalibrationSet
from kdp.errors import bad_value
from kdp.layer_scoring import RemovalTarget, calibration_inputs, forward_skipping
from kdp.registry import PruneContext, PruneRecord, PruningMethod, register_method



def rdsc_merge(adapter: ModelAdapter, base: int, followers: Sequence[int], rule: str) -> dict[str, torch.Tensor]:
    """Merged values of every non-norm parameter of layer ``base``, by name, computed in float32."""
    norm_parameters = {id(p) for norm in adapter.layer(base).norms for p in norm.parameters()}
    later = [dict(adapter.layers[index].named_parameters()) for index in followers]
    merged = {}
    for name, theta in adapter.layers[base].named_parameters():
        if id(theta) in norm_parameters:
            continue
        if rule == "released_code":
            value = later[-1][name] if later else theta
        else:
            base_value = theta.float()
            value = base_value + sum((p[name].float() - base_value for p in later), torch.zeros_like(base_value))
        merged[name] = value.detach().to(theta.dtype)
    return merged


def first_base(num_layers: int, span: int, from_top: int) -> int:
    """l at the start of the walk: H - C, with H = num_layers - from_top."""
    return num_layers - from_top - span


def accepts(similarity: float, threshold: float) -> bool:
    """The notebook's ``sim_value > THRESHOLD``: a similarity equal to T is rejected."""
    return similarity > threshold


@torch.no_grad()
def _copy_into(module: nn.Module, values: dict[str, torch.Tensor]) -> None:
    parameters = dict(module.named_parameters())
    for name, value in values.items():
        parameters[name].copy_(value)


@contextmanager
def loaded(module: nn.Module, values: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily give ``module`` the parameter values ``values``; the originals are restored on exit."""
    parameters = dict(module.named_parameters())
    saved = {name: parameters[name].detach().clone() for name in values}
    _copy_into(module, values)
    try:
        yield
    finally:
        _copy_into(module, saved)


@torch.no_grad()
def final_states(adapter: ModelAdapter, calibration: CalibrationSet, batch_size: int, device,
                 skip: Sequence[int] = ()) -> list[torch.Tensor]:
    """Per sentence: the post-final-norm states of its real tokens, flattened into one float32 vector."""
    states = []
    for inputs, _, attention_mask in calibration_inputs(adapter, calibration, batch_size, device):
        final = adapter.apply_final_norm(forward_skipping(adapter, inputs, skip)).float()
        states += [row[real].flatten().cpu() for row, real in zip(final, attention_mask.bool(), strict=True)]
    return states


def mean_sentence_cosine(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> float:
    """The notebook's ``np.mean`` of the per-sentence cosines."""
    return float(np.mean([F.cosine_similarity(a, b, dim=0).item()
                          for a, b in zip(reference, candidate, strict=True)]))


@dataclass(frozen=True)
class WalkSettings:
    rule: str
    span: int  # C
    interval: int  # I
    lowest: int  # L
    from_top: int  # num_layers - H
    batch_size: int


@dataclass
class Walk:
    """What one walk at one threshold did. ``origins[i]``: the original layers current layer i stands for."""

    threshold: float
    origins: list[list[int]]
    merges: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    reached: bool = False
    achieved_ratio: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "achieved_ratio": self.achieved_ratio, "target_reached": self.reached,
                "merged_bases": [merge["base"] for merge in self.merges]}


def walk(adapter: ModelAdapter, ctx: PruneContext, reference: list[torch.Tensor], settings: WalkSettings,
         threshold: float, target: RemovalTarget, similarities: dict) -> Walk:
    """Run the notebook's walk on ``adapter`` (merging in place) at threshold T; ``similarities`` caches each
    candidate's similarity by the merges accepted before it."""
    result = Walk(threshold, [[index] for index in range(adapter.num_layers)])
    base = first_base(adapter.num_layers, settings.span, settings.from_top)
    while base >= settings.lowest and not target.reached(adapter):
        followers = range(base + 1, base + 1 + min(settings.span - 1, adapter.num_layers - base - 1))
        merged = rdsc_merge(adapter, base, followers, settings.rule)
        absorbed = [index for follower in followers for index in result.origins[follower]]
        candidate = {"base": result.origins[base][0], "absorbed": absorbed}
        key = (tuple((m["base"], tuple(m["absorbed"])) for m in result.merges), candidate["base"])
        if key not in similarities:
            with loaded(adapter.layers[base], merged):
                states = final_states(adapter, ctx.calibration, settings.batch_size, ctx.device, skip=followers)
            similarities[key] = mean_sentence_cosine(reference, states)
        candidate["similarity"] = similarities[key]
        if not accepts(candidate["similarity"], threshold):
            result.rejected.append(candidate)
            base -= 1
            continue
        _copy_into(adapter.layers[base], merged)
        adapter.remove_layers(followers)
        result.merges.append(candidate)
        result.origins[base] += absorbed
        del result.origins[followers.start : followers.stop]
        base -= settings.interval
    result.reached, result.achieved_ratio = target.reached(adapter), target.achieved(adapter)
    return result


@register_method("laco")
class LaCo(PruningMethod):
    """Inputs and hyperparameters: `baselines.specs.LACO`."""

    def prune(self, ctx: PruneContext) -> PruneRecord:
        log = ctx.log or logging.getLogger(__name__)
        settings = self._checked_settings()
        thresholds = self._thresholds()
        adapter = ctx.adapter
        target = RemovalTarget.of(adapter, ctx.target_ratio, "parameters", "laco")
        reference = final_states(adapter, ctx.calibration, settings.batch_size, ctx.device)
        similarities: dict = {}
        searching = self.params["threshold"] == SEARCH_RULE
        tried = []
        for threshold in thresholds[:-1]:  # trial walks on copies, from the largest T down
            trial = walk(adapter_for(copy.deepcopy(ctx.model)), ctx, reference, settings, threshold, target,
                         similarities)
            tried.append(trial.summary())
            if trial.reached:
                chosen = threshold
                break
        else:
            chosen = thresholds[-1]
        result = walk(adapter, ctx, reference, settings, chosen, target, similarities)
        if searching and chosen == thresholds[-1]:
            tried.append(result.summary())
        for merge in result.merges:
            log.info("laco: merged original layers %s into %d (similarity %.4f)", merge["absorbed"], merge["base"],
                     merge["similarity"])
        if not result.reached:
            log.warning("laco: threshold %s stopped the walk at ratio %.4f, short of target %s", chosen,
                        result.achieved_ratio, ctx.target_ratio)
        details: dict[str, Any] = {
            "merge": settings.rule, "threshold": chosen, "threshold_rule": SEARCH_RULE if searching else "fixed",
            "merges": result.merges, "rejected": result.rejected, "target_reached": result.reached,
            "achieved_ratio": result.achieved_ratio}
        if searching:
            details["threshold_search"] = tried
        return PruneRecord(
            layers_removed=sorted(index for group in result.origins for index in group[1:]),
            blocks=[[group[0], group[-1]] for group in result.origins if len(group) > 1],
            samples={"calibration": ctx.calibration.num_samples},
            details=details,
        )

    def _thresholds(self) -> list[float]:
        """[T] for a fixed threshold; the grid from the largest T down for the search rule."""
        threshold = self.params["threshold"]
        if threshold == SEARCH_RULE:
            grid = self.params["threshold_grid"]
            if not grid or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in grid):
                raise bad_value("laco.threshold_grid", grid, "a non-empty list of numbers")
            return sorted({float(t) for t in grid}, reverse=True)
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
            raise bad_value("laco.threshold", threshold, f"a number or {SEARCH_RULE!r}")
        return [float(threshold)]

    def _checked_settings(self) -> WalkSettings:
        rule = self.params["merge"]
        if rule not in MERGE_RULES:
            raise bad_value("laco.merge", rule, MERGE_RULES)
        minimums = {"layers_per_merge": 2, "interval": 1, "lowest_layer": 0, "highest_layer_from_top": 0,
                    "batch_size": 1}
        values = []
        for key, minimum in minimums.items():
            value = self.params[key]
            if not isinstance(value, int) or value < minimum:
                raise bad_value(f"laco.{key}", value, f"an integer >= {minimum}")
            values.append(value)
        return WalkSettings(rule, *values)
