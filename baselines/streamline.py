"""LLM-Streamline (Chen et al., ICLR 2025): replace the most redundant run of layers by one lightweight network,
as the registered method ``streamline``; ``finetune: llm_loss`` gives the fine-tuned row (Streamline† in the KDP
paper's Tables 1 and 2).

Written from RUCKBReasoning/LLM-Streamline (commit adf50ba): ``LLM_Streamline/get_cosine.py``,
``train_lightweightnetwork.py``, ``train_mseloss.py``, ``train_llmloss.py``, ``scheduler.py``, ``args.py`` and
``examples/mlp_mseloss_train_without_memory_issue``.

1. n, the number of layers dropped: ``layers_removed`` (the official ``layer_intervals``, default 8), or, when
   null, the smallest n for which k = n + 1 layers minus the replacement's parameters reach ``target_ratio`` of
   all parameters (LLaMA-2-7B at 25%: n = 9 with a layer, 27.03%, the ratio the KDP paper prints for
   Streamline†; n = 8 with the FFN, 25.04%).
2. Span: j* = argmax over j = 0..L-k of the cosine between h_j and h_{j+k} (h_j the input of layer j), averaged
   over the real tokens of a sample, then over the ``selection_samples`` samples. All states are the residual
   stream before the final norm; the official code reads Hugging Face's ``hidden_states``, whose last entry is
   after the final norm, so its j = L - k candidate compares against a normalised state.
3. Layers j*..j*+n become one network f, trained so that f(h_{j*}) matches h_{j*+k} (MSE over every real token
   position and dimension; pairs are computed on the fly by the dense model, so nothing is stored). ``replacement``:
   ``layer`` (the README's recommendation): a decoder layer of the model's own configuration initialised from
   layer j*, run with the causal mask and position embeddings the model itself builds (the official MSE path
   calls a standalone layer with position ids only, and its OPT branch never copies the weights: the
   ``"opt_Layer"`` vs ``"opt_layer"`` check leaves the OPT layer random); ``ffn``: Linear(d, 4d) -> ReLU ->
   Linear(4d, d) with biases on the residual stream itself, no residual connection or norm, default init
   (``examples/mlp_*``). The layer variant is a plain model with L - n layers; the FFN variant is saved through a
   structure edit (`kdp.hf_custom`). The method reads the calibration set, not the shared hidden-state cache: that
   cache holds all L + 1 states of every sample, which 30k samples of 2048 tokens would not fit, while computing
   the two states needed on the fly costs one forward pass per sample and epoch, as the official precomputation.
4. Training (``training``, ``args.py``): AdamW lr 2e-4, weight decay 1e-3, micro-batch 8 x 16 accumulation,
   1 epoch, gradient clip 5, cosine from lr to min lr 5e-5 after a 1% warmup, float32; the state with the best
   validation MSE is kept (the untrained one included). The official schedule is sized in micro-batches but
   stepped once per optimiser step, so it ends after ~1/8 of its warmup-plus-decay and the lr stays near its
   maximum; here the schedule spans the optimiser steps actually taken. ``training: null`` skips the MSE stage.
5. ``finetune: llm_loss`` (``train_llmloss.py``): then train only the replacement with next-token cross-entropy
   on the same training samples, everything else frozen (``llm_loss``: AdamW betas (0.9, 0.95), the DeepSpeed
   config's clip 1.0, otherwise as above), keeping the state with the best validation loss. The official script
   unfreezes parameters whose name contains ``layers.{j*}``, which also unfreezes layers j*0..j*9 when j* < 10;
   here exactly the replacement's parameters train. The official LLM-loss run starts from the copied layer
   without the MSE stage (``training: null`` reproduces that); the KDP paper's Table 8 lists Streamline as
   needing both training and fine-tuning, so the default runs MSE, then the LLM loss. The official LLM-loss
   schedule steps per micro-batch but is sized for half of them, so its cosine reaches the minimum halfway and
   climbs back to the maximum; here it is the same cosine-with-floor as above. The frozen rest of the model runs in
   eval mode (no dropout; the official run trains in train mode, which matters for OPT only). The Streamline paper
   also compares LoRA fine-tuning of the pruned model; that is not what "†" denotes here.

Data. The method reads one calibration set in order: ``selection_samples`` for the span choice (paper: 500 of
30k SlimPajama samples; official default 50, drawn from the training set: disjoint here, so the Table 8 counts
add up), ``train_samples`` (null: all the others; official default 100k documents packed into 2048-token
sequences), ``validation_samples`` (official: 3000 x the summed domain proportions, about 2000 documents, packed).
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from baselines.specs import FINETUNES, REPLACEMENTS, StreamlineLLMLossTraining, StreamlineMSETraining
from kdp.adapters import ModelAdapter
from kdp.calibration import CalibrationSet
from kdp.errors import UserError, bad_value
from kdp.finetune import validation_perplexity
from kdp.hf_custom import apply_edit
from kdp.params import defaults_of
from kdp.layer_scoring import calibration_inputs
from kdp.registry import PruneContext, PruneRecord, PruningMethod, register_method

FFN_FACTORY = "baselines.streamline:install_ffn"
MSE_TRAINING = defaults_of(StreamlineMSETraining)
LLM_LOSS_TRAINING = defaults_of(StreamlineLLMLossTraining)



@dataclass(frozen=True)
class TrainingRecipe:
    batch_size: int
    grad_accum: int
    epochs: int
    lr: float
    min_lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup: float
    clip: float | None
    eval_every: int | None

    @classmethod
    def from_params(cls, values: dict[str, Any], defaults: dict[str, Any], where: str) -> "TrainingRecipe":
        unknown = sorted(set(values) - set(defaults))
        if unknown:
            raise bad_value(f"{where} keys", unknown, sorted(defaults))
        merged = {**defaults, **values}
        recipe = cls(
            batch_size=int(merged["batch_size"]), grad_accum=int(merged["grad_accum"]), epochs=int(merged["epochs"]),
            lr=float(merged["lr"]), min_lr=float(merged["min_lr"]), weight_decay=float(merged["weight_decay"]),
            betas=tuple(float(beta) for beta in merged["betas"]), warmup=float(merged["warmup"]),
            clip=None if merged["clip"] is None else float(merged["clip"]),
            eval_every=None if merged["eval_every"] is None else int(merged["eval_every"]))
        if min(recipe.batch_size, recipe.grad_accum, recipe.epochs) < 1 or not 0 <= recipe.warmup < 1:
            raise bad_value(where, values, "batch_size, grad_accum, epochs >= 1 and warmup in [0, 1)")
        return recipe


class StreamlineFFN(nn.Module):
    """The FFN replacement: called like a decoder layer, it maps the residual stream to the residual stream."""

    def __init__(self, hidden_size: int, inner_size: int):
        super().__init__()
        self.up = nn.Linear(hidden_size, inner_size)
        self.down = nn.Linear(inner_size, hidden_size)
        self.layer_idx = 0  # kept current by the adapter when layers are renumbered

    def forward(self, hidden_states: torch.Tensor, *args, past_key_values=None, **kwargs) -> torch.Tensor:
        if past_key_values is not None:
            # transformers reads the cached length from the first layer's cache slot; an attention-free module
            # at position 0 would leave it empty and every cached decoding step would restart at position 0.
            marker = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            past_key_values.update(marker, marker, self.layer_idx)
        return self.down(F.relu(self.up(hidden_states)))


def install_ffn(adapter: ModelAdapter, edit: dict[str, Any]) -> None:
    """Structure-edit factory (`kdp.hf_custom`): layers first..last become an (untrained) FFN replacement."""
    adapter.replace_span(edit["first"], edit["last"], StreamlineFFN(adapter.hidden_size, edit["inner_size"]))


# -- how many layers, which span -----------------------------------------------------------------------------------
def replacement_parameters(adapter: ModelAdapter, kind: str, first: int, expansion: int) -> int:
    if kind == "layer":
        return adapter.layer_parameter_count(first)
    d = adapter.hidden_size
    return 2 * d * expansion * d + expansion * d + d


def layers_to_drop(adapter: ModelAdapter, kind: str, target_ratio: float, expansion: int) -> int:
    """Smallest n such that replacing any n + 1 consecutive layers by the replacement removes ``target_ratio``."""
    dense, count = adapter.parameter_count(), adapter.num_layers
    layers = [adapter.layer_parameter_count(i) for i in range(count)]
    for dropped in range(1, count):
        removed = min(sum(layers[j : j + dropped + 1]) - replacement_parameters(adapter, kind, j, expansion)
                      for j in range(count - dropped))
        if removed / dense >= target_ratio - 1e-9:
            return dropped
    raise UserError(f"streamline: target_ratio {target_ratio} cannot be reached by replacing fewer than all "
                    f"{count} layers; allowed: a smaller target_ratio")


@torch.no_grad()
def span_cosines(adapter: ModelAdapter, data: CalibrationSet, span: int, batch_size: int, device) -> list[float]:
    """For j = 0..L-span: mean over samples of the mean over real tokens of cos(h_j, h_{j+span})."""
    totals = torch.zeros(adapter.num_layers - span + 1, dtype=torch.float64)
    for inputs, _, attention_mask in calibration_inputs(adapter, data, batch_size, device):
        real = attention_mask.bool()
        hidden = inputs.hidden_states
        window = deque([hidden], maxlen=span + 1)  # h_{index+1-span} .. h_{index+1}
        for index in range(adapter.num_layers):
            hidden = adapter.run_layers(hidden, inputs.layer_kwargs, index, index + 1)
            window.append(hidden)
            if index + 1 >= span:
                totals[index + 1 - span] += _sample_mean_cosines(window[0], hidden, real).sum().cpu()
    return (totals / data.num_samples).tolist()


def _sample_mean_cosines(before: torch.Tensor, after: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    cosine = F.cosine_similarity(before.double(), after.double(), dim=-1)
    return (cosine * real).sum(dim=1) / real.sum(dim=1)


def best_span_start(cosines: list[float]) -> int:
    return max(range(len(cosines)), key=cosines.__getitem__)


# -- training --------------------------------------------------------------------------------------------------------
def initial_replacement(adapter: ModelAdapter, kind: str, first: int, expansion: int) -> nn.Module:
    if kind == "layer":
        return copy.deepcopy(adapter.layers[first])
    device = next(adapter.model.parameters()).device
    return StreamlineFFN(adapter.hidden_size, expansion * adapter.hidden_size).to(device)


def _float32(value: Any) -> Any:
    """Floating tensors (also inside the layer kwargs: position embeddings, float masks) in float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_float32(v) for v in value)
    if isinstance(value, dict):
        return {key: _float32(v) for key, v in value.items()}
    return value


def _as_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def span_pairs(adapter: ModelAdapter, input_ids: torch.Tensor, attention_mask: torch.Tensor, first: int,
               span: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(h_first, h_{first+span}, layer kwargs) of one batch under the dense model, in float32."""
    inputs = adapter.layer_inputs(input_ids, attention_mask)
    before = adapter.run_layers(inputs.hidden_states, inputs.layer_kwargs, 0, first)
    after = adapter.run_layers(before, inputs.layer_kwargs, first, first + span)
    return before.float(), after.float(), _float32(inputs.layer_kwargs)


def masked_squared_error(prediction: torch.Tensor, target: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors over the real tokens' coordinates."""
    return (prediction - target)[real].pow(2).sum()


class MSEObjective:
    """Streamline's MSE stage: f(h_first) against h_{first+span}; ``module`` runs on float32 inputs."""

    def __init__(self, adapter: ModelAdapter, module: nn.Module, first: int, span: int, batch_size: int):
        self.adapter, self.module, self.first, self.span, self.batch_size = adapter, module, first, span, batch_size
        self.device = next(adapter.model.parameters()).device
        self.identity_mse: float | None = None

    def batch_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        before, after, kwargs, real = self._pairs(input_ids, attention_mask)
        prediction = _as_tensor(self.module(before, **kwargs))
        return masked_squared_error(prediction, after, real) / (real.sum() * after.shape[-1])

    @torch.no_grad()
    def validation(self, data: CalibrationSet) -> float:
        """Mean squared error per real coordinate of the module; that of plain removal (the identity) is kept in
        ``identity_mse``."""
        was_training = self.module.training
        self.module.eval()
        module_error = identity_error = 0.0
        count = 0
        for input_ids, attention_mask in data.batches(self.batch_size):
            before, after, kwargs, real = self._pairs(input_ids, attention_mask)
            module_error += float(masked_squared_error(_as_tensor(self.module(before, **kwargs)), after, real))
            identity_error += float(masked_squared_error(before, after, real))
            count += int(real.sum()) * after.shape[-1]
        self.module.train(was_training)
        self.identity_mse = identity_error / count
        return module_error / count

    def _pairs(self, input_ids, attention_mask):
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        before, after, kwargs = span_pairs(self.adapter, input_ids, attention_mask, self.first, self.span)
        return before, after, kwargs, attention_mask.bool()


class _InFloat32(nn.Module):
    """Runs a float32 module inside a lower-precision model (the replacement trains in float32)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.float()

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        output = _as_tensor(self.module(hidden_states.float(), *args, **_float32(kwargs)))
        return output.to(hidden_states.dtype)


def next_token_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
    real = attention_mask[:, 1:].bool()
    return F.cross_entropy(logits[real], input_ids[:, 1:][real])


def cosine_with_floor(recipe: TrainingRecipe, total_steps: int) -> Callable[[int], float]:
    """LR factor: linear warmup over ``warmup`` of the steps, then half a cosine from lr down to min_lr."""
    warmup = int(round(recipe.warmup * total_steps))
    floor = recipe.min_lr / recipe.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def train_module(module: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 validate: Callable[[], float], train: CalibrationSet, recipe: TrainingRecipe, seed: int,
                 log=None, label: str = "streamline") -> dict[str, Any]:
    """Train ``module``'s parameters on ``loss`` over ``train``; keep the state with the lowest ``validate()``."""
    params = list(module.parameters())
    flags = [param.requires_grad for param in params]
    for param in params:
        param.requires_grad_(True)
    micro_batches = math.ceil(train.num_samples / recipe.batch_size)
    steps_per_epoch = math.ceil(micro_batches / recipe.grad_accum)
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=recipe.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_floor(recipe, steps_per_epoch * recipe.epochs))
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, Any] = {"train_loss": [], "validation": [validate()], "eval_steps": [0]}
    best = (history["validation"][0], _state(module), 0)
    step = 0
    module.train()
    for _ in tqdm(range(recipe.epochs), desc=f"{label} training", unit="epoch"):
        order = torch.randperm(train.num_samples, generator=generator)
        for start in range(0, train.num_samples, recipe.batch_size * recipe.grad_accum):
            step_rows = order[start : start + recipe.batch_size * recipe.grad_accum]
            history["train_loss"].append(_accumulate(loss, train, step_rows, recipe.batch_size))
            if recipe.clip is not None:
                torch.nn.utils.clip_grad_norm_(params, recipe.clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if recipe.eval_every and step % recipe.eval_every == 0:
                best = _evaluate(module, validate, history, step, best, log, label)
        if history["eval_steps"][-1] != step:
            best = _evaluate(module, validate, history, step, best, log, label)
    module.load_state_dict(best[1])
    for param, flag in zip(params, flags):
        param.requires_grad_(flag)
    module.eval()
    history.update(best_validation=best[0], best_step=best[2], steps=step, recipe=recipe.__dict__)
    return history


def _accumulate(loss, train: CalibrationSet, rows: torch.Tensor, batch_size: int) -> float:
    """Backward of the mean of the micro-batch losses of one optimiser step; returns that mean."""
    chunks = rows.split(batch_size)
    total = 0.0
    for chunk in chunks:
        value = loss(train.input_ids[chunk], train.attention_mask[chunk]) / len(chunks)
        value.backward()
        total += float(value.detach())
    return total


def _evaluate(module, validate, history, step, best, log, label):
    value = validate()
    module.train()
    history["validation"].append(value)
    history["eval_steps"].append(step)
    if log:
        log.info("%s step %d: validation %.6g", label, step, value)
    return (value, _state(module), step) if value < best[0] else best


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


# -- the registered method -----------------------------------------------------------------------------------------
@register_method("streamline")
class Streamline(PruningMethod):
    """Inputs and hyperparameters: `baselines.specs.STREAMLINE`."""

    def prune(self, ctx: PruneContext) -> PruneRecord:
        params, adapter = self.params, ctx.adapter
        kind, expansion = params["replacement"], int(params["ffn_expansion"])
        if kind not in REPLACEMENTS:
            raise bad_value("streamline replacement", kind, REPLACEMENTS)
        if params["finetune"] not in FINETUNES:
            raise bad_value("streamline finetune", params["finetune"], FINETUNES)
        selection, train, validation = ctx.calibration.consecutive_parts(
            [int(params["selection_samples"]), params["train_samples"], int(params["validation_samples"])],
            ["selection_samples", "train_samples", "validation_samples"], params["calibration"])
        dropped = _dropped(params["layers_removed"], adapter, kind, ctx.target_ratio, expansion)
        span = dropped + 1
        cosines = span_cosines(adapter, selection, span, int(params["batch_size"]), ctx.device)
        first = best_span_start(cosines)
        replacement = initial_replacement(adapter, kind, first, expansion)
        details: dict[str, Any] = {"span": [first, first + dropped], "layers_dropped": dropped,
                                   "replacement": kind, "cosines": cosines}
        if params["training"] is not None:
            details["mse"] = self._fit_mse(adapter, replacement, first, span, train, validation, ctx)
        self._install(adapter, kind, first, dropped, replacement)
        if params["finetune"] == "llm_loss":
            details["llm_loss"] = self._fit_llm_loss(adapter, first, train, validation, ctx)
        if ctx.log:
            ctx.log.info("streamline: layers %d..%d replaced by one %s (cosine %.4f)", first, first + dropped, kind,
                         cosines[first])
        return PruneRecord(layers_removed=list(range(first + 1, first + span)), blocks=[[first, first + dropped]],
                           samples={"selection": selection.num_samples, "train": train.num_samples,
                                    "validation": validation.num_samples},
                           details=details)

    def _fit_mse(self, adapter, replacement, first, span, train, validation, ctx) -> dict[str, Any]:
        recipe = TrainingRecipe.from_params(self.params["training"], MSE_TRAINING, "streamline training")
        dtype = next(adapter.model.parameters()).dtype
        replacement.float()
        objective = MSEObjective(adapter, replacement, first, span, recipe.batch_size)
        history = train_module(replacement, objective.batch_loss, lambda: objective.validation(validation),
                               train, recipe, ctx.seed, ctx.log, "streamline mse")
        replacement.to(dtype)
        return {**history, "identity_validation_mse": objective.identity_mse}

    @staticmethod
    def _install(adapter: ModelAdapter, kind: str, first: int, dropped: int, replacement: nn.Module) -> None:
        if kind == "layer":
            adapter.replace_span(first, first + dropped, replacement)
            return
        apply_edit(adapter, {"factory": FFN_FACTORY, "first": first, "last": first + dropped,
                             "inner_size": replacement.up.out_features})
        installed = adapter.layers[first]
        installed.load_state_dict(replacement.state_dict())
        reference = next(adapter.model.parameters())
        installed.to(device=reference.device, dtype=reference.dtype)

    def _fit_llm_loss(self, adapter, position, train, validation, ctx) -> dict[str, Any]:
        recipe = TrainingRecipe.from_params(self.params["llm_loss"], LLM_LOSS_TRAINING, "streamline llm_loss")
        model, module = adapter.model, adapter.layers[position]
        dtype = next(module.parameters()).dtype
        flags = {param: param.requires_grad for param in model.parameters()}
        for param in flags:
            param.requires_grad_(False)
        wrapper = _InFloat32(module)
        adapter.replace_span(position, position, wrapper)
        device = next(model.parameters()).device
        try:
            history = train_module(
                wrapper.module,
                lambda ids, mask: next_token_loss(model, ids.to(device), mask.to(device)),
                lambda: math.log(validation_perplexity(model, validation, recipe.batch_size)),
                train, recipe, ctx.seed, ctx.log, "streamline llm_loss")
        finally:
            adapter.replace_span(position, position, wrapper.module.to(dtype))
            for param, flag in flags.items():
                param.requires_grad_(flag)
            model.eval()
        return history


def _dropped(configured: int | None, adapter: ModelAdapter, kind: str, target_ratio: float, expansion: int) -> int:
    if configured is None:
        return layers_to_drop(adapter, kind, target_ratio, expansion)
    if not 1 <= int(configured) < adapter.num_layers:
        raise bad_value("streamline layers_removed", configured, f"an integer in [1, {adapter.num_layers - 1}]")
    return int(configured)
