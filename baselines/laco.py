"""LaCo (Yang et al., EMNLP Findings 2024): collapse runs of later layers into an earlier one by weight merging.

RDSC merge of layer l with its m followers: theta*_l = theta_l + sum_{k=1..m} (theta_{l+k} - theta_l) for every
parameter of layer l except its norms, which are kept from layer l; layers l+1..l+m are then deleted. Biases (OPT)
are parameters of the attention and MLP like the weights, so they are merged by the same formula.

The walk follows the official notebook (yangyifei729/LaCo@8483587, ``laco_llama-13b.ipynb``): l <- H - C; while
l >= L: merge min(C - 1, layers after l) followers into l; s = mean over calibration sentences of the cosine
between the flattened final hidden states (all real tokens x dims as one vector) of the *original* model and of
the candidate; if s > T accept it and set l <- l - I, else l <- l - 1. (The notebook also resets l to n - 1 - C
when l >= n after an accepted merge; a merge keeps layers 0..l, so with I >= 1 that branch never fires and is
left out.) The hidden state compared is ``hidden_states[-1]`` in the official code, i.e. after the final norm,
and that is what is compared here. Merges read the current (possibly already merged) weights, as there.

Departures and choices:

* ``merge: paper`` (default, used by the tables) is the formula above. The released notebook updates the base
  in place and subtracts the *updated* base inside its loop, so its result is just theta_{l+m}: layer dropping
  that keeps layer l's norms (GitHub issues #4 and #5). ``merge: released_code`` reproduces that. The paper's
  formula is the method as published, and the one the KDP paper describes; the released behaviour stays
  available to measure what the bug changes.
* The walk stops as soon as ``target_ratio`` of all parameters is removed; if the threshold stops it first, the
  achieved ratio is reported (``details.target_reached`` false). A merge always takes its C - 1 followers, so the
  achieved ratio can overshoot the target by up to C - 2 layers.
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

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from kdp.adapters import ModelAdapter
from kdp.calibration import CalibrationSet
from kdp.errors import bad_value
from kdp.layer_scoring import RemovalTarget, calibration_inputs, forward_skipping
from kdp.registry import PruneContext, PruneRecord, PruningMethod, register_method

MERGE_RULES = ("paper", "released_code")


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
    return float(torch.stack([F.cosine_similarity(a, b, dim=0) for a, b in zip(reference, candidate,
                                                                                 strict=True)]).mean())


@register_method("laco")
class LaCo(PruningMethod):
    """Inputs and hyperparameters: `baselines.specs.LACO`."""

    def prune(self, ctx: PruneContext) -> PruneRecord:
        log = ctx.log or logging.getLogger(__name__)
        rule, span, interval, lowest, from_top = self._checked_params()
        threshold, batch_size = float(self.params["threshold"]), int(self.params["batch_size"])
        adapter = ctx.adapter
        target = RemovalTarget.of(adapter, ctx.target_ratio, "parameters", "laco")
        origins = [[index] for index in range(adapter.num_layers)]  # original layers each current layer stands for
        reference = final_states(adapter, ctx.calibration, batch_size, ctx.device)
        accepted, rejected = [], []
        base = adapter.num_layers - from_top - span
        while base >= lowest and not target.reached(adapter):
            followers = range(base + 1, base + 1 + min(span - 1, adapter.num_layers - base - 1))
            merged = rdsc_merge(adapter, base, followers, rule)
            with loaded(adapter.layers[base], merged):
                candidate = final_states(adapter, ctx.calibration, batch_size, ctx.device, skip=followers)
            similarity = mean_sentence_cosine(reference, candidate)
            absorbed = [index for follower in followers for index in origins[follower]]
            log.info("laco: merging original layers %s into %d: similarity %.4f", absorbed, origins[base][0],
                     similarity)
            if similarity <= threshold:
                rejected.append({"base": origins[base][0], "absorbed": absorbed, "similarity": similarity})
                base -= 1
                continue
            _copy_into(adapter.layers[base], merged)
            adapter.remove_layers(followers)
            accepted.append({"base": origins[base][0], "absorbed": absorbed, "similarity": similarity})
            origins[base] += absorbed
            del origins[followers.start : followers.stop]
            base -= interval
        reached = target.reached(adapter)
        if not reached:
            log.warning("laco: threshold %s stopped the walk at ratio %.4f, short of target %s", threshold,
                        target.achieved(adapter), ctx.target_ratio)
        return PruneRecord(
            layers_removed=sorted(index for group in origins for index in group[1:]),
            blocks=[[group[0], group[-1]] for group in origins if len(group) > 1],
            samples={"calibration": ctx.calibration.num_samples},
            details={"merge": rule, "merges": accepted, "rejected": rejected, "target_reached": reached,
                     "achieved_ratio": target.achieved(adapter)},
        )

    def _checked_params(self) -> tuple[str, int, int, int, int]:
        rule = self.params["merge"]
        if rule not in MERGE_RULES:
            raise bad_value("laco.merge", rule, MERGE_RULES)
        minimums = {"layers_per_merge": 2, "interval": 1, "lowest_layer": 0, "highest_layer_from_top": 0}
        values = []
        for key, minimum in minimums.items():
            value = self.params[key]
            if not isinstance(value, int) or value < minimum:
                raise bad_value(f"laco.{key}", value, f"an integer >= {minimum}")
            values.append(value)
        return rule, *values
