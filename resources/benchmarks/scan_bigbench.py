"""Maintainer script: which BIG-bench multiple-choice tasks can a model do? Scores a seeded sample of each.

For every task and subtask of the ``bigbench==1.0.0`` sdist that ``vendor_bigbench.is_multiple_choice`` accepts,
is not tagged ``non-English`` (the embedded models read English) and offers at most ``MAX_MEAN_CHOICES`` choices
on average, the script scores the first ``--items`` examples of ``vendor_bigbench.sample_order`` with a causal
language model and prints one row per task: items in the task, items scored, chance (mean of correct choices /
choices), accuracy and its 95% Wilson interval. A task whose interval lies above chance is one the model can do.

Items are framed and scored as the project's lm-eval tasks frame and score them (``kdp.tasks``): context
``<prefix>Q: <question>\\nA:``, continuation ``" " + choice``, summed log-likelihood, highest wins (lm-eval
``acc``). Tokenisation follows lm-eval 0.4's ``HFLM``: the whole string and the context are encoded with the
tokenizer's defaults and the continuation is the difference; inputs keep their last ``--max-length`` tokens.
The scoring is re-implemented here rather than run through lm-eval so that the scan also runs where lm-eval is
not installed (a GPU box); ``tests/test_bigbench_scan.py`` checks it picks lm-eval's answers.

Two steps, so that the model can run on another machine than the sdist:

    python resources/benchmarks/scan_bigbench.py sample bigbench-1.0.0.tar.gz sample.json.xz --items 400
    python resources/benchmarks/scan_bigbench.py score sample.json.xz --model results/models/smollm2-135m/base \\
        --out scan.tsv [--device cuda]

``score`` appends one TSV row per task as it goes (a rerun skips tasks already in ``--out``) and prints the
Markdown table of all rows at the end; ``table scan.tsv`` prints it again. ``tasks folder`` scores the
multiple-choice tasks of a kdp task folder, and ``tokens folder`` counts the tokens they score without running the
model (docs/benchmarks.md, *Cost and power*).
"""

from __future__ import annotations

import argparse
import csv
import json
import lzma
import math
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

import vendor_bigbench as vb  # noqa: E402  (beside this script: run it as a script, as its docstring says)

# Tasks with more choices than this on average are left out: each choice is one more sequence to score, and their
# near-zero chance level says little about a pruned model.
MAX_MEAN_CHOICES = 20
Z95 = 1.959963984540054
COLUMNS = ("task", "total", "n", "choices", "chance", "acc", "ci_low", "ci_high", "above_chance", "seconds")


# -- sampling ------------------------------------------------------------------------------------------------------
def candidates(sdist: tarfile.TarFile) -> dict[str, dict]:
    """BIG-bench path -> task, for the tasks the scan scores (see the module docstring)."""
    chosen = {}
    for path, task in vb.iter_tasks(sdist):
        if not vb.is_multiple_choice(task) or "non-English" in task.get("keywords", []):
            continue
        examples = task["examples"]
        if sum(len(e["target_scores"]) for e in examples) / len(examples) <= MAX_MEAN_CHOICES:
            chosen[path] = task
    return dict(sorted(chosen.items()))


def sample(sdist_path: Path, out: Path, n_items: int) -> None:
    with tarfile.open(sdist_path) as sdist:
        tasks = candidates(sdist)
    record = {path: {"total": len(task["examples"]), "items": vb.kept(path, vb.items(task), n_items)}
              for path, task in tasks.items()}
    with lzma.open(out, "wt", encoding="utf-8") as handle:
        json.dump(record, handle, ensure_ascii=False, sort_keys=True)
    print(f"{out}: {len(record)} tasks, {sum(len(t['items']) for t in record.values())} items", file=sys.stderr)


# -- scoring -------------------------------------------------------------------------------------------------------
def requests(item: dict) -> list[tuple[str, str]]:
    context = f"{item['prefix']}Q: {item['question']}\nA:"
    return [(context, " " + choice) for choice in item["choices"]]


def encode(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``_encode_pair``: trailing spaces move to the continuation, which is whole minus context.

    An empty context becomes lm-eval's prefix token (BOS, else EOS), as in ``TemplateLM.loglikelihood``.
    """
    if not context:
        ids = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return ([prefix], ids) if ids[0] != prefix else (ids[:1], ids[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def loglikelihoods(model, tokenizer, pairs: list[tuple[str, str]], max_length: int, batch_tokens: int,
                   device) -> list[float]:
    """Summed log p(continuation | context) per pair, batched longest first under a token budget."""
    import torch

    max_length = min(max_length, getattr(model.config, "max_position_embeddings", None) or max_length)
    encoded = []
    for context, continuation in pairs:
        context_ids, continuation_ids = encode(tokenizer, context, continuation)
        encoded.append(((context_ids + continuation_ids)[-(max_length + 1):][:-1], continuation_ids))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    scores = [0.0] * len(encoded)
    start = 0
    while start < len(order):
        width = len(encoded[order[start]][0])
        batch = order[start:start + max(1, batch_tokens // width)]
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, index in enumerate(batch):
            inputs = encoded[index][0]
            ids[row, :len(inputs)] = torch.tensor(inputs)
            mask[row, :len(inputs)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        for row, index in enumerate(batch):
            inputs, targets = encoded[index]
            positions = torch.arange(len(inputs) - len(targets), len(inputs), device=logits.device)
            logprobs = torch.log_softmax(logits[row, positions], dim=-1)
            scores[index] = float(logprobs.gather(1, torch.tensor(targets, device=logits.device)[:, None]).sum())
        start += len(batch)
    return scores


def predictions(model, tokenizer, items: list[dict], max_length: int, batch_tokens: int, device) -> list[int]:
    """The index of the highest-scoring choice per item (the first on a tie, as numpy's argmax)."""
    pairs = [pair for item in items for pair in requests(item)]
    scores = iter(loglikelihoods(model, tokenizer, pairs, max_length, batch_tokens, device))
    chosen = []
    for item in items:
        values = [next(scores) for _ in item["choices"]]
        chosen.append(values.index(max(values)))
    return chosen


def folder_requests(folder: Path):
    """(name, manifest entry, metric, documents, requests) per multiple-choice task of a folder written by
    ``kdp.tasks.write_task_suite``.

    Prompts are rendered from each YAML's ``doc_to_text`` (a Jinja template or a field name, as lm-eval reads it).
    The requests are (prompt, " " + choice) per choice, followed for ``acc_mutual_info`` by (empty context,
    " " + choice) per choice, as lm-eval asks them.
    """
    import jinja2
    import yaml

    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    for name, entry in manifest["benchmarks"].items():
        if entry["kind"] != "accuracy":
            continue
        config = yaml.safe_load((folder / f"{entry['task']}.yaml").read_text(encoding="utf-8"))
        template = config["doc_to_text"]
        render = (jinja2.Template(template).render if "{{" in template else lambda **doc: doc[template])
        with open(folder / f"{name}.jsonl", encoding="utf-8") as handle:
            docs = [json.loads(line) for line in handle]
        metric = entry["metric"].partition(",")[0]
        pairs = [(render(**doc), " " + choice) for doc in docs for choice in doc["choices"]]
        if metric == "acc_mutual_info":
            pairs += [("", " " + choice) for doc in docs for choice in doc["choices"]]
        yield name, entry, metric, docs, pairs


def task_folder_rows(folder: Path, model, tokenizer, max_length: int, batch_tokens: int, device) -> list[dict]:
    """Score every multiple-choice task of a folder (``folder_requests``) by its own metric, as lm-eval does:
    ``acc`` (summed log-likelihood), ``acc_norm`` (divided by the choice's characters) or ``acc_mutual_info``
    (minus the choice's log-likelihood after an empty context).
    """
    rows = []
    for name, entry, metric, docs, pairs in folder_requests(folder):
        started = time.perf_counter()
        scores = loglikelihoods(model, tokenizer, pairs, max_length, batch_tokens, device)
        conditional, unconditional = iter(scores), iter(scores[len(scores) // 2:] if metric == "acc_mutual_info"
                                                        else [])
        items = []
        for doc in docs:
            values = [next(conditional) for _ in doc["choices"]]
            if metric == "acc_norm":
                values = [v / len(c) for v, c in zip(values, doc["choices"])]
            elif metric == "acc_mutual_info":
                values = [v - next(unconditional) for v in values]
            labels = doc["labels"] if "labels" in doc else [doc["label"]]
            items.append(({"choices": doc["choices"], "labels": labels}, values.index(max(values))))
        rows.append(row(name, entry["n_items"] or len(docs), [i for i, _ in items], [c for _, c in items],
                        time.perf_counter() - started))
        print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def folder_tokens(folder: Path, tokenizer, max_length: int) -> dict[str, int]:
    """Tokens one evaluation scores per multiple-choice task of a folder: context + continuation of every request,
    each capped at ``max_length``, encoded as ``encode`` does; no model is run."""
    counts = {}
    for name, _, _, _, pairs in folder_requests(folder):
        counts[name] = sum(min(len(context) + len(continuation), max_length)
                           for context, continuation in (encode(tokenizer, *pair) for pair in pairs))
    return counts


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def row(path: str, total: int, items: list[dict], chosen: list[int], seconds: float) -> dict:
    correct = sum(choice in item["labels"] for item, choice in zip(items, chosen))
    low, high = wilson(correct, len(items))
    chance = sum(len(item["labels"]) / len(item["choices"]) for item in items) / len(items)
    return {"task": path, "total": total, "n": len(items),
            "choices": round(sum(len(i["choices"]) for i in items) / len(items), 2), "chance": round(chance, 4),
            "acc": round(correct / len(items), 4), "ci_low": round(low, 4), "ci_high": round(high, 4),
            "above_chance": int(low > chance), "seconds": round(seconds, 1)}


def load(model_dir: Path, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def score(sample_path: Path, model_dir: Path, out: Path, device: str, max_length: int, batch_tokens: int) -> None:
    with lzma.open(sample_path, "rt", encoding="utf-8") as handle:
        tasks = json.load(handle)
    model, tokenizer = load(model_dir, device)
    done = {r["task"] for r in read_rows(out)} if out.exists() else set()
    if not out.exists():
        out.write_text("\t".join(COLUMNS) + "\n", encoding="utf-8")
    for path, task in tasks.items():
        if path in done:
            continue
        started = time.perf_counter()
        chosen = predictions(model, tokenizer, task["items"], max_length, batch_tokens, device)
        result = row(path, task["total"], task["items"], chosen, time.perf_counter() - started)
        with open(out, "a", encoding="utf-8") as handle:
            handle.write("\t".join(str(result[c]) for c in COLUMNS) + "\n")
        print(f"{path}: {result['acc']:.3f} [{result['ci_low']:.3f}, {result['ci_high']:.3f}] "
              f"chance {result['chance']:.3f}, n {result['n']}", file=sys.stderr, flush=True)
    print(table(read_rows(out)))


# -- report --------------------------------------------------------------------------------------------------------
def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def task_cell(path: str) -> str:
    """The task's path, marked when its licence keeps it out of the repository (``vb.NOT_VENDORED``)."""
    if path not in vb.NOT_VENDORED:
        return path
    return f"{path} (not vendored: {vb.NOT_VENDORED[path][1]})"


def table(rows: list[dict]) -> str:
    """Markdown, tasks above chance first, then by items in the task."""
    ordered = sorted(rows, key=lambda r: (-int(r["above_chance"]), -int(r["total"]), r["task"]))
    lines = ["| BIG-bench task | items | scored | chance % | acc % | 95% interval | above chance |",
             "|---|---|---|---|---|---|---|"]
    for r in ordered:
        lines.append(f"| {task_cell(r['task'])} | {r['total']} | {r['n']} | {100 * float(r['chance']):.1f} "
                     f"| {100 * float(r['acc']):.1f} | {100 * float(r['ci_low']):.1f}-{100 * float(r['ci_high']):.1f} "
                     f"| {'yes' if str(r['above_chance']) == '1' else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    take = commands.add_parser("sample", help="write the scanned items of every candidate task")
    take.add_argument("sdist", type=Path)
    take.add_argument("out", type=Path, help="output .json.xz")
    take.add_argument("--items", type=int, default=400, help="examples scored per task (default 400)")
    run = commands.add_parser("score", help="score a sample with a model, one TSV row per task")
    run.add_argument("sample", type=Path)
    run.add_argument("--model", type=Path, required=True, help="Hugging Face model folder")
    run.add_argument("--out", type=Path, required=True, help="TSV, appended to")
    run.add_argument("--device", default="cpu")
    run.add_argument("--max-length", type=int, default=512, help="as config/config.yaml evaluation.max_length")
    run.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per forward pass")
    folder = commands.add_parser("tasks", help="score the multiple-choice tasks of a kdp task folder")
    folder.add_argument("folder", type=Path, help="written by kdp.tasks.write_task_suite")
    folder.add_argument("--model", type=Path, required=True)
    folder.add_argument("--out", type=Path, required=True, help="TSV, overwritten")
    folder.add_argument("--device", default="cpu")
    folder.add_argument("--max-length", type=int, default=512)
    folder.add_argument("--batch-tokens", type=int, default=4096)
    count = commands.add_parser("tokens", help="count the tokens scored on a kdp task folder (no model run)")
    count.add_argument("folder", type=Path, help="written by kdp.tasks.write_task_suite")
    count.add_argument("--model", type=Path, required=True, help="model folder; only its tokenizer is read")
    count.add_argument("--max-length", type=int, default=512)
    show = commands.add_parser("table", help="print the Markdown table of a TSV")
    show.add_argument("tsv", type=Path)
    args = parser.parse_args()
    if args.command == "sample":
        sample(args.sdist, args.out, args.items)
    elif args.command == "score":
        score(args.sample, args.model, args.out, args.device, args.max_length, args.batch_tokens)
    elif args.command == "tasks":
        model, tokenizer = load(args.model, args.device)
        rows = task_folder_rows(args.folder, model, tokenizer, args.max_length, args.batch_tokens, args.device)
        args.out.write_text("\t".join(COLUMNS) + "\n" + "".join("\t".join(str(r[c]) for c in COLUMNS) + "\n"
                                                                 for r in rows), encoding="utf-8")
        print(table(rows))
    elif args.command == "tokens":
        from transformers import AutoTokenizer

        counts = folder_tokens(args.folder, AutoTokenizer.from_pretrained(args.model), args.max_length)
        print("\n".join(f"{name}\t{n}" for name, n in counts.items()) + f"\ntotal\t{sum(counts.values())}")
    else:
        print(table(read_rows(args.tsv)))


if __name__ == "__main__":
    main()
