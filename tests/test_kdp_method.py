"""KDP as a registered method, end to end on a micro LLaMA: per-block fits from a real hidden-state capture, the
fold installed by `prune`, the pruned model's forward / KV cache / generate, parameter counts against Appendix I,
PEFT merged away, the original-space OLS variants, and the trained fold against plain removal.

The mathematics of each part (RFF convergence, OLS = lstsq, the identity construction, W) is tested in
test_kernel.py, test_linearize.py and test_fold.py; this file checks that the method wires them together."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdp.adapters import adapter_for
from kdp.calibration import CalibrationSet
from kdp.capture import HiddenStates, capture
from kdp.flops import fold_parameters
from kdp.fold import FoldedBlock, LinearFold
from kdp.io import write_json
from kdp.linearize import BlockData, KDPConfig, fit_kdp, reconstruction_metrics
from kdp.methods.kdp import FOLD_CONFIG, FOLD_WEIGHTS, KERNEL_SAMPLE
from kdp.registry import PruneContext, resolve_params
from kdp.selection import Block
from tests.synthetic import random_calibration
from tests.conftest import micro_llama

WIDTH, LAYERS, RFF, RANK, INVERSE_HIDDEN = 64, 6, 128, 4, 48
BLOCK = Block(2, 3)
FIT = {
    "rff_dim": RFF, "rank": RANK, "inverse_hidden": INVERSE_HIDDEN, "kernel_max_epochs": 4, "inverse_epochs": 60,
    "kernel_batch_samples": 8, "inverse_batch_samples": 8, "eval_batch_samples": 64, "held_out_fraction": 0.25,
}
PEFT = {"batch_size": 4, "eval_every": 2, "patience": 2, "epochs": 1.0, "lr": 1e-3}


def _config() -> dict:
    """A minimal experiment config: the variants resolve through the registry like the workflow's."""
    return {
        "models": {"micro": {"source": "embedded:micro-llama"}},
        "methods": {"kdp": {"fit": FIT, "peft": PEFT}},
        "variants": {
            "kdp": {"method": "kdp"},
            "kdp_peft": {"method": "kdp", "finetune": True, "reuse_fits_of": "kdp"},
            "ols_direct": {"method": "kdp", "fold": "direct_ols"},
            "ols_sequential": {"method": "kdp", "fold": "sequential_ols"},
        },
    }


def _model() -> nn.Module:
    return micro_llama(layers=LAYERS, hidden=WIDTH, seed=0)


def _calibration(samples: int = 160, length: int = 16) -> CalibrationSet:
    """Random tokens, right-padded on every third sample. With fewer samples (48) the inverse network is
    data-starved and the fold ends up worse than plain removal on held-out tokens."""
    return random_calibration(samples, length, low=3, high=128, pad_id=0)


def _context(variant: str, model: nn.Module, hidden=None, fits=None) -> tuple:
    spec, params = resolve_params(_config(), variant)
    ctx = PruneContext(
        model=model, adapter=adapter_for(model), tokenizer=None, params=params, target_ratio=0.25, seed=0,
        device=torch.device("cpu"), model_name="micro", calibration=_calibration(), hidden=hidden, blocks=[BLOCK],
        block_fits=fits, load_teacher=_model,
    )
    return spec.build(params), ctx


@cache
def _workspace() -> Path:
    """Capture once, then fit the block for each fold kind the way `kdp.steps.fit_block` does."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="kdp_method_"))
    model = _model()
    capture(adapter_for(model), _calibration(), root / "hidden", {"test": "micro"}, "float32", 8)
    hidden = HiddenStates.open(root / "hidden")
    for variant in ("kdp", "ols_direct", "ols_sequential"):
        method, ctx = _context(variant, model, hidden=hidden)
        out_dir = root / variant / BLOCK.tag
        out_dir.mkdir(parents=True)
        record = method.fit_block(ctx, BLOCK, out_dir)
        write_json(out_dir / "record.json", record)
    return root


def _pruned(variant: str, fits_of: str | None = None) -> tuple[nn.Module, object]:
    root = _workspace()
    model = _model()
    method, ctx = _context(variant, model, fits={BLOCK: root / (fits_of or variant) / BLOCK.tag})
    return model, method.prune(ctx)


def _held_out() -> BlockData:
    hidden = HiddenStates.open(_workspace() / "hidden")
    data = BlockData([hidden.states(i) for i in range(BLOCK.first, BLOCK.last + 2)], hidden.mask)
    return data.split(FIT["held_out_fraction"], 0)[1]


def _record(variant: str) -> dict:
    return json.loads((_workspace() / variant / BLOCK.tag / "record.json").read_text())


def test_fit_block_writes_a_record_with_the_training_curves_and_the_fold():
    record, fit_dir = _record("kdp"), _workspace() / "kdp" / BLOCK.tag
    assert (fit_dir / FOLD_WEIGHTS).is_file() and (fit_dir / FOLD_CONFIG).is_file()
    step1, step2 = record["step1"]["epochs"], record["step2"]["epochs"]
    assert [e["epoch"] for e in step1] == list(range(FIT["kernel_max_epochs"] + 1))
    assert [e["epoch"] for e in step2] == list(range(FIT["inverse_epochs"] + 1))
    for entry in step1[1:]:
        assert {"loss", "train_loss", "kstep_cosine", "operator_norms", "phi_centered_norm_max"} <= set(entry)
        assert len(entry["operator_norms"]) == BLOCK.length
    assert step2[-1]["mse"] < step2[0]["mse"]
    assert record["block"] == [BLOCK.first, BLOCK.last] and record["fold"] == "kernel"
    assert record["samples"] == {"train": 120, "held_out": 40}
    kept = step2[record["step2"]["best_epoch"]]
    assert record["held_out"]["cosine"] == pytest.approx(kept["cosine"], abs=1e-4)
    sample = np.load(fit_dir / KERNEL_SAMPLE)
    assert sample["predicted"].shape == sample["truth"].shape and sample["truth"].shape[1] == RFF


def test_trained_fold_beats_plain_removal_on_held_out_samples():
    held = _record("kdp")["held_out"]
    print(f"held-out: fold cosine {held['cosine']:.4f} mse {held['mse']:.4f}; "
          f"identity cosine {held['identity_cosine']:.4f} mse {held['identity_mse']:.4f}")
    assert held["mse"] < 0.85 * held["identity_mse"]
    assert held["cosine"] > held["identity_cosine"] + 0.03


class _PassThrough(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@torch.no_grad()
def test_swapping_the_trained_fold_for_identity_moves_the_model_further_from_dense():
    dense, (model, _) = _model(), _pruned("kdp")
    removed = copy.deepcopy(model)
    adapter_for(removed).replace_span(BLOCK.first, BLOCK.first, _PassThrough())
    held = _held_out().samples
    data = _calibration()
    ids, mask = data.input_ids[held], data.attention_mask[held]
    real = mask.bool()

    def final_states(network):
        return network(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1][real]

    reference = final_states(dense)
    errors = {name: (final_states(net) - reference).pow(2).mean().item() for name, net in
              (("fold", model), ("identity", removed))}
    print(f"final-state MSE to dense on held-out samples: {errors}")
    assert errors["fold"] < 0.8 * errors["identity"]


@torch.no_grad()
def test_pruned_model_runs_with_masks_positions_kv_cache_and_generate():
    model, record = _pruned("kdp")
    adapter = adapter_for(model)
    assert adapter.num_layers == LAYERS - BLOCK.length + 1 and model.config.num_hidden_layers == adapter.num_layers
    assert isinstance(adapter.layers[BLOCK.first], FoldedBlock)
    assert record.layers_removed == list(BLOCK.layers) and record.blocks == [[BLOCK.first, BLOCK.last]]

    ids = torch.randint(3, 128, (3, 10), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert torch.isfinite(logits).all()

    # Incremental decoding with the KV cache gives the logits of the full forward pass.
    full = model(input_ids=ids[1:], attention_mask=mask[1:]).logits
    prefix = model(input_ids=ids[1:, :-1], attention_mask=mask[1:, :-1], use_cache=True)
    step = model(input_ids=ids[1:, -1:], attention_mask=mask[1:], past_key_values=prefix.past_key_values,
                 use_cache=True).logits
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-4, rtol=1e-4)

    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    cached = model.generate(**kwargs, use_cache=True)
    assert cached.shape == (3, 16)
    assert torch.equal(cached, model.generate(**kwargs, use_cache=False))


def test_folded_model_parameter_count_is_the_appendix_i_count():
    dense = adapter_for(_model())
    removed = sum(dense.layer_parameter_count(i) for i in BLOCK.layers)
    model, _ = _pruned("kdp")
    fold = adapter_for(model).layers[BLOCK.first]
    analytic = fold_parameters(WIDTH, RFF, RANK, INVERSE_HIDDEN)
    assert fold.parameter_count()["appendix_i"] == analytic
    assert adapter_for(model).parameter_count() == dense.parameter_count() - removed + analytic
    for variant in ("ols_direct", "ols_sequential"):
        linear, _ = _pruned(variant)
        assert isinstance(adapter_for(linear).layers[BLOCK.first], LinearFold)
        assert adapter_for(linear).parameter_count() == dense.parameter_count() - removed + WIDTH * WIDTH + WIDTH


def _structure(model: nn.Module) -> list[tuple[str, str, tuple]]:
    return [(name, type(module).__name__, tuple(p.shape for p in module.parameters(recurse=False)))
            for name, module in model.named_modules()]


def test_peft_variant_merges_its_lora_so_the_structure_is_unchanged():
    plain, _ = _pruned("kdp")
    tuned, record = _pruned("kdp_peft", fits_of="kdp")
    peft = record.details["peft"]
    assert peft["target"] == "lm_head" and peft["steps"] >= 1
    assert record.samples["peft_train"] == peft["train_samples_seen"] > 0
    assert not [name for name, _ in tuned.named_parameters() if "lora" in name]
    assert _structure(tuned) == _structure(plain)
    assert adapter_for(tuned).parameter_count() == adapter_for(plain).parameter_count()
    fold_state = adapter_for(plain).layers[BLOCK.first].state_dict()
    for key, value in adapter_for(tuned).layers[BLOCK.first].state_dict().items():
        assert torch.equal(value, fold_state[key]), key  # PEFT touches the head only
    if peft["best_step"] > 0:
        assert not torch.equal(tuned.lm_head.weight, plain.lm_head.weight)


def test_ols_variants_fit_record_and_run():
    for variant in ("ols_direct", "ols_sequential"):
        record = _record(variant)
        assert record["fold"] == variant.replace("ols_", "") + "_ols"
        assert 0 < record["held_out"]["mse"] < record["held_out"]["identity_mse"]
        model, _ = _pruned(variant)
        with torch.no_grad():
            logits = model(input_ids=torch.randint(3, 128, (2, 8)), attention_mask=torch.ones(2, 8, dtype=torch.long))
        assert torch.isfinite(logits.logits).all()


def test_fit_on_an_identity_block_reproduces_its_input():
    """Three copies of the same stream (a block that does nothing): the fitted fold must return its input."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(64, 12, 8, generator=generator) * torch.linspace(0.5, 3.0, 8) + 5.0
    data = BlockData([tokens, tokens, tokens], torch.ones(64, 12, dtype=torch.bool))
    config = KDPConfig(rff_dim=128, rank=2, inverse_hidden=64, kernel_max_epochs=3, inverse_epochs=60,
                       kernel_batch_samples=16, inverse_batch_samples=8, held_out_fraction=0.25)
    fold, record = fit_kdp(data, config)
    _, held_out = data.split(0.25, 0)
    metrics = reconstruction_metrics(fold, held_out)
    centred = tokens - tokens.mean((0, 1))
    relative = metrics["mse"] / centred.pow(2).mean().item()
    print(f"identity block: held-out cosine {metrics['cosine']:.5f}, MSE / variance {relative:.4f}")
    step1 = record["step1"]
    kept = step1["epochs"][step1["best_epoch"]]
    assert kept["kstep_explained_variance"] > 0.99  # the kept operators are ~I in kernel space
    assert relative < 0.05
