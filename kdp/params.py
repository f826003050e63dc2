"""Typed method hyperparameters, checked when the workflow loads.

A method declares its hyperparameters as a dataclass: each field's annotation is the type a config may give, its
default the method's default, its comment where the value comes from. A nested recipe (a LoRA recovery, a training
stage) is a dataclass field of that dataclass. A mapping of overrides whose keys belong to a record the method builds
in its job (KDP's ``fit:`` of `kdp.linearize.KDPConfig`) is ``Annotated[dict, Keys(types)]``, and ``Keys`` on a
dataclass field names the keys a config may add beyond the recipe's defaults.

`check_value` walks a configured value against the annotation and raises a one-line `UserError` naming the first bad
key and what is allowed; the resolved hyperparameters stay plain dicts (`defaults_of`), so cache keys and the
methods' own code do not change. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from kdp.errors import UserError, bad_value


@dataclass(frozen=True)
class Keys:
    """Keys (name -> type) a mapping may name: all of them for a plain ``dict``, those beyond its fields for a
    dataclass."""

    types: Mapping[str, Any]


def defaults_of(params: type) -> dict[str, Any]:
    """The defaults of a parameter dataclass as plain (deep-copied) values, nested dataclasses as dicts."""
    return dataclasses.asdict(params())


def field_types(params: type) -> dict[str, Any]:
    """Field name -> annotation of a parameter dataclass (string annotations resolved, ``Annotated`` kept)."""
    return typing.get_type_hints(params, include_extras=True)


def inferred_types(defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Types read off a plain ``defaults`` dict (a method declared outside kdp-bench): a number takes any number,
    None anything, a dict its own keys; lenient on purpose, since the author declared values, not types."""
    return {key: _inferred(value) for key, value in defaults.items()}


def check_value(value: Any, annotation: Any, where: str, owner: str) -> None:
    """Raise a one-line `UserError` unless ``value`` fits ``annotation``. ``where`` is the value's config path;
    ``owner`` says whose parameter it is (e.g. "method 'kdp'")."""
    base, extra = _unwrap(annotation)
    if _is_record(base, extra):
        _check_mapping(value, base, extra or {}, where, owner)
        return
    if typing.get_origin(base) in (typing.Union, types.UnionType) and isinstance(value, dict):
        records = [member for member in typing.get_args(base) if _is_record(*_unwrap(member))]
        if records:  # e.g. an optional training recipe given as a mapping
            check_value(value, records[0], where, owner)
            return
    if not _fits(value, base):
        raise bad_value(where, value, describe(base))


def describe(annotation: Any) -> str:
    base, extra = _unwrap(annotation)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if base is Any:
        return "any value"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin in (list, tuple):
        return f"a list of ({describe(args[0])})"
    if dataclasses.is_dataclass(base) or base is dict:
        keys = sorted(_record_types(base, extra or {}))
        return "a mapping" + (f" of {', '.join(keys)}" if keys else "")
    return _NAMES.get(base, getattr(base, "__name__", str(base)))


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "text", type(None): "null"}


def _unwrap(annotation: Any) -> tuple[Any, dict[str, Any] | None]:
    if typing.get_origin(annotation) is Annotated:
        base, *metadata = typing.get_args(annotation)
        extra: dict[str, Any] = {}
        for item in metadata:
            if isinstance(item, Keys):
                extra.update(item.types)
        return base, extra
    return annotation, None


def _is_record(base: Any, extra: Mapping[str, Any] | None) -> bool:
    """A dataclass, or a dict whose keys ``Keys`` declares: checked key by key."""
    return dataclasses.is_dataclass(base) or (base is dict and extra is not None)


def _record_types(base: Any, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Key -> type of the keys a record accepts: a dataclass's fields, then ``Keys``' extra ones."""
    return {**(field_types(base) if dataclasses.is_dataclass(base) else {}), **extra}


def _check_mapping(value: Any, base: Any, extra: Mapping[str, Any], where: str, owner: str) -> None:
    if not isinstance(value, dict):
        raise bad_value(where, value, describe(base))
    allowed = _record_types(base, extra)
    name = where.rsplit(".", 1)[-1]
    for key, item in value.items():
        if key not in allowed:
            raise UserError(f"{where}.{key}: unknown key of {name!r} for {owner}; "
                            f"allowed: {', '.join(sorted(allowed))}")
        check_value(item, allowed[key], f"{where}.{key}", owner)


def _fits(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_fits(item, args[0]) for item in value)
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    return isinstance(value, annotation)


def _inferred(value: Any) -> Any:
    if value is None:
        return Any
    if isinstance(value, bool):
        return bool
    if isinstance(value, (int, float)):
        return float
    if isinstance(value, dict):
        return Annotated[dict, Keys(inferred_types(value))] if value else dict
    if isinstance(value, (list, tuple)):
        return list[Any]
    return type(value)
