"""How KDP's quality on held-out text depends on each choice of issue 13: the outlier gate, per-batch OLS in Step 1,
Step 2's step budget, Sigma's role, and the amount of calibration text.

    OMP_NUM_THREADS=2 python bench/kdp_sensitivity.py --models smollm2-135m --blocks 3
    python bench/kdp_sensitivity.py --models opt-kjv --settings default --train-samples 128 512 1024

For each model of config/config.yaml:
1. the norm profile of its calibration states (median token norm per layer, largest first-token and other-token
   ratios to it), from which kdp/outliers.py's DEFAULT_NORM_RATIO is set;
2. the ``--blocks`` best candidate blocks by linear CKA on gated tokens (Section 3.1, `kdp.similarity`), with the
   literal CKA beside it;
3. per block: plain removal, Direct OLS (literal and gated), and one KDP fit per setting of ``--settings`` (each
   adds one change to the previous: see SETTINGS), trained on the first ``--settings-samples`` of the KJV
   calibration passages; the default setting is fitted on each sample count of ``--train-samples``;
4. on held-out KJV validation passages: per-token cosine of h_{last+1} and the token perplexity of the model with
   the block replaced, Step 1's best epoch and held-out Eq. 5 gain over its OLS start, and Step 2's steps.

Nothing is tuned here; the rows are reported whichever way they go (docs/kdp.md, "Sensitivity").
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from kdp_quality import PassThrough, base_dir, block_data, captured, held_out_set, run_models

from kdp.adapters import adapter_for
from kdp.calibration import build
from kdp.finetune import validation_perplexity
from kdp.linearize import BlockData, KDPConfig, fit_direct_ols, fit_kdp, reconstruction_metrics
from kdp.models import load_base
from kdp.outliers import token_norms
from kdp.registry import resolve_params
from kdp.selection import Block, candidate_blocks
from kdp.similarity import layer_tokens, linear_cka, ordinary_tokens, token_subsample

ROOT = Path(__file__).resolve().parents[1]

# Each setting changes one thing of the one before it; "default" is the configured variant.
SETTINGS = {
    "literal": {"outlier_tokens": "literal", "ols_reinit": "epoch", "kernel_batch_samples": 100,
                "inverse_batch_samples": 128},
    "+gate": {"outlier_tokens": "pass_through", "ols_reinit": "epoch", "kernel_batch_samples": 100,
              "inverse_batch_samples": 128},
    "+batch OLS": {"outlier_tokens": "pass_through", "ols_reinit": "batch", "kernel_batch_samples": 16,
                   "inverse_batch_samples": 128},
    "+Step 2 steps": {"outlier_tokens": "pass_through", "ols_reinit": "batch", "kernel_batch_samples": 16,
                      "inverse_batch_samples": 8},
    "Sigma^-1": {"outlier_tokens": "pass_through", "ols_reinit": "batch", "kernel_batch_samples": 16,
                 "inverse_batch_samples": 8, "sigma": "covariance"},
    "default": {},
}


def norm_profile(hidden) -> list[dict]:
    """Per state: the median real-token norm and the first-token and other-token norms as multiples of it."""
    mask = torch.from_numpy(np.asarray(hidden.mask)).bool()
    first_real = (mask.cumsum(1) == 1) & mask
    rows = []
    for index in range(hidden.num_states):
        norms = token_norms(torch.from_numpy(np.asarray(hidden.states(index), dtype=np.float32)))
        median = norms[mask].median()
        rows.append({"state": index, "median": median.item(),
                     "first_token_max_ratio": (norms[first_real].max() / median).item(),
                     "first_token_min_ratio": (norms[first_real].min() / median).item(),
                     "other_max_ratio": (norms[mask & ~first_real].max() / median).item()})
    return rows


def ranked_blocks(hidden, config: dict, count: int, named: list[str] | None = None) -> list[dict]:
    """The ``count`` best candidate blocks by gated CKA, with their literal CKA; or the ``named`` ones
    ("FIRST-LAST"), in that order."""
    similarity, selection = config["similarity"], config["selection"]
    candidates = candidate_blocks(hidden.num_layers, selection["k_max"], selection["edge_fraction"])
    needed = sorted({b.first for b in candidates} | {b.last + 1 for b in candidates})
    cka = {}
    for mode in ("pass_through", "literal"):
        picks = token_subsample(ordinary_tokens(hidden, mode, similarity["outlier_norm_ratio"]),
                                similarity["max_tokens"], config["seed"])
        tokens = {index: layer_tokens(hidden, index, picks) for index in needed}
        cka[mode] = {b: linear_cka(tokens[b.first], tokens[b.last + 1]) for b in candidates}
    scored = [{"block": b, "cka": cka["pass_through"][b], "literal_cka": cka["literal"][b]} for b in candidates]
    scored.sort(key=lambda row: (-row["cka"], row["block"].first))
    if named:
        by_name = {f"{row['block'].first}-{row['block'].last}": row for row in scored}
        unknown = [name for name in named if name not in by_name]
        if unknown:
            raise SystemExit(f"--named-blocks {unknown} are not candidate blocks; allowed: {sorted(by_name)}")
        return [by_name[name] for name in named]
    return scored[:count]


def first_samples(data: BlockData, count: int) -> BlockData:
    return data.subset(torch.arange(min(count, data.num_samples)))


def kdp_config(config: dict, model: str, setting: dict, seed: int) -> KDPConfig:
    _, params = resolve_params(config, "kdp", model)
    return KDPConfig.from_dict({**params["fit"], **setting, "seed": seed})


class HeldOutText:
    """Token perplexity of the model with one block replaced, on held-out passages: the states entering the block
    and the layer arguments are computed once per block, so each replacement costs only the layers after it."""

    def __init__(self, network, held_set, block: Block, batch_size: int = 8):
        self.adapter, self.block = adapter_for(network), block
        self.batches = []
        with torch.no_grad():
            for ids, mask in held_set.batches(batch_size):
                inputs = self.adapter.layer_inputs(ids, mask)
                start = self.adapter.run_layers(inputs.hidden_states, inputs.layer_kwargs, 0, block.first)
                self.batches.append((ids, mask, inputs.layer_kwargs, start))

    @torch.no_grad()
    def perplexity(self, module) -> float:
        total, count = 0.0, 0
        for ids, mask, kwargs, start in self.batches:
            hidden = self.adapter.run_layers(module(start), kwargs, self.block.last + 1, self.adapter.num_layers)
            logits = self.adapter.logits_from_hidden(hidden)[:, :-1]
            valid = mask[:, 1:].bool()
            total += float(torch.nn.functional.cross_entropy(logits[valid], ids[:, 1:][valid], reduction="sum"))
            count += int(valid.sum())
        return math.exp(total / count)


def held_out_row(module, held: BlockData, text: HeldOutText) -> dict:
    return {"cosine": reconstruction_metrics(module, held)["cosine"], "perplexity": text.perplexity(module)}


def kdp_row(config: dict, model: str, setting: dict, train: BlockData, held: BlockData, text: HeldOutText) -> dict:
    started = time.perf_counter()
    fold, record = fit_kdp(train, kdp_config(config, model, setting, config["seed"]))
    step1, step2 = record["step1"], record["step2"]
    return {**held_out_row(fold.eval(), held, text),
            "step1_best_epoch": step1["best_epoch"], "step1_epochs": len(step1["epochs"]) - 1,
            "step1_gain": step1["gain_over_start"], "step2_steps": step2["optimizer_steps"],
            "step2_best_epoch": step2["best_epoch"], "tokens_left_out": record["outliers"]["tokens_left_out"],
            "fit_seconds": time.perf_counter() - started}


def evaluate_block(config: dict, model: str, args, ranked: dict, train_hidden, held_hidden, network, held_set) -> dict:
    block = ranked["block"]
    data, held = block_data(train_hidden, block), block_data(held_hidden, block)
    text = HeldOutText(network, held_set, block)
    largest = first_samples(data, args.settings_samples)
    rows = {"plain removal": held_out_row(PassThrough(), held, text)}
    for mode in ("literal", "pass_through"):
        fold, _ = fit_direct_ols(largest, kdp_config(config, model, {"outlier_tokens": mode}, config["seed"]))
        rows[f"Direct OLS ({mode})"] = held_out_row(fold.eval(), held, text)
    for name in args.settings:
        for samples in (args.train_samples if name == "default" else [args.settings_samples]):
            label = f"KDP {name} ({samples} samples)"
            rows[label] = kdp_row(config, model, SETTINGS[name], first_samples(data, samples), held, text)
            print(f"  {label}: {rows[label]}", flush=True)
    return {"block": [block.first, block.last], "cka": ranked["cka"], "literal_cka": ranked["literal_cka"],
            "rows": rows}


def evaluate_model(config: dict, model: str, args) -> dict:
    network, tokenizer = load_base(base_dir(config, model, args.work), "float32", "cpu")
    spec = copy.deepcopy(config["calibration"][config["capture"]["calibration"]])
    spec["sources"] = [{**spec["sources"][0], "samples": args.capture_samples or max(args.train_samples)}]
    train_set = build(spec, tokenizer, config["seed"], "calibration.standard")
    held_set = held_out_set(tokenizer, args.held_out_samples, int(spec["max_length"]), config["seed"])
    work = args.work / model
    adapter = adapter_for(network)
    captured_samples = spec["sources"][0]["samples"]
    train_hidden = captured(adapter, train_set, work / f"hidden_train_{captured_samples}", {"set": "train", **spec})
    held_hidden = captured(adapter, held_set, work / f"hidden_validation_{args.held_out_samples}",
                           {"set": "kjv-validation", "samples": args.held_out_samples})
    profile = norm_profile(train_hidden)
    with torch.no_grad():
        dense = validation_perplexity(network, held_set, batch_size=8)
    blocks = []
    for ranked in ranked_blocks(train_hidden, config, args.blocks, args.named_blocks):
        print(f"{model} block {ranked['block']} (gated CKA {ranked['cka']:.4f}, literal {ranked['literal_cka']:.5f})",
              flush=True)
        blocks.append(evaluate_block(config, model, args, ranked, train_hidden, held_hidden, network, held_set))
    return {"model": model, "dense_perplexity": dense, "norm_profile": profile, "blocks": blocks,
            "held_out_samples": args.held_out_samples}


def print_result(result: dict) -> None:
    print(f"== {result['model']}: dense held-out perplexity {result['dense_perplexity']:.2f} ==")
    print("norm profile (state: median norm, first-token ratio min-max, other tokens max ratio)")
    for row in result["norm_profile"]:
        print(f"  h_{row['state']:<3} {row['median']:>8.1f}  {row['first_token_min_ratio']:>6.1f}-"
              f"{row['first_token_max_ratio']:<6.1f} {row['other_max_ratio']:>6.1f}")
    for block in result["blocks"]:
        print(f"-- block {block['block']}: CKA gated {block['cka']:.4f}, literal {block['literal_cka']:.5f}")
        print(f"  {'replacement':<34}{'cosine':>8}{'ppl':>9}{'S1 best':>9}{'S1 gain':>9}{'S2 steps':>10}{'fit s':>8}")
        for name, row in block["rows"].items():
            extra = ""
            if "step1_best_epoch" in row:
                extra = (f"{row['step1_best_epoch']:>4}/{row['step1_epochs']:<4}{100 * row['step1_gain']:>8.1f}%"
                         f"{row['step2_steps']:>10}{row['fit_seconds']:>8.0f}")
            print(f"  {name:<34}{row['cosine']:>8.4f}{row['perplexity']:>9.2f} {extra}")
    print()


def _row_order(name: str) -> tuple:
    """Removal, the OLS fits, then the KDP settings in SETTINGS order, each by sample count (JSON sorts keys)."""
    if not name.startswith("KDP "):
        return (0 if name == "plain removal" else 1, 0, name)
    setting, samples = name[4:].rsplit(" (", 1)
    return (2, list(SETTINGS).index(setting), int(samples.split()[0]))


def markdown_rows(result: dict) -> list[str]:
    """One Markdown table per fitted block, the rows docs/kdp.md shows (``--report``)."""
    lines = []
    for block in result["blocks"]:
        first, last = block["block"]
        lines += [f"**{result['model']}, block {first}-{last}** (CKA gated {block['cka']:.4f}, literal "
                  f"{block['literal_cka']:.5f}; dense perplexity {result['dense_perplexity']:.2f})", "",
                  "| replacement | cosine | ppl | Step 1 best / epochs | Step 1 gain | Step 2 steps | tokens left out |"
                  " fit s |", "|---|---|---|---|---|---|---|---|"]
        for name, row in sorted(block["rows"].items(), key=lambda item: _row_order(item[0])):
            fit = ["", "", "", "", ""]
            if "step1_best_epoch" in row:
                fit = [f"{row['step1_best_epoch']} / {row['step1_epochs']}", f"{100 * row['step1_gain']:.1f}%",
                       str(row["step2_steps"]), str(row["tokens_left_out"]), f"{row['fit_seconds']:.0f}"]
            lines.append(f"| {name} | {row['cosine']:.4f} | {row['perplexity']:.2f} | " + " | ".join(fit) + " |")
        lines.append("")
    return lines


def report(paths: list[Path]) -> None:
    for path in paths:
        data = json.loads(path.read_text())
        provenance_line = data["provenance"]
        print(f"<!-- {path.name}: commit {provenance_line.get('git_commit')} -->")
        for result in data["results"]:
            print("\n".join(markdown_rows(result)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--blocks", type=int, default=3, help="how many of the best CKA blocks to fit")
    parser.add_argument("--named-blocks", nargs="+", metavar="FIRST-LAST",
                        help="fit these candidate blocks instead of the --blocks best (e.g. 14-15)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--train-samples", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--settings-samples", type=int, default=512,
                        help="calibration passages for the OLS rows and every setting but `default`")
    parser.add_argument("--capture-samples", type=int, help="calibration passages to capture (default: the largest "
                        "--train-samples); fits use the first ones, so one capture serves several sizes")
    parser.add_argument("--held-out-samples", type=int, default=32)
    parser.add_argument("--work", type=Path, default=ROOT / "results" / "bench" / "kdp_sensitivity")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                        help="print the Markdown tables of earlier --out files and exit")
    args = parser.parse_args(argv)
    if args.report:
        report(args.report)
        return
    run_models(args, evaluate_model, print_result)


if __name__ == "__main__":
    main()
