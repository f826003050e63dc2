"""One interface over decoder-only model families, so that pruning methods never touch model internals.

A `ModelAdapter` wraps a Hugging Face causal LM and exposes what pruning needs: the decoder layers, how to run
them one at a time on captured inputs, how to remove or replace a span of them while keeping the KV cache and
`generate()` working, and parameter counts. A `LayerAdapter` names the linear maps and norms inside one decoder
layer for the width pruners (SliceGPT, LLM-Pruner) and for weight merging (LaCo).

Family-specific code lives in one file per family (`llama.py`, `opt.py`) and, for what a config alone tells,
in `families.py`; the family is chosen by `config.model_type`, never by a hub id.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar

import torch
from torch import nn


class _CaughtLayerInput(Exception):
    def __init__(self, args: tuple, kwargs: dict):
        super().__init__("caught decoder layer input")
        self.args = args
        self.kwargs = kwargs


@dataclass
class LayerInputs:
    """What the model feeds its first decoder layer for one batch: the residual stream and the shared kwargs.

    The kwargs (causal mask, rotary position embeddings, position ids) are produced by the model's own forward,
    so running layers one by one with them is exactly what the full forward does.
    """

    hidden_states: torch.Tensor
    layer_kwargs: dict[str, Any]

    def to(self, device: torch.device | str) -> "LayerInputs":
        return LayerInputs(self.hidden_states.to(device), _move(self.layer_kwargs, device))


def _move(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_move(v, device) for v in value)
    if isinstance(value, list):
        return [_move(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class LayerPaths:
    """Attribute paths of the parts of a family's decoder layer, relative to the layer (e.g. ``self_attn.q_proj``)."""

    attention_norm: str
    mlp_norm: str
    attention: str
    query_key_value: tuple[str, str, str]
    attention_output: str
    mlp_inputs: tuple[str, ...]
    mlp_output: str


class LayerAdapter(ABC):
    """Names the parts of one decoder layer that width pruners and weight mergers act on."""

    #: Where the family keeps each part inside its decoder layer.
    paths: ClassVar[LayerPaths]

    def __init__(self, layer: nn.Module):
        self.layer = layer

    def _part(self, path: str) -> nn.Module:
        return attrgetter(path)(self.layer)

    @property
    def attention_norm(self) -> nn.Module:
        return self._part(self.paths.attention_norm)

    @property
    def mlp_norm(self) -> nn.Module:
        return self._part(self.paths.mlp_norm)

    @property
    def query_key_value(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        query, key, value = (self._part(path) for path in self.paths.query_key_value)
        return query, key, value

    @property
    def attention_output(self) -> nn.Linear:
        """The linear that writes attention back to the residual stream."""
        return self._part(self.paths.attention_output)

    @property
    def mlp_inputs(self) -> list[nn.Linear]:
        """Linears that read the (normed) residual stream into the MLP (gate and up, or fc1)."""
        return [self._part(path) for path in self.paths.mlp_inputs]

    @property
    def mlp_output(self) -> nn.Linear:
        """The linear that writes the MLP back to the residual stream (down, or fc2)."""
        return self._part(self.paths.mlp_output)

    @property
    def head_dim(self) -> int:
        return int(self._part(self.paths.attention).head_dim)

    @property
    @abstractmethod
    def num_heads(self) -> int: ...

    @property
    @abstractmethod
    def num_kv_heads(self) -> int: ...

    @abstractmethod
    def set_head_counts(self, num_heads: int, num_kv_heads: int) -> None:
        """Record new head counts after heads were pruned, so the attention reshapes its projections correctly."""

    @abstractmethod
    def attention_block(self, normed: torch.Tensor, **layer_kwargs) -> torch.Tensor:
        """Self-attention on the normed residual stream: what the layer adds to the stream (before the residual)."""

    @abstractmethod
    def mlp_block(self, normed: torch.Tensor) -> torch.Tensor:
        """The MLP on the normed residual stream: what the layer adds to the stream (before the residual)."""

    @property
    def attention_inputs(self) -> list[nn.Linear]:
        """Linears that read the (normed) residual stream into attention: q, k, v."""
        return list(self.query_key_value)

    @property
    def norms(self) -> list[nn.Module]:
        return [self.attention_norm, self.mlp_norm]

    def linears(self) -> list[nn.Linear]:
        return [*self.attention_inputs, self.attention_output, *self.mlp_inputs, self.mlp_output]


class ModelAdapter(ABC):
    """Family-agnostic handle on a decoder-only causal LM (`kdp.adapters.families` says which family gets which)."""

    #: The family's `LayerAdapter`.
    layer_adapter: ClassVar[type[LayerAdapter]]

    def __init__(self, model: nn.Module):
        self.model = model

    # -- structure -------------------------------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    @abstractmethod
    def backbone(self) -> nn.Module:
        """The module that owns the decoder layers (the one `forward` of which runs embeddings + layers + norm)."""

    @property
    def layers(self) -> nn.ModuleList:
        return self.backbone.layers

    def _set_layers(self, layers: Sequence[nn.Module]) -> None:
        self.backbone.layers = nn.ModuleList(layers)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    @abstractmethod
    def final_norm(self) -> nn.Module | None: ...

    @property
    @abstractmethod
    def norm_eps(self) -> float:
        """The epsilon every norm of the model adds to the mean square (or variance) before the square root."""

    @property
    def lm_head(self) -> nn.Linear:
        return self.model.get_output_embeddings()

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def heads_are_tied(self) -> bool:
        return self.lm_head.weight is self.token_embedding.weight

    @abstractmethod
    def embedding_modules(self) -> list[nn.Module]:
        """Modules that write into the residual stream before layer 0 (token and, for OPT, position embeddings)."""

    def layer(self, index: int) -> LayerAdapter:
        return self.layer_adapter(self.layers[index])

    def is_decoder_layer(self, module: nn.Module) -> bool:
        return isinstance(module, self.decoder_layer_class())

    def decoder_layer_in(self, module: nn.Module) -> LayerAdapter | None:
        """The parts of the decoder layer ``module`` is or wraps (e.g. SliceGPT's shortcut wrapper); None for a
        replacement without one (a KDP fold, Streamline's FFN)."""
        decoder = self.decoder_layer_class()
        found = next((sub for sub in module.modules() if isinstance(sub, decoder)), None)
        return None if found is None else self.layer_adapter(found)

    @abstractmethod
    def decoder_layer_class(self) -> type[nn.Module]: ...

    @abstractmethod
    def new_decoder_layer(self, layer_idx: int) -> nn.Module:
        """A freshly initialised decoder layer of this model's configuration (Streamline's replacement layer)."""

    # -- running layers one at a time ------------------------------------------------------------------------
    @torch.no_grad()
    def layer_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> LayerInputs:
        """Run the model up to its first decoder layer and return that layer's input and kwargs."""

        def catch(_module, args, kwargs):
            raise _CaughtLayerInput(args, kwargs)

        handle = self.layers[0].register_forward_pre_hook(catch, with_kwargs=True)
        try:
            self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _CaughtLayerInput as caught:
            args, kwargs = caught.args, dict(caught.kwargs)
        else:  # pragma: no cover - the hook always fires
            raise RuntimeError("the first decoder layer was never called")
        finally:
            handle.remove()
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs.pop("hidden_states", None)
        kwargs["use_cache"] = False
        kwargs["past_key_values"] = None
        return LayerInputs(hidden, kwargs)

    def run_layers(self, hidden: torch.Tensor, layer_kwargs: dict[str, Any], first: int, stop: int) -> torch.Tensor:
        """Apply layers[first:stop] to ``hidden`` exactly as the model's own forward does."""
        for index in range(first, stop):
            hidden = _as_tensor(self.layers[index](hidden, **layer_kwargs))
        return hidden

    @torch.no_grad()
    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head applied to the residual stream after the last layer."""
        return self.lm_head(self.apply_final_norm(hidden))

    @abstractmethod
    def apply_final_norm(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def append_to_final_norm(self, module: nn.Module) -> None:
        """Run ``module`` after the final norm, right before the output head (KDP's logit adapter)."""
        self.replace_module(self.final_norm, nn.Sequential(self.final_norm, module))

    def replace_module(self, old: nn.Module, new: nn.Module) -> None:
        """Put ``new`` wherever ``old`` sits in the model (every parent that holds it)."""
        found = False
        for parent in self.model.modules():
            for name, child in list(parent.named_children()):
                if child is old and parent is not new:
                    setattr(parent, name, new)
                    found = True
        if not found:
            raise ValueError(f"{type(old).__name__} is not a submodule of the model")

    # -- editing ----------------------------------------------------------------------------------------------
    def remove_layers(self, indices: Iterable[int]) -> None:
        """Delete decoder layers; the remaining ones are renumbered so the KV cache indexes them correctly."""
        doomed = set(self._checked_indices(indices))
        kept = [index for index in range(self.num_layers) if index not in doomed]
        if not kept:
            raise ValueError("cannot remove every decoder layer")
        self._rebuild([(self.layers[index], index) for index in kept])

    def replace_span(self, first: int, last: int, module: nn.Module) -> None:
        """Layers ``first..last`` (inclusive) become ``module``, called like a decoder layer."""
        self._checked_indices([first, last])
        if last < first:
            raise ValueError(f"span [{first}, {last}] is empty")
        entries = [(self.layers[i], i) for i in range(first)]
        entries.append((module, first))
        entries += [(self.layers[i], i) for i in range(last + 1, self.num_layers)]
        self._rebuild(entries)

    def _checked_indices(self, indices: Iterable[int]) -> list[int]:
        indices = list(indices)
        bad = [i for i in indices if not 0 <= i < self.num_layers]
        if bad:
            raise IndexError(f"layer indices {bad} outside the model's {self.num_layers} layers")
        return indices

    def _rebuild(self, entries: list[tuple[nn.Module, int]]) -> None:
        """Install ``(module, original index)`` entries as the new layer list and fix every index-dependent field."""
        old_types = getattr(self.config, "layer_types", None)
        self._set_layers([module for module, _ in entries])
        for position, (module, _) in enumerate(entries):
            _renumber(module, position)
        self.config.num_hidden_layers = len(entries)
        if old_types is not None:
            self.config.layer_types = [old_types[original] for _, original in entries]

    # -- counting ---------------------------------------------------------------------------------------------
    def parameter_count(self) -> int:
        """Distinct parameters of the whole model (a tied head is counted once)."""
        return sum(p.numel() for p in _unique_parameters(self.model))

    def layer_parameter_count(self, index: int) -> int:
        return sum(p.numel() for p in _unique_parameters(self.layers[index]))


def _as_tensor(output: Any) -> torch.Tensor:
    # transformers 5 decoder layers return a tensor; older ones (and some wrappers) return a tuple.
    return output[0] if isinstance(output, tuple) else output


def _renumber(module: nn.Module, position: int) -> None:
    for sub in module.modules():
        if hasattr(sub, "layer_idx"):
            sub.layer_idx = position


def _unique_parameters(module: nn.Module) -> list[nn.Parameter]:
    seen: set[int] = set()
    unique = []
    for param in module.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            unique.append(param)
    return unique
