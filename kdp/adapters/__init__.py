"""Model adapters, chosen by ``config.model_type``: the only place that knows model families.

`kdp.adapters.families` lists the families and what a config alone tells of them (no torch is imported, so the
workflow and `kdp.flops` can use it when they load); each family's `ModelAdapter` (``llama.py``, ``opt.py``) works
on a loaded model and is imported when one is wrapped.
"""

from __future__ import annotations

from typing import Any

from kdp.adapters.families import FAMILIES, Family, family_for, supported_model_types

# Defined in kdp.adapters.base, which imports torch: loaded on first use (PEP 562) so the family list stays light.
_BASE_NAMES = ("LayerAdapter", "LayerInputs", "ModelAdapter")


def adapter_for(model: Any) -> "ModelAdapter":  # noqa: F821 - a lazily loaded name
    return family_for(getattr(model.config, "model_type", None)).adapter_class()(model)


def __getattr__(name: str) -> Any:
    if name in _BASE_NAMES:
        from kdp.adapters import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FAMILIES", "Family", *_BASE_NAMES, "adapter_for", "family_for", "supported_model_types"]
