"""SliceGPT (Ashkboos et al., ICLR 2024) as the registered method ``slicegpt``; ``finetune: true`` gives the
recovery fine-tuned row (SliceGPT† in the KDP paper's Tables 1 and 6).

SliceGPT narrows the residual stream from D to d' coordinates. It first makes the network invariant under any
orthogonal rotation of the stream, then rotates the stream of every layer into the principal components of the
calibration activations and deletes the last D - d' of them: rows and columns of every weight matrix that reads or
writes the stream go, and each layer gets two d' x d' matrices that carry its residual from one basis to the next.
Written from the paper and microsoft/TransformerCompression (``src/slicegpt``, commit 6b12cde):

1. Fusion (``fuse_norms``). The head is untied. For LayerNorm families (OPT) the embedding rows and the outputs of
   the linears that write to the stream are mean-centred, so the stream is always mean-free and LayerNorm equals
   RMSNorm; the official code centres the embedding rows of RMSNorm families too (``centre_embeddings``, below). Every norm's scale (and bias) is folded into the linears that read from it, and every norm becomes a
   weightless RMS norm that averages over the original width D, also after slicing.
2. PCA (``principal_basis``): eigenvectors of the uncentred second moment of real (unpadded) tokens, in float64,
   with 1% of the mean diagonal added, sorted by descending eigenvalue. The PCA basis is kept as the final
   orientation (the paper's; the official script's later default ``--final-orientation random`` is not used).
3. Rotate and slice layer by layer (``rotate_and_slice``), each PCA computed on the signal of the already-sliced
   layers before it: Q from the embedding outputs; per layer, Q_mid from the input of the MLP norm and Q_out from
   the layer output; the shortcut matrices are Q_in^T Q_mid and Q_mid^T Q_out restricted to the kept columns. The
   head is rotated but not sliced, so the last layer writes the full width D.
4. Width: ``slicing`` (default 0.25) is the official ``--sparsity``, the slicing fraction: d' = floor((1 - slicing) D)
   rounded down to a multiple of ``round_interval`` (8 in the official script). This is the paper's reading of
   "25%": the KDP paper's Table 10 SliceGPT FLOPs (717.63 G, 1392.89 G) are exactly those of 25% slicing of
   LLaMA-2-7B/13B (d' = 3072, 3840), which removes only 15.3%/15.5% of the parameters. The parameter ratio is
   reported as it comes out, negative when the shortcut matrices and the untied head outweigh the slicing
   (SmolLM2-135M at 25% slicing holds 140.65M parameters against the dense 134.52M). ``slicing: null`` is the
   matched reading: d' is the multiple of ``round_interval`` whose parameter count, with the shortcut matrices and
   the untied head, comes closest to ``target_ratio`` of the dense model's parameters (``solve_width``; about 33%
   slicing for a 25% cut of LLaMA-2-7B).
5. RFT: LoRA on every attention and MLP projection with the official README recipe (``RECOVERY_DEFAULTS``).

Embedding centring. The official ``fuse_modules`` mean-centres the embedding rows of every family, LLaMA included
(only the output centring is limited to LayerNorm families). RMSNorm does not remove a mean, so the official
"fused" LLaMA is not exactly the dense model. ``centre_embeddings: always`` (default) does what the official code
does; ``layernorm_only`` centres them only where LayerNorm makes it exact, so fusion keeps the function of every
family (the effect on the embedded models is measured in docs/baselines.md).

Departures from the official code: the weightless norms use the model's own epsilon (1e-5 for every model of the
paper, the value the official code hard-codes); the shortcuts live in a wrapper around the family's decoder layer
instead of a subclass per family.

Data. The method reads one calibration set (``calibration``) in order: the first ``pca_samples`` samples feed the
PCA (official script: WikiText-2, 128 x 2048 tokens; the SliceGPT paper reportedly used 1024 samples, Table 8 of the
KDP paper counts 1k); with ``finetune`` the next ``recovery.train_samples`` samples, cut to
``recovery.max_length`` tokens, train the LoRA adapters (official: Alpaca, 8000 x 1024), and the following
``recovery.validation_samples`` samples at full length are the early-stopping set (official: 128 Alpaca samples
at 2048).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from baselines.specs import CENTRINGS, SliceGPTRecovery
from kdp.adapters import LayerAdapter, LayerInputs, ModelAdapter, adapter_for
from kdp.calibration import CalibrationSet
from kdp.errors import bad_value
from kdp.finetune import recover, recovery_keys, recovery_recipe
from kdp.hf_custom import apply_edit
from kdp.params import defaults_of
from kdp.registry import PruneContext, PruneRecord, PruningMethod, register_method

STRUCTURE_FACTORY = "baselines.slicegpt:restore_sliced_structure"
PCA_DAMPING = 0.01

RECOVERY_DEFAULTS = defaults_of(SliceGPTRecovery)
#: Recovery keys a config may set: the recovery defaults and FinetuneRecipe's fields, less those the method owns.
_RECOVERY_KEYS = recovery_keys(RECOVERY_DEFAULTS)


# -- modules of the sliced model ----------------------------------------------------------------------------------
class WeightlessRMSNorm(nn.Module):
    """RMS norm with its scale folded into the next linears; it averages over the dense ``width`` even when the
    stream has been sliced, so the kept coordinates are scaled as they were in the full stream."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.width = width
        self.eps = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        wide = hidden.to(torch.float32)
        mean_square = wide.pow(2).sum(-1, keepdim=True) / self.width
        return (wide * torch.rsqrt(mean_square + self.eps)).to(hidden.dtype)

    def extra_repr(self) -> str:
        return f"width={self.width}, eps={self.eps}"


class SlicedDecoderLayer(nn.Module):
    """A decoder layer whose residual paths go through shortcut matrices (None is the identity):
    h <- h Q_attention + attention(norm(h)), then h <- h Q_mlp + mlp(norm(h)).

    Attention and MLP are the wrapped layer's own modules, run through the family's adapter, so rotary positions,
    masks and the KV cache arrive exactly as the model passes them to a decoder layer.
    """

    def __init__(self, layer: nn.Module, parts: LayerAdapter):
        super().__init__()
        self.layer = layer
        self.parts = parts
        self.register_parameter("attention_shortcut", None)
        self.register_parameter("mlp_shortcut", None)

    def forward(self, hidden_states: torch.Tensor, **layer_kwargs) -> torch.Tensor:
        parts = self.parts
        attended = parts.attention_block(parts.attention_norm(hidden_states), **layer_kwargs)
        hidden = _through(hidden_states, self.attention_shortcut) + attended
        return _through(hidden, self.mlp_shortcut) + parts.mlp_block(parts.mlp_norm(hidden))


def _through(hidden: torch.Tensor, shortcut: torch.Tensor | None) -> torch.Tensor:
    return hidden if shortcut is None else hidden @ shortcut


def _parts(adapter: ModelAdapter, index: int) -> LayerAdapter:
    layer = adapter.layers[index]
    return layer.parts if isinstance(layer, SlicedDecoderLayer) else adapter.layer(index)


# -- structure shared by the live model and a freshly loaded one -------------------------------------------------
def _norm_readers(adapter: ModelAdapter) -> list[tuple[nn.Module, list[nn.Linear]]]:
    """Every norm with the linears that read its output."""
    pairs = []
    for index in range(adapter.num_layers):
        parts = _parts(adapter, index)
        pairs += [(parts.attention_norm, parts.attention_inputs), (parts.mlp_norm, parts.mlp_inputs)]
    if adapter.final_norm is not None:
        pairs.append((adapter.final_norm, [adapter.lm_head]))
    return pairs


def _untie_head(adapter: ModelAdapter) -> None:
    # The head is rotated by the last layer's basis and the embeddings by the first one, so they cannot stay tied.
    if adapter.heads_are_tied:
        head = adapter.lm_head
        head.weight = nn.Parameter(head.weight.detach().clone())
    adapter.config.tie_word_embeddings = False


def _add_norm_biases(adapter: ModelAdapter) -> None:
    """A linear that reads from a norm with a shift gets a bias to absorb it (OPT's head)."""
    for norm, readers in _norm_readers(adapter):
        if getattr(norm, "bias", None) is None:
            continue
        for linear in readers:
            if linear.bias is None:
                linear.bias = nn.Parameter(linear.weight.new_zeros(linear.out_features))


def _install_weightless_norms(adapter: ModelAdapter) -> None:
    for norm, _ in _norm_readers(adapter):
        if not isinstance(norm, WeightlessRMSNorm):
            adapter.replace_module(norm, WeightlessRMSNorm(adapter.hidden_size, adapter.norm_eps))


def _wrap_layers(adapter: ModelAdapter) -> None:
    for index in range(adapter.num_layers):
        if not isinstance(adapter.layers[index], SlicedDecoderLayer):
            adapter.replace_span(index, index, SlicedDecoderLayer(adapter.layers[index], adapter.layer(index)))


def _reshape(adapter: ModelAdapter, width: int) -> None:
    """Give every tensor the sliced shape it has after ``rotate_and_slice``; tensors already in shape are kept."""
    for embedding in adapter.embedding_modules():
        _resize_embedding(embedding, width)
    for index, layer in enumerate(adapter.layers):
        parts, out_width = layer.parts, _output_width(adapter, index, width)
        for linear in [*parts.attention_inputs, *parts.mlp_inputs]:
            _resize_linear(linear, linear.out_features, width)
        _resize_linear(parts.attention_output, width, parts.attention_output.in_features)
        _resize_linear(parts.mlp_output, out_width, parts.mlp_output.in_features)
        template = parts.mlp_output.weight
        layer.attention_shortcut = _resized(layer.attention_shortcut, template, (width, width))
        layer.mlp_shortcut = _resized(layer.mlp_shortcut, template, (width, out_width))


def _output_width(adapter: ModelAdapter, index: int, width: int) -> int:
    # The head is not sliced (official do_slice_head=False), so the last layer writes the full stream.
    return adapter.hidden_size if index == adapter.num_layers - 1 else width


def _resized(param: torch.Tensor | None, template: torch.Tensor, shape: tuple[int, ...]) -> nn.Parameter:
    if param is not None and tuple(param.shape) == shape:
        return param
    return nn.Parameter(template.new_empty(shape))


def _resize_linear(linear: nn.Linear, out_features: int, in_features: int) -> None:
    linear.weight = _resized(linear.weight, linear.weight, (out_features, in_features))
    if linear.bias is not None:
        linear.bias = _resized(linear.bias, linear.weight, (out_features,))
    linear.in_features, linear.out_features = in_features, out_features


def _resize_embedding(embedding: nn.Embedding, width: int) -> None:
    embedding.weight = _resized(embedding.weight, embedding.weight, (embedding.weight.shape[0], width))
    embedding.embedding_dim = width


def restore_sliced_structure(adapter: ModelAdapter, edit: dict[str, Any]) -> None:
    """Structure-edit factory (`kdp.hf_custom`): give a freshly built dense model the sliced shapes, so the saved
    weights load into it. On the model just sliced everything is already in shape and nothing changes."""
    _untie_head(adapter)
    _add_norm_biases(adapter)
    _install_weightless_norms(adapter)
    _wrap_layers(adapter)
    _reshape(adapter, int(edit["width"]))


# -- 1. fusion ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def fuse_norms(adapter: ModelAdapter, centre_embeddings: str) -> None:
    """Make the model's function invariant under rotations of the residual stream; without changing it, except
    that ``centre_embeddings: always`` centres the embeddings of an RMSNorm family too, as the official code."""
    centred = isinstance(_parts(adapter, 0).attention_norm, nn.LayerNorm)
    _untie_head(adapter)
    if centred or centre_embeddings == "always":
        for embedding in adapter.embedding_modules():
            _set(embedding.weight, _centred_rows(embedding.weight.double()))
    for norm, readers in _norm_readers(adapter):
        _fold_norm(norm, readers)
    if centred:
        for index in range(adapter.num_layers):
            parts = _parts(adapter, index)
            _centre_outputs(parts.attention_output)
            _centre_outputs(parts.mlp_output)
    _install_weightless_norms(adapter)
    _wrap_layers(adapter)


def _centred_rows(weight: torch.Tensor) -> torch.Tensor:
    return weight - weight.mean(dim=-1, keepdim=True)


def _centre_outputs(linear: nn.Linear) -> None:
    """Subtract the mean over output coordinates, so what the linear writes to the stream is mean-free."""
    _set(linear.weight, _centred_rows(linear.weight.double().T).T)
    if linear.bias is not None:
        _set(linear.bias, _centred_rows(linear.bias.double()))


def _fold_norm(norm: nn.Module, readers: list[nn.Linear]) -> None:
    scale, shift = getattr(norm, "weight", None), getattr(norm, "bias", None)
    for linear in readers:
        weight = linear.weight.double()
        if shift is not None:
            bias = weight @ shift.double()
            if linear.bias is None:
                linear.bias = nn.Parameter(bias.to(linear.weight.dtype))
            else:
                _set(linear.bias, linear.bias.double() + bias)
        if scale is not None:
            _set(linear.weight, weight * scale.double())


def _set(param: torch.Tensor, value: torch.Tensor) -> None:
    param.data = value.to(param.dtype)


# -- 2. PCA ---------------------------------------------------------------------------------------------------------
class SecondMoment:
    """Running uncentred sum of x^T x over the real (unpadded) tokens, in float64."""

    def __init__(self) -> None:
        self.matrix: torch.Tensor | None = None

    def add(self, hidden: torch.Tensor, mask: torch.Tensor) -> None:
        tokens = hidden[mask.to(hidden.device).bool()].double()
        gram = tokens.T @ tokens
        self.matrix = gram if self.matrix is None else self.matrix + gram


def principal_basis(moment: torch.Tensor, damping: float = PCA_DAMPING) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns, same order) of the damped second moment."""
    damped = moment.double() + damping * moment.diagonal().mean() * torch.eye(len(moment), dtype=torch.float64,
                                                                              device=moment.device)
    values, vectors = torch.linalg.eigh(damped)
    order = torch.argsort(values, descending=True)
    return values[order], vectors[:, order]


# -- 3. rotate and slice ------------------------------------------------------------------------------------------
@dataclass
class CalibrationBatch:
    """One calibration batch as the first decoder layer sees it; every layer gets the same layer kwargs."""

    inputs: LayerInputs
    mask: torch.Tensor


def calibration_batches(adapter: ModelAdapter, data: CalibrationSet, batch_size: int) -> list[CalibrationBatch]:
    """Layer-0 inputs of the calibration samples; run after `fuse_norms`, so OPT's embeddings are centred."""
    device = next(adapter.model.parameters()).device
    return [CalibrationBatch(adapter.layer_inputs(ids.to(device), mask.to(device)), mask.to(device))
            for ids, mask in data.batches(batch_size)]


@torch.no_grad()
def rotate_and_slice(adapter: ModelAdapter, batches: list[CalibrationBatch], width: int) -> None:
    """Rotate every layer of a fused model (`fuse_norms`) into the principal basis of its input and keep the first
    ``width`` coordinates."""
    adapter.model.eval()
    dtype = adapter.lm_head.weight.dtype
    signals = [batch.inputs.hidden_states for batch in batches]
    basis = _basis(signals, batches)
    for embedding in adapter.embedding_modules():
        _set_weight(embedding, (embedding.weight.double() @ basis)[:, :width])
        embedding.embedding_dim = width
    for index, layer in enumerate(adapter.layers):
        parts, out_width = layer.parts, _output_width(adapter, index, width)
        signals = [(signal @ basis.to(signal))[..., :width] for signal in signals]
        for linear in parts.attention_inputs:
            _rotate_inputs(linear, basis, width)
        to_stream = basis[:, :width].T
        layer.attention_shortcut = _parameter(to_stream, dtype)
        layer.mlp_shortcut = None
        mid = _norm_input_basis(layer, parts.mlp_norm, signals, batches)

        layer.attention_shortcut = _parameter(to_stream @ mid[:, :width], dtype)
        _rotate_outputs(parts.attention_output, mid, width)
        for linear in parts.mlp_inputs:
            _rotate_inputs(linear, mid, width)
        to_stream = mid[:, :width].T
        layer.mlp_shortcut = _parameter(to_stream, dtype)
        signals = list(_forward(layer, signals, batches))
        basis = _basis(signals, batches)

        layer.mlp_shortcut = _parameter(to_stream @ basis[:, :out_width], dtype)
        _rotate_outputs(parts.mlp_output, basis, out_width)
    _rotate_inputs(adapter.lm_head, basis, adapter.hidden_size)


def _basis(signals: Sequence[torch.Tensor], batches: Sequence[CalibrationBatch]) -> torch.Tensor:
    moment = SecondMoment()
    for signal, batch in zip(signals, batches):
        moment.add(signal, batch.mask)
    return principal_basis(moment.matrix)[1]


def _forward(layer: nn.Module, signals: Sequence[torch.Tensor],
             batches: Sequence[CalibrationBatch]) -> Iterator[torch.Tensor]:
    for signal, batch in zip(signals, batches):
        yield layer(signal, **batch.inputs.layer_kwargs)


def _norm_input_basis(layer: nn.Module, norm: nn.Module, signals: Sequence[torch.Tensor],
                      batches: Sequence[CalibrationBatch]) -> torch.Tensor:
    """Principal basis of what ``norm`` receives while ``layer`` runs on the signals."""
    seen: list[torch.Tensor] = []
    handle = norm.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    moment = SecondMoment()
    try:
        for _, batch in zip(_forward(layer, signals, batches), batches):
            moment.add(seen.pop(), batch.mask)
    finally:
        handle.remove()
    return principal_basis(moment.matrix)[1]


def _rotate_inputs(linear: nn.Linear, basis: torch.Tensor, width: int) -> None:
    """The linear now reads the stream rotated by ``basis`` and cut to ``width`` coordinates."""
    _set_weight(linear, (linear.weight.double() @ basis.to(linear.weight.device))[:, :width])
    linear.in_features = width


def _rotate_outputs(linear: nn.Linear, basis: torch.Tensor, width: int) -> None:
    """The linear now writes the stream rotated by ``basis`` and cut to ``width`` coordinates."""
    basis = basis.to(linear.weight.device)
    _set_weight(linear, (basis.T @ linear.weight.double())[:width])
    if linear.bias is not None:
        linear.bias = nn.Parameter((basis.T @ linear.bias.double())[:width].to(linear.bias.dtype))
    linear.out_features = width


def _set_weight(module: nn.Module, value: torch.Tensor) -> None:
    module.weight = nn.Parameter(value.to(module.weight.dtype))


def _parameter(value: torch.Tensor, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(value.to(dtype).contiguous())


# -- 4. width from the parameter budget ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SliceShapes:
    """What the parameter count of the sliced model depends on, read from the dense model."""

    hidden_size: int
    num_layers: int
    embedding_rows: tuple[int, ...]
    readers: tuple[tuple[int, bool], ...]  # (out_features, has bias after folding) of linears reading the stream
    attention_writers: tuple[tuple[int, bool], ...]  # (in_features, has bias), one per layer
    mlp_writers: tuple[tuple[int, bool], ...]
    head: tuple[int, bool]  # (vocabulary rows, has bias after folding)
    untouched: int  # parameters slicing leaves alone (none in the supported families)

    @classmethod
    def of(cls, adapter: ModelAdapter) -> "SliceShapes":
        head, norms_and_readers = adapter.lm_head, _norm_readers(adapter)
        # A linear reading a norm with a shift has a bias after folding, whether or not it had one before.
        biased = {id(linear): linear.bias is not None or getattr(norm, "bias", None) is not None
                  for norm, readers in norms_and_readers for linear in readers}
        readers = [linear for _, linears in norms_and_readers for linear in linears if linear is not head]
        parts = [_parts(adapter, index) for index in range(adapter.num_layers)]
        writers = [(p.attention_output, p.mlp_output) for p in parts]
        modules = [*adapter.embedding_modules(), *(norm for norm, _ in norms_and_readers), head, *readers,
                   *(linear for pair in writers for linear in pair)]
        covered = {id(param) for module in modules for param in module.parameters()}
        unique = {id(param): param.numel() for param in adapter.model.parameters()}
        return cls(
            hidden_size=adapter.hidden_size,
            num_layers=adapter.num_layers,
            embedding_rows=tuple(m.weight.shape[0] for m in adapter.embedding_modules()),
            readers=tuple((linear.out_features, biased[id(linear)]) for linear in readers),
            attention_writers=tuple((a.in_features, a.bias is not None) for a, _ in writers),
            mlp_writers=tuple((m.in_features, m.bias is not None) for _, m in writers),
            head=(head.out_features, biased.get(id(head), head.bias is not None)),
            untouched=sum(count for key, count in unique.items() if key not in covered),
        )

    def parameters(self, width: int) -> int:
        """Parameters after slicing to ``width``, shortcut matrices and the untied head included."""
        full, last = self.hidden_size, self.num_layers - 1
        count = self.untouched + sum(rows * width for rows in self.embedding_rows)
        count += sum(out * width + (out if bias else 0) for out, bias in self.readers)
        for index, ((attention_in, attention_bias), (mlp_in, mlp_bias)) in enumerate(
                zip(self.attention_writers, self.mlp_writers)):
            out_width = full if index == last else width
            count += attention_in * width + (width if attention_bias else 0)
            count += mlp_in * out_width + (out_width if mlp_bias else 0)
            count += width * width + width * out_width
        vocab, head_bias = self.head
        return count + vocab * full + (vocab if head_bias else 0)


def sliced_parameter_count(config, width: int) -> int:
    """Parameters of the model of ``config`` sliced to residual width ``width`` (built on the meta device)."""
    return SliceShapes.of(_meta_adapter(config)).parameters(width)


def _meta_adapter(config) -> ModelAdapter:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    return adapter_for(model)


def solve_width(shapes: SliceShapes, dense_parameters: int, target_ratio: float, round_interval: int) -> int:
    """The multiple of ``round_interval`` whose sliced model removes the fraction of parameters closest to the
    target (the larger width on a tie)."""
    candidates = range(round_interval, shapes.hidden_size + 1, round_interval)
    return min(candidates, key=lambda width: (abs(1 - shapes.parameters(width) / dense_parameters - target_ratio),
                                              -width))


def official_width(hidden_size: int, slicing: float, round_interval: int) -> int:
    """run_slicegpt.py: d' = floor((1 - sparsity) D), rounded down to a multiple of the round interval."""
    width = int((1 - slicing) * hidden_size)
    return width - width % round_interval


# -- 5. the registered method -------------------------------------------------------------------------------------
@register_method("slicegpt")
class SliceGPT(PruningMethod):
    """Inputs and hyperparameters: `baselines.specs.SLICEGPT`."""

    def prune(self, ctx: PruneContext) -> PruneRecord:
        params = self.params
        recovery = recovery_recipe(params["recovery"], RECOVERY_DEFAULTS, "slicegpt") if params["finetune"] else None
        pca_data, train, validation = _split(ctx.calibration, params, recovery)
        adapter = ctx.adapter
        shapes, dense = SliceShapes.of(adapter), adapter.parameter_count()
        width = _width(params, shapes, dense, ctx.target_ratio)
        if params["centre_embeddings"] not in CENTRINGS:
            raise bad_value("slicegpt centre_embeddings", params["centre_embeddings"], CENTRINGS)
        fuse_norms(adapter, params["centre_embeddings"])
        rotate_and_slice(adapter, calibration_batches(adapter, pca_data, int(params["batch_size"])), width)
        apply_edit(adapter, {"factory": STRUCTURE_FACTORY, "width": width})
        details: dict[str, Any] = {
            "width": width,
            "hidden_size": adapter.hidden_size,
            "width_rule": "matched" if params["slicing"] is None else "slicing",
            "slicing": 1 - width / adapter.hidden_size,
            "predicted_parameters": shapes.parameters(width),
            "predicted_ratio": 1 - shapes.parameters(width) / dense,
        }
        samples = {"pca": pca_data.num_samples}
        if ctx.log:
            ctx.log.info("slicegpt: width %d of %d (slicing %.4f), predicted ratio %.4f", width,
                         adapter.hidden_size, details["slicing"], details["predicted_ratio"])
        if recovery is not None:
            targets = [linear for layer in adapter.layers for linear in layer.parts.linears()]
            details["recovery"], recovered = recover(adapter.model, targets, train, validation, recovery, ctx.seed,
                                                     ctx.log)
            samples.update(recovered)
        return PruneRecord(samples=samples, details=details)


def _width(params: dict[str, Any], shapes: SliceShapes, dense: int, target_ratio: float) -> int:
    interval = int(params["round_interval"])
    if interval < 1 or interval > shapes.hidden_size:
        raise bad_value("slicegpt round_interval", interval, f"an integer in [1, {shapes.hidden_size}]")
    slicing = params["slicing"]
    if slicing is None:
        return solve_width(shapes, dense, target_ratio, interval)
    if not isinstance(slicing, (int, float)) or not 0 <= slicing < 1 or official_width(
            shapes.hidden_size, slicing, interval) < 1:
        raise bad_value("slicegpt slicing", slicing, "a fraction in [0, 1) that keeps at least one coordinate")
    return official_width(shapes.hidden_size, slicing, interval)


def _split(data: CalibrationSet, params: dict[str, Any], recovery: dict[str, Any] | None
           ) -> tuple[CalibrationSet, CalibrationSet | None, CalibrationSet | None]:
    """PCA samples first, then recovery training samples (cut to ``max_length``), then validation samples."""
    if recovery is None:
        return data.consecutive_parts([int(params["pca_samples"])], ["pca_samples"], params["calibration"])[0], None, None
    pca, train, validation = data.consecutive_parts(
        [int(params["pca_samples"]), int(recovery["train_samples"]), int(recovery["validation_samples"])],
        ["pca_samples", "recovery.train_samples", "recovery.validation_samples"], params["calibration"])
    return pca, train.truncated(int(recovery["max_length"])), validation
