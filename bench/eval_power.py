"""How precisely the evaluated items pin down each variant's Avg difference from Dense (issue 14, item 6).

    python bench/eval_power.py results/eval/smollm2-135m            # every variant evaluated there
    python bench/eval_power.py results/eval/opt-kjv --target 2 --seed 0

Reads the per-item results of the evaluation JSONs in one model's folder (``results/eval/{model}/``, written by
the evaluate rule) and prints, per variant, the paired bootstrap of Avg(variant) - Avg(Dense) over the
classification benchmarks both were evaluated on, resampled exactly as the tables resample them
(`kdp.statistics`, the same seed, one draw per benchmark shared by dense and variant):

* the difference and its 95% interval, and the interval's half-width at the evaluated item counts;
* the items each benchmark would need for a half-width of ``--target`` points, EXTRAPOLATED by the 1/sqrt(n) law
  (every benchmark's pool scaled by the same factor (half-width / target)^2; per-item variances taken as measured).
  An extrapolation, not a measurement: it assumes more items of the same difficulty.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


from kdp import statistics


def classification_items(evaluation: dict) -> dict[str, statistics.ItemScores]:
    return {name: statistics.ItemScores.from_record(score["items"]) for name, score in evaluation["scores"].items()
            if score["table"] == "classification" and score["kind"] == "accuracy" and score.get("items")}


def avg_difference(dense: dict, variant: dict, model: str, seed: int) -> dict:
    """Avg(variant) - Avg(dense) over their shared classification benchmarks, with paired replicates."""
    mine, theirs = classification_items(variant), classification_items(dense)
    shared = [name for name in theirs if name in mine]
    drawn = [statistics.paired_replicates({"dense": theirs[b], "variant": mine[b]}, statistics.draw_seed(seed, model, b))
             for b in shared]
    difference = np.mean([d["variant"] - d["dense"] for d in drawn], axis=0)
    point = float(np.mean([mine[b].value() - theirs[b].value() for b in shared]))
    low, high = statistics.interval(difference)
    return {"benchmarks": {b: sum(theirs[b].sizes) for b in shared}, "difference": point, "ci": (low, high),
            "half_width": statistics.half_width(low, high), "p_value": statistics.paired_p_value(difference)}


def report(folder: Path, dense_name: str, target: float, seed: int) -> str:
    evaluations = {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}
    if dense_name not in evaluations:
        raise SystemExit(f"{folder}: no {dense_name}.json; allowed: a folder of evaluate-rule outputs with the dense row")
    dense = evaluations.pop(dense_name)
    model = dense["model"]
    lines = [f"Paired Avg difference from {dense_name} ({model}; seed {seed}; {statistics.REPLICATES} replicates; "
             f"target half-width {target:g} points, item counts extrapolated by 1/sqrt(n))", "",
             "| variant | items per benchmark | Avg - Dense | 95% interval | half-width | p | items per benchmark "
             f"for +-{target:g} (extrapolated) |", "|---|---|---|---|---|---|---|"]
    for name, evaluation in evaluations.items():
        if not classification_items(evaluation):
            lines.append(f"| {name} | no per-item results |  |  |  |  |  |")
            continue
        found = avg_difference(dense, evaluation, model, seed)
        counts = ", ".join(f"{b} {n}" for b, n in found["benchmarks"].items())
        needed = ", ".join(f"{b} {statistics.items_for_half_width(n, found['half_width'], target)}"
                           for b, n in found["benchmarks"].items())
        low, high = found["ci"]
        lines.append(f"| {name} | {counts} | {found['difference']:+.2f} | [{low:+.2f}, {high:+.2f}] | "
                     f"{found['half_width']:.2f} | {found['p_value']:.3g} | "
                     f"{'within target' if found['half_width'] <= target else needed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="results/eval/{model}")
    parser.add_argument("--dense", default="dense", help="the dense variant's name")
    parser.add_argument("--target", type=float, default=2.0, help="half-width to reach, in accuracy points")
    parser.add_argument("--seed", type=int, default=0, help="the config seed the tables use")
    args = parser.parse_args()
    print(report(args.folder, args.dense, args.target, args.seed))


if __name__ == "__main__":
    main()
