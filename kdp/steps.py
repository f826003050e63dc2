"""One function per workflow rule: explicit paths in, files out (atomically), provenance in every record.

The scripts in ``workflow/scripts/`` only map Snakemake's ``input``/``output`` names onto these arguments, so
every step can also run from tests or the ``kdp-bench`` command line.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdp import models
from kdp.adapters import adapter_for
from kdp.errors import UserError
from kdp.io import atomic_path, read_json, verify_folder_manifest, write_folder_manifest, write_json, write_text
from kdp.provenance import provenance, provenance_header
from kdp.selection import read_blocks

log = logging.getLogger("kdp")


# -- running a step under Snakemake ------------------------------------------------------------------------------
def run(step: Callable[..., Any], log_path: str, threads: int = 1, **kwargs: Any) -> None:
    """Run ``step`` with everything it prints (log records, progress bars, tracebacks) going to ``log_path``.

    A `UserError` becomes one line on the terminal and exit status 1; its traceback stays in the log.
    """
    terminal, console = sys.stderr, sys.stdout
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1, encoding="utf-8") as handle:
        sys.stdout = sys.stderr = handle
        to_log = logging.StreamHandler(handle)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                            handlers=[to_log], force=True)
        torch.set_num_threads(max(1, threads))
        try:
            step(**kwargs)
        except UserError as error:
            log.exception("stopped by a user error")
            terminal.write(f"kdp-bench: {error}\n")
            raise SystemExit(1) from None
        except Exception:
            log.exception("failed")
            terminal.write(f"kdp-bench: {step.__name__} failed; the traceback is in {log_path}\n")
            raise SystemExit(1) from None
        finally:
            # Restore what was there before (a caller such as pytest may have replaced the streams itself), and
            # stop logging into the file that is about to close.
            sys.stdout, sys.stderr = console, terminal
            logging.getLogger().removeHandler(to_log)


def step_inputs(snakemake_input) -> dict[str, Any]:
    """The named inputs a method consumes, as the dict `prune` and `fit_block` take (lists stay lists)."""
    names = ("calibration", "hidden", "blocks", "block_fits")
    return {name: getattr(snakemake_input, name) for name in names if hasattr(snakemake_input, name)}


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- models ------------------------------------------------------------------------------------------------------
def base_model(config: dict, model: str, out_dir: str, asset: str | None = None) -> None:
    _seed_everything(config["seed"])
    manifest = models.materialize_base(model, config["models"][model], Path(out_dir), config["seed"], asset)
    log.info("base model %s ready: %s", model, manifest)


def _load_base(config: dict, base_dir: str):
    return models.load_base(Path(base_dir), config["runtime"]["dtype"])


# -- calibration and hidden states -------------------------------------------------------------------------------
def calibration(config: dict, model: str, name: str, base_dir: str, out_path: str, sources: list[str] = ()) -> None:
    """``sources``: the prefetch records of the set's hub sources (`kdp.prefetch`), read offline."""
    from kdp import calibration as calib
    from kdp.prefetch import calibration_files
    from transformers import AutoTokenizer

    if name not in config["calibration"]:
        raise UserError(f"calibration set {name!r} is not configured; allowed: {', '.join(config['calibration'])}")
    manifest = models.base_manifest(Path(base_dir))
    tokenizer_at = models._location(Path(base_dir), manifest["tokenizer"])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_at, trust_remote_code=True)
    model_config = _base_config(manifest, base_dir)
    _check_tokenizer_fits(config, model, manifest, model_config, tokenizer)
    spec = _within_context(config["calibration"][name], model_config, f"{model}/{name}")
    built = calib.build(spec, tokenizer, config["seed"], f"config key calibration.{name}", calibration_files(sources))
    built.meta["hub_sources"] = {record["name"]: {"repo": record["repo"], "commit": record["commit"]}
                                 for record in map(read_json, sources)}
    built.meta["provenance"] = provenance(config, config["seed"], model=model)
    built.save(Path(out_path))
    log.info("calibration %s/%s: %d samples, %d tokens", model, name, built.num_samples, built.num_tokens)


def _base_config(manifest: dict, base_dir: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(models._location(Path(base_dir), manifest["weights"]), trust_remote_code=True)


def _within_context(spec: dict, model_config, where: str) -> dict:
    """A calibration window longer than the model's context would index past its position table (OPT) or run it
    out of distribution, so a set written for long-context models (e.g. ShortGPT's 256 tokens) is cut to fit."""
    context = getattr(model_config, "max_position_embeddings", None)
    if context is None or spec["max_length"] <= context:
        return spec
    log.warning("calibration %s: max_length %d exceeds the model's context of %d tokens; using %d",
                where, spec["max_length"], context, context)
    return {**spec, "max_length": context}


def _check_tokenizer_fits(config: dict, model: str, manifest: dict, model_config, tokenizer) -> None:
    """Token ids past the embedding would crash the first forward pass; the calibration step tokenises first."""
    rows = getattr(model_config, "vocab_size", None)
    if rows is not None and len(tokenizer) > rows:
        key = "tokenizer" if "tokenizer" in config["models"][model] else "source"
        raise UserError(f"config key models.{model}.{key}: tokenizer {manifest['tokenizer']!r} has {len(tokenizer)} "
                        f"tokens but the model's embedding has only {rows} rows; allowed: the tokenizer the model "
                        "was trained with")


def cache_key(config: dict, model: str, calibration_name: str, calibration_path: str) -> dict:
    from kdp.calibration import CalibrationSet
    from kdp.capture import CAPTURE_VERSION
    from kdp.io import sha256_file

    calib = CalibrationSet.load(Path(calibration_path))
    return {
        "model": model,
        "source": config["models"][model]["source"],
        "calibration": calibration_name,
        "calibration_sha256": sha256_file(calibration_path),
        "max_length": int(calib.input_ids.shape[1]),
        "dtype": config["capture"]["dtype"],
        "seed": config["seed"],
        "code_version": CAPTURE_VERSION,
    }


def capture_hidden_states(config: dict, model: str, calibration_name: str, base_dir: str,
                          calibration_path: str, out_dir: str) -> None:
    from kdp.calibration import CalibrationSet
    from kdp.capture import capture, open_layerwise

    device = models.resolve_device()
    # One decoder layer's weights in memory at a time, read from the base model's safetensors shards.
    adapter, layers = open_layerwise(models.weights_directory(Path(base_dir)),
                                     models.resolve_dtype(config["runtime"]["dtype"], device), device)
    calib = CalibrationSet.load(Path(calibration_path))
    key = cache_key(config, model, calibration_name, calibration_path)
    started = time.perf_counter()
    capture(adapter, calib, Path(out_dir), key, config["capture"]["dtype"], config["capture"]["batch_size"],
            layers=layers, device=device)
    log.info("captured %d states of %d samples in %.1fs (%s)", adapter.num_layers + 1, calib.num_samples,
             time.perf_counter() - started, type(layers).__name__)


def open_hidden(config: dict, model: str, calibration_name: str, calibration_path: str, hidden_dir: str):
    from kdp.capture import HiddenStates

    return HiddenStates.open(Path(hidden_dir), cache_key(config, model, calibration_name, calibration_path))


def similarity(config: dict, model: str, calibration_name: str, base_dir: str, calibration_path: str,
               hidden_dir: str, out_npz: str, out_csv: str) -> None:
    from kdp.similarity import similarity_matrices

    hidden = open_hidden(config, model, calibration_name, calibration_path, hidden_dir)
    settings = config["similarity"]
    matrices = similarity_matrices(hidden, settings["max_tokens"], config["seed"], settings["outlier_tokens"],
                                   settings["outlier_norm_ratio"])
    counts = parameter_counts(config, base_dir)
    with atomic_path(out_npz) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, cosine=matrices["cosine"], cka=matrices["cka"], tokens=matrices["tokens"],
                     outliers_left_out=matrices["outliers_left_out"],
                     layer_parameters=np.array(counts["layers"]), total_parameters=np.array(counts["total"]))
    rows = ["state_i,state_j,cosine,cka"]
    size = matrices["cka"].shape[0]
    rows += [f"{i},{j},{matrices['cosine'][i, j]:.6f},{matrices['cka'][i, j]:.6f}" for i in range(size) for j in range(size)]
    write_text(out_csv, provenance_header(config, model=model) + "\n".join(rows) + "\n")


def parameter_counts(config: dict, base_dir: str) -> dict:
    """Per-layer and total parameter counts from the base model's config alone (built on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    manifest = models.base_manifest(Path(base_dir))
    weights = models._location(Path(base_dir), manifest["weights"])
    model_config = AutoConfig.from_pretrained(weights, trust_remote_code=True)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model_config, trust_remote_code=True)
    adapter = adapter_for(skeleton)
    return {"layers": [adapter.layer_parameter_count(i) for i in range(adapter.num_layers)],
            "total": adapter.parameter_count()}


# -- block selection ---------------------------------------------------------------------------------------------
def select_blocks(config: dict, model: str, variant: str, similarity_npz: str, out_json: str) -> None:
    from kdp.experiment import resolve_run
    from kdp.selection import candidate_blocks, select_blocks as choose, validate_manual_blocks

    run = resolve_run(config, model, variant)
    selection = {**config["selection"], **run.params.get("selection", {})}
    data = np.load(similarity_npz)
    layer_parameters = data["layer_parameters"].tolist()
    total = int(data["total_parameters"])
    num_layers = len(layer_parameters)
    cka = data["cka"]
    manual = selection["blocks"].get(model)
    if manual:
        blocks = validate_manual_blocks(manual, num_layers, f"config key selection.blocks.{model}")
        scores = {b: float(cka[b.first, b.last + 1]) for b in blocks}
    else:
        candidates = candidate_blocks(num_layers, selection["k_max"], selection["edge_fraction"],
                                      _selection_key(config, model, variant, "k_max"))
        scores = {b: float(cka[b.first, b.last + 1]) for b in candidates}
        ratio_key = f"variants.{variant}.target_ratio" if "target_ratio" in config["variants"][variant] else "target_ratio"
        blocks = choose(scores, layer_parameters, total, run.target_ratio, selection["max_blocks"],
                        where=f"config key {ratio_key} (model {model}, {num_layers} layers)")
    removed = sum(layer_parameters[i] for b in blocks for i in b.layers)
    write_json(out_json, {
        "model": model,
        "variant": variant,
        "selection": selection if not manual else {**selection, "manual": True},
        "blocks": [{"first": b.first, "last": b.last, "cka": scores[b]} for b in blocks],
        "candidates": _spread(list(scores.values())),
        "outliers_left_out": int(data["outliers_left_out"]),
        "removed_parameters": removed,
        "total_parameters": total,
        "ratio_if_removed": removed / total,
        "provenance": provenance(config, config["seed"]),
    })


def _spread(scores: list[float]) -> dict:
    """How far apart the candidates' CKA scores lie: a ranking of near-equal scores means little."""
    values = np.sort(np.asarray(scores))
    return {"count": len(values), "min": float(values[0]), "median": float(np.median(values)),
            "max": float(values[-1])}


def _selection_key(config: dict, model: str, variant: str, key: str) -> str:
    """The config key a selection setting of this variant came from (most specific first), for error messages."""
    method = config["variants"][variant]["method"]
    layers = [(f"models.{model}.overrides.{method}.selection", config["models"][model].get("overrides", {}).get(method, {})),
              (f"variants.{variant}.selection", config["variants"][variant]),
              (f"methods.{method}.selection", config.get("methods", {}).get(method, {}))]
    for name, values in layers:
        if key in values.get("selection", {}):
            return f"config key {name}.{key}"
    return f"config key selection.{key}"


# -- pruning -------------------------------------------------------------------------------------------------------
# `fit_block` and `prune` take a run: a variant's name (its first seed) or ``{variant}~s{seed}`` for a further seed of
# a stochastic variant (`kdp.experiment`). The run's seed seeds the method (PruneContext.seed and the global
# generators); calibration sets, hidden states and block choices are the variant's, shared by every seed.
def _context(config: dict, run, base_dir: str, inputs: dict[str, Any]):
    from kdp.calibration import CalibrationSet
    from kdp.experiment import resolve_run, run_name
    from kdp.registry import PruneContext

    params = run.params
    network, tokenizer = _load_base(config, base_dir)
    ctx = PruneContext(
        model=network, adapter=adapter_for(network), tokenizer=tokenizer, params=params,
        target_ratio=run.target_ratio, seed=run.seed, device=next(network.parameters()).device,
        model_name=run.model, log=log,
    )
    if inputs.get("calibration"):
        ctx.calibration = CalibrationSet.load(Path(inputs["calibration"]))
    if inputs.get("hidden"):
        ctx.hidden = open_hidden(config, run.model, params["calibration"], inputs["calibration"], inputs["hidden"])
    if inputs.get("blocks"):
        ctx.blocks = read_blocks(inputs["blocks"])
    if inputs.get("block_fits"):
        fitted = resolve_run(config, run.model, run_name(config, run.fitted_variant, run.seed))
        # A variant reusing another's folds may read other hidden states than the ones they were fitted to.
        same_states = fitted.params["calibration"] == params["calibration"]
        for path in inputs["block_fits"]:
            verify_folder_manifest(path, fold_key(fitted, Path(path).name, ctx.hidden), "trained fold",
                                   unchecked=() if same_states else ("hidden",))
        ctx.block_fits = {_block_of(path): Path(path) for path in inputs["block_fits"]}
    if "teacher" in run.spec.requires:
        ctx.load_teacher = lambda: _load_base(config, base_dir)[0]
    return run.spec.build(params), ctx


def fold_key(run, block: str, hidden) -> dict:
    """What a trained fold depends on: the fitting run's settings and seed, and the hidden states it was fitted to."""
    from kdp.io import sha256_json
    from kdp.provenance import package_versions

    return {
        "model": run.model,
        "variant": run.name,
        "block": block,
        "params_sha256": sha256_json(run.params),
        "hidden": hidden.manifest["key"] if hidden is not None else None,
        "seed": run.seed,
        "code_version": package_versions()["kdp-bench"],
    }


def _block_of(path: str):
    from kdp.selection import Block

    return Block.from_tag(Path(path).name)


def fit_block(config: dict, model: str, variant: str, block: str, base_dir: str, inputs: dict[str, Any],
              out_dir: str) -> None:
    """``variant``: the run (see above)."""
    from kdp.experiment import resolve_run
    from kdp.selection import Block

    run = resolve_run(config, model, variant)
    _seed_everything(run.seed)
    method, ctx = _context(config, run, base_dir, inputs)
    samples = ctx.hidden.shape[0]
    if samples < 2:  # a block fit holds samples out to measure its reconstruction, so it needs two at least
        raise UserError(f"config key calibration.{method.params['calibration']}: {samples} sample(s) to fit block "
                        f"{block} of variant {run.variant!r}; allowed: at least 2 samples")
    started = time.perf_counter()
    with atomic_path(out_dir, directory=True) as tmp:
        record = method.fit_block(ctx, Block.from_tag(block), tmp)
        record["seconds"] = time.perf_counter() - started
        record["provenance"] = provenance(config, run.seed, model=model, variant=run.variant, block=block)
        write_json(tmp / "record.json", record)
        write_folder_manifest(tmp, fold_key(run, block, ctx.hidden))


def prune(config: dict, model: str, variant: str, base_dir: str, inputs: dict[str, Any], out_dir: str) -> None:
    """``variant``: the run (see above); the record names the variant and the seed it was built with."""
    from dataclasses import asdict

    from kdp.experiment import resolve_run

    run = resolve_run(config, model, variant)
    _seed_everything(run.seed)
    method, ctx = _context(config, run, base_dir, inputs)
    dense_parameters = ctx.adapter.parameter_count()
    started = time.perf_counter()
    result = method.prune(ctx)
    seconds = time.perf_counter() - started
    pruned_parameters = ctx.adapter.parameter_count()
    record = {
        "model": model,
        "variant": run.variant,
        "seed": run.seed,
        "method": method.name,
        "params": method.params,
        "dense_parameters": dense_parameters,
        "parameters": pruned_parameters,
        "ratio": 1.0 - pruned_parameters / dense_parameters,
        "num_layers": ctx.adapter.num_layers,
        "seconds": seconds,
        **asdict(result),
        "provenance": provenance(config, run.seed, model=model, variant=run.variant),
    }
    if method.name == "dense":
        models.save_dense_pointer(Path(base_dir), Path(out_dir), record)
    else:
        models.save_variant(ctx.model, ctx.tokenizer, Path(out_dir), record)
    log.info("%s/%s: %d -> %d parameters (ratio %.4f) in %.1fs", model, run.name, dense_parameters,
             pruned_parameters, record["ratio"], seconds)


# -- evaluation ----------------------------------------------------------------------------------------------------
def build_tasks(config: dict, out_dir: str) -> None:
    from kdp.tasks import write_task_suite

    evaluation = config["evaluation"]
    write_task_suite(evaluation["suite"], evaluation["benchmarks"], Path(out_dir), seed=config["seed"],
                     items_per_task=evaluation.get("items_per_task"))


def evaluate(config: dict, model: str, variant: str, variant_dir: str, tasks_dir: str, out_json: str,
             assets: list[str] = ()) -> None:
    """``variant``: the run; ``assets``: the prefetch record of the suite's hub datasets, which lm-eval then loads
    offline. Every seed's run is evaluated with the base seed, on the same items and few-shot draws, so tables can
    average item scores across seeds (the record names the variant and the seed the run was built with)."""
    from kdp.evaluation import evaluate as run_benchmarks
    from kdp.prefetch import require_evaluation
    from kdp.experiment import resolve_run

    run = resolve_run(config, model, variant)
    for record in assets:
        require_evaluation(record)
    _seed_everything(config["seed"])
    evaluation = config["evaluation"]
    benchmarks = variant_benchmarks(config, run.variant)
    network, tokenizer = models.load_variant(Path(variant_dir), config["runtime"]["dtype"])
    started = time.perf_counter()
    result = run_benchmarks(network, tokenizer, benchmarks, include_path=Path(tasks_dir),
                            limit=evaluation["limit"], batch_size=evaluation["batch_size"],
                            max_length=evaluation["max_length"], seed=config["seed"],
                            share_contexts=evaluation["share_contexts"])
    record = models.variant_record(Path(variant_dir))
    write_json(out_json, {
        "model": model,
        "variant": run.variant,
        "seed": run.seed,
        "ratio": record["ratio"],
        "parameters": record["parameters"],
        "seconds": time.perf_counter() - started,
        **result,
        "provenance": provenance(config, config["seed"], model=model, variant=run.variant),
    })


def variant_benchmarks(config: dict, variant: str) -> list[str]:
    return config["variants"][variant].get("benchmarks", config["evaluation"]["benchmarks"])
