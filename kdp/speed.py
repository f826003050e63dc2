"""Analytic FLOPs of any loaded variant, and measured speed-up of a pruned variant over its dense model.

Analytic: ``model_spec_of`` reads the architecture a variant actually has (every decoder layer's Linear shapes,
each KDP fold's dimensions, SliceGPT's shortcut matrices, a PEFT logit adapter) into `kdp.flops` specs, so one
counting convention (``kdp.flops.PAPER_CONVENTION``: Linear MACs at 128 tokens, LM head included) covers every
method without method-specific bookkeeping. For an unpruned model it equals ``kdp.flops.model_spec(config)``.

Measured: dense and variant run forward passes on the same token ids, alternated within one process (dense
first on even repeats, variant first on odd ones) so that clock drift, thermal state and cache effects hit both
alike; the median over repeats is reported. Latency uses batch 1, throughput a larger batch; both at the paper's
sequence length of 128 tokens.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdp.adapters import ModelAdapter, adapter_for
from kdp.flops import PAPER_CONVENTION, Convention, DecoderLayerSpec, FoldSpec, LayerLike, Linear, ModelSpec
from kdp.fold import FoldedBlock

SPEED_VERSION = 1


@dataclass(frozen=True)
class SpeedSettings:
    seq_len: int = 128  # Appendix B's representation length, and PAPER_CONVENTION's
    latency_batch: int = 1
    throughput_batch: int = 4
    warmup: int = 1
    repeats: int = 5


# -- analytic counts of a loaded model -----------------------------------------------------------------------------
def model_spec_of(network: nn.Module) -> ModelSpec:
    adapter = adapter_for(network)
    layers = tuple(_layer_spec(adapter, module) for module in adapter.layers)
    in_layers = {id(p) for module in adapter.layers for p in module.parameters()}
    head = adapter.lm_head
    outside = [m for m in network.modules() if isinstance(m, nn.Linear) and m is not head
               and id(m.weight) not in in_layers]
    embeddings = [m for m in network.modules() if isinstance(m, nn.Embedding)]
    unique = {id(p): p for p in network.parameters()}
    embedding_ids = {id(p) for m in embeddings for p in m.parameters()}
    counted = in_layers | embedding_ids | {id(p) for m in outside + [head] for p in m.parameters()}
    return ModelSpec(
        model_type=network.config.model_type,
        layers=layers,
        embedding_parameters=sum(unique[i].numel() for i in embedding_ids),
        final_norm_parameters=sum(p.numel() for i, p in unique.items() if i not in counted),
        head=_linear(head),
        head_tied=adapter.heads_are_tied,
        extra_linears=tuple(_linear(m) for m in outside),
    )


def _layer_spec(adapter: ModelAdapter, module: nn.Module) -> LayerLike:
    if isinstance(module, FoldedBlock):
        fold = module.fold_config()
        return FoldSpec(fold["hidden_size"], fold["rff_dim"], fold["rank"], fold["inverse_hidden"])
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    owned = {id(p) for m in linears for p in m.parameters()}
    # 2-D parameters used as plain matmuls (SliceGPT's residual shortcuts) cost like a Linear of that shape.
    matrices = [p for p in module.parameters() if p.dim() == 2 and id(p) not in owned]
    maps = tuple(_linear(m) for m in linears) + tuple(Linear(p.shape[0], p.shape[1]) for p in matrices)
    rest = sum(p.numel() for p in module.parameters() if id(p) not in owned and p.dim() != 2)
    parts = adapter.decoder_layer_in(module)
    query = parts.query_key_value[0] if parts is not None else None
    return DecoderLayerSpec(linears=maps, norm_parameters=rest,
                            attention_width=query.out_features if isinstance(query, nn.Linear) else 0)


def _linear(module: nn.Linear) -> Linear:
    return Linear(module.in_features, module.out_features, module.bias is not None)


def analytic_counts(network: nn.Module, convention: Convention = PAPER_CONVENTION) -> dict[str, int]:
    spec = model_spec_of(network)
    return {"flops": spec.flops(convention), "parameters": spec.parameters}


# -- timing ------------------------------------------------------------------------------------------------------
def interleaved_medians(runners: dict[str, Callable[[], Any]], warmup: int, repeats: int,
                        clock: Callable[[], float] = time.perf_counter,
                        sync: Callable[[], None] = lambda: None) -> dict[str, dict[str, Any]]:
    """Median wall seconds per runner, the runners taking turns (order reversed on every other repeat)."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            started = clock()
            runners[name]()
            sync()
            times[name].append(clock() - started)
    return {name: {"median_s": statistics.median(values), "seconds": values} for name, values in times.items()}


def speed_ratios(dense_s: float, variant_s: float, tokens: int) -> dict[str, float]:
    """Speed-up = dense time / variant time (same input); throughput in tokens per second."""
    return {"speedup": dense_s / variant_s, "dense_tokens_per_s": tokens / dense_s,
            "variant_tokens_per_s": tokens / variant_s}


def measure(dense: nn.Module, variant: nn.Module, vocab: int, settings: SpeedSettings, seed: int) -> dict[str, Any]:
    device = next(dense.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {}
    for setting, batch in (("latency", settings.latency_batch), ("throughput", settings.throughput_batch)):
        ids = torch.randint(0, vocab, (batch, settings.seq_len), generator=generator).to(device)
        runners = {"dense": _forward(dense, ids), "variant": _forward(variant, ids)}
        medians = interleaved_medians(runners, settings.warmup, settings.repeats, sync=sync)
        out[setting] = {"batch": batch, "seq_len": settings.seq_len, **medians,
                        **speed_ratios(medians["dense"]["median_s"], medians["variant"]["median_s"],
                                       batch * settings.seq_len)}
    return out


def _forward(network: nn.Module, ids: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return network(input_ids=ids, use_cache=False).logits

    return run


def device_description(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device)}
    return {"type": device.type, "name": _cpu_name(), "threads": torch.get_num_threads()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else (platform.processor() or platform.machine())


# -- the workflow step ---------------------------------------------------------------------------------------------
def speed(config: dict, model: str, variant: str, base_dir: str, variant_dir: str, out_json: str,
          settings: SpeedSettings = SpeedSettings()) -> None:
    from kdp import models
    from kdp.io import write_json
    from kdp.provenance import provenance

    dtype = config["runtime"]["dtype"]
    dense, _ = models.load_base(Path(base_dir), dtype)
    pruned, _ = models.load_variant(Path(variant_dir), dtype)
    counts = {"dense": analytic_counts(dense), "variant": analytic_counts(pruned)}
    timing = measure(dense, pruned, dense.get_input_embeddings().num_embeddings, settings, config["seed"])
    device = next(dense.parameters()).device
    write_json(out_json, {
        "model": model,
        "variant": variant,
        "analytic": {**counts, "flops_speedup": counts["dense"]["flops"] / counts["variant"]["flops"],
                     "convention": PAPER_CONVENTION.describe()},
        "measured": timing,
        "settings": {**asdict(settings), "dtype": str(next(dense.parameters()).dtype).removeprefix("torch."),
                     "torch_threads": torch.get_num_threads()},
        "device": device_description(device),
        "speed_version": SPEED_VERSION,
        "provenance": provenance(config, config["seed"], model=model, variant=variant),
    })
