"""Each block a workflow run folded, alone, against plain removal of the same block, on held-out KJV text.

    python bench/kdp_block_check.py --results results                          # every fitted variant of the run
    python bench/kdp_block_check.py --results /tmp/run/results --variants kdp kdp~s1 ols_direct --out checks.json

Where `bench/kdp_sensitivity.py` refits, this reads the run's own fits: for every block directory
``results/kdp/{model}/{run}/block_*`` of the chosen runs, it loads the run's base model
(``results/models/{model}/base``), replaces only that block with

* nothing (plain removal, the "w/o Kernel" replacement of one block), and
* the run's fitted fold (``fold_config.json``, ``fold.safetensors``),

and prints the token perplexity of each on the same held-out KJV validation passages that `kdp_sensitivity.py` uses
(``--held-out-samples`` passages, the config's seed), with dense beside them, and from the fit's ``record.json``
Step 1's best epoch (0 is its OLS start), its held-out Eq. 5 gain over that start, and Step 2's optimiser steps.
This is issue 13's check of every folded block: is the fold better than removing the block, and did Step 1 train?
Nothing is tuned; rows are printed whichever way they go.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from kdp_quality import PassThrough, held_out_set, perplexity_with
from safetensors.torch import load_file

from kdp.config import load as load_config
from kdp.finetune import validation_perplexity
from kdp.fold import fold_from_config
from kdp.io import read_json
from kdp.methods.kdp import FOLD_CONFIG, FOLD_WEIGHTS
from kdp.models import load_base
from kdp.selection import Block

ROOT = Path(__file__).resolve().parents[1]


def fitted_blocks(results: Path, model: str, runs: list[str] | None) -> dict[str, list[Path]]:
    """Block fit directories of each run of ``model`` that has them, in block order."""
    found = {}
    for run_dir in sorted((results / "kdp" / model).glob("*")):
        if runs is None or run_dir.name in runs:
            blocks = sorted(run_dir.glob("block_*/" + FOLD_CONFIG), key=lambda p: int(p.parent.name.split("_")[1]))
            if blocks:
                found[run_dir.name] = [path.parent for path in blocks]
    return found


def fit_summary(record: dict) -> dict:
    step1, step2 = record.get("step1"), record.get("step2")
    summary = {"fold": record.get("fold")}
    if step1:
        summary |= {"step1_best_epoch": step1["best_epoch"], "step1_epochs": len(step1["epochs"]) - 1,
                    "step1_gain": step1["gain_over_start"]}
    if step2:
        summary["step2_steps"] = step2["optimizer_steps"]
    return summary


def check_model(config: dict, results: Path, model: str, runs: list[str] | None, held_out_samples: int) -> dict:
    fitted = fitted_blocks(results, model, runs)
    base = results / "models" / model / "base"
    if not fitted or not base.is_dir():
        raise SystemExit(f"kdp_block_check: {results}: no base model or no KDP block fits of {model!r} "
                         f"(runs {runs or 'any'}); allowed: the results folder of a run that fitted blocks")
    network, tokenizer = load_base(base, "float32", "cpu")
    calibration = config["calibration"][config["capture"]["calibration"]]
    held = held_out_set(tokenizer, held_out_samples, int(calibration["max_length"]), config["seed"])
    with torch.no_grad():
        dense = validation_perplexity(network, held, batch_size=8)
    removal: dict[str, float] = {}
    rows = []
    for run, block_dirs in fitted.items():
        for block_dir in block_dirs:
            first, last = (int(i) for i in block_dir.name.split("_")[1:])
            block = Block(first, last)
            if block_dir.name not in removal:
                removal[block_dir.name] = perplexity_with(network, block, PassThrough(), held)
            fold = fold_from_config(read_json(block_dir / FOLD_CONFIG))
            fold.load_state_dict(load_file(str(block_dir / FOLD_WEIGHTS)))
            row = {"run": run, "block": [first, last], "removal_ppl": removal[block_dir.name],
                   "fold_ppl": perplexity_with(network, block, fold.eval(), held),
                   **fit_summary(read_json(block_dir / "record.json"))}
            rows.append(row)
            print(json.dumps({"model": model, **row}), flush=True)
    return {"model": model, "dense_ppl": dense, "held_out_samples": held_out_samples, "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"{result['model']}: dense held-out perplexity {result['dense_ppl']:.2f} "
             f"({result['held_out_samples']} KJV validation passages)", "",
             "| run | block | removal ppl | fold ppl | fold - removal | Step 1 best / epochs | Step 1 gain | "
             "Step 2 steps |", "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        step1 = (f"{row['step1_best_epoch']} / {row['step1_epochs']} | {100 * row['step1_gain']:.0f}%"
                 if "step1_best_epoch" in row else "- | -")
        lines.append(f"| {row['run']} | {row['block'][0]}-{row['block'][1]} | {row['removal_ppl']:.1f} | "
                     f"{row['fold_ppl']:.1f} | {row['fold_ppl'] - row['removal_ppl']:+.1f} | {step1} | "
                     f"{row.get('step2_steps', '-')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="the run's results folder")
    parser.add_argument("--models", nargs="+", help="default: every model of the config")
    parser.add_argument("--variants", nargs="+", metavar="RUN", help="runs to check (kdp, kdp~s1, ...); default: all")
    parser.add_argument("--held-out-samples", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    results = [check_model(config, args.results, model, args.variants, args.held_out_samples)
               for model in args.models or list(config["models"])]
    for result in results:
        print("\n" + markdown(result))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
