"""Real-width architecture checks on CPU, without the hub: each shipped model config through the real code path.

    PYTHONPATH=. python bench/real_width.py                       # all six configs of resources/model_configs
    PYTHONPATH=. python bench/real_width.py llama-3-8b opt-2.7b   # the pair tests/test_real_width.py runs in CI

(from the repository root: the checks reuse the test suite's character tokenizer, `tests.test_artifacts`)

For each config, a checkpoint with the config's full width (hidden size, heads, key/value heads, FFN, vocabulary,
rope scaling, biases) and ``--layers`` decoder layers is written with seeded random fp16 weights
(`capture_memory.write_checkpoint`, one shard per layer as the hub repositories are laid out), with a character
tokenizer. Then the workflow's own steps run on it, as the rules call them (`kdp.steps`): base model (a ``path:``
source), calibration (KJV text, `--samples` x `--tokens`), the streamed layer-by-layer capture, similarity and
block selection, one KDP block fit at a tiny budget, and every registered method's prune at ``target_ratio`` 0.25.
Each pruned model is saved with ``save_pretrained`` and reloaded in a fresh process, which checks

* its logits on fixed token ids equal the in-memory pruned model's (fp32, atol 1e-4 relative to their scale),
* the analytic count of its Linear MACs at 128 tokens (`kdp.speed.model_spec_of`, the paper's convention) equals
  what torch's FlopCounterMode measures in one forward (matmuls only: the convention leaves out attention scores),
* and that count's parameters equal the loaded model's.

The dense model is also checked against the analytic count from its config alone (`kdp.flops.model_spec`), and
LLM-Pruner's achieved ratio at the config's real depth is worked out by its own code (`pruned_layers`,
`solve_ratio`, `prune_layer`) on a meta-device model, since its whole-head rounding (LLaMA-3 has 8 key/value heads)
is what can pull it below the target. Every config runs in its own process; the table at the end gives its wall
time and peak RSS (its own and its reload process's). Some method settings are cut for three layers (below,
`VARIANTS`): they change how many units a method touches, never the code path.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
TARGET_RATIO = 0.25
# Registered method -> variant settings for a 3-layer model. SLEB's barriers keep the first and last block, which
# would leave one candidate; LaCo merges C = 2 layers from layer 0 (T = 0, so a merge
# happens); Streamline drops 2 layers (its span of 3 becomes one); the sample counts fit the small calibration set.
VARIANTS = {
    "dense": {"method": "dense"},
    "wo_kernel": {"method": "drop_blocks"},
    "kdp": {"method": "kdp"},
    "shortgpt": {"method": "shortgpt"},
    "sleb": {"method": "sleb", "early_barrier": 0, "latter_barrier": 0},
    "laco": {"method": "laco", "layers_per_merge": 2, "lowest_layer": 0, "threshold": 0.0},
    "streamline": {"method": "streamline", "layers_removed": 2, "selection_samples": 4, "validation_samples": 4,
                   "training": {"batch_size": 4, "grad_accum": 1, "epochs": 1}},
    "slicegpt": {"method": "slicegpt", "pca_samples": 8, "batch_size": 4},
    "llm_pruner": {"method": "llm_pruner", "importance_samples": 4, "batch_size": 4},
}
KDP_FIT = {"rff_dim": 256, "rank": 4, "kernel_max_epochs": 1, "inverse_epochs": 1, "kernel_batch_samples": 8,
           "inverse_batch_samples": 8}
PROBE = (2, 16)  # token ids the logits are compared on


def pipeline_config(key: str, source: Path, samples: int, tokens: int) -> dict:
    from kdp.config import validate
    from kdp.registry import method_names, method_spec

    every_method_on_one_set = {name: {"calibration": "standard"} for name in method_names()
                               if "calibration" in method_spec(name, "real_width").defaults}
    return validate({
        "seed": 0, "target_ratio": TARGET_RATIO, "runtime": {"dtype": "float32"},
        "models": {key: {"source": f"path:{source}", "label": key}},
        "calibration": {"standard": {"max_length": tokens, "sources": [{"name": "kjv", "samples": samples}]}},
        "capture": {"calibration": "standard", "dtype": "float32", "batch_size": 8},
        "similarity": {"max_tokens": 256},
        # three layers: blocks may start at layer 0, and one block of two layers is the whole removal
        "selection": {"k_max": 2, "edge_fraction": 0.0, "max_blocks": 1},
        "evaluation": {"suite": "embedded", "benchmarks": ["kjv_cloze"]},
        "methods": {**every_method_on_one_set, "kdp": {"calibration": "standard", "fit": KDP_FIT}},
        "variants": VARIANTS, "tables": {},
    })


RELOAD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM
    from kdp.speed import model_spec_of
    directory, ids_path, seq_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(np.load(ids_path))).logits.numpy()
        np.save(directory + "/reloaded_logits.npy", logits)
        counter = FlopCounterMode(display=False)
        with counter:
            model(input_ids=torch.zeros(1, seq_len, dtype=torch.long))
    matmuls = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    measured = sum(n for op, n in matmuls.items() if "attention" not in op) // 2
    spec = model_spec_of(model)
    folds = [m.fold_config() for m in model.modules() if type(m).__name__ == "FoldedBlock"]
    print(json.dumps({"class": type(model).__name__, "analytic_macs": spec.flops(), "measured_macs": measured,
                      "folds": folds,
                      "ops": sorted(matmuls), "spec_parameters": spec.parameters,
                      "parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def reload_check(directory: Path, logits, ids_path: Path, env: dict) -> dict:
    """Reload ``directory`` in a fresh process; compare logits and FLOPs there."""
    import numpy as np

    from kdp.speed import SpeedSettings

    done = subprocess.run([sys.executable, "-c", RELOAD, str(directory), str(ids_path),
                           str(SpeedSettings().seq_len)], capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode:
        raise RuntimeError(f"reload of {directory.name} failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    reloaded = np.load(directory / "reloaded_logits.npy")
    scale = float(np.abs(logits).max())
    report["max_logit_difference"] = float(np.abs(reloaded - logits).max())
    report["logit_scale"] = scale
    problems, notes = [], []
    if reloaded.shape != logits.shape or report["max_logit_difference"] > 1e-4 * max(scale, 1.0):
        problems.append(f"logits differ by {report['max_logit_difference']:.3g} (scale {scale:.3g})")
    # The analytic fold counts assume Omega = D^1/2 Z + L V precomputed (kdp.flops.fold_macs_per_token,
    # fold_parameters_direct); the fold module keeps lambda and L and forms L V in every forward. Those exact
    # amounts are reported; any other difference is a problem.
    recompute = sum(f["hidden_size"] * f["rank"] * f["rff_dim"] // 2 for f in report["folds"])
    held = sum(f["hidden_size"] * (1 + f["rank"]) - (f["hidden_size"] + 1) * f["rff_dim"] // 2
               for f in report["folds"])
    if report["measured_macs"] - report["analytic_macs"] != recompute:
        problems.append(f"analytic {report['analytic_macs']} != measured {report['measured_macs']} MACs")
    elif recompute:
        notes.append(f"measured MACs exceed the analytic count by {recompute}: the fold forms L V (d r m) in every "
                     "forward, once per call, where the count assumes Omega precomputed")
    if report["parameters"] - report["spec_parameters"] != held:
        problems.append(f"spec counts {report['spec_parameters']} parameters, the model holds {report['parameters']}")
    elif held:
        notes.append(f"the model holds {-held} parameters fewer than the direct count: lambda and L (d (1 + r)) "
                     "where the count has the precomputed Omega and phase (d m + m)")
    report["notes"] = notes
    report["problems"] = problems
    return report


def llm_pruner_full_depth(key: str) -> dict:
    """LLM-Pruner's achieved ratio at the config's real depth, by its own functions on a meta-device model."""
    import torch
    from transformers import AutoModelForCausalLM

    from baselines.llm_pruner import UnitScores, prune_layer, pruned_layers, solve_ratio
    from kdp.adapters import adapter_for
    from kdp.flops import load_model_config

    config = load_model_config(key)
    with torch.device("meta"):
        adapter = adapter_for(AutoModelForCausalLM.from_config(config))
    dense = adapter.parameter_count()
    layers = pruned_layers(adapter.num_layers, None)
    ratio = solve_ratio(adapter, layers, TARGET_RATIO)
    for index in layers:  # which units go depends on the scores; how many does not
        parts = adapter.layer(index)
        prune_layer(parts, UnitScores(torch.arange(parts.num_kv_heads, dtype=torch.float),
                                      torch.arange(parts.mlp_output.in_features, dtype=torch.float)), ratio)
    heads = adapter.layer(layers.start).num_kv_heads
    return {"layers": adapter.num_layers, "in_layer_ratio": ratio, "kv_heads_kept": heads,
            "kv_heads": config.num_key_value_heads if hasattr(config, "num_key_value_heads") else
            config.num_attention_heads, "achieved": 1 - adapter.parameter_count() / dense, "target": TARGET_RATIO}


def run_config(key: str, layers: int, samples: int, tokens: int, root: Path, variants: list[str]) -> dict:
    """Every stage for one config; returns seconds per stage and the checks' results."""
    import gc

    import numpy as np
    import torch

    from capture_memory import write_checkpoint
    from kdp import models, steps
    from kdp.experiment import resolve_run
    from kdp.flops import load_model_config, model_spec
    from kdp.io import read_json
    from kdp.registry import method_names
    from kdp.selection import read_blocks
    from tests.test_artifacts import char_tokenizer, fresh_env

    missing = sorted(set(method_names()) - {v["method"] for v in VARIANTS.values()})
    if missing:  # the benchmark covers every registered method; a new one needs its variant here
        raise RuntimeError(f"registered methods without a variant here: {missing}")
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def stage(name):
        seconds[name] = round(time.perf_counter() - started - sum(seconds.values()), 2)

    source = root / "source"
    source.mkdir()
    write_checkpoint(key, layers, source)
    char_tokenizer().save_pretrained(source)
    stage("write checkpoint")
    config = pipeline_config(key, source, samples, tokens)
    base, calib, hidden = root / "base", root / "calib.safetensors", root / "hidden"
    steps.base_model(config, key, str(base))
    steps.calibration(config, key, "standard", str(base), str(calib))
    steps.capture_hidden_states(config, key, "standard", str(base), str(calib), str(hidden))
    stage("base, calibration, streamed capture")
    steps.similarity(config, key, "standard", str(base), str(calib), str(hidden), str(root / "sim.npz"),
                     str(root / "sim.csv"))
    for variant in ("kdp", "wo_kernel"):
        steps.select_blocks(config, key, variant, str(root / "sim.npz"), str(root / f"blocks_{variant}.json"))
    blocks = read_blocks(str(root / "blocks_kdp.json"))
    stage("similarity, block selection")
    fits = [str(root / "fits" / block.tag) for block in blocks]
    for block, fit in zip(blocks, fits):
        steps.fit_block(config, key, "kdp", block.tag, str(base),
                        method_inputs(config, "kdp", calib, hidden, root / "blocks_kdp.json", []), fit)
    stage(f"KDP block fit ({', '.join(b.tag for b in blocks)}, 2m = {KDP_FIT['rff_dim']})")

    ids = torch.randint(4, 99, PROBE, generator=torch.Generator().manual_seed(5))
    np.save(root / "ids.npy", ids.numpy())
    env = fresh_env(root)
    results = {}
    for variant in ["dense", *(v for v in variants if v != "dense")]:  # dense first: the config's count
        steps._seed_everything(config["seed"])  # as rule prune: the same seed, the same context
        method, ctx = steps._context(config, resolve_run(config, key, variant), str(base), method_inputs(
            config, variant, calib, hidden, root / f"blocks_{variant}.json", fits))
        dense_parameters = ctx.adapter.parameter_count()
        record = method.prune(ctx)
        with torch.no_grad():
            logits = ctx.model(input_ids=ids).logits.numpy()
        out = root / "variants" / variant
        models.save_variant(ctx.model, ctx.tokenizer, out, {"variant": variant})
        ratio = 1 - ctx.adapter.parameter_count() / dense_parameters
        del method, ctx
        gc.collect()
        stage(f"prune + save {variant}")
        results[variant] = {"ratio": ratio, "layers_removed": record.layers_removed,
                            **reload_check(out, logits, root / "ids.npy", env)}
        shutil.rmtree(out)
        stage(f"reload {variant}")
    dense_macs = model_spec(_with_layers(load_model_config(key), layers)).flops()
    results["dense"]["config_macs"] = dense_macs
    if dense_macs != results["dense"]["analytic_macs"]:
        results["dense"]["problems"].append(f"config count {dense_macs} != loaded {results['dense']['analytic_macs']}")
    return {"key": key, "layers": layers, "seconds": seconds, "variants": results,
            "blocks": read_json(root / "blocks_kdp.json")["blocks"],
            "llm_pruner_full_depth": llm_pruner_full_depth(key) if key.startswith("llama") else None}


def method_inputs(config: dict, variant: str, calibration: Path, hidden: Path, blocks: Path, fits: list[str]) -> dict:
    """What rule prune hands a method, from what its class requires (as method_inputs in common.smk)."""
    from kdp.registry import resolve_params

    spec, _ = resolve_params(config, variant)
    inputs: dict = {}
    if spec.requires & {"calibration", "hidden_states"}:
        inputs["calibration"] = str(calibration)
    if "hidden_states" in spec.requires:
        inputs["hidden"] = str(hidden)
    if spec.requires & {"blocks", "block_fits"}:
        inputs["blocks"] = str(blocks)
    if spec.fits_blocks:
        inputs["block_fits"] = fits
    return inputs


def _with_layers(config, layers: int):
    config.num_hidden_layers = layers
    return config


def worker(args) -> int:
    import torch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix=f"real-width-{args.worker}-") as tmp:
        report = run_config(args.worker, args.layers, args.samples, args.tokens, Path(tmp), args.variants)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    report["peak_rss_mib"] = {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                              "reload processes": children}
    Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def summary(report: dict) -> list[str]:
    lines = [f"== {report['key']}: {report['layers']} decoder layers at full width; block {report['blocks']}; "
             f"peak RSS {report['peak_rss_mib']['self']:.0f} MiB (reload processes "
             f"{report['peak_rss_mib']['reload processes']:.0f} MiB); {sum(report['seconds'].values()):.0f} s"]
    lines += [f"   {name:<52} {value:8.1f} s" for name, value in report["seconds"].items()]
    lines.append(f"   {'variant':<12} {'ratio':>7} {'max |dlogit|':>13} {'MACs analytic':>15} {'measured':>15}  class")
    for variant, row in report["variants"].items():
        lines.append(f"   {variant:<12} {row['ratio']:7.4f} {row['max_logit_difference']:13.2e} "
                     f"{row['analytic_macs']:15d} {row['measured_macs']:15d}  {row['class']}"
                     + "".join(f"\n      PROBLEM: {p}" for p in row["problems"])
                     + "".join(f"\n      note: {n}" for n in row["notes"]))
    full = report["llm_pruner_full_depth"]
    if full:
        lines.append(f"   LLM-Pruner at the real depth ({full['layers']} layers): in-layer ratio "
                     f"{full['in_layer_ratio']:.4f}, {full['kv_heads_kept']} of {full['kv_heads']} key/value heads "
                     f"kept, {100 * full['achieved']:.2f}% of parameters removed (target "
                     f"{100 * full['target']:.0f}%)")
    return lines


def main() -> int:
    from kdp.flops import model_config_keys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", default=None, help="model config keys (default: all six)")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--samples", type=int, default=16, help="calibration samples")
    parser.add_argument("--tokens", type=int, default=16, help="calibration length")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="a subset of the variants below (default: every registered method)")
    parser.add_argument("--json", help="write every config's report here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    reports, failed = [], []
    for key in args.configs or model_config_keys():
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--worker", key, "--json", out.name, "--layers",
                                   str(args.layers), "--samples", str(args.samples), "--tokens", str(args.tokens),
                                   "--variants", *args.variants])
            if done.returncode:
                failed.append(key)
                print(f"== {key}: FAILED after {time.perf_counter() - started:.0f} s", flush=True)
                continue
            reports.append(json.loads(Path(out.name).read_text()))
        print("\n".join(summary(reports[-1])), flush=True)
        failed += [key] if any(row["problems"] for row in reports[-1]["variants"].values()) else []
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2))
    print(f"{len(reports) - len(set(failed) & {r['key'] for r in reports})} of {len(args.configs or model_config_keys())} "
          f"configs pass every check" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
