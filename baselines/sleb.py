"""SLEB (Song et al., ICML 2024): greedily remove the block whose removal hurts calibration likelihood least.

Each round, every block still present except the first ``early_barrier`` and last ``latter_barrier`` of them is
tried: the calibration NLL (sum of next-token NLL over all real target tokens of all windows) is computed for the
current, already pruned model without that block, and the block with the lowest NLL is removed. Rounds repeat
until the target is met. This is the paper's "Metric 3", re-evaluated on the pruned model every round.

Cost: a round over n remaining blocks runs the calibration set once, layer by layer; at candidate j the residual
stream is the input of block j, shared by every later candidate, so only blocks j+1..n-1 are run for it
(`kdp.layer_scoring.nll_with_each_layer_skipped`): about n^2/2 + n block applications per sample and one LM head
per candidate, against n^2 for the official code's full forward per candidate. Removing k blocks costs k rounds.

Faithfulness to the official code (jiwonsong-dev/SLEB@d07129a, ``sleb.py``, ``utils/data_utils.py``):

* Defaults: ``early_barrier = latter_barrier = 1``, seed 0 (the project seed), batch size 1, and calibration
  ``sleb``: 128 samples x 2048 tokens of WikiText-2 train. The official loss is mean cross-entropy x seqlen per
  window, summed; for full windows that is the NLL sum here times seqlen/(seqlen-1), the same argmin.
* Calibration reading: the paper says 128 samples from WikiText-2 train; the code (``get_wikitext2_trainenc``)
  shuffles the *lines* of the train split, joins the first 128 (many of them empty) and cuts the result into
  2048-token windows, about 4-5 windows in all. This class follows the paper: the configured set is taken as
  128 independent 2048-token windows, and every window of it is used.
* Blocks are skipped by running the layers around them rather than by the official on/off wrapper, which
  matches the transformers 4.37 layer API only; the removal is physical (layers renumbered for the KV cache).
* The official code removes ``num_remove_blocks`` = ceil(ratio x L) blocks (7 of 32 at 20%); that is
  ``count_rule: layers``. The default ``parameters`` removes blocks until ``target_ratio`` of all parameters is gone.
"""

from __future__ import annotations

import logging

from kdp.layer_scoring import RemovalTarget, nll_with_each_layer_skipped
from kdp.registry import PruneContext, PruneRecord, PruningMethod, register_method


@register_method("sleb")
class SLEB(PruningMethod):
    """Inputs and hyperparameters: `baselines.specs.SLEB`."""

    def prune(self, ctx: PruneContext) -> PruneRecord:
        log = ctx.log or logging.getLogger(__name__)
        adapter = ctx.adapter
        target = RemovalTarget.of(adapter, ctx.target_ratio, self.params["count_rule"], "sleb.count_rule")
        early, latter = int(self.params["early_barrier"]), int(self.params["latter_barrier"])
        alive = list(range(adapter.num_layers))  # original index of each current layer
        rounds = []
        while not target.reached(adapter):
            candidates = range(early, adapter.num_layers - latter)
            if not candidates:
                raise target.unreachable(f"SLEB with barriers {early}/{latter} ({adapter.num_layers} layers left)")
            losses = nll_with_each_layer_skipped(adapter, ctx.calibration, candidates,
                                                 int(self.params["batch_size"]), ctx.device)
            chosen = min(losses, key=losses.__getitem__)
            rounds.append({"removed": alive[chosen], "nll": losses[chosen],
                           "candidates": {alive[j]: loss for j, loss in losses.items()}})
            log.info("sleb round %d: removing block %d (original %d), calibration NLL %.4f",
                     len(rounds), chosen, alive[chosen], losses[chosen])
            adapter.remove_layers([chosen])
            del alive[chosen]
        removal_order = [entry["removed"] for entry in rounds]
        return PruneRecord(
            layers_removed=sorted(removal_order),
            samples={"calibration": ctx.calibration.num_samples},
            details={"removal_order": removal_order, "rounds": rounds, "achieved_ratio": target.achieved(adapter)},
        )
