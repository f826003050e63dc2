"""OPT adapter: pre-LayerNorm layers (OPT >= 1.3B), learned absolute positions, fc1/fc2 MLP, biases everywhere.

OPT-350m (post-LN, project_in/out) is not supported: its residual stream is not the pre-norm stream the
similarity-based methods assume.
"""

from __future__ import annotations

import torch
from torch import nn

from kdp.adapters.base import LayerAdapter, LayerPaths, ModelAdapter
from kdp.errors import UserError


class OPTLayerAdapter(LayerAdapter):
    paths = LayerPaths(
        attention_norm="self_attn_layer_norm",
        mlp_norm="final_layer_norm",
        attention="self_attn",
        query_key_value=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        attention_output="self_attn.out_proj",
        mlp_inputs=("fc1",),
        mlp_output="fc2",
    )

    @property
    def num_heads(self) -> int:
        return int(self.layer.self_attn.num_heads)

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    def set_head_counts(self, num_heads: int, num_kv_heads: int) -> None:
        if num_heads != num_kv_heads:
            raise ValueError("OPT attention has no grouped key/value heads")
        attn = self.layer.self_attn
        attn.num_heads = num_heads
        attn.embed_dim = num_heads * attn.head_dim

    def attention_block(self, normed: torch.Tensor, **layer_kwargs) -> torch.Tensor:
        attended = self.layer.self_attn(hidden_states=normed, **layer_kwargs)[0]
        return nn.functional.dropout(attended, p=self.layer.dropout, training=self.layer.training)

    def mlp_block(self, normed: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        hidden = layer.fc2(layer.activation_fn(layer.fc1(normed)))
        return nn.functional.dropout(hidden, p=layer.dropout, training=layer.training)


class OPTAdapter(ModelAdapter):
    layer_adapter = OPTLayerAdapter

    def __init__(self, model: nn.Module):
        super().__init__(model)
        config = model.config
        if not config.do_layer_norm_before or config.word_embed_proj_dim != config.hidden_size:
            raise UserError(
                "OPT variants with post-LayerNorm or project_in/out (OPT-350m) are not supported; "
                "supported: pre-LayerNorm OPT (125m, 1.3b, 2.7b, 6.7b, 13b, ...)"
            )

    @property
    def backbone(self) -> nn.Module:
        return self.model.model.decoder

    @property
    def final_norm(self) -> nn.Module | None:
        return self.backbone.final_layer_norm

    @property
    def norm_eps(self) -> float:
        # OPT builds every LayerNorm with torch's default epsilon; the config does not record it.
        return 1e-5

    def apply_final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        norm = self.backbone.final_layer_norm
        return hidden if norm is None else norm(hidden)

    def embedding_modules(self) -> list[nn.Module]:
        return [self.backbone.embed_tokens, self.backbone.embed_positions]

    def decoder_layer_class(self) -> type[nn.Module]:
        from transformers.models.opt.modeling_opt import OPTDecoderLayer

        return OPTDecoderLayer

    def new_decoder_layer(self, layer_idx: int) -> nn.Module:
        return self.decoder_layer_class()(self.config, layer_idx)
