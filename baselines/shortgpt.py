"""ShortGPT (Men et al., 2024): remove the layers that change the residual stream least, in one shot.

Block Influence of layer i: BI_i = 1 - mean over every real calibration token t of cos(h_i[t], h_{i+1}[t]), with
h_i the input and h_{i+1} the output of layer i, in float32. The layers are ranked once, on the dense model, and
the lowest-BI ones are deleted together (no re-scoring).

Faithfulness to the official code (icip-cas/ShortGPT@9a2ee8d, ``shortgpt/metrics.py``, ``shortgpt/shortgpt.py``,
``shortgpt/run_shortgpt.py``):

* ``last_layer: pre_norm`` (default) compares the last layer's input with its own output. The official code reads
  ``hidden_states[-1]`` from Hugging Face, which is the stream *after* the final norm, so the last layer's BI also
  measures the norm and comes out inflated; ``last_layer: post_norm`` reproduces that.
* ``angular: true`` is the official option that scores each token by arccos(cos)/pi instead of 1 - cos (off
  there too).
* ``bi_precision: float32`` (default) is the paper's metric: cosines in float32, averaged over tokens; with the
  eps of `torch.nn.functional.cosine_similarity` no NaN arises. The official script computes it in float16
  (``torch_dtype=torch.float16``): a float16 matrix product, norms and their product, the quotient mapped to 0.5
  where it is NaN, and one float16 sum per 256-token window. A token whose norms exceed ~256 (a massive activation:
  SmolLM2's first token carries ~26,500 from layer 12 on, LLaMA-2's first-token activations are in the thousands)
  overflows the dot product and the norm product to inf and scores exactly 0.5; on SmolLM2-135M every token of
  layers 22-29 does (median norms 290-757), so those layers can never be chosen (docs/baselines.md). ``bi_precision: float16_official`` reproduces that arithmetic on the
  states of the configured runtime dtype (`float16_window_scores`). The official code sums per-token scores
  instead of averaging them (same ranking). Padding is never scored here (the official code runs batch size 1,
  so it has none either).
* Ties: the official order is numpy's default ``argsort``, which is not stable (with AVX-512 even six equal values
  come out in no fixed order), so exact ties have no official order; here they go to the lower layer index.
* Official calibration (``calibration: shortgpt``): the 50 books of ``emozilla/pg19`` validation, each cut into
  independent, non-overlapping 256-token windows, batch size 1, fp16 weights. The set itself is built by
  `kdp.calibration` from the config entry of that name.
* The paper removes a fixed layer count (9 of 32 for Llama-2-7B, 27.1% of parameters; 10 of 40 for Llama-2-13B).
  Here the count comes from ``target_ratio``: ``count_rule: parameters`` removes the fewest lowest-BI layers whose
  parameters reach the target; ``count_rule: layers`` removes ceil(ratio x L) layers.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from baselines.specs import BI_PRECISIONS, LAST_LAYER_STATES
from kdp.adapters import ModelAdapter
from kdp.calibration import CalibrationSet
from kdp.errors import bad_value
from kdp.layer_scoring import RemovalTarget, calibration_inputs
from kdp.registry import PruneContext, PruneRecord, PruningMethod, register_method



def token_distance(before: torch.Tensor, after: torch.Tensor, angular: bool) -> torch.Tensor:
    """Per-token 1 - cos (or arccos(cos)/pi) between two (n_tokens, d) matrices, in float32."""
    cosine = F.cosine_similarity(before.float(), after.float(), dim=-1)
    if angular:
        return torch.arccos(cosine.clamp(-1.0, 1.0)) / torch.pi
    return 1.0 - cosine


def float16_cosine(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Per-token cosine as the official ``metrics.block_influence`` computes it in float16, NaN not yet mapped.

    It divides the diagonal of a float16 matrix product by the float16 product of two float16 norms. A float16
    matrix product and a norm accumulate in float32 and round their result to float16, so each dot product and norm
    is computed here in float32 and then rounded; the norm product and the quotient are float16, as there. A dot
    product and a norm product above 65504 overflow to inf, and inf / inf is NaN.
    """
    a, b = before.half().float(), after.half().float()
    dot = (a * b).sum(-1).half()
    return dot / (a.norm(dim=-1).half() * b.norm(dim=-1).half())


def float16_window_scores(before: torch.Tensor, after: torch.Tensor, real: torch.Tensor,
                          angular: bool) -> torch.Tensor:
    """Per window (row), the official metric's float16 sum of token scores over its real tokens: NaN cosines
    become 0.5, and 1 - cos (or arccos/pi) and each window's sum are float16, as there."""
    cosine = float16_cosine(before, after).nan_to_num(nan=0.5)
    if angular:
        score = (torch.arccos(cosine.float()).half().float() / torch.pi).half()
    else:
        score = 1.0 - cosine
    return score.float().masked_fill(~real, 0.0).sum(-1).half().double()


def window_scores(before: torch.Tensor, after: torch.Tensor, real: torch.Tensor, angular: bool,
                  precision: str) -> torch.Tensor:
    """Per row of a (batch, tokens, d) pair: the sum of token scores over the real tokens, in float64."""
    if precision == "float16_official":
        return float16_window_scores(before, after, real, angular)
    return token_distance(before, after, angular).double().masked_fill(~real, 0.0).sum(-1)


@torch.no_grad()
def block_influence_scores(adapter: ModelAdapter, calibration: CalibrationSet, batch_size: int, device,
                           last_layer: str, angular: bool, precision: str = "float32") -> list[float]:
    """BI of every layer, run layer by layer over the calibration set; only real tokens are scored."""
    num_layers = adapter.num_layers
    sums = torch.zeros(num_layers, dtype=torch.float64)
    tokens = 0
    for inputs, _, attention_mask in calibration_inputs(adapter, calibration, batch_size, device):
        real = attention_mask.bool()
        hidden = inputs.hidden_states
        for index in range(num_layers):
            output = adapter.run_layers(hidden, inputs.layer_kwargs, index, index + 1)
            compared = output
            if index == num_layers - 1 and last_layer == "post_norm":
                compared = adapter.apply_final_norm(output)
            sums[index] += window_scores(hidden, compared, real, angular, precision).sum().cpu()
            hidden = output
        tokens += int(real.sum())
    return (sums / tokens).tolist()


def removal_order(scores: list[float]) -> list[int]:
    """Layers from the lowest BI up; exact ties go to the lower index."""
    return sorted(range(len(scores)), key=lambda index: scores[index])


@register_method("shortgpt")
class ShortGPT(PruningMethod):
    """Inputs and hyperparameters: `baselines.specs.SHORTGPT`."""

    def prune(self, ctx: PruneContext) -> PruneRecord:
        log = ctx.log or logging.getLogger(__name__)
        last_layer = self.params["last_layer"]
        if last_layer not in LAST_LAYER_STATES:
            raise bad_value("shortgpt.last_layer", last_layer, LAST_LAYER_STATES)
        precision = self.params["bi_precision"]
        if precision not in BI_PRECISIONS:
            raise bad_value("shortgpt.bi_precision", precision, BI_PRECISIONS)
        adapter = ctx.adapter
        target = RemovalTarget.of(adapter, ctx.target_ratio, self.params["count_rule"], "shortgpt.count_rule")
        scores = block_influence_scores(adapter, ctx.calibration, int(self.params["batch_size"]), ctx.device,
                                        last_layer, bool(self.params["angular"]), precision)
        order = removal_order(scores)
        removed = order[: target.layers_needed(adapter, order)]
        log.info("shortgpt: BI (%s) %s; removing layers %s", precision, [round(s, 4) for s in scores], removed)
        adapter.remove_layers(removed)
        return PruneRecord(
            layers_removed=sorted(removed),
            samples={"calibration": ctx.calibration.num_samples},
            details={"block_influence": scores, "removal_order": order, "achieved_ratio": target.achieved(adapter)},
        )
