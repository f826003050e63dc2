"""Saving pruned models whose architecture changed, so stock ``transformers`` still loads them.

A method that changes the architecture (KDP's fold, Streamline's FFN, SliceGPT's rotated/sliced layers,
LLM-Pruner's narrower layers) records each change as a *structure edit*: a JSON-able dict with a ``factory``
("module:function") that re-applies the change to a freshly constructed model. `apply_edit` applies and stores them in
``config.kdp_structure`` and points ``config.auto_map`` at a one-line shim module saved beside the weights; loading
with ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` builds the stock model, replays the edits
(shapes only), then loads the saved weights into them. Models whose architecture is unchanged get no edits and load
without ``trust_remote_code``.

The shim imports this module, so the kdp-bench package must be installed where the model is loaded.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import transformers
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from kdp.adapters import supported_model_types

STRUCTURE_KEY = "kdp_structure"
BASE_KEY = "kdp_base_layers"
SHIM = Path(__file__).resolve().parent / "hf_shim" / "modeling_kdp_bench.py"


def apply_edit(adapter, edit: dict[str, Any]) -> None:
    """Apply a structure edit through its factory and record it, so that a saved copy rebuilds the same shapes.

    Edits are replayed in order on the model as it was before the first edit, so every architectural change of a
    model that gets custom code must go through here.
    """
    if ":" not in edit.get("factory", ""):
        raise ValueError(f"structure edit needs a 'module:function' factory, got {edit.get('factory')!r}")
    model = adapter.model
    config = model.config
    if not getattr(config, STRUCTURE_KEY, None):
        setattr(config, BASE_KEY, {"num_hidden_layers": config.num_hidden_layers,
                                   "layer_types": getattr(config, "layer_types", None)})
    _factory(edit)(adapter, edit)
    edits = list(getattr(config, STRUCTURE_KEY, None) or [])
    edits.append(edit)
    setattr(model.config, STRUCTURE_KEY, edits)
    family = _family_class(model)
    model.config.auto_map = {"AutoModelForCausalLM": f"modeling_kdp_bench.KdpBench{family.__name__}"}
    model._kdp_custom_code_files = (str(SHIM),)


def apply_structure(model) -> None:
    """Replay the recorded edits on a freshly constructed model (called from the custom classes' __init__)."""
    from kdp.adapters import adapter_for

    adapter = adapter_for(model)
    for edit in getattr(model.config, STRUCTURE_KEY, None) or []:
        _factory(edit)(adapter, edit)


def _factory(edit: dict[str, Any]):
    module_name, _, function_name = edit["factory"].partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def _base_config(config):
    """A copy of ``config`` with the layer count the edits were first applied to."""
    import copy

    base = copy.deepcopy(config)
    for key, value in (getattr(config, BASE_KEY, None) or {}).items():
        if value is not None:
            setattr(base, key, value)
    return base


#: The stock causal-LM class of every model type an adapter supports, from transformers' own auto mapping.
_STOCK_CLASSES = {model_type: getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
                  for model_type in supported_model_types()}


def _family_class(model) -> type:
    family = _STOCK_CLASSES.get(getattr(model.config, "model_type", None))
    if family is None or not isinstance(model, family):
        raise TypeError(f"{type(model).__name__} is not a supported family for structure edits")
    return family


def _custom(family: type) -> type:
    def __init__(self, config, *args, **kwargs):
        family.__init__(self, _base_config(config), *args, **kwargs)
        apply_structure(self)
        self.config = config

    return type(f"KdpBench{family.__name__}", (family,), {"__init__": __init__, "__module__": __name__})


# One custom class per family, KdpBench<stock class>, which the shim saved beside the weights re-exports.
_CUSTOM_CLASSES = {f"KdpBench{family.__name__}": _custom(family) for family in dict.fromkeys(_STOCK_CLASSES.values())}
globals().update(_CUSTOM_CLASSES)
__all__ = ["apply_edit", "apply_structure", *sorted(_CUSTOM_CLASSES)]
