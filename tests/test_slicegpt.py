"""SliceGPT: fusion and full-width rotation leave the function unchanged, the PCA basis is the damped second
moment's eigenbasis, the parameter count of a sliced model is predicted exactly, a saved sliced model reloads to
the same logits, and recovery fine-tuning lowers validation perplexity."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from baselines.slicegpt import (
    SecondMoment,
    SlicedDecoderLayer,
    SliceGPT,
    calibration_batches,
    fuse_norms,
    official_width,
    principal_basis,
    rotate_and_slice,
    sliced_parameter_count,
)
from kdp.adapters import adapter_for
from kdp.calibration import CalibrationSet
from kdp.errors import UserError
from kdp.registry import PruneContext
from tests.conftest import MICRO_MODELS

REPO = Path(__file__).resolve().parent.parent
# Micro models are 64 wide: the official multiple of 8 moves the ratio in steps of ~8 points, 2 in steps of ~2.
MICRO_ROUND_INTERVAL = 2




def calibration(samples: int = 16, length: int = 24, seed: int = 3, period: int = 125) -> CalibrationSet:
    """Token runs counting upwards modulo ``period`` (learnable), right-padded on every third sample."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(3, 128, (samples, 1), generator=generator)
    ids = 3 + (starts + torch.arange(length)) % period
    mask = torch.ones_like(ids)
    mask[::3, length // 2:] = 0
    ids[mask == 0] = 0
    return CalibrationSet(ids, mask, ["counting"] * samples, {})


def with_random_norms(model):
    """Pretrained norms are not the identity; give every scale and shift random values so folding is exercised."""
    adapter = adapter_for(model)
    generator = torch.Generator().manual_seed(7)
    norms = [norm for i in range(adapter.num_layers) for norm in adapter.layer(i).norms] + [adapter.final_norm]
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=generator))
            if getattr(norm, "bias", None) is not None:
                norm.bias.copy_(0.1 * torch.randn(norm.bias.shape, generator=generator))
        for embedding in adapter.embedding_modules():
            embedding.weight.add_(0.05)  # a non-zero mean that OPT's centring has to remove
    return model


@torch.no_grad()
def logits(model, data: CalibrationSet) -> torch.Tensor:
    return model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits[data.attention_mask.bool()]


def prune(model, data: CalibrationSet, target_ratio: float = 0.25, **overrides):
    params = copy.deepcopy(SliceGPT.defaults)
    params.update({"pca_samples": data.num_samples, "batch_size": 8, "round_interval": MICRO_ROUND_INTERVAL},
                  **overrides)
    adapter = adapter_for(model)
    ctx = PruneContext(model=model, adapter=adapter, tokenizer=None, params=params, target_ratio=target_ratio,
                       seed=0, device=torch.device("cpu"), model_name="micro", calibration=data)
    return SliceGPT(params).prune(ctx)


@pytest.fixture(scope="module")
def sliced_models():
    """family -> (dense parameter count, pruned model, record), pruned once per family at the matched reading.

    The embeddings are centred only where that is exact (LayerNorm), so the error measured is slicing's alone;
    `with_random_norms` gives LLaMA embedding rows a mean that the official centring would remove."""
    pruned = {}
    for family, build in MICRO_MODELS.items():
        model = with_random_norms(build())
        dense = adapter_for(model).parameter_count()
        pruned[family] = (dense, model, prune(model, calibration(), slicing=None, centre_embeddings="layernorm_only"))
    return pruned


@pytest.fixture(params=sorted(MICRO_MODELS))
def sliced(request, sliced_models):
    """(family, dense parameter count, pruned model, record)."""
    return (request.param, *sliced_models[request.param])


# -- function preservation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(MICRO_MODELS))
def test_fusion_and_full_width_rotation_keep_the_logits(family):
    model = with_random_norms(MICRO_MODELS[family]())
    adapter = adapter_for(model)
    data = calibration()
    dense = logits(model, data)
    fuse_norms(adapter, "layernorm_only")
    assert all(isinstance(layer, SlicedDecoderLayer) for layer in adapter.layers)
    assert (logits(model, data) - dense).abs().max() < 1e-5
    embedding_before = adapter.token_embedding.weight.clone()
    rotate_and_slice(adapter, calibration_batches(adapter, data, 8), adapter.hidden_size)
    assert not torch.allclose(adapter.token_embedding.weight, embedding_before, atol=1e-3)  # it did rotate
    assert (logits(model, data) - dense).abs().max() < 1e-4


@pytest.mark.parametrize("family", sorted(MICRO_MODELS))
def test_official_centring_of_the_embeddings_changes_an_rmsnorm_model_as_the_official_fusion_does(family):
    """The official ``fuse_modules`` centres every family's embedding rows. With LayerNorm (OPT) that is exact;
    with RMSNorm (LLaMA) the fused model is the dense model with centred embedding rows, not the dense model."""
    model = with_random_norms(MICRO_MODELS[family]())
    data = calibration()
    dense = logits(model, data)
    centred_by_hand = copy.deepcopy(model)
    head = adapter_for(centred_by_hand).lm_head
    head.weight = torch.nn.Parameter(head.weight.detach().clone())  # the head keeps the uncentred rows (untied)
    with torch.no_grad():
        for embedding in adapter_for(centred_by_hand).embedding_modules():
            embedding.weight.sub_(embedding.weight.mean(dim=-1, keepdim=True))
    expected = logits(centred_by_hand, data)
    fuse_norms(adapter_for(model), "always")
    fused = logits(model, data)
    assert (fused - expected).abs().max() < 1e-5
    if family == "opt":
        assert (fused - dense).abs().max() < 1e-5
    else:
        assert (fused - dense).abs().max() > 1e-3


def test_slicing_changes_the_function_but_keeps_most_of_it(sliced):
    family, _, model, _ = sliced
    dense = with_random_norms(MICRO_MODELS[family]())
    data = calibration(seed=11)
    reference, approximation = logits(dense, data), logits(model, data)
    assert (approximation - reference).abs().max() > 1e-3
    assert (approximation - reference).norm() < reference.norm()


# -- PCA --------------------------------------------------------------------------------------------------------------
def test_principal_basis_diagonalises_the_damped_second_moment():
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(6, 6, generator=generator) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    tokens = torch.randn(200, 6, generator=generator) @ mixing.T
    moment = tokens.double().T @ tokens.double()
    values, basis = principal_basis(moment)
    damped = moment + 0.01 * moment.diagonal().mean() * torch.eye(6, dtype=torch.float64)
    assert torch.allclose(basis.T @ basis, torch.eye(6, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(damped @ basis, basis * values, atol=1e-8 * values[0])  # columns are eigenvectors
    assert torch.all(values[:-1] >= values[1:])
    rotated = tokens.double() @ basis
    variances = (rotated.T @ rotated).diagonal()
    assert torch.all(variances[:-1] >= variances[1:])


def test_second_moment_ignores_padding():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 4, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    padded = hidden.clone()
    padded[mask == 0] = 1e3
    moment = SecondMoment()
    moment.add(padded, mask)
    real = hidden[mask.bool()].double()
    assert torch.allclose(moment.matrix, real.T @ real)


# -- parameter count and width ---------------------------------------------------------------------------------------
def test_sliced_parameter_count_is_exact_and_the_ratio_meets_the_target(sliced):
    family, dense, model, record = sliced
    adapter = adapter_for(model)
    width = record.details["width"]
    assert width % MICRO_ROUND_INTERVAL == 0 and width < adapter.hidden_size
    assert adapter.parameter_count() == record.details["predicted_parameters"]
    assert adapter.parameter_count() == sliced_parameter_count(MICRO_MODELS[family]().config, width)
    assert abs(1 - adapter.parameter_count() / dense - 0.25) < 0.02
    assert record.samples == {"pca": 16}


def test_paper_reading_slices_a_quarter_of_the_width_and_reports_the_ratio_as_it_comes_out():
    """``slicing: 0.25`` (the default) keeps d' = 48 of 64; a tied head with a large vocabulary must be untied, so
    the sliced model holds more parameters than the dense one and the ratio is negative, not clamped."""
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=2048, max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = with_random_norms(LlamaForCausalLM(config).eval())
    dense = adapter_for(model).parameter_count()
    record = prune(model, calibration())
    assert record.details["width"] == 48 and record.details["width_rule"] == "slicing"
    pruned = adapter_for(model).parameter_count()
    assert pruned == sliced_parameter_count(config, 48) == record.details["predicted_parameters"]
    assert pruned > dense and record.details["predicted_ratio"] == pytest.approx(1 - pruned / dense)


def test_matched_reading_solves_the_width_for_the_target():
    model = with_random_norms(MICRO_MODELS["llama"]())
    dense = adapter_for(model).parameter_count()
    record = prune(model, calibration(), target_ratio=0.3, slicing=None)
    width = record.details["width"]
    ratio = {w: 1 - sliced_parameter_count(model.config, w) / dense for w in range(2, 65, MICRO_ROUND_INTERVAL)}
    assert record.details["width_rule"] == "matched"
    assert width == min(ratio, key=lambda w: abs(ratio[w] - 0.3))


def test_parameter_count_of_llama_2_7b_by_hand():
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False)
    d, w, ffn, layers, vocab = 4096, 3072, 11008, 32, 32000
    per_layer = 4 * d * w + 3 * ffn * w + 2 * w * w  # q, k, v read w; o writes w; gate, up read w; down writes w
    last_layer_extra = ffn * (d - w) + w * (d - w)  # the last layer writes the unsliced head's full width
    expected = vocab * w + layers * per_layer + last_layer_extra + vocab * d
    assert official_width(d, 0.25, 8) == w
    assert sliced_parameter_count(config, w) == expected


def test_tied_head_is_untied_and_counted(sliced):
    family, _, model, _ = sliced
    adapter = adapter_for(model)
    assert not adapter.heads_are_tied and not model.config.tie_word_embeddings
    if family == "opt":  # OPT ties its head; the final LayerNorm's shift becomes a head bias
        assert adapter.lm_head.bias is not None


# -- saving, reloading, generating ---------------------------------------------------------------------------------
RELOAD = """
import sys, torch
from transformers import AutoModelForCausalLM
ids, mask = torch.load(sys.argv[1])
for directory in sys.argv[2:]:
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.save(model(input_ids=ids, attention_mask=mask).logits, directory + ".logits.pt")
"""


def test_saved_models_reload_in_a_fresh_process_with_identical_logits(sliced_models, tmp_path):
    directories = {family: tmp_path / family for family in sliced_models}
    for family, (_, model, _) in sliced_models.items():
        model.save_pretrained(directories[family])
        for helper in model._kdp_custom_code_files:
            shutil.copy(helper, directories[family])
    data = calibration(samples=4, seed=5)
    torch.save((data.input_ids, data.attention_mask), tmp_path / "inputs.pt")
    subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path / "inputs.pt"), *map(str, directories.values())],
                   check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    for family, (_, model, _) in sliced_models.items():
        reloaded = torch.load(f"{directories[family]}.logits.pt")[data.attention_mask.bool()]
        assert torch.equal(reloaded, logits(model, data)), family


@torch.no_grad()
def test_generate_with_and_without_kv_cache_agree(sliced):
    _, _, model, _ = sliced
    prompt = calibration(samples=1, seed=9).input_ids[:, :8]
    cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (1, 14)
    assert torch.equal(cached, uncached)


# -- recovery fine-tuning ----------------------------------------------------------------------------------------------
def test_recovery_fine_tuning_lowers_validation_perplexity():
    model = with_random_norms(MICRO_MODELS["llama"]())
    data = calibration(samples=48, period=8)
    recovery = {"train_samples": 24, "validation_samples": 8, "max_length": 16, "batch_size": 4, "grad_accum": 1,
                "lr": 1e-2, "warmup": 1, "eval_every": 2, "patience": 2}
    record = prune(model, data, pca_samples=16, finetune=True, recovery=recovery)
    history = record.details["recovery"]
    assert history["best_validation_ppl"] < 0.9 * history["validation_ppl"][0]
    assert record.samples == {"pca": 16, "recovery_train": 24, "recovery_validation": 8}
    adapter = adapter_for(model)
    assert adapter.parameter_count() == record.details["predicted_parameters"]  # LoRA merged, shapes kept
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_too_small_a_calibration_set_or_an_unknown_recovery_key_is_a_user_error():
    with pytest.raises(UserError, match="recovery.train_samples"):
        prune(MICRO_MODELS["opt"](), calibration(samples=16), pca_samples=8, finetune=True,
              recovery={"train_samples": 8, "validation_samples": 4})
    with pytest.raises(UserError, match="learning_rate"):
        prune(MICRO_MODELS["opt"](), calibration(samples=16), finetune=True, recovery={"learning_rate": 1e-3})
    with pytest.raises(UserError, match="centre_embeddings.*layernorm_only"):
        prune(MICRO_MODELS["llama"](), calibration(), centre_embeddings="never")
