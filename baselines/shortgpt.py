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
* The official code sums per-token scores instead of averaging them (same ranking) and maps NaN cosines to 0.5;
  in float32 with the eps of `torch.nn.functional.cosine_similarity` no NaN arises. Padding is never scored here
  (the official code runs batch size 1, so it has none either).
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

from kdp.adapters import ModelAdapter
from kdp.calibration import CalibrationSet
from kdp.errors import bad_value
from kdp.layer_scoring import RemovalTarget, calibration_inputs
from kdp.registry import PruneContext, PruneRecord, PruningMethod, register_method

LAST_LAYER_STATES = ("pre_norm", "post_norm")


def token_distance(before: torch.Tensor, after: torch.Tensor, angular: bool) -> torch.Tensor:
    """Per-token 1 - cos (or arccos(cos)/pi) between two (n_tokens, d) matrices, in float32."""
    cosine = F.cosine_similarity(before.float(), after.float(), dim=-1)
    if angular:
        return torch.arccos(cosine.clamp(-1.0, 1.0)) / torch.pi
    return 1.0 - cosine


@torch.no_grad()
def block_influence_scores(adapter: ModelAdapter, calibration: CalibrationSet, batch_size: int, device,
                           last_layer: str, angular: bool) -> list[float]:
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
            sums[index] += token_distance(hidden[real], compared[real], angular).double().sum().cpu()
            hidden = output
        tokens += int(real.sum())
    return (sums / tokens).tolist()


@register_method("shortgpt")
class ShortGPT(PruningMethod):
    """Inputs and hyperparameters: `baselines.specs.SHORTGPT`."""

    def prune(self, ctx: PruneContext) -> PruneRecord:
        log = ctx.log or logging.getLogger(__name__)
        last_layer = self.params["last_layer"]
        if last_layer not in LAST_LAYER_STATES:
            raise bad_value("shortgpt.last_layer", last_layer, LAST_LAYER_STATES)
        adapter = ctx.adapter
        target = RemovalTarget.of(adapter, ctx.target_ratio, self.params["count_rule"], "shortgpt.count_rule")
        scores = block_influence_scores(adapter, ctx.calibration, int(self.params["batch_size"]), ctx.device,
                                        last_layer, bool(self.params["angular"]))
        order = sorted(range(adapter.num_layers), key=lambda index: scores[index])
        removed = order[: target.layers_needed(adapter, order)]
        log.info("shortgpt: BI %s; removing layers %s", [round(s, 4) for s in scores], removed)
        adapter.remove_layers(removed)
        return PruneRecord(
            layers_removed=sorted(removed),
            samples={"calibration": ctx.calibration.num_samples},
            details={"block_influence": scores, "removal_order": order, "achieved_ratio": target.achieved(adapter)},
        )
