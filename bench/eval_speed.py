"""Where one variant's evaluation spends its time, with lm-eval's stock HFLM against `SharedContextLM`.

    nice python bench/eval_speed.py results/models/smollm2-135m/base           # both scorers, every benchmark
    python bench/eval_speed.py results/models/opt-kjv/kdp --threads 1 --limit 20

Each benchmark of the embedded suite is evaluated on its own (through `kdp.evaluation.evaluate`, as the DAG's
evaluate rule does), once with each scorer, in one process on the same loaded model, alternating scorers per
benchmark so that machine load hits both alike. Printed per benchmark and scorer:

* wall and CPU seconds of the lm-eval run (CPU: this process, all threads; on a shared machine the steadier of
  the two), and the wall time spent inside the model's forward;
* positions: tokens fed through the model (padding included); forwards: model calls;
* scored: continuation tokens whose log-likelihood is read (the same for both scorers); tokens/s = scored / wall;
* repeated: context tokens run again for a further answer choice of the same context (stock HFLM runs each
  choice's context anew; the shared scorer runs each distinct context once);
* the largest difference of the benchmark's value and the number of items whose score differs between scorers.

Also printed: the model load time and the torch thread count. Numbers are one run on whatever else the machine
was doing; the ratios within one run are what to read.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path


def counting(cls, counts: Counter):
    """``cls`` recording the continuation tokens it is asked to score and the context tokens repeated."""

    class Counted(cls):
        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
            counts["scored"] += sum(len(continuation) for _, _, continuation in requests)
            contexts = [tuple(context) for _, context, _ in requests]
            if override_bs is None:  # rolling windows each carry their own context
                counts["repeated"] += sum(map(len, contexts)) - sum(map(len, set(contexts)))
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

    Counted.__name__ = cls.__name__
    return Counted


def instrument(model, counts: Counter) -> None:
    """Count the model's forward calls, the positions they compute, and the time spent inside them."""
    started = []

    def before(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        counts["forwards"] += 1
        counts["positions"] += int(ids.numel())
        started.append(time.perf_counter())

    def after(_module, _args, _kwargs, _output):
        counts["model_s"] += time.perf_counter() - started.pop()

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.register_forward_hook(after, with_kwargs=True)


def run(args) -> None:
    import lm_eval.models.huggingface as hf
    import torch

    import kdp.shared_context_lm as shared
    from kdp import evaluation, models, tasks

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer = _load(models, Path(args.variant_dir))
    load_s = time.perf_counter() - started
    counts = Counter()
    instrument(model, counts)
    # evaluate() imports both classes when it runs, so these counted stand-ins are what it builds.
    stock_cls, shared_cls = hf.HFLM, shared.SharedContextLM
    hf.HFLM, shared.SharedContextLM = counting(stock_cls, counts), counting(shared_cls, counts)
    names = args.benchmarks or list(tasks.SUITES["embedded"])
    print(f"variant {args.variant_dir}: loaded in {load_s:.1f} s; torch threads {torch.get_num_threads()}; "
          f"batch size {args.batch_size}; max length {args.max_length}; limit {args.limit}")
    print("benchmark              scorer   wall_s  cpu_s  model_s  forwards  positions  scored  tokens/s  repeated  value")
    totals = {True: Counter(), False: Counter()}
    with tempfile.TemporaryDirectory() as folder:
        suite = tasks.write_task_suite("embedded", names, Path(folder), seed=0)
        for position, name in enumerate(names):
            values = {}
            order = (False, True) if position % 2 == 0 else (True, False)
            for share in order:
                counts.clear()
                began, cpu = time.perf_counter(), time.process_time()
                result = evaluation.evaluate(model, tokenizer, [name], include_path=suite, limit=args.limit,
                                             batch_size=args.batch_size, max_length=args.max_length,
                                             share_contexts=share)
                counts["wall_s"] = time.perf_counter() - began
                counts["cpu_s"] = time.process_time() - cpu
                totals[share].update(counts)
                values[share] = result["scores"][name]
                print(f"{name:22s} {'shared' if share else 'stock':6s} {counts['wall_s']:8.1f} {counts['cpu_s']:6.1f} "
                      f"{counts['model_s']:8.1f} "
                      f"{counts['forwards']:9d} {counts['positions']:10d} {counts['scored']:7d} "
                      f"{counts['scored'] / counts['wall_s']:9.0f} {counts['repeated']:9d}  {values[share]['value']:.4f}")
            print(f"{'':22s} value difference {abs(values[True]['value'] - values[False]['value']):.3g}; items "
                  f"scored differently: {_differing(values[True], values[False])}")
    for share in (False, True):
        t = totals[share]
        print(f"{'all':22s} {'shared' if share else 'stock':6s} {t['wall_s']:8.1f} {t['cpu_s']:6.1f} {t['model_s']:8.1f} "
              f"{t['forwards']:9d} "
              f"{t['positions']:10d} {t['scored']:7d} {t['scored'] / t['wall_s']:9.0f} {t['repeated']:9d}")
    print(f"stock / shared: wall {totals[False]['wall_s'] / totals[True]['wall_s']:.2f}, CPU "
          f"{totals[False]['cpu_s'] / totals[True]['cpu_s']:.2f}, positions "
          f"{totals[False]['positions'] / totals[True]['positions']:.2f}")


def _load(models, folder: Path):
    """A variant directory, or a base model directory (its manifest names the weights)."""
    from kdp.io import read_json

    manifest = folder / models.MANIFEST
    if manifest.is_file() and "weights" in read_json(manifest):
        return models.load_base(folder)
    return models.load_variant(folder)


def _differing(a: dict, b: dict) -> str:
    if not (a.get("items") and b.get("items")):
        return "n/a"
    differing = 0
    for leaf in a["items"]["leaves"]:
        left, right = a["items"]["leaves"][leaf], b["items"]["leaves"][leaf]
        column = "score" if "score" in left else "loglikelihood"
        differing += sum(x != y for x, y in zip(left[column], right[column]))
    if "score" in next(iter(a["items"]["leaves"].values())):
        return str(differing)
    gaps = [abs(x - y) for leaf in a["items"]["leaves"] for x, y in zip(a["items"]["leaves"][leaf]["loglikelihood"],
                                                                          b["items"]["leaves"][leaf]["loglikelihood"])]
    return f"{differing} documents' log-likelihoods, largest gap {max(gaps):.3g} (median {statistics.median(gaps):.3g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant_dir")
    parser.add_argument("--benchmarks", nargs="*", help="default: the whole embedded suite")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the evaluate rule gets min(4, cores))")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--limit", type=int, default=None)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
