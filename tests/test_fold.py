"""The fold modules: identity construction, dtype handling, rebuild from config, parameter counts, and a fold
standing in for two layers of a real micro LlamaForCausalLM (forward with padding mask, generate with KV cache)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from kdp.errors import UserError
from kdp.fold import FoldedBlock, InverseNetwork, LinearFold, fold_from_config, identity_fold
from kdp.kernel import LearnableRFF, normalization_from_tokens

D = 16


def _calibrated_kernel(tokens: torch.Tensor, rff_dim: int, rank: int = 0, log_diagonal: float = -10.0) -> LearnableRFF:
    kernel = LearnableRFF(tokens.shape[-1], rff_dim, rank, seed=0)
    shift, scale, _ = normalization_from_tokens(tokens, tokens.mean(0), tokens.std(0), "standardize")
    kernel.set_input_normalization(shift, scale, log_diagonal)
    return kernel


def _tokens(n: int = 300) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, D, generator=generator) * torch.linspace(0.5, 20.0, D) + 50.0


def _trained_looking_fold(rank: int = 3, hidden: int = 24) -> FoldedBlock:
    torch.manual_seed(0)
    kernel = _calibrated_kernel(_tokens(), 64, rank, log_diagonal=0.0)
    with torch.no_grad():
        kernel.low_rank.normal_()
    return FoldedBlock(kernel, torch.eye(64) + 0.1 * torch.randn(64, 64), InverseNetwork(64, hidden, D))


def test_identity_fold_reproduces_its_input():
    tokens = _tokens()
    fold = identity_fold(_calibrated_kernel(tokens, 64))
    with torch.no_grad():
        restored = fold(tokens)
    assert (restored - tokens).norm(dim=-1).max() < 1e-3 * tokens.norm(dim=-1).min()


def test_identity_fold_needs_as_many_frequencies_as_dimensions():
    with pytest.raises(UserError, match="rff_dim"):
        identity_fold(LearnableRFF(D, 16, 0))


def test_fold_keeps_shape_dtype_and_ignores_layer_kwargs():
    fold = _trained_looking_fold()
    hidden = _tokens(10).reshape(2, 5, D)
    with torch.no_grad():
        reference = fold(hidden)
        for dtype in (torch.bfloat16, torch.float64):
            out = fold(
                hidden.to(dtype),
                attention_mask=torch.ones(2, 1, 5, 5),
                position_embeddings=(None, None),
                past_key_values=object(),
                use_cache=True,
            )
            assert out.dtype == dtype and out.shape == hidden.shape
            torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05 * reference.abs().max().item())


def test_fold_rebuilds_from_its_json_config_and_state_dict():
    fold = _trained_looking_fold()
    config = json.loads(json.dumps(fold.fold_config()))
    rebuilt = fold_from_config(config)
    rebuilt.load_state_dict(fold.state_dict())
    hidden = _tokens(7)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(hidden), fold(hidden))
    linear = LinearFold(torch.randn(D, D), torch.randn(D))
    rebuilt_linear = fold_from_config(json.loads(json.dumps(linear.fold_config())))
    rebuilt_linear.load_state_dict(linear.state_dict())
    torch.testing.assert_close(rebuilt_linear(hidden), linear(hidden))
    with pytest.raises(UserError, match="kind"):
        fold_from_config({"kind": "mystery"})


def test_parameter_count_follows_appendix_i():
    rank, hidden, two_m = 3, 24, 64
    counts = _trained_looking_fold(rank, hidden).parameter_count()
    appendix_i = D * (1 + rank) + two_m**2 + (1 + hidden * (two_m + D + 1) + D)
    assert counts["appendix_i"] == appendix_i
    assert counts["fixed_random"] == D * two_m // 2 + rank * two_m // 2 + two_m // 2
    assert counts["stored"] == appendix_i + counts["fixed_random"] + 2 * D + 1  # shift, scale, gate threshold
    assert counts["stored"] == sum(t.numel() for t in _trained_looking_fold(rank, hidden).state_dict().values())


def _micro_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def _keep_layers(model: LlamaForCausalLM, modules: list[nn.Module]) -> LlamaForCausalLM:
    """The test's own surgery (product code goes through the adapter): new layer list, renumbered attention."""
    model.model.layers = nn.ModuleList(modules)
    model.config.num_hidden_layers = len(modules)
    for position, module in enumerate(modules):
        if hasattr(module, "self_attn"):
            module.self_attn.layer_idx = position
    return model


def test_fold_replaces_two_llama_layers_for_forward_and_cached_generation():
    model = _micro_llama()
    ids = torch.randint(3, 97, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding, as generate() wants
    with torch.no_grad():
        captured = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1]
    fold = identity_fold(_calibrated_kernel(captured[mask.bool()], 256))

    folded = copy.deepcopy(model)
    layers = folded.model.layers
    _keep_layers(folded, [layers[0], fold, layers[3]])
    removed = copy.deepcopy(model)
    _keep_layers(removed, [removed.model.layers[0], removed.model.layers[3]])

    with torch.no_grad():
        logits = folded(input_ids=ids, attention_mask=mask).logits
        reference = removed(input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(logits).all()
    real = mask.bool()
    torch.testing.assert_close(logits[real], reference[real], atol=2e-3, rtol=2e-3)

    generated = folded.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, use_cache=True)
    assert generated.shape == (3, 12 + 6)
    expected = removed.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(generated, expected)
