"""The model families kdp-bench supports, as far as a transformers config describes them.

A `Family` says which ``config.model_type`` values it covers, where its `ModelAdapter` lives (imported only when a
loaded model is wrapped) and the shapes `kdp.flops` counts: one decoder layer's linear maps and norms, and what
surrounds the layers (embeddings, final norm, LM head). Nothing here imports torch, so the workflow can size jobs
and count FLOPs from a config alone; everything that needs a loaded model is in the family's adapter module.

Adding a family is one `Family` subclass here, listed in ``FAMILIES``, plus its adapter module beside this one.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any

from kdp.errors import UserError
from kdp.flops import DecoderLayerSpec, LayerLike, Linear, ModelSpec


class Family(ABC):
    model_types: tuple[str, ...] = ()
    #: "module:Class" of the family's `ModelAdapter`.
    adapter: str = ""

    def adapter_class(self) -> type:
        module, _, name = self.adapter.partition(":")
        return getattr(importlib.import_module(module), name)

    # -- shapes from the config alone (kdp.flops) ----------------------------------------------------------------
    @abstractmethod
    def decoder_layer(self, config: Any, d: int, heads: int, kv_heads: int, ffn: int) -> DecoderLayerSpec:
        """One decoder layer with residual width ``d``, ``heads`` query heads, ``kv_heads`` key/value heads and
        ``ffn`` MLP channels (the config's own values, or pruned ones)."""

    @abstractmethod
    def around_layers(self, config: Any, d: int, layers: tuple[LayerLike, ...]) -> ModelSpec:
        """The whole model: ``layers`` with the embeddings, final norm and LM head of residual width ``d``."""

    @abstractmethod
    def ffn_size(self, config: Any) -> int: ...

    def kv_heads(self, config: Any) -> int:
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads

    @staticmethod
    def head_dim(config: Any) -> int:
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _attention(d: int, query_width: int, kv_width: int, bias: bool, output_bias: bool) -> tuple[Linear, ...]:
    """Query, key, value and output projections."""
    return (Linear(d, query_width, bias), Linear(d, kv_width, bias), Linear(d, kv_width, bias),
            Linear(query_width, d, output_bias))


class LlamaFamily(Family):
    """Llama, Mistral: RMSNorm (weight only), gated MLP, grouped-query attention, no positional weights."""

    model_types = ("llama", "mistral")
    adapter = "kdp.adapters.llama:LlamaAdapter"

    def decoder_layer(self, config: Any, d: int, heads: int, kv_heads: int, ffn: int) -> DecoderLayerSpec:
        head_dim = self.head_dim(config)
        mlp_bias = bool(getattr(config, "mlp_bias", False))
        query_width = heads * head_dim
        linears = (*_attention(d, query_width, kv_heads * head_dim, *self._attention_biases(config)),
                   Linear(d, ffn, mlp_bias), Linear(d, ffn, mlp_bias), Linear(ffn, d, mlp_bias))
        return DecoderLayerSpec(linears=linears, norm_parameters=2 * d, attention_width=query_width)

    @staticmethod
    def _attention_biases(config: Any) -> tuple[bool, bool]:
        """(query/key/value bias, output bias)."""
        bias = bool(getattr(config, "attention_bias", False))
        return bias, bias

    def around_layers(self, config: Any, d: int, layers: tuple[LayerLike, ...]) -> ModelSpec:
        return ModelSpec(
            model_type=config.model_type,
            layers=layers,
            embedding_parameters=config.vocab_size * d,
            final_norm_parameters=d,
            head=Linear(d, config.vocab_size),
            head_tied=bool(getattr(config, "tie_word_embeddings", False)),
        )

    def ffn_size(self, config: Any) -> int:
        return config.intermediate_size


class Qwen2Family(LlamaFamily):
    """Qwen2: a Llama layer whose query, key and value projections always have a bias (the output one never)."""

    model_types = ("qwen2",)

    @staticmethod
    def _attention_biases(config: Any) -> tuple[bool, bool]:
        return True, False


class OPTFamily(Family):
    """OPT: LayerNorm (weight and bias), fc1/fc2 MLP, biases everywhere, learned positions, optional
    project_in/out around the layers when the embedding width differs from the residual width."""

    model_types = ("opt",)
    adapter = "kdp.adapters.opt:OPTAdapter"

    def decoder_layer(self, config: Any, d: int, heads: int, kv_heads: int, ffn: int) -> DecoderLayerSpec:
        del kv_heads  # OPT has no grouped-query attention: keys and values use every head
        bias = bool(getattr(config, "enable_bias", True))
        width = heads * self.head_dim(config)
        linears = (*_attention(d, width, width, bias, bias), Linear(d, ffn, bias), Linear(ffn, d, bias))
        return DecoderLayerSpec(linears=linears, norm_parameters=2 * self._norm_parameters(config, d),
                                attention_width=width)

    def around_layers(self, config: Any, d: int, layers: tuple[LayerLike, ...]) -> ModelSpec:
        projected = config.word_embed_proj_dim
        # transformers' OPTLearnedPositionalEmbedding keeps 2 extra rows (a fairseq offset)
        positions = (config.max_position_embeddings + 2) * d
        projections = () if projected == d else (Linear(d, projected), Linear(projected, d))
        has_final_norm = config.do_layer_norm_before and not getattr(config, "_remove_final_layer_norm", False)
        return ModelSpec(
            model_type=config.model_type,
            layers=layers,
            embedding_parameters=config.vocab_size * projected + positions,
            final_norm_parameters=self._norm_parameters(config, d) if has_final_norm else 0,
            head=Linear(projected, config.vocab_size),
            head_tied=bool(getattr(config, "tie_word_embeddings", True)),
            extra_linears=projections,
        )

    def ffn_size(self, config: Any) -> int:
        return config.ffn_dim

    @staticmethod
    def _norm_parameters(config: Any, d: int) -> int:
        return 2 * d if getattr(config, "layer_norm_elementwise_affine", True) else 0  # weight and bias


FAMILIES: tuple[Family, ...] = (LlamaFamily(), Qwen2Family(), OPTFamily())


def supported_model_types() -> list[str]:
    return sorted(model_type for family in FAMILIES for model_type in family.model_types)


def family_for(model_type: str | None) -> Family:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise UserError(
        f"model_type {model_type!r} has no adapter; supported model types: {', '.join(supported_model_types())}"
    )
