"""LLaMA-family adapter (Llama, Mistral, Qwen2): pre-RMSNorm layers, rotary positions, gated MLP."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from kdp.adapters.base import LayerAdapter, LayerPaths, ModelAdapter


class LlamaLayerAdapter(LayerAdapter):
    paths = LayerPaths(
        attention_norm="input_layernorm",
        mlp_norm="post_attention_layernorm",
        attention="self_attn",
        query_key_value=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        attention_output="self_attn.o_proj",
        mlp_inputs=("mlp.gate_proj", "mlp.up_proj"),
        mlp_output="mlp.down_proj",
    )

    @property
    def num_heads(self) -> int:
        return self.layer.self_attn.q_proj.out_features // self.head_dim

    @property
    def num_kv_heads(self) -> int:
        return self.layer.self_attn.k_proj.out_features // self.head_dim

    def set_head_counts(self, num_heads: int, num_kv_heads: int) -> None:
        # LlamaAttention infers the head count from the projection width; only the GQA grouping is stored.
        if num_heads % num_kv_heads:
            raise ValueError(f"{num_heads} query heads cannot share {num_kv_heads} key/value heads evenly")
        self.layer.self_attn.num_key_value_groups = num_heads // num_kv_heads

    def attention_block(self, normed: torch.Tensor, **layer_kwargs) -> torch.Tensor:
        return self.layer.self_attn(hidden_states=normed, **layer_kwargs)[0]

    def mlp_block(self, normed: torch.Tensor) -> torch.Tensor:
        return self.layer.mlp(normed)


class LlamaAdapter(ModelAdapter):
    layer_adapter = LlamaLayerAdapter

    @property
    def backbone(self) -> nn.Module:
        return self.model.model

    @property
    def final_norm(self) -> nn.Module:
        return self.backbone.norm

    @property
    def norm_eps(self) -> float:
        return float(self.config.rms_norm_eps)

    def apply_final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.backbone.norm(hidden)

    def embedding_modules(self) -> list[nn.Module]:
        return [self.backbone.embed_tokens]

    def decoder_layer_class(self) -> type[nn.Module]:
        return _decoder_class(self.model)

    def new_decoder_layer(self, layer_idx: int) -> nn.Module:
        return _decoder_class(self.model)(self.config, layer_idx)


def _decoder_class(model: nn.Module) -> type[nn.Module]:
    # Each transformers family module defines <Family>DecoderLayer beside <Family>ForCausalLM; walking the MRO
    # also finds it for subclasses living in custom code.
    for cls in type(model).__mro__:
        module = importlib.import_module(cls.__module__)
        candidate = getattr(module, cls.__name__.removesuffix("ForCausalLM") + "DecoderLayer", None)
        if candidate is not None:
            return candidate
    raise TypeError(f"no decoder layer class found for {type(model).__name__}")
