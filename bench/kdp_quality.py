"""KDP against its ablations on one block of each embedded model, on held-out text (KJV validation books).

    OMP_NUM_THREADS=1 nice python bench/kdp_quality.py                 # both embedded models, < 10 min
    python bench/kdp_quality.py --models opt-kjv --kernel-epochs 20 --out results/bench/kdp_quality.json

For each model of config/config.yaml:
1. the base model (results/models/{model}/base when the workflow built it, else materialised into ``--work``);
2. hidden states of the training calibration set (the config's ``standard`` KJV-train recipe, ``--train-samples``
   of its samples) and of a held-out set of KJV *validation* passages, captured with `kdp.capture.capture` (the
   workflow's cache results/hidden/{model}/standard is used instead when it exists);
3. the block: the configured k_max block with the highest CKA(h_first, h_last+1) outside the edge layers
   (Algorithm 1 line 2, `kdp.selection`), on the training tokens;
4. four replacements fitted on the training states: plain removal ("w/o Kernel", identity), Direct OLS, Sequential
   OLS (Table 3) and the KDP fold, each by the registered method's own ``fit_block`` with the config's variant
   (``ols_direct``, ``ols_sequential``, ``kdp``) and its hyperparameters for that model, except the epoch budget,
   which is capped by ``--kernel-epochs`` / ``--inverse-epochs``; fit directories (record.json, fold, kernel-space
   sample) and Figures 3-5 of the KDP fit are written under ``--work``/{model}/;
5. on the held-out set: reconstruction of h_{last+1} from h_first (per-token cosine, MSE per element, and MSE in
   per-dimension standardised units, where the massive-activation dimensions do not dominate) and the token
   perplexity of the model with the block replaced.

Nothing is tuned here: the numbers are reported whichever way they go.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from kdp.adapters import adapter_for
from kdp.calibration import CalibrationSet, build
from kdp.capture import HiddenStates, capture
from kdp.config import load as load_config
from kdp.finetune import validation_perplexity
from kdp.fold import fold_from_config
from kdp.io import read_json, write_json
from kdp.figures.kdp_fits import render_kdp_figures
from kdp.linearize import BlockData, KDPConfig, reconstruction_metrics
from kdp.methods.kdp import FOLD_CONFIG, FOLD_WEIGHTS
from kdp.models import MANIFEST, load_base, materialize_base
from kdp.provenance import provenance
from kdp.registry import PruneContext, resolve_params
from kdp.selection import Block, candidate_blocks
from kdp.similarity import layer_tokens, linear_cka, token_subsample

ROOT = Path(__file__).resolve().parents[1]


# The Table 3 rows and KDP itself, as the config's variants.
FITTED = {"Direct OLS": "ols_direct", "Sequential OLS": "ols_sequential", "KDP": "kdp"}


class PassThrough(torch.nn.Module):
    """Plain removal of the block (the "w/o Kernel" row), as a module so every variant is installed the same way."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def base_dir(config: dict, model: str, work: Path) -> Path:
    built = ROOT / "results" / "models" / model / "base"
    if (built / MANIFEST).is_file():
        return built
    target = work / model / "base"
    if not target.is_dir():
        materialize_base(model, config["models"][model], target, config["seed"])
    return target


def validation_passages(count: int, seed: int, min_words: int = 160) -> list[str]:
    """Passages of consecutive verses from the KJV validation books, from seeded random starting verses."""
    from kdp.corpus import verses

    held = verses("validation")
    rng = random.Random(f"{seed}:kdp-quality-validation")
    passages = []
    for _ in range(count):
        start = rng.randrange(len(held))
        words: list[str] = []
        index = start
        while len(words) < min_words and index < len(held) and held[index]["book"] == held[start]["book"]:
            words.extend(held[index]["text"].split())
            index += 1
        passages.append(" ".join(words))
    return passages


def held_out_set(tokenizer, count: int, max_length: int, seed: int) -> CalibrationSet:
    rows = [tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
            for text in validation_passages(count, seed)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), max_length), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return CalibrationSet(ids, mask, ["kjv-validation"] * len(rows), {"seed": seed})


def captured(adapter, data: CalibrationSet, directory: Path, key: dict) -> HiddenStates:
    if not (directory / "manifest.json").is_file():
        capture(adapter, data, directory, key, "float16", 8)
    return HiddenStates.open(directory, key)


def best_block(hidden: HiddenStates, config: dict) -> tuple[Block, float]:
    selection = config["selection"]
    picks = token_subsample(hidden.mask, config["similarity"]["max_tokens"], config["seed"])
    scores = {}
    for block in candidate_blocks(hidden.num_layers, selection["k_max"], selection["edge_fraction"]):
        scores[block] = linear_cka(layer_tokens(hidden, block.first, picks), layer_tokens(hidden, block.last + 1, picks))
    block = max(scores, key=lambda b: (scores[b], -b.first))
    return block, scores[block]


def fit_with_method(config: dict, model: str, variant: str, hidden: HiddenStates, block: Block, args,
                    overrides: dict | None = None, tag: str | None = None):
    """The registered method's own `fit_block` (as the workflow runs it), with the epoch budget capped; the fit
    directory gets the workflow's layout (record.json, fold weights, kernel-space sample)."""
    spec, params = resolve_params(config, variant, model)
    params = copy.deepcopy(params)
    fit = params["fit"]
    fit["kernel_max_epochs"] = min(fit.get("kernel_max_epochs", KDPConfig.kernel_max_epochs), args.kernel_epochs)
    fit["inverse_epochs"] = min(fit.get("inverse_epochs", KDPConfig.inverse_epochs), args.inverse_epochs)
    fit.update(overrides or {})
    ctx = PruneContext(model=None, adapter=None, tokenizer=None, params=params, target_ratio=config["target_ratio"],
                       seed=config["seed"], device=torch.device("cpu"), model_name=model, hidden=hidden)
    out_dir = args.work / model / (tag or variant) / block.tag
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    record = spec.build(params).fit_block(ctx, block, out_dir)
    record["seconds"] = time.perf_counter() - started
    record["provenance"] = provenance(config, config["seed"], model=model, variant=variant, block=block.tag)
    write_json(out_dir / "record.json", record)
    fold = fold_from_config(read_json(out_dir / FOLD_CONFIG))
    fold.load_state_dict(load_file(str(out_dir / FOLD_WEIGHTS)))
    return fold.eval(), record


def block_data(hidden: HiddenStates, block: Block) -> BlockData:
    return BlockData([hidden.states(i) for i in range(block.first, block.last + 2)], hidden.mask)


def target_moments(data: BlockData) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation of h_{last+1} over the training tokens."""
    total = squares = None
    count = 0
    for batch in data.batches(64):
        target = batch.states[-1].double()
        total = target.sum(0) if total is None else total + target.sum(0)
        squares = target.pow(2).sum(0) if squares is None else squares + target.pow(2).sum(0)
        count += target.shape[0]
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp_min(0).sqrt()
    return mean.float(), std.clamp_min(1e-2 * std.median().item()).float()


def standardized_mse(fold, data: BlockData, std: torch.Tensor) -> float:
    """MSE per element with every dimension divided by its training spread: 1.0 is what predicting the mean
    scores, and the few massive-activation dimensions do not dominate it as they dominate the plain MSE."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in data.batches(64):
            error = ((fold(batch.states[0]) - batch.states[-1]) / std).pow(2)
            total += error.mean(-1).sum().item()
            count += error.shape[0]
    return total / count


def perplexity_with(model, block: Block, module, held: CalibrationSet) -> float:
    replaced = copy.deepcopy(model)
    adapter_for(replaced).replace_span(block.first, block.last, module)
    with torch.no_grad():
        return validation_perplexity(replaced, held, batch_size=8)


def evaluate_model(config: dict, model: str, args) -> dict:
    started = time.perf_counter()
    network, tokenizer = load_base(base_dir(config, model, args.work), "float32", "cpu")
    adapter = adapter_for(network)
    spec = copy.deepcopy(config["calibration"][config["capture"]["calibration"]])
    spec["sources"] = [{**spec["sources"][0], "samples": args.train_samples}]
    train_set = build(spec, tokenizer, config["seed"], f"calibration.{config['capture']['calibration']}")
    held_set = held_out_set(tokenizer, args.held_out_samples, int(spec["max_length"]), config["seed"])
    work = args.work / model
    cache = ROOT / "results" / "hidden" / model / config["capture"]["calibration"]
    if (cache / "manifest.json").is_file():  # the workflow's capture of the full calibration set
        train_hidden = HiddenStates.open(cache)
    else:
        train_hidden = captured(adapter, train_set, work / f"hidden_train_{args.train_samples}",
                                {"set": "train", **spec})
    held_hidden = captured(adapter, held_set, work / f"hidden_validation_{args.held_out_samples}",
                           {"set": "kjv-validation", "samples": args.held_out_samples})
    block, cka = best_block(train_hidden, config)
    train, held = block_data(train_hidden, block), block_data(held_hidden, block)
    fits = {name: fit_with_method(config, model, variant, train_hidden, block, args)
            for name, variant in FITTED.items()}
    record = fits["KDP"][1]
    if args.extra:
        fits[f"KDP {json.dumps(args.extra)}"] = fit_with_method(config, model, "kdp", train_hidden, block, args,
                                                                args.extra, "kdp_extra")
    folds = {"w/o Kernel (identity)": PassThrough(), **{name: fold for name, (fold, _) in fits.items()}}
    kdp_dir = work / "kdp" / block.tag
    figures = {f"figure{n}_{fmt}": work / "figures" / f"figure{n}.{fmt}" for n in (3, 4, 5) for fmt in ("png", "pdf")}
    render_kdp_figures([kdp_dir], figures, config["models"][model].get("label", model))
    with torch.no_grad():
        dense_ppl = validation_perplexity(network, held_set, batch_size=8)
    _, spread = target_moments(train)
    rows = {}
    for name, module in folds.items():
        metrics = reconstruction_metrics(module, held)
        rows[name] = {"cosine": metrics["cosine"], "mse": metrics["mse"],
                      "standardized_mse": standardized_mse(module, held, spread),
                      "perplexity": perplexity_with(network, block, module, held_set)}
    step1 = record["step1"]
    return {
        "model": model,
        "block": [block.first, block.last],
        "cka": cka,
        "train": {"samples": train.num_samples, "tokens": train.num_tokens()},
        "held_out": {"samples": held.num_samples, "tokens": held.num_tokens(), "source": "KJV validation books"},
        "kdp_config": record["config"],
        "kdp_fit": {"seconds": record["seconds"], "step1_epochs": len(step1["epochs"]) - 1, "best_epoch": step1["best_epoch"],
                    "stopped": step1["stopped"],
                    "step1_held_out_loss": [step1["epochs"][0]["loss"], step1["epochs"][step1["best_epoch"]]["loss"]],
                    "step2_epochs": len(record["step2"]["epochs"]) - 1},
        "dense_perplexity": dense_ppl,
        "variants": rows,
        "seconds": time.perf_counter() - started,
    }


def print_result(result: dict) -> None:
    fit = result["kdp_fit"]
    print(f"== {result['model']}: block {result['block']} (CKA {result['cka']:.4f}); train {result['train']['samples']} "
          f"samples / {result['train']['tokens']} tokens; held-out {result['held_out']['samples']} samples / "
          f"{result['held_out']['tokens']} tokens of {result['held_out']['source']} ==")
    print(f"KDP fit: {fit['seconds']:.0f} s, step 1 {fit['step1_epochs']} epochs (best {fit['best_epoch']}, stopped: "
          f"{fit['stopped']}; held-out Eq. 5 loss {fit['step1_held_out_loss'][0]:.4f} at the OLS start -> "
          f"{fit['step1_held_out_loss'][1]:.4f} kept), step 2 {fit['step2_epochs']} epochs")
    width = max(24, *(len(name) + 2 for name in result["variants"]))
    print(f"{'replacement':<{width}}{'cosine':>9}{'MSE':>12}{'std. MSE':>10}{'ppl':>9}   (dense ppl "
          f"{result['dense_perplexity']:.2f})")
    for name, row in result["variants"].items():
        print(f"{name:<{width}}{row['cosine']:>9.4f}{row['mse']:>12.4g}{row['standardized_mse']:>10.4f}"
              f"{row['perplexity']:>9.2f}")
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--train-samples", type=int, default=96)
    parser.add_argument("--held-out-samples", type=int, default=32)
    parser.add_argument("--kernel-epochs", type=int, default=10, help="cap on Step 1 epochs (embedded config: 40)")
    parser.add_argument("--inverse-epochs", type=int, default=100, help="cap on Step 2 epochs (paper and config: 100)")
    parser.add_argument("--work", type=Path, default=ROOT / "results" / "bench" / "kdp_quality")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--extra", type=json.loads, help="one more KDP row with these KDPConfig overrides (JSON), "
                        'e.g. \'{"kernel_batch_samples": 8, "inverse_batch_samples": 8}\' for more optimiser steps')
    parser.add_argument("--threads", type=int, default=1)
    run_models(parser.parse_args(argv), evaluate_model, print_result)


def run_models(args, evaluate, show) -> None:
    """``evaluate(config, model, args)`` for each model, shown as it finishes; with ``--out``, the results so far
    are written after each model, so a long run loses nothing already measured."""
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    results = []
    for model in args.models or list(config["models"]):
        result = evaluate(config, model, args)
        show(result)
        results.append(result)
        if args.out:
            write_json(args.out, {"results": results, "args": {k: str(v) for k, v in vars(args).items()},
                                  "provenance": provenance(config, config["seed"])})


if __name__ == "__main__":
    main()
