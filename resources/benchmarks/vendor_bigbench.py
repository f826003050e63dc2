"""Maintainer script: rebuild the vendored BIG-bench subsets in ``resources/benchmarks/bigbench/`` from the sdist.

No hub is reachable where kdp-bench runs by default, so a few small BIG-bench JSON tasks are shipped with the
project. They come from the PyPI sdist ``bigbench==1.0.0`` (fetch it with
``pip download --no-deps bigbench==1.0.0``; never install it, it pulls in TensorFlow).
Each chosen ``bigbench/benchmark_tasks/<task>/task.json`` becomes ``<task>.jsonl`` with one
``{"question", "choices", "labels"}`` object per example, in the file's order; ``labels`` lists every choice with
full credit, since one general_knowledge question accepts two answers. The canary string stays out of the items
and is recorded in ``NOTICE.md`` together with each task's provenance. The output depends only on the sdist, so
rerunning this script reproduces the committed files byte for byte.

Usage: python resources/benchmarks/vendor_bigbench.py /path/to/bigbench-1.0.0.tar.gz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tarfile
from pathlib import Path

from kdp.errors import UserError
from kdp.io import write_text

HERE = Path(__file__).resolve().parent

OUT_DIR = HERE / "bigbench"
SDIST_VERSION = "1.0.0"
GITHUB_TASKS = "https://github.com/google/BIG-bench/tree/main/bigbench/benchmark_tasks"

# The sdist ships no task READMEs; who wrote each task and where its items come from follows the task READMEs in
# the BIG-bench GitHub repository (linked in NOTICE.md), as summarised while offline.
PROVENANCE = {
    "general_knowledge": (
        "Evgenii Zheltonozhskii",
        "questions written by the task author (some inspired by blog posts of Janelle Shane and Kevin Lacker)",
    ),
    "human_organs_senses": (
        "Fatemeh Siar",
        "questions written by the task author from general medical-reference web pages",
    ),
    "emoji_movie": (
        "Zijie J. Wang",
        "emoji plots written by the task author; distractor titles drawn from the IMDb Top 250 list",
    ),
}

# Fields that change how BIG-bench formats a prompt; the vendored items keep none of that formatting, so a task
# that needs them must not be vendored silently.
FORMATTING_FIELDS = ("task_prefix", "example_input_prefix", "example_output_prefix", "choice_prefix")


def read_task(sdist: tarfile.TarFile, task: str) -> dict:
    member = f"bigbench-{SDIST_VERSION}/bigbench/benchmark_tasks/{task}/task.json"
    try:
        handle = sdist.extractfile(member)
    except KeyError:
        raise UserError(f"{sdist.name}: no member {member}; is this the bigbench=={SDIST_VERSION} sdist?") from None
    return json.load(handle)


def items(task: dict) -> list[dict]:
    """One multiple-choice item per example; choices keep the order of ``target_scores``."""
    name = task["name"]
    if present := [field for field in FORMATTING_FIELDS if field in task]:
        raise UserError(f"BIG-bench task {name}: uses prompt formatting {present} that the vendored items drop")
    result = []
    for number, example in enumerate(task["examples"]):
        scores = example.get("target_scores")
        if not scores:
            raise UserError(f"BIG-bench task {name}, example {number}: no target_scores, not multiple choice")
        choices = list(scores)
        labels = [index for index, choice in enumerate(choices) if scores[choice] == 1]
        if not labels or any(score not in (0, 1) for score in scores.values()):
            raise UserError(f"BIG-bench task {name}, example {number}: target_scores are not 0/1 with a 1")
        result.append({"question": example["input"], "choices": choices, "labels": labels})
    return result


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def notice(tasks: list[dict], sdist_sha256: str, jsonl: dict[str, str]) -> str:
    canaries = sorted({task["canary"] for task in tasks})
    lines = [
        "# Vendored BIG-bench subsets",
        "",
        f"Written by `vendor_bigbench.py` from the PyPI sdist `bigbench=={SDIST_VERSION}`",
        f"(sha256 `{sdist_sha256}`). Do not edit by hand.",
        "",
        "**Licence.** BIG-bench is released under the Apache License 2.0 (the sdist's `setup.py` header and the",
        "`LICENSE` of https://github.com/google/BIG-bench; the sdist's PKG-INFO says `License: UNKNOWN`).",
        "Copyright 2021 Google LLC and the task authors named below. The items are unchanged; only the file",
        "format differs (one JSON object per line: `question`, `choices`, `labels` = indices of the choices",
        "with full credit in `target_scores`).",
        "",
        "**Canary.** Every BIG-bench task file carries the string below so that training corpora can be",
        "filtered of benchmark data. It is dropped from the items and kept here; do not train on these files.",
        "",
        *[f"    {canary}" for canary in canaries],
        "",
        "kdp-bench scores each choice by its log-likelihood after the question and never lists the choices in",
        "the prompt, so BIG-bench's `append_choices_to_input` (column \"lists choices\") is not reproduced.",
        "",
        "| file | items | BIG-bench task | description | lists choices | author | origin of the items | sha256 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in tasks:
        name = task["name"]
        author, origin = PROVENANCE[name]
        lines.append(
            f"| `{name}.jsonl` | {len(task['examples'])} | [{name}]({GITHUB_TASKS}/{name}) "
            f"| {task['description']} | {'yes' if task.get('append_choices_to_input') else 'no'} | {author} "
            f"| {origin} | `{jsonl[name]}` |"
        )
    lines += [
        "",
        "Authors and origins follow each task's README in the GitHub repository, which the sdist does not ship;",
        "they were taken from a summary of those READMEs while offline and should be re-checked against them.",
        "",
        "Paper: Srivastava et al., *Beyond the Imitation Game: Quantifying and extrapolating the capabilities of",
        "language models*, TMLR 2023, arXiv:2206.04615.",
        "",
    ]
    return "\n".join(lines)


def vendor(sdist_path: Path, out_dir: Path = OUT_DIR) -> None:
    sdist_sha256 = hashlib.sha256(sdist_path.read_bytes()).hexdigest()
    tasks, hashes = [], {}
    with tarfile.open(sdist_path) as sdist:
        for name in PROVENANCE:
            task = read_task(sdist, name)
            text = to_jsonl(items(task))
            write_text(out_dir / f"{name}.jsonl", text)
            hashes[name] = hashlib.sha256(text.encode("utf-8")).hexdigest()
            tasks.append(task)
    write_text(out_dir / "NOTICE.md", notice(tasks, sdist_sha256, hashes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sdist", type=Path, help=f"path to bigbench-{SDIST_VERSION}.tar.gz")
    vendor(parser.parse_args().sdist)


if __name__ == "__main__":
    main()
