"""Does a baseline's departure from its official code change what it chooses on an embedded model?

    OMP_NUM_THREADS=1 nice python bench/baseline_departures.py --only shortgpt laco slicegpt   # ~10 min
    OMP_NUM_THREADS=1 nice python bench/baseline_departures.py --only sleb                     # ~40 min

Reads the workflow's base model and calibration sets (build them first with
``snakemake --cores 2 results/calib/smollm2-135m/{shortgpt,sleb,laco,slicegpt}.safetensors``) and the variants of
config/config.yaml, runs each registered method with one setting changed at a time, and writes
results/bench/baseline_departures/{model}/{method}.json with provenance. Nothing is tuned: every number is written
as it comes out.

* shortgpt: ``bi_precision`` float32 (the paper's metric) against float16_official (the official script's); the
  largest token norm of the residual stream entering each layer (where the massive activations sit); the official
  post-norm last layer; 32 against 128 calibration windows of 256 tokens.
* laco: the released-code merge and Eq. (1) under the threshold rule (``largest_reaching_target``), the released
  merge at the paper's fixed T = 0.65, and the released merge with the 5 passages cut to 16 tokens (the notebook's
  prefixes are one short sentence each).
* slicegpt: width and parameter ratio of both readings of "25%" (slicing fraction, and slicing solved for the
  parameter ratio), and the official centring of LLaMA embeddings against centring only where it is exact: held-out
  perplexity of the fused (unsliced) and of the 25%-sliced model, on the 64 windows that follow the PCA windows.
* sleb: the removal order with the embedded 8 windows of 128 tokens against 8 windows of 512 tokens.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
import torch

from baselines.shortgpt import float16_cosine
from baselines.slicegpt import SliceShapes, official_width, solve_width
from kdp.adapters import adapter_for
from kdp.calibration import CalibrationSet, build
from kdp.config import load as load_config
from kdp.experiment import resolve_run
from kdp.finetune import validation_perplexity
from kdp.io import write_json
from kdp.layer_scoring import calibration_inputs
from kdp.models import load_base
from kdp.provenance import provenance
from kdp.registry import PruneContext


class Bench:
    """One model of the config, its base and calibration sets, and a way to prune it with changed settings."""

    def __init__(self, config: dict, model: str):
        self.config, self.model = config, model
        self.base = ROOT / "results" / "models" / model / "base"

    def calibration(self, name: str, **changes) -> CalibrationSet:
        """The workflow's set ``name``, or, with ``changes`` to its recipe, the same recipe rebuilt with them."""
        if not changes:
            return CalibrationSet.load(ROOT / "results" / "calib" / self.model / f"{name}.safetensors")
        spec = copy.deepcopy(self.config["calibration"][name])
        spec["max_length"] = changes.get("max_length", spec["max_length"])
        for source in spec["sources"]:
            source["samples"] = changes.get("samples", source["samples"])
        _, tokenizer = load_base(self.base)
        return build(spec, tokenizer, self.config["seed"], f"calibration.{name} with {changes}")

    def prune(self, variant: str, calibration: CalibrationSet | None = None, **overrides) -> dict:
        """Prune a fresh base model as the workflow would, with ``overrides`` on the variant's parameters."""
        run = resolve_run(self.config, self.model, variant)
        spec, params = run.spec, {**copy.deepcopy(run.params), **overrides}
        network, tokenizer = load_base(self.base)
        adapter = adapter_for(network)
        dense = adapter.parameter_count()
        ctx = PruneContext(model=network, adapter=adapter, tokenizer=tokenizer, params=params,
                           target_ratio=run.target_ratio, seed=self.config["seed"],
                           device=next(network.parameters()).device, model_name=self.model,
                           calibration=calibration or self.calibration(params["calibration"]))
        started = time.perf_counter()
        record = spec.build(params).prune(ctx)
        return {"overrides": overrides, "ratio": 1 - adapter.parameter_count() / dense,
                "layers_removed": record.layers_removed, "blocks": record.blocks, "details": record.details,
                "seconds": time.perf_counter() - started, "network": network}


def without_network(run: dict) -> dict:
    return {key: value for key, value in run.items() if key != "network"}


@torch.no_grad()
def residual_profile(bench: Bench, calibration: CalibrationSet) -> dict[str, list[float]]:
    """Per layer: the largest and the median token norm of the residual stream entering it, and the fraction of
    tokens whose official float16 cosine between its input and output is NaN (scored 0.5 by the official code)."""
    network, _ = load_base(bench.base)
    adapter = adapter_for(network)
    norms: list[list[torch.Tensor]] = [[] for _ in range(adapter.num_layers)]
    nan = torch.zeros(adapter.num_layers)
    for inputs, _, mask in calibration_inputs(adapter, calibration, 8, "cpu"):
        real, hidden = mask.bool(), inputs.hidden_states
        for index in range(adapter.num_layers):
            output = adapter.run_layers(hidden, inputs.layer_kwargs, index, index + 1)
            norms[index].append(hidden[real].norm(dim=-1))
            nan[index] += float16_cosine(hidden[real], output[real]).isnan().sum()
            hidden = output
    tokens = calibration.num_tokens
    return {"peak_norm": [float(torch.cat(n).max()) for n in norms],
            "median_norm": [float(torch.cat(n).median()) for n in norms],
            "float16_nan_fraction": (nan / tokens).tolist()}


def shortgpt(bench: Bench) -> dict:
    windows = bench.calibration("shortgpt")
    runs = {
        "float32": bench.prune("shortgpt", bi_precision="float32"),
        "float16_official": bench.prune("shortgpt", bi_precision="float16_official"),
        "float32_post_norm_last_layer": bench.prune("shortgpt", last_layer="post_norm"),
        "float32_128_windows": bench.prune("shortgpt", bench.calibration("shortgpt", samples=128)),
    }
    return {"residual_stream": residual_profile(bench, windows),
            **{name: without_network(run) for name, run in runs.items()}}


def laco(bench: Bench) -> dict:
    prefixes = bench.calibration("laco").truncated(16)
    runs = {
        "released_code_rule": bench.prune("laco"),
        "eq1_rule": bench.prune("laco_eq1"),
        "released_code_T0.65": bench.prune("laco", threshold=0.65),
        "released_code_rule_16_tokens": bench.prune("laco", prefixes),
    }
    return {name: without_network(run) for name, run in runs.items()}


def slicegpt(bench: Bench) -> dict:
    network, _ = load_base(bench.base)
    adapter = adapter_for(network)
    shapes, dense = SliceShapes.of(adapter), adapter.parameter_count()
    resolved = resolve_run(bench.config, bench.model, "slicegpt")
    params, target = resolved.params, resolved.target_ratio
    interval = int(params["round_interval"])
    widths = {"slicing_0.25": official_width(adapter.hidden_size, 0.25, interval),
              "matched": solve_width(shapes, dense, target, interval)}
    readings = {name: {"width": width, "slicing": 1 - width / adapter.hidden_size,
                       "parameters": shapes.parameters(width), "ratio": 1 - shapes.parameters(width) / dense}
                for name, width in widths.items()}
    data = bench.calibration("slicegpt")
    pca = int(params["pca_samples"])
    held_out = data.rows(pca, 2 * pca)
    perplexity = {"dense": validation_perplexity(network, held_out, 8)}
    for centring in ("always", "layernorm_only"):
        for name, slicing in (("fused", 0.0), ("slicing_0.25", 0.25)):
            run = bench.prune("slicegpt", data, slicing=slicing, centre_embeddings=centring)
            perplexity[f"{name}_centre_{centring}"] = validation_perplexity(run["network"], held_out, 8)
    return {"dense_parameters": dense, "hidden_size": adapter.hidden_size, "readings": readings,
            "held_out": f"calibration.slicegpt samples {pca}..{2 * pca - 1} (after the PCA windows)",
            "perplexity": perplexity}


def sleb(bench: Bench) -> dict:
    runs = {"8x128": bench.prune("sleb"), "8x512": bench.prune("sleb", bench.calibration("sleb", max_length=512))}
    return {name: without_network(run) for name, run in runs.items()}


MEASUREMENTS = {"shortgpt": shortgpt, "laco": laco, "slicegpt": slicegpt, "sleb": sleb}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--only", nargs="+", choices=sorted(MEASUREMENTS), default=sorted(MEASUREMENTS))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "baseline_departures")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    bench = Bench(config, args.model)
    for name in args.only:
        started = time.perf_counter()
        result = MEASUREMENTS[name](bench)
        result["seconds"] = time.perf_counter() - started
        result["provenance"] = provenance(config, config["seed"], model=args.model)
        path = args.out / args.model / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, result)
        print(f"{name}: {path} ({result['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
