"""KDP (paper Sections 2-3, Algorithm 1, Appendix B), fitted one selected block per job, and its ablations.

``fit_block`` reads the block's hidden states h_first..h_{last+1} from the shared capture cache and fits
  * ``fold: kernel`` (KDP): Step 1 joint kernel linearization and Step 2 inverse network (`kdp.linearize.fit_kdp`);
  * ``fold: direct_ols`` / ``sequential_ols`` (Table 3): affine least squares in the original space.
``prune`` replaces every block by its fold (only the product of the operators is stored) and, with
``finetune: true``, runs the Appendix B PEFT step: LoRA (r 8, alpha 32, dropout 0.05) on the output head only, or on
a d x d "logit adapter" inserted before a head tied to the embeddings, trained with 0.5 KL(teacher || student) at
tau = 1 + 0.5 CE and merged afterwards. Variants that only change ``finetune`` reuse another variant's fits
(``reuse_fits_of``), so the expensive per-block fits run once.

Saved models rebuild the folds through `kdp.hf_custom` structure edits, so they load with
``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kdp.errors import bad_value
from kdp.finetune import FinetuneRecipe, lora_finetune
from kdp.fold import fold_from_config
from kdp.hf_custom import apply_edit
from kdp.io import atomic_path, read_json, write_json
from kdp.linearize import BlockData, KDPConfig, fit_direct_ols, fit_kdp, fit_sequential_ols, reconstruction_metrics
from kdp.methods.specs import FOLDS, PEFTRecipe
from kdp.params import defaults_of
from kdp.registry import PruneContext, PruneRecord, PruningMethod, register_method

PEFT_DEFAULTS = defaults_of(PEFTRecipe)
FOLD_WEIGHTS = "fold.safetensors"
FOLD_CONFIG = "fold_config.json"
KERNEL_SAMPLE = "kernel_space_sample.npz"


@register_method("kdp")
class KDP(PruningMethod):
    """Inputs and hyperparameters: `kdp.methods.specs.KDP`."""

    def fit_block(self, ctx: PruneContext, block, out_dir: Path) -> dict[str, Any]:
        kind = self.params["fold"]
        if kind not in FOLDS:
            raise bad_value("kdp fold", kind, FOLDS)
        config = KDPConfig.from_dict({**self.params["fit"], "seed": ctx.seed, "device": str(ctx.device)})
        data = BlockData([ctx.hidden.states(i) for i in range(block.first, block.last + 2)], ctx.hidden.mask)
        train, held_out = data.split(config.held_out_fraction, config.seed)
        if kind == "kernel":
            fold, record = fit_kdp(data, config)
            _save_kernel_space_sample(fold, held_out, out_dir / KERNEL_SAMPLE)
        else:
            fit = fit_direct_ols if kind == "direct_ols" else fit_sequential_ols
            fold, record = fit(train, config)
            record["config"] = config.to_dict()
        save_file({k: v.contiguous() for k, v in fold.state_dict().items()}, str(out_dir / FOLD_WEIGHTS))
        write_json(out_dir / FOLD_CONFIG, fold.fold_config())
        record["held_out"] = reconstruction_metrics(fold, held_out, device=ctx.device)
        record["parameters"] = fold.parameter_count()
        record["samples"] = {"train": train.num_samples, "held_out": held_out.num_samples}
        record["block"] = [block.first, block.last]
        record["fold"] = kind
        return record

    def prune(self, ctx: PruneContext) -> PruneRecord:
        fits = {}
        for block in sorted(ctx.blocks, reverse=True):  # right to left, so earlier indices stay valid
            fit_dir = ctx.block_fits[block]
            apply_edit(ctx.adapter, {"factory": f"{__name__}:install_fold", "first": block.first,
                                     "last": block.last, "fold": read_json(fit_dir / FOLD_CONFIG)})
            fold = ctx.adapter.layers[block.first]
            fold.load_state_dict(load_file(str(fit_dir / FOLD_WEIGHTS)))
            fold.to(device=ctx.device)
            fits[f"{block.first}-{block.last}"] = read_json(fit_dir / "record.json")
        trained_on = max(f["samples"]["train"] for f in fits.values())
        details: dict[str, Any] = {"fold": self.params["fold"], "held_out": {b: f["held_out"] for b, f in fits.items()}}
        samples = {"calibration": trained_on + max(f["samples"]["held_out"] for f in fits.values())}
        if self.params["finetune"]:
            details["peft"] = self._peft(ctx)
            samples["peft_train"] = details["peft"]["train_samples_seen"]
        return PruneRecord(
            layers_removed=[i for b in ctx.blocks for i in b.layers],
            blocks=[[b.first, b.last] for b in ctx.blocks],
            samples=samples,
            details=details,
        )

    def _peft(self, ctx: PruneContext) -> dict[str, Any]:
        peft = self.params["peft"]
        unknown = sorted(set(peft) - set(PEFT_DEFAULTS))
        if unknown:
            raise bad_value("kdp peft keys", unknown, sorted(PEFT_DEFAULTS))
        adapter = ctx.adapter
        if adapter.heads_are_tied:
            apply_edit(adapter, {"factory": f"{__name__}:install_logit_adapter", "width": adapter.hidden_size})
            target = adapter.final_norm[-1]
        else:
            target = adapter.lm_head
        held = max(1, round(peft["validation_fraction"] * ctx.calibration.num_samples))
        train, validation = ctx.calibration.consecutive_parts(
            [None, held], ["peft train", "peft validation"], self.params["calibration"])
        teacher = ctx.load_teacher()
        history = lora_finetune(adapter.model, [target], train, validation, FinetuneRecipe.from_params(peft, ctx.seed),
                                teacher=teacher, log=ctx.log)
        del teacher
        return {**history, "target": "logit_adapter" if adapter.heads_are_tied else "lm_head"}


def install_fold(adapter, edit: dict[str, Any]) -> None:
    """Structure edit: layers first..last become an (empty) fold of the recorded shape."""
    adapter.replace_span(edit["first"], edit["last"], fold_from_config(edit["fold"]))


def install_logit_adapter(adapter, edit: dict[str, Any]) -> None:
    """Structure edit: an identity-initialised d x d linear between the final norm and a tied output head.

    Appendix B puts LoRA on such a "1x1 logit adapter" when the head is tied to the embeddings, so that the
    embeddings stay untouched; after merging it remains as one d x d matrix (counted in the variant's parameters).
    """
    width = int(edit["width"])
    like = adapter.lm_head.weight  # the model's dtype and device (bf16 on CUDA), or the adapter's matmul fails
    linear = nn.Linear(width, width, bias=False, dtype=like.dtype, device=like.device)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(width))
    adapter.append_to_final_norm(linear)


@torch.no_grad()
def _save_kernel_space_sample(fold, held_out: BlockData, path: Path) -> None:
    """Figure 4's material: predicted (P phi(h_l)) and true phi(h_{l+k}) rows of one held-out sample."""
    batch = next(held_out.batches(1))
    start, end = batch.states[0], batch.states[-1]
    features = fold.kernel(start.to(fold.transition.device))
    predicted = features @ fold.transition.T
    truth = fold.kernel(end.to(fold.transition.device))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, predicted=predicted.cpu().numpy(), truth=truth.cpu().numpy())
