"""Maintainer script: rebuild the vendored BIG-bench subsets in ``resources/benchmarks/bigbench/`` from the sdist.

No hub is reachable where kdp-bench runs by default, so a few BIG-bench JSON tasks are shipped with the project.
They come from the PyPI sdist ``bigbench==1.0.0`` (fetch it with ``pip download --no-deps bigbench==1.0.0``;
never install it, it pulls in TensorFlow). Each chosen ``bigbench/benchmark_tasks/<task>[/<subtask>]/task.json``
becomes ``<task>[_<subtask>].jsonl`` with one ``{"prefix", "question", "choices", "labels"}`` object per example,
in the file's order; ``labels`` lists every choice with full credit, since one general_knowledge question accepts
two answers. ``prefix`` is the task's ``task_prefix`` (its instruction, which BIG-bench prints before the first
example) followed by a newline, or empty; the example's ``input`` is ``question`` unchanged. A task with more than
``MAX_ITEMS`` examples keeps a seeded sample of that many (``sample_order``), still in the file's order, so that
the repository stays small. The canary string stays out of the items and is recorded in ``NOTICE.md`` together
with each task's provenance and licence. The output depends only on the sdist, so rerunning this script
reproduces the committed files byte for byte. ``scan_bigbench.py`` beside this file chose the tasks.

kdp-bench is Apache-2.0, so it vendors a task only when its items and the data set they derive from are all under
a permissive licence (``PERMISSIVE``); the script refuses any other task before it writes a file, and NOTICE.md
names the tasks the scan chose that are not vendored (``NOT_VENDORED``) and why.

Usage: python resources/benchmarks/vendor_bigbench.py /path/to/bigbench-1.0.0.tar.gz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import tarfile
from pathlib import Path

from kdp.errors import UserError
from kdp.io import write_text

HERE = Path(__file__).resolve().parent

OUT_DIR = HERE / "bigbench"
SDIST_VERSION = "1.0.0"
TASKS_ROOT = f"bigbench-{SDIST_VERSION}/bigbench/benchmark_tasks/"
GITHUB_TASKS = "https://github.com/google/BIG-bench/tree/main/bigbench/benchmark_tasks"
# A cap on vendored examples per task: enough for a 95% interval of about +-2.5 points on one task, small enough
# to keep every vendored file under half a megabyte.
MAX_ITEMS = 1500
SAMPLE_SEED = 0
APACHE = "Apache-2.0 (BIG-bench)"
# SPDX ids of the licences whose data an Apache-2.0 project may redistribute with at most an attribution (given in
# NOTICE.md); non-commercial or share-alike terms are not among them.
PERMISSIVE = ("Apache-2.0", "MIT", "CC-BY-4.0")


class Source:
    """Who wrote a task, where its items come from and under which terms, from the task's README on GitHub.

    ``data_licences`` maps each data set the items derive from to its SPDX licence id; the task itself is
    Apache-2.0, as all of BIG-bench.
    """

    def __init__(self, author: str, origin: str, data_licences: dict[str, str] | None = None) -> None:
        self.author, self.origin, self.data_licences = author, origin, data_licences or {}

    @property
    def licence(self) -> str:
        data = "".join(f"{name}: {spdx}; " for name, spdx in self.data_licences.items())
        return f"{data}task: {APACHE}" if data else APACHE


def check_permissive(path: str, source: Source) -> None:
    """Refuse a task whose items derive from data under terms kdp-bench (Apache-2.0) cannot pass on."""
    for name, spdx in source.data_licences.items():
        if spdx not in PERMISSIVE:
            raise UserError(f"BIG-bench task {path}: its {name} items are under {spdx}; allowed: "
                            f"{', '.join(PERMISSIVE)} (kdp-bench vendors only permissively licensed data)")


# Every bbq_lite_json subset is built from the same BBQ templates, by the same authors, under the same terms.
BBQ_DISAMBIGUATED = Source(
    "Alicia Parrish, Angelica Chen, Nikita Nangia and co-authors (per the source data set)",
    "templates of BBQ, the Bias Benchmark for QA (Parrish et al., Findings of ACL 2022), disambiguated "
    "contexts: the context states the answer",
    {"BBQ": "CC-BY-4.0"},
)

# The sdist ships no task READMEs; each entry follows the task's README in the BIG-bench GitHub repository (linked
# in NOTICE.md). Keys are BIG-bench paths: a task, or task/subtask.
PROVENANCE = {
    "general_knowledge": Source(
        "Evgenii Zheltonozhskii",
        "questions written by the task author (some inspired by blog posts of Janelle Shane and Kevin Lacker)",
    ),
    "human_organs_senses": Source(
        "Fatemeh Siar",
        "questions written by the task author from general medical-reference web pages",
    ),
    "emoji_movie": Source(
        "Zijie J. Wang",
        "emoji plots written by the task author; distractor titles drawn from the IMDb Top 250 list",
    ),
    # Chosen by scan_bigbench.py (docs/benchmarks.md): SmolLM2-135M above chance, the most items. The task READMEs
    # could not be read where these were vendored (no network); authors and licences below are those of the source
    # data sets as their authors published them, to be re-checked against the READMEs.
    "bbq_lite_json/race_ethnicity_disambig": BBQ_DISAMBIGUATED,
    # Replaces general_knowledge (70 items) in the default list: its pool is too small for a +-2 point Avg (issue 14).
    "bbq_lite_json/gender_identity_disambig": BBQ_DISAMBIGUATED,
    "elementary_math_qa/question_with_mathematical_hint": Source(
        "not read (the task README is not in the sdist)",
        "word problems of MathQA (Amini et al., NAACL 2019), with the problem's formula as a hint",
        {"MathQA": "Apache-2.0"},
    ),
}

# Tasks the scan chose that are not vendored: what their items are and the licence that keeps them out.
WIKIHOW = ("wikiHow text", "CC BY-NC-SA 3.0")
NOT_VENDORED = {"goal_step_wikihow/step_inference": WIKIHOW, "goal_step_wikihow/goal_inference": WIKIHOW}

# Fields that change how BIG-bench frames an example. kdp-bench frames every item as "Q: <question>\nA:" and never
# lists the choices, so these are replaced, not reproduced; NOTICE.md records which ones each task had.
FRAMING_FIELDS = ("example_input_prefix", "example_output_prefix", "choice_prefix")


def file_stem(path: str) -> str:
    """``bbq_lite_json/race_ethnicity_disambig`` -> ``bbq_lite_json_race_ethnicity_disambig``."""
    return path.replace("/", "_")


def iter_tasks(sdist: tarfile.TarFile):
    """(BIG-bench path, task) for every task and subtask of the sdist with a task.json, in one pass over it."""
    suffix = "/task.json"
    for member in sdist:
        if member.name.startswith(TASKS_ROOT) and member.name.endswith(suffix):
            yield member.name.removeprefix(TASKS_ROOT).removesuffix(suffix), json.load(sdist.extractfile(member))


def read_task(sdist: tarfile.TarFile, path: str) -> dict:
    member = f"{TASKS_ROOT}{path}/task.json"
    try:
        handle = sdist.extractfile(member)
    except KeyError:
        raise UserError(f"{sdist.name}: no member {member}; is this the bigbench=={SDIST_VERSION} sdist?") from None
    return json.load(handle)


def is_multiple_choice(task: dict) -> bool:
    """Examples all scored by ``target_scores`` of 0 and 1 with at least one 1 (what ``items`` accepts)."""
    examples = task.get("examples") or []
    return bool(examples) and all(_labels(example) is not None for example in examples)


def _labels(example: dict) -> list[int] | None:
    scores = example.get("target_scores")
    if not scores or any(score not in (0, 1) for score in scores.values()):
        return None
    labels = [index for index, score in enumerate(scores.values()) if score == 1]
    return labels or None


def items(task: dict) -> list[dict]:
    """One multiple-choice item per example; choices keep the order of ``target_scores``."""
    prefix = task["task_prefix"].strip() + "\n" if task.get("task_prefix", "").strip() else ""
    result = []
    for number, example in enumerate(task["examples"]):
        labels = _labels(example)
        if labels is None:
            raise UserError(f"BIG-bench task {task['name']}, example {number}: target_scores are not 0/1 with a 1; "
                            "allowed: multiple-choice tasks only")
        result.append({"prefix": prefix, "question": example["input"], "choices": list(example["target_scores"]),
                       "labels": labels})
    return result


def sample_order(path: str, count: int) -> list[int]:
    """A seeded permutation of a task's example indices: the first k of it are the task's sample of k.

    The scan scores a prefix of this order and the vendored file keeps a longer prefix, so every scanned item is
    also vendored.
    """
    order = list(range(count))
    random.Random(f"{path}:{SAMPLE_SEED}").shuffle(order)
    return order


def kept(path: str, rows: list[dict], limit: int) -> list[dict]:
    """At most ``limit`` rows: the first ``limit`` of ``sample_order``, back in the file's order."""
    return [rows[i] for i in sorted(sample_order(path, len(rows))[:limit])]


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def notice(tasks: dict[str, dict], sdist_sha256: str, vendored: dict[str, tuple[int, str]]) -> str:
    canaries = sorted({task["canary"] for task in tasks.values()})
    lines = [
        "# Vendored BIG-bench subsets",
        "",
        f"Written by `vendor_bigbench.py` from the PyPI sdist `bigbench=={SDIST_VERSION}`",
        f"(sha256 `{sdist_sha256}`). Do not edit by hand.",
        "",
        "**Licence.** BIG-bench is released under the Apache License 2.0 (the sdist's `setup.py` header and the",
        "`LICENSE` of https://github.com/google/BIG-bench; the sdist's PKG-INFO says `License: UNKNOWN`).",
        "Copyright 2021 Google LLC and the task authors named below. Where a task's items derive from another",
        "data set, its README names that set's terms; the column \"licence\" records them. The items are",
        "unchanged; only the file format differs (one JSON object per line: `prefix` = the task's `task_prefix`",
        "and a newline, or empty; `question` = the example's `input`; `choices`; `labels` = indices of the",
        "choices with full credit in `target_scores`).",
        "",
        f"**Sampling.** A task with more than {MAX_ITEMS} examples keeps a seeded sample of {MAX_ITEMS} (seed",
        f"{SAMPLE_SEED}, `vendor_bigbench.sample_order`), in the file's order; column \"items\" gives kept / total.",
        "",
        "**Canary.** Every BIG-bench task file carries the string below so that training corpora can be",
        "filtered of benchmark data. It is dropped from the items and kept here; do not train on these files.",
        "",
        *[f"    {canary}" for canary in canaries],
        "",
        "kdp-bench prompts `<prefix>Q: <question>\\nA:` and scores each choice by its log-likelihood after it,",
        "never listing the choices, so BIG-bench's `append_choices_to_input` (column \"lists choices\") and its",
        "framing fields (column \"framing replaced\") are not reproduced.",
        "",
        "| file | items | BIG-bench task | description | lists choices | framing replaced | author | origin of the "
        "items | licence | sha256 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path, task in tasks.items():
        source = PROVENANCE[path]
        count, sha = vendored[path]
        framing = ", ".join(f"`{field}`" for field in FRAMING_FIELDS if field in task) or "none"
        lines.append(
            f"| `{file_stem(path)}.jsonl` | {count} / {len(task['examples'])} | [{path}]({GITHUB_TASKS}/{path}) "
            f"| {task['description']} | {'yes' if task.get('append_choices_to_input') else 'no'} | {framing} "
            f"| {source.author} | {source.origin} | {source.licence} | `{sha}` |"
        )
    lines += [
        "",
        "Authors, origins and licences follow each task's README in the GitHub repository, which the sdist does",
        "not ship.",
        "",
        "**Not vendored.** kdp-bench is Apache-2.0 and vendors a task only when the data its items derive from",
        f"are under a permissive licence ({', '.join(PERMISSIVE)}), not under non-commercial or share-alike terms.",
        "Chosen by the scan (docs/benchmarks.md) but not vendored:",
        "",
        *[f"- [{path}]({GITHUB_TASKS}/{path}): its items are {data}, {licence}."
          for path, (data, licence) in NOT_VENDORED.items()],
        "",
        "Paper: Srivastava et al., *Beyond the Imitation Game: Quantifying and extrapolating the capabilities of",
        "language models*, TMLR 2023, arXiv:2206.04615.",
        "",
    ]
    return "\n".join(lines)


def vendor(sdist_path: Path, out_dir: Path = OUT_DIR) -> None:
    for path, source in PROVENANCE.items():
        check_permissive(path, source)
    sdist_sha256 = hashlib.sha256(sdist_path.read_bytes()).hexdigest()
    tasks, vendored = {}, {}
    with tarfile.open(sdist_path) as sdist:
        for path in PROVENANCE:
            task = read_task(sdist, path)
            rows = kept(path, items(task), MAX_ITEMS)
            text = to_jsonl(rows)
            write_text(out_dir / f"{file_stem(path)}.jsonl", text)
            vendored[path] = (len(rows), hashlib.sha256(text.encode("utf-8")).hexdigest())
            tasks[path] = task
    write_text(out_dir / "NOTICE.md", notice(tasks, sdist_sha256, vendored))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sdist", type=Path, help=f"path to bigbench-{SDIST_VERSION}.tar.gz")
    vendor(parser.parse_args().sdist)


if __name__ == "__main__":
    main()
