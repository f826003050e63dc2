"""The adapter is the only code that knows model internals: its edits must equal hand-made forward passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdp.adapters import adapter_for, supported_model_types
from kdp.errors import UserError


def manual_forward(adapter, ids, mask, keep):
    """Logits of the dense model with only the layers in ``keep`` applied, built from the model's own modules."""
    inputs = adapter.layer_inputs(ids, mask)
    hidden = inputs.hidden_states
    for index in keep:
        hidden = adapter.layers[index](hidden, **inputs.layer_kwargs)
    return adapter.logits_from_hidden(hidden)


@torch.no_grad()
def test_layer_by_layer_forward_equals_model_forward(micro_model, batch):
    ids, mask = batch
    adapter = adapter_for(micro_model)
    expected = micro_model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(manual_forward(adapter, ids, mask, range(adapter.num_layers)), expected)


@torch.no_grad()
def test_removing_layers_gives_exactly_the_skipped_forward(micro_model, batch):
    ids, mask = batch
    adapter = adapter_for(micro_model)
    dense = micro_model(input_ids=ids, attention_mask=mask).logits
    expected = manual_forward(adapter, ids, mask, [0, 1, 4, 5])
    adapter.remove_layers([2, 3])
    assert adapter.num_layers == 4 == micro_model.config.num_hidden_layers
    assert torch.equal(micro_model(input_ids=ids, attention_mask=mask).logits, expected)
    assert not torch.allclose(expected, dense)


@torch.no_grad()
def test_generate_with_kv_cache_after_removal_matches_uncached(micro_model, batch):
    ids, _ = batch
    adapter = adapter_for(micro_model)
    adapter.remove_layers([1, 3])
    cached = micro_model.generate(ids[:1], max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = micro_model.generate(ids[:1], max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (1, ids.shape[1] + 6)
    assert torch.equal(cached, uncached)
    attention_indices = [m.layer_idx for layer in adapter.layers for m in layer.modules() if hasattr(m, "layer_idx")]
    assert attention_indices == list(range(adapter.num_layers))


class _Identity(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@torch.no_grad()
def test_replace_span_by_identity_equals_removal(micro_model, batch):
    ids, mask = batch
    adapter = adapter_for(micro_model)
    expected = manual_forward(adapter, ids, mask, [0, 4, 5])
    adapter.replace_span(1, 3, _Identity())
    assert adapter.num_layers == 4
    assert torch.equal(micro_model(input_ids=ids, attention_mask=mask).logits, expected)
    generated = micro_model.generate(ids[:1], max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 4


def test_parameter_counts(micro_model):
    adapter = adapter_for(micro_model)
    per_layer = [adapter.layer_parameter_count(i) for i in range(adapter.num_layers)]
    assert len(set(per_layer)) == 1
    total = adapter.parameter_count()
    assert total == sum(p.numel() for p in set(micro_model.parameters()))
    adapter.remove_layers([0, 1])
    assert adapter.parameter_count() == total - 2 * per_layer[0]


def test_tied_head_is_counted_once():
    from tests.conftest import micro_llama

    model = micro_llama(tie=True)
    adapter = adapter_for(model)
    assert adapter.heads_are_tied
    assert adapter.parameter_count() == sum(p.numel() for p in model.parameters())  # parameters() dedups


def test_layer_adapter_names_the_parts(micro_model):
    layer = adapter_for(micro_model).layer(0)
    q, k, v = layer.query_key_value
    assert q.in_features == k.in_features == v.in_features == micro_model.config.hidden_size
    assert layer.attention_output.out_features == micro_model.config.hidden_size
    assert layer.mlp_output.out_features == micro_model.config.hidden_size
    assert all(m.out_features == layer.mlp_output.in_features for m in layer.mlp_inputs)
    assert layer.num_heads * layer.head_dim == q.out_features


def test_out_of_range_layers_are_rejected(micro_model):
    adapter = adapter_for(micro_model)
    with pytest.raises(IndexError, match="outside"):
        adapter.remove_layers([adapter.num_layers])


def test_unknown_model_type_names_the_supported_ones():
    class Fake(nn.Module):
        config = type("C", (), {"model_type": "bert"})()

    with pytest.raises(UserError, match="bert.*" + ".*".join(supported_model_types())):
        adapter_for(Fake())


# -- the family list: adapters, FLOPs shapes and custom code all come from it ---------------------------------------
def _tiny_model(model_type: str) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=96, ffn_dim=96, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                  max_position_embeddings=64, word_embed_proj_dim=64)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("model_type", supported_model_types())
def test_each_family_counts_the_parameters_transformers_builds(model_type):
    from kdp import flops

    model = _tiny_model(model_type)
    adapter = adapter_for(model)
    assert flops.model_parameters(model.config) == sum(p.numel() for p in model.parameters())
    assert flops.layer_parameters(model.config) == adapter.layer_parameter_count(0)
    assert adapter.layer(0).query_key_value[0].out_features == flops.decoder_layer_spec(model.config).attention_width


@pytest.mark.parametrize("model_type", supported_model_types())
def test_each_family_gets_custom_code_that_the_saved_shim_exports(model_type):
    import importlib.util

    from kdp import hf_custom

    model = _tiny_model(model_type)
    shim_spec = importlib.util.spec_from_file_location("modeling_kdp_bench", hf_custom.SHIM)
    shim = importlib.util.module_from_spec(shim_spec)
    shim_spec.loader.exec_module(shim)
    custom = getattr(shim, f"KdpBench{type(model).__name__}")
    assert issubclass(custom, type(model)) and custom is getattr(hf_custom, custom.__name__)


def test_decoder_layer_in_finds_a_wrapped_layer_and_nothing_in_other_replacements(micro_model):
    adapter = adapter_for(micro_model)
    layer = adapter.layers[0]
    assert adapter.decoder_layer_in(layer).layer is layer
    assert adapter.decoder_layer_in(nn.Sequential(nn.Identity(), layer)).layer is layer
    assert adapter.decoder_layer_in(nn.Linear(4, 4)) is None
