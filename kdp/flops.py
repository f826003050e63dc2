"""Analytic parameter and FLOP counts computed from a model config alone (no weights needed).

Why: Tables 10 and 12 of the KDP paper print FLOPs and parameter counts for dense models, baselines and the
KDP fold block. To check those numbers, and to print the same quantities for this project's variants, every
count has to follow one stated convention.

The convention (``PAPER_CONVENTION``) comes from a search over ``candidate_conventions``: sequence length, one
or two FLOPs per multiply-add, attention-score terms (none, causal or full), and the LM head in or out. The
targets were Table 10's dense rows (LLaMA-2-7B 845.71 G, LLaMA-2-13B 1645.01 G) and Table 12's transformer-block
rows, each to its printed precision:

    FLOPs = multiply-accumulates (MACs) of every Linear layer, counted once, for one sequence of 128 tokens
            (batch 1), LM head included; no attention-score (QK^T, AV) terms, no norms, activations, softmax,
            embedding look-up or bias additions.

Only this count reproduces the dense rows. It can be read either as MACs at 128 tokens or as 2 FLOPs per MAC
at 64 tokens; Appendix B extracts 128-token sequences, so the first reading is the one stated. The count also
reproduces all four Table 12 parameter cells and three of the four Table 12 FLOPs cells. The exception is the
LLaMA-2-7B k=2 block: it comes to 51.808 G but is printed 51.80, so the paper seems to truncate there rather than
round. No candidate convention (any sequence length from 1 to 4096) reproduces every block cell by rounding.
Under the same count, Table 12's fold-block FLOPs are out of reach for any fold with the printed parameter count,
and Table 10's SliceGPT rows match no residual width. ``kdp.audit`` reports both.

Parameters count every tensor once (a tied LM head is not counted again), including norms, biases and OPT's
learned positional embeddings (``max_position_embeddings + 2`` rows, as in transformers' OPT).

Decoder layers and KDP fold blocks are plain data (``DecoderLayerSpec``, ``FoldSpec``), so a pruned variant is
just a different list of specs: remove layers, replace spans with folds, narrow the residual stream
(SliceGPT) or give single layers fewer heads or FFN channels (LLM-Pruner). See ``variant_spec``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from kdp.errors import UserError, bad_value

AttentionTerms = Literal["none", "causal", "full"]

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "resources" / "model_configs"


@dataclass(frozen=True)
class Convention:
    """How FLOPs are counted. ``seq_len`` tokens of one sequence; batch is a plain multiplier, so it is folded
    into ``seq_len`` (batch 2 x 64 tokens counts like 128 tokens without attention terms)."""

    seq_len: int = 128
    flops_per_mac: int = 1
    attention_terms: AttentionTerms = "none"
    lm_head: bool = True

    def describe(self) -> str:
        mac = "one FLOP per multiply-add (MACs)" if self.flops_per_mac == 1 else "two FLOPs per multiply-add"
        head = "LM head included" if self.lm_head else "LM head excluded"
        return (
            f"Linear-layer {mac} for one sequence of {self.seq_len} tokens; attention score terms: "
            f"{self.attention_terms}; {head}; norms, activations, softmax and embedding look-ups not counted"
        )


PAPER_CONVENTION = Convention(seq_len=128, flops_per_mac=1, attention_terms="none", lm_head=True)

CONVENTION: dict[str, Any] = {**asdict(PAPER_CONVENTION), "description": PAPER_CONVENTION.describe()}


@dataclass(frozen=True)
class Linear:
    in_features: int
    out_features: int
    bias: bool = False

    @property
    def parameters(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)

    @property
    def macs_per_token(self) -> int:
        return self.in_features * self.out_features


@dataclass(frozen=True)
class DecoderLayerSpec:
    """One decoder layer as data: its Linear maps, norm parameters, and the width over which attention scores
    and the weighted sum of values are taken (query heads x head dim)."""

    linears: tuple[Linear, ...]
    norm_parameters: int
    attention_width: int

    @property
    def parameters(self) -> int:
        return sum(linear.parameters for linear in self.linears) + self.norm_parameters

    def flops(self, convention: Convention) -> int:
        macs = convention.seq_len * sum(linear.macs_per_token for linear in self.linears)
        return convention.flops_per_mac * (macs + _attention_macs(self.attention_width, convention))


def _attention_macs(width: int, convention: Convention) -> int:
    """MACs of QK^T plus attention-weighted V for one sequence."""
    n = convention.seq_len
    pairs = {"none": 0, "causal": n * (n + 1) // 2, "full": n * n}[convention.attention_terms]
    return 2 * pairs * width


@dataclass(frozen=True)
class FoldSpec:
    """A KDP fold block replacing a span of layers: S(h) = alpha * MLP((prod A_i) phi(h)).

    ``rff_dim`` is 2m (the kernel feature size), ``rank`` the rank r of L, ``hidden`` the inverse MLP's width.
    The counts are the direct ones (what must be stored / computed at inference): see
    ``fold_parameters_direct`` and ``fold_macs_per_token``.
    """

    d: int
    rff_dim: int
    rank: int
    hidden: int

    @property
    def parameters(self) -> int:
        return fold_parameters_direct(self.d, self.rff_dim, self.rank, self.hidden)

    def flops(self, convention: Convention) -> int:
        macs = convention.seq_len * fold_macs_per_token(self.d, self.rff_dim, self.hidden)
        return convention.flops_per_mac * macs


LayerLike = DecoderLayerSpec | FoldSpec


@dataclass(frozen=True)
class ModelSpec:
    """Everything a parameter or FLOP count needs, as plain numbers."""

    model_type: str
    layers: tuple[LayerLike, ...]
    embedding_parameters: int
    final_norm_parameters: int
    head: Linear
    head_tied: bool
    extra_linears: tuple[Linear, ...] = field(default=())

    @property
    def parameters(self) -> int:
        head = 0 if self.head_tied else self.head.parameters
        extras = sum(linear.parameters for linear in self.extra_linears)
        layers = sum(layer.parameters for layer in self.layers)
        return self.embedding_parameters + extras + layers + self.final_norm_parameters + head

    def flops(self, convention: Convention = PAPER_CONVENTION) -> int:
        layers = sum(layer.flops(convention) for layer in self.layers)
        extras = convention.seq_len * sum(linear.macs_per_token for linear in self.extra_linears)
        head = convention.seq_len * self.head.macs_per_token if convention.lm_head else 0
        return layers + convention.flops_per_mac * (extras + head)


# ------------------------------------------------------------------------------------------- dense models


def model_config_keys(directory: Path = MODEL_CONFIG_DIR) -> list[str]:
    return sorted(path.stem for path in directory.glob("*.json"))


def load_model_config(key: str, directory: Path = MODEL_CONFIG_DIR) -> Any:
    """The transformers config of one of the paper's models, from ``resources/model_configs/{key}.json``."""
    from transformers import AutoConfig  # deferred: the pure counting functions need no transformers

    path = directory / f"{key}.json"
    if not path.is_file():
        raise bad_value("model config", key, model_config_keys(directory))
    with open(path, encoding="utf-8") as handle:
        return AutoConfig.for_model(**json.load(handle))


def _family(config: Any):
    # Deferred: kdp.adapters' families describe their shapes with this module's specs.
    from kdp.adapters import family_for

    return family_for(getattr(config, "model_type", None))


def decoder_layer_spec(
    config: Any,
    *,
    width: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
    ffn: int | None = None,
) -> DecoderLayerSpec:
    """A decoder layer of ``config``'s family; keyword overrides give pruned shapes (residual ``width`` for
    SliceGPT, ``heads``/``kv_heads``/``ffn`` for LLM-Pruner)."""
    family = _family(config)
    return family.decoder_layer(
        config,
        width or config.hidden_size,
        heads or config.num_attention_heads,
        kv_heads or family.kv_heads(config),
        ffn or family.ffn_size(config),
    )


def model_spec(config: Any, *, width: int | None = None) -> ModelSpec:
    """The dense model of ``config`` (``width`` narrows the residual stream everywhere, as SliceGPT does)."""
    family = _family(config)
    d = width or config.hidden_size
    layers = tuple(decoder_layer_spec(config, width=d) for _ in range(config.num_hidden_layers))
    return family.around_layers(config, d, layers)


def layer_parameters(config: Any) -> int:
    return decoder_layer_spec(config).parameters


def layer_flops(config: Any, convention: Convention = PAPER_CONVENTION) -> int:
    return decoder_layer_spec(config).flops(convention)


def model_parameters(config: Any) -> int:
    return model_spec(config).parameters


def model_flops(config: Any, convention: Convention = PAPER_CONVENTION) -> int:
    return model_spec(config).flops(convention)


def block_cost(config: Any, k: int, convention: Convention = PAPER_CONVENTION) -> tuple[int, int]:
    """(FLOPs, parameters) of ``k`` consecutive dense decoder layers: Table 12's 'Transformer Block'."""
    layer = decoder_layer_spec(config)
    return k * layer.flops(convention), k * layer.parameters


# ---------------------------------------------------------------------------------------- KDP fold block


def fold_parameters(
    d: int,
    rff_dim: int,
    rank: int,
    hidden: int,
    steps: int = 1,
    phase: Literal["inference", "training"] = "inference",
) -> int:
    """Appendix I's formulas. Inference: d(1+r) + (2m)^2 + (1 + d_h(2m+d+1) + d). Training replaces (2m)^2 by
    steps * (1 + (2m)^2): one gamma_i and B_i per operator A_i (the paper writes K_max for ``steps``)."""
    kernel = d * (1 + rank)
    inverse = 1 + hidden * (rff_dim + d + 1) + d
    if phase == "inference":
        return kernel + rff_dim**2 + inverse
    if phase == "training":
        return kernel + steps * (1 + rff_dim**2) + inverse
    raise bad_value("fold phase", phase, ["inference", "training"])


def fold_parameters_direct(d: int, rff_dim: int, rank: int, hidden: int, precompute_frequencies: bool = True) -> int:
    """What a fold must actually hold at inference.

    The paper's formula keeps lambda and L (d(1+r)) but omits the fixed random Z (d x m), V (r x m) and phase b
    (m) without which phi cannot be evaluated. Precomputed, Omega = D^(1/2) Z + L V is one d x m matrix and
    lambda, L, Z, V are no longer needed.
    """
    m = _half(rff_dim)
    inverse = 1 + hidden * (rff_dim + d + 1) + d
    operator = rff_dim**2
    if precompute_frequencies:
        kernel = d * m + m
    else:
        kernel = d * (1 + rank) + d * m + rank * m + m
    return kernel + operator + inverse


def fold_macs_per_token(d: int, rff_dim: int, hidden: int) -> int:
    """Linear-map MACs per token with Omega precomputed: Omega^T h (d*m), the operator product ((2m)^2), and the
    two-layer MLP (2m*d_h + d_h*d). Matches ``PAPER_CONVENTION``'s treatment of decoder layers."""
    m = _half(rff_dim)
    return d * m + rff_dim**2 + hidden * (rff_dim + d)


def fold_flops_direct(
    d: int, rff_dim: int, rank: int, hidden: int, seq_len: int = 128, precompute_frequencies: bool = True
) -> int:
    """Every arithmetic operation of one forward pass over ``seq_len`` tokens, two FLOPs per multiply-add.

    Per token: Omega^T h + b, cos and sin (one op per output), the 1/sqrt(m) scale, the operator product, the
    MLP with biases and activation, and the alpha scale. Without precomputation, Omega = D^(1/2) Z + L V is
    built once per forward (exp and sqrt of lambda, the scaling of Z, the d x r x m product and the sum).
    """
    m = _half(rff_dim)
    features = 2 * d * m + m + 2 * m + rff_dim
    operator = 2 * rff_dim**2
    mlp = 2 * rff_dim * hidden + hidden + hidden + 2 * hidden * d + d
    per_token = features + operator + mlp + d
    frequencies = 0 if precompute_frequencies else 2 * d + d * m + 2 * d * rank * m + d * m
    return seq_len * per_token + frequencies


def _half(rff_dim: int) -> int:
    if rff_dim % 2:
        raise bad_value("fold rff_dim (2m)", rff_dim, "an even number")
    return rff_dim // 2


@dataclass(frozen=True)
class FoldFit:
    rank: int
    hidden: int
    parameters: int


def fold_fits(
    d: int, rff_dim: int, parameters_printed: float, decimals: int, unit: float = 1e6, max_rank: int | None = None
) -> list[FoldFit]:
    """Every (r, d_hidden) whose paper-formula inference parameter count rounds to the printed value.

    For each rank r the admissible d_hidden form a short run of integers, found by inverting the formula."""
    half_unit = 0.5 * 10.0**-decimals * unit
    low, high = parameters_printed * unit - half_unit, parameters_printed * unit + half_unit
    fits = []
    for rank in range(0, (max_rank if max_rank is not None else d) + 1):
        fixed = fold_parameters(d, rff_dim, rank, 0)
        per_hidden = rff_dim + d + 1
        first = max(0, math.ceil((low - fixed) / per_hidden))
        for hidden in range(first, math.floor((high - fixed) / per_hidden) + 1):
            fits.append(FoldFit(rank, hidden, fold_parameters(d, rff_dim, rank, hidden)))
    return fits


# ------------------------------------------------------------------------------------- pruned variants


def variant_spec(
    config: Any,
    *,
    removed_layers: Iterable[int] = (),
    folds: Iterable[Mapping[str, int]] = (),
    residual_width: int | None = None,
    shortcut_matrices: int = 0,
    layer_overrides: Mapping[int, Mapping[str, int]] | None = None,
) -> ModelSpec:
    """A pruned variant as data.

    - ``removed_layers``: indices dropped outright (ShortGPT, SLEB, w/o Kernel).
    - ``folds``: ``{"first", "last", "rff_dim", "rank", "hidden"}``: layers first..last (inclusive) become one
      fold block placed where the span was.
    - ``residual_width`` and ``shortcut_matrices``: SliceGPT narrows the residual stream (embeddings, every
      layer, head input) and may add that many width x width matrices on each layer's residual path.
    - ``layer_overrides``: ``{index: {"heads", "kv_heads", "ffn"}}`` for channel/head pruning (LLM-Pruner).
    Indices refer to the dense model's layers.
    """
    dense = model_spec(config, width=residual_width)
    d = residual_width or config.hidden_size
    n = len(dense.layers)
    overrides = {int(k): dict(v) for k, v in (layer_overrides or {}).items()}
    replaced: dict[int, LayerLike | None] = {}
    for index in removed_layers:
        replaced[_check_index(index, n, "removed_layers")] = None
    for fold in folds:
        first, last = _check_index(fold["first"], n, "fold first"), _check_index(fold["last"], n, "fold last")
        if last < first:
            raise UserError(f"fold span {first}..{last}: last must not precede first")
        spec = FoldSpec(d, fold["rff_dim"], fold["rank"], fold["hidden"])
        for index in range(first, last + 1):
            if index in replaced:
                raise UserError(f"layer {index} is both removed and folded, or folded twice")
            replaced[index] = spec if index == first else None
    layers = []
    for index in range(n):
        if index in replaced:
            if replaced[index] is not None:
                layers.append(replaced[index])
            continue
        shape = overrides.pop(index, {})
        unknown = set(shape) - {"heads", "kv_heads", "ffn"}
        if unknown:
            raise bad_value(f"layer_overrides[{index}]", sorted(unknown), ["heads", "kv_heads", "ffn"])
        layer = decoder_layer_spec(config, width=residual_width, **shape)
        if shortcut_matrices:
            width = layer.linears[0].in_features
            layer = replace(layer, linears=layer.linears + (Linear(width, width),) * shortcut_matrices)
        layers.append(layer)
    if overrides:
        raise bad_value("layer_overrides", sorted(overrides), f"indices of removed/folded-free layers < {n}")
    return replace(dense, layers=tuple(layers))


_DESCRIPTION_KEYS = {"removed_layers", "folds", "residual_width", "shortcut_matrices", "layer_overrides"}


def variant_spec_from_description(config: Any, description: Mapping[str, Any], where: str = "variant") -> ModelSpec:
    """``variant_spec`` from a JSON-able mapping with the same keys (unknown keys are a UserError)."""
    unknown = set(description) - _DESCRIPTION_KEYS
    if unknown:
        raise bad_value(f"{where} keys", sorted(unknown), sorted(_DESCRIPTION_KEYS))
    return variant_spec(config, **description)


def _check_index(index: int, n: int, where: str) -> int:
    if not isinstance(index, int) or not 0 <= index < n:
        raise bad_value(where, index, f"a layer index in 0..{n - 1}")
    return index


# ------------------------------------------------------------------------------- the convention search


def candidate_conventions(
    seq_lens: Sequence[int] = (64, 128, 256, 512, 1024, 2048, 4096),
) -> Iterator[Convention]:
    for seq_len, per_mac, attention, head in itertools.product(
        seq_lens, (1, 2), ("none", "causal", "full"), (True, False)
    ):
        yield Convention(seq_len=seq_len, flops_per_mac=per_mac, attention_terms=attention, lm_head=head)


def rounds_to(value: float, printed: float, decimals: int) -> bool:
    return abs(value - printed) <= 0.5 * 10.0**-decimals + 1e-9 * max(1.0, abs(printed))


def conventions_matching(
    targets: Iterable[tuple[Any, str, float, int]], candidates: Iterable[Convention] | None = None
) -> list[Convention]:
    """Conventions under which every target ``(config, what, printed_GFLOPs, decimals)`` rounds to its printed
    value. ``what`` is ``"model"`` or ``"block:k"`` (k dense layers)."""
    targets = list(targets)
    return [
        convention
        for convention in (candidates if candidates is not None else candidate_conventions())
        if all(rounds_to(_gflops(config, what, convention), printed, dec) for config, what, printed, dec in targets)
    ]


def _gflops(config: Any, what: str, convention: Convention) -> float:
    if what == "model":
        return model_flops(config, convention) / 1e9
    kind, _, k = what.partition(":")
    if kind != "block" or not k.isdigit():
        raise bad_value("FLOPs target", what, ["model", "block:<k>"])
    return block_cost(config, int(k), convention)[0] / 1e9
