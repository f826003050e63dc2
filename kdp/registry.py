"""The method registry: every pruning method is a declaration the workflow reads when it loads, and one registered
`PruningMethod` subclass that a job imports when it runs the method.

A method declares what it consumes (``requires``), whether it is fitted per block in separate jobs
(``fits_blocks``), its hyperparameters with their defaults (``defaults``) and whether its result depends on a random
draw (``stochastic``: a bool, or a function of the resolved hyperparameters): a `MethodSpec`. A stochastic variant is
built once per configured seed (`kdp.experiment`), a deterministic one once. The workflow turns
``requires`` into input files and checks every configured key against ``defaults`` before any job runs, without
importing the method's module, so parsing the Snakefile needs neither torch nor any method's code.

Where a method name is looked up, in this order:

1. classes registered with ``@register_method`` by a module the config names in ``method_modules`` (a researcher's
   own module on ``PYTHONPATH``); the class body declares ``requires``, ``fits_blocks`` and ``defaults``;
2. ``BUILTIN_METHODS``, kdp-bench's own methods: each name points at its `MethodSpec` in a light module
   (``kdp.methods.specs``, ``baselines.specs``), and the spec names the class; ``@register_method`` gives that class
   the spec's declarations;
3. the entry-point group ``kdp_bench.methods`` of installed packages (``name = "package.module:Class"``): the module is
   imported when a config uses the name, and the class is registered under it.
"""

from __future__ import annotations

import copy
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from kdp.errors import UserError
from kdp.params import check_value, defaults_of, field_types, inferred_types

#: Inputs a method may ask for; the workflow maps each to a file or directory.
REQUIREMENTS = frozenset({"calibration", "hidden_states", "blocks", "block_fits", "teacher"})

#: Keys of a ``variants:`` entry that describe the row rather than parameterise the method.
RESERVED_VARIANT_KEYS = ("method", "label", "paper_method", "benchmarks", "target_ratio")

#: kdp-bench's methods: name -> "module:attribute" of its `MethodSpec`.
BUILTIN_METHODS: dict[str, str] = {
    "dense": "kdp.methods.specs:DENSE",
    "drop_blocks": "kdp.methods.specs:DROP_BLOCKS",
    "kdp": "kdp.methods.specs:KDP",
    "laco": "baselines.specs:LACO",
    "llm_pruner": "baselines.specs:LLM_PRUNER",
    "shortgpt": "baselines.specs:SHORTGPT",
    "sleb": "baselines.specs:SLEB",
    "slicegpt": "baselines.specs:SLICEGPT",
    "streamline": "baselines.specs:STREAMLINE",
}

#: Entry-point group through which an installed package adds methods.
ENTRY_POINT_GROUP = "kdp_bench.methods"

_DECLARED = ("requires", "fits_blocks", "defaults", "stochastic")


@dataclass(frozen=True)
class MethodSpec:
    """What the workflow needs of a method before any job runs; the class (``implementation``,
    "module:Class") is imported only by `load`, when a job prunes or fits with the method."""

    implementation: str
    requires: frozenset[str] = frozenset()
    fits_blocks: bool = False
    #: the hyperparameters' defaults; derived from ``params`` where the method declares a dataclass
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: whether the result depends on a random draw (init, sampling, training order): a bool, or a function of the
    #: resolved hyperparameters (e.g. only a recovery fine-tune draws at random)
    stochastic: bool | Callable[[Mapping[str, Any]], bool] = False
    name: str = ""  # the registry fills it in
    #: the hyperparameters as a dataclass (`kdp.params`): types, defaults and docs in one place, so every key,
    #: nested ones included, is checked when the config loads, not in a job
    params: type | None = None

    def __post_init__(self):
        object.__setattr__(self, "requires", frozenset(self.requires))
        unknown = self.requires - REQUIREMENTS
        if unknown:
            raise TypeError(f"{self.implementation}: requires has unknown entries {sorted(unknown)}; "
                            f"allowed: {sorted(REQUIREMENTS)}")
        if self.params is not None:
            declared = defaults_of(self.params)
            if self.defaults and dict(self.defaults) != declared:
                raise TypeError(f"{self.implementation}: declare defaults in params or in defaults, not both")
            object.__setattr__(self, "defaults", declared)

    @property
    def types(self) -> dict[str, Any]:
        """Hyperparameter -> the type a config may give (read off ``defaults`` for a method without ``params``)."""
        return field_types(self.params) if self.params is not None else inferred_types(self.defaults)

    def draws_at_random(self, params: Mapping[str, Any]) -> bool:
        return bool(self.stochastic(params) if callable(self.stochastic) else self.stochastic)

    def load(self) -> type["PruningMethod"]:
        cls = _import(self.implementation, f"method {self.name!r}")
        if _CLASSES.get(self.name) is not cls:
            raise TypeError(f"{self.implementation} is not registered as method {self.name!r}; "
                            f"decorate it with @register_method({self.name!r})")
        return cls

    def build(self, params: dict[str, Any]) -> "PruningMethod":
        """The method, ready to prune with ``params`` (importing its module)."""
        return self.load()(params)


@dataclass
class PruneContext:
    """Everything a method may use; fields a method did not ask for (``requires``) are None."""

    model: Any
    adapter: Any
    tokenizer: Any
    params: dict[str, Any]
    target_ratio: float
    seed: int
    device: Any
    model_name: str
    calibration: Any = None
    hidden: Any = None
    blocks: list | None = None
    block_fits: dict | None = None
    load_teacher: Any = None
    workdir: Path | None = None
    log: Any = None


@dataclass
class PruneRecord:
    """What a method reports besides the pruned model; the workflow adds ratio, provenance and timing."""

    layers_removed: list[int] = field(default_factory=list)
    blocks: list[list[int]] = field(default_factory=list)
    samples: dict[str, int] = field(default_factory=dict)  # what the method consumed, by purpose (Table 8)
    details: dict[str, Any] = field(default_factory=dict)


class PruningMethod(ABC):
    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    defaults: ClassVar[dict[str, Any]] = {}
    #: True when the method is fitted per selected block in independent jobs (``fit_block``) before ``prune``.
    fits_blocks: ClassVar[bool] = False
    #: True (or a function of the params returning True) when the result depends on a random draw (`MethodSpec`).
    stochastic: ClassVar[Any] = False

    def __init__(self, params: dict[str, Any]):
        self.params = params

    @abstractmethod
    def prune(self, ctx: PruneContext) -> PruneRecord:
        """Modify ``ctx.model`` in place (through ``ctx.adapter``) and describe what was done."""

    def fit_block(self, ctx: PruneContext, block, out_dir: Path) -> dict[str, Any]:
        raise TypeError(f"method {self.name!r} is not fitted per block")


_SPECS: dict[str, MethodSpec] = {}
_CLASSES: dict[str, type[PruningMethod]] = {}


def register_method(name: str):
    """Class decorator: register a `PruningMethod` under ``name``. A built-in method's class takes ``requires``,
    ``fits_blocks``, ``defaults`` and ``stochastic`` from its spec; any other class declares them in its body."""

    def decorate(cls: type[PruningMethod]) -> type[PruningMethod]:
        if not (isinstance(cls, type) and issubclass(cls, PruningMethod)):
            raise TypeError(f"{cls!r} must subclass PruningMethod to be registered")
        implementation = f"{cls.__module__}:{cls.__qualname__}"
        spec = _builtin_spec(name) if name in BUILTIN_METHODS else None
        if spec is not None and spec.implementation != implementation:
            raise TypeError(f"method name {name!r} is kdp-bench's {spec.implementation}, not {implementation}")
        if name in _CLASSES and _CLASSES[name] is not cls:
            raise TypeError(f"method name {name!r} is already registered by {_CLASSES[name].__name__}")
        if spec is not None:
            in_body = [key for key in _DECLARED if key in vars(cls)]
            if in_body:
                raise TypeError(f"{implementation} declares {', '.join(in_body)} in its body; "
                                f"they belong to its spec, {BUILTIN_METHODS[name]}")
            cls.requires, cls.fits_blocks, cls.defaults = spec.requires, spec.fits_blocks, spec.defaults
            cls.stochastic = spec.stochastic
        else:
            spec = MethodSpec(implementation, cls.requires, cls.fits_blocks, cls.defaults, stochastic=cls.stochastic,
                              name=name)
        cls.name = name
        _CLASSES[name] = cls
        _SPECS[name] = spec
        return cls

    return decorate


def import_method_modules(modules: Iterable[str]) -> None:
    """Import the config's ``method_modules``, whose classes register themselves."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise UserError(f"method_modules: cannot import {module!r} ({error}); allowed: an importable module") from error


def method_names() -> list[str]:
    """Every method a config may name: registered, built in, or offered by an installed package."""
    return sorted({*_SPECS, *BUILTIN_METHODS, *_entry_points()})


def method_spec(name: str, where: str) -> MethodSpec:
    """The declaration of method ``name``; a built-in one is read without importing the method's module."""
    if name in _SPECS:
        return _SPECS[name]
    if name in BUILTIN_METHODS:
        return _builtin_spec(name)
    if name in _entry_points():
        return _entry_point_spec(name)
    raise UserError(f"{where}: method {name!r} is unknown; allowed: {', '.join(method_names())}")


def resolve_params(config: dict[str, Any], variant: str, model: str | None = None) -> tuple[MethodSpec, dict]:
    """Method spec and hyperparameters of a variant: the method's defaults < config ``methods.<method>`` < variant
    entry < the model's ``overrides.<method>``."""
    import_method_modules(config.get("method_modules", ()))
    entry = config["variants"][variant]
    spec = method_spec(entry["method"], f"variants.{variant}.method")
    params = copy.deepcopy(dict(spec.defaults))
    layers = [(config.get("methods", {}).get(spec.name, {}), f"methods.{spec.name}"),
              ({k: v for k, v in entry.items() if k not in RESERVED_VARIANT_KEYS}, f"variants.{variant}")]
    if model is not None:
        overrides = config["models"][model].get("overrides", {}).get(spec.name, {})
        layers.append((overrides, f"models.{model}.overrides.{spec.name}"))
    types = spec.types
    for values, where in layers:
        for key, value in values.items():
            if key not in params:
                raise UserError(f"{where}.{key}: unknown parameter of method {spec.name!r}; "
                                f"allowed: {', '.join(sorted(params)) or 'none'}")
            check_value(value, types[key], f"{where}.{key}", f"method {spec.name!r}")
            params[key] = _merge(params[key], value)
    return spec, params


def _builtin_spec(name: str) -> MethodSpec:
    spec = _import(BUILTIN_METHODS[name], f"built-in method {name!r}")
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"{BUILTIN_METHODS[name]} is a {type(spec).__name__}, not a MethodSpec")
    return replace(spec, name=name)


@lru_cache(maxsize=None)
def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {point.name: point for point in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _entry_point_spec(name: str) -> MethodSpec:
    point = _entry_points()[name]
    where = f"entry point {name} = {point.value} ({ENTRY_POINT_GROUP})"
    cls = _import(point.value, where)
    if not (isinstance(cls, type) and issubclass(cls, PruningMethod)):
        raise UserError(f"{where}: {point.value} is not a PruningMethod subclass; allowed: a method class")
    if cls.name and cls.name != name:
        raise UserError(f"{where}: the class is registered as {cls.name!r}; allowed: the entry point's own name")
    if name not in _CLASSES:
        register_method(name)(cls)
    return _SPECS[name]


def _import(target: str, where: str) -> Any:
    module_name, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise UserError(f"{where}: cannot import {target!r} ({error}); allowed: an importable 'module:attribute'") \
            from error


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base.get(key), value)
        return merged
    return copy.deepcopy(override)
