"""Calibration sets: the token ids every method calibrates or trains on, built once per model and set name.

A calibration set is a mix of sources (config ``calibration.<name>.sources``), each contributing ``samples``
samples, tokenised with the model's own tokenizer, truncated to ``max_length`` and right-padded; the mask marks
real tokens. The embedded default draws from the King James train split only (never the books its evaluation
tasks come from). The paper profile's sources are hub datasets, formatted as plain text per Section 4.1, read
offline from the parquet files `kdp.prefetch` fetched once (see `HubSource`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kdp.errors import UserError
from kdp.io import atomic_path, sha256_file

CALIBRATION_VERSION = 1


@dataclass
class CalibrationSet:
    input_ids: torch.Tensor  # (n, T) int64
    attention_mask: torch.Tensor  # (n, T) int64, 1 on real tokens
    sources: list[str]  # source name per sample
    meta: dict[str, Any]

    @property
    def num_samples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.num_samples, batch_size):
            yield self.input_ids[start : start + batch_size], self.attention_mask[start : start + batch_size]

    def subset(self, count: int) -> "CalibrationSet":
        return self.rows(0, count)

    def rows(self, start: int, stop: int) -> "CalibrationSet":
        return CalibrationSet(self.input_ids[start:stop], self.attention_mask[start:stop], self.sources[start:stop],
                              self.meta)

    def truncated(self, max_length: int) -> "CalibrationSet":
        """The same samples cut to their first ``max_length`` token positions."""
        return CalibrationSet(self.input_ids[:, :max_length], self.attention_mask[:, :max_length], self.sources,
                              self.meta)

    def consecutive_parts(self, counts: Sequence[int | None], names: Sequence[str], where: str) -> list["CalibrationSet"]:
        """Split in order into parts of ``counts`` samples (one count may be None: every sample the others leave).

        Methods that need disjoint sets (scoring, training, validation) read one configured set this way, so the
        source order of the config decides what each part holds and the counts reported for Table 8 add up.
        """
        fixed = sum(count for count in counts if count is not None)
        sizes = [self.num_samples - fixed if count is None else int(count) for count in counts]
        if list(counts).count(None) > 1 or min(sizes) < 1 or fixed > self.num_samples:
            reads = " + ".join(f"{name} {'rest' if count is None else count}" for name, count in zip(names, counts))
            raise UserError(f"calibration set {where!r} has {self.num_samples} samples but the method reads {reads};"
                            " allowed: counts of at least 1 (at most one 'rest', which must leave at least 1) that "
                            "the calibration set can supply")
        starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        return [self.rows(start, stop) for start, stop in zip(starts, starts[1:])]

    def save(self, path: Path) -> None:
        metadata = {"sources": json.dumps(self.sources), "meta": json.dumps(self.meta, sort_keys=True)}
        with atomic_path(path) as tmp:
            save_file({"input_ids": self.input_ids, "attention_mask": self.attention_mask}, str(tmp), metadata)

    @classmethod
    def load(cls, path: Path) -> "CalibrationSet":
        from safetensors import safe_open

        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata()
        except Exception as error:  # safetensors raises several types for a damaged file
            raise UserError(f"{path}: calibration file is unreadable ({error}); delete it and rerun") from error
        return cls(tensors["input_ids"], tensors["attention_mask"], json.loads(metadata["sources"]),
                   json.loads(metadata["meta"]))

    def content_hash(self, path: Path) -> str:
        return sha256_file(path)


# -- sources ---------------------------------------------------------------------------------------------------
TextSource = Callable[[int, random.Random], list[str]]


def _kjv_passages(count: int, rng: random.Random, min_words: int = 160) -> list[str]:
    """Passages of consecutive train-split verses from random starting points, long enough to fill a window."""
    from kdp.corpus import verses

    train = verses("train")
    passages = []
    for _ in range(count):
        start = rng.randrange(len(train))
        book = train[start]["book"]
        words: list[str] = []
        index = start
        while len(words) < min_words and index < len(train) and train[index]["book"] == book:
            words.extend(train[index]["text"].split())
            index += 1
        passages.append(" ".join(words))
    return passages


PARQUET_EXPORT = "refs/convert/parquet"


@dataclass(frozen=True)
class HubSource:
    """A hub dataset read from the parquet files of a pinned revision, formatted to plain text (paper profile).

    Every source reads the hub's own parquet export (revision ``refs/convert/parquet``): one standard layout,
    ``{config}/{split}/*.parquet`` (``partial-{split}`` where the hub exported only the first 5 GB), and no
    dataset loading script is ever run, whatever the repository's main branch holds. ``snakemake prefetch``
    (`kdp.prefetch`) downloads the files and pins the export's commit; the calibration job then reads them
    offline, one row group at a time, and takes exactly the rows its seeded draw asks for.
    """

    repo: str
    config: str  # "*" = every config (CMMLU ships one per subject)
    splits: tuple[str, ...]  # drawn in this order: a later split only once the earlier ones are used up
    columns: tuple[str, ...]  # what ``format`` reads, and all the job reads from the files
    format: Callable[[dict], str]
    evidence: str  # why this id: which lm-eval task or official code uses it
    revision: str = PARQUET_EXPORT

    def file_patterns(self, split: str) -> tuple[str, str]:
        return f"{self.config}/{split}/*.parquet", f"{self.config}/partial-{split}/*.parquet"

    def texts(self, count: int, rng: random.Random, files: Mapping[str, Sequence[tuple[Path, int]]],
              where: str) -> list[str]:
        """``count`` non-empty texts: rows in a seeded order, split by split, read one row group at a time."""
        texts: list[str] = []
        for split in self.splits:
            rows = ParquetRows(files.get(split, ()), self.columns)
            order = list(range(rows.total))
            rng.shuffle(order)
            position = 0
            while len(texts) < count and position < len(order):
                # a little more than still missing, since some rows are empty (WikiText-2 interleaves blank lines)
                chunk = order[position : position + (count - len(texts)) * 5 // 4 + 8]
                position += len(chunk)
                read = rows.read(chunk)
                for index in chunk:
                    text = self.format(read[index])
                    if text.strip():
                        texts.append(text)
                        if len(texts) == count:
                            return texts
        raise UserError(f"{where}: calibration source {self.repo!r} ({self.config}, {'+'.join(self.splits)}) has "
                        f"{len(texts)} non-empty rows in its prefetched files, fewer than {count} requested; "
                        "allowed: fewer samples")


class ParquetRows:
    """Rows of local parquet files addressed by one running index; only the row groups asked for are read."""

    def __init__(self, files: Sequence[tuple[Path, int]], columns: Sequence[str]) -> None:
        import pyarrow.parquet as pq

        self.columns = list(columns)
        self.groups: list[tuple[Path, int, int]] = []  # (file, row group, first running index)
        self.total = 0
        for path, _ in files:
            metadata = pq.ParquetFile(path).metadata
            for group in range(metadata.num_row_groups):
                self.groups.append((Path(path), group, self.total))
                self.total += metadata.row_group(group).num_rows
        self.starts = [start for _, _, start in self.groups]

    def read(self, indices: Sequence[int]) -> dict[int, dict]:
        import bisect

        import pyarrow.parquet as pq

        wanted: dict[int, list[int]] = {}
        for index in indices:
            wanted.setdefault(bisect.bisect_right(self.starts, index) - 1, []).append(index)
        rows = {}
        for group_index in sorted(wanted):
            path, group, start = self.groups[group_index]
            table = pq.ParquetFile(path).read_row_group(group, columns=self.columns)
            for index in wanted[group_index]:
                rows[index] = table.slice(index - start, 1).to_pylist()[0]
        return rows


def _alpaca_prompt(row: dict) -> str:
    """The Stanford Alpaca template that LLM-Pruner's recovery data uses."""
    context = f"### Input:\n{row['input']}\n\n" if row["input"] else ""
    return ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            f"request.\n\n### Instruction:\n{row['instruction']}\n\n{context}### Response:\n{row['output']}")


def _choices_text(question: str, choices: list[str], answer: str) -> str:
    return f"{question}\n" + "\n".join(choices) + f"\nAnswer: {answer}"


def _race_text(row: dict) -> str:
    return _choices_text(row["article"] + "\n" + row["question"], row["options"], row["answer"])


_LM_EVAL = "the id lm-eval 0.4.13's task {task!r} loads (unchanged on lm-eval main of 2026-08-21)"
HUB_SOURCES: dict[str, HubSource] = {
    "piqa": HubSource("baber/piqa", "default", ("train",), ("goal", "sol1", "sol2", "label"),
                      lambda r: f"Goal: {r['goal']}\nSolution: {r['sol1'] if r['label'] == 0 else r['sol2']}",
                      _LM_EVAL.format(task="piqa")),
    # CMMLU has no train split and its dev split only 335 items (5 per subject): the paper's 500 are the 335 dev
    # items and 165 test items, which the CMMLU evaluation also scores (165 of its 11,582; docs/cluster.md).
    "cmmlu": HubSource("haonan-li/cmmlu", "*", ("dev", "test"), ("Question", "A", "B", "C", "D", "Answer"),
                       lambda r: _choices_text(r["Question"], [r["A"], r["B"], r["C"], r["D"]], r["Answer"]),
                       _LM_EVAL.format(task="cmmlu")),
    "boolq": HubSource("aps/super_glue", "boolq", ("train",), ("passage", "question", "label"),
                       lambda r: f"{r['passage']}\nQuestion: {r['question']}?\nAnswer: {'yes' if r['label'] else 'no'}",
                       _LM_EVAL.format(task="boolq")),
    "c3": HubSource("clue/clue", "c3", ("train",), ("context", "question", "choice", "answer"),
                    lambda r: _choices_text(" ".join(r["context"]) + "\n" + r["question"], r["choice"], r["answer"]),
                    "CLUE's hub dataset, as the paper suite's custom kdp_c3 task (lm-eval has no C3 task)"),
    "mnli": HubSource("nyu-mll/glue", "mnli", ("train",), ("premise", "hypothesis", "label"),
                      lambda r: f"{r['premise']}\nQuestion: {r['hypothesis']}\nLabel: {r['label']}",
                      _LM_EVAL.format(task="mnli")),
    "race-high": HubSource("ehovy/race", "high", ("train",), ("article", "question", "options", "answer"),
                           _race_text, "one row per question (lm-eval's EleutherAI/race holds one row per article "
                           "and only the high-school part), as the paper suite's kdp_race tasks"),
    "race-middle": HubSource("ehovy/race", "middle", ("train",), ("article", "question", "options", "answer"),
                             _race_text, "as race-high, middle-school part"),
    "slimpajama": HubSource("DKYoon/SlimPajama-6B", "default", ("train",), ("text",), lambda r: r["text"],
                            "a 6B-token sample of SlimPajama (Streamline's data; the paper names SlimPajama)"),
    "coqa": HubSource("EleutherAI/coqa", "default", ("train",), ("story",), lambda r: r["story"],
                      _LM_EVAL.format(task="coqa")),
    "hellaswag": HubSource("Rowan/hellaswag", "default", ("train",), ("ctx", "endings", "label"),
                           lambda r: r["ctx"] + " " + r["endings"][int(r["label"])], _LM_EVAL.format(task="hellaswag")),
    "wikitext2": HubSource("Salesforce/wikitext", "wikitext-2-raw-v1", ("train",), ("text",), lambda r: r["text"],
                           "the line-level WikiText-2 that SLEB's and SliceGPT's official code load"),
    "pg19": HubSource("emozilla/pg19", "default", ("validation",), ("text",), lambda r: r["text"],
                      "a parquet copy of PG-19 (ShortGPT's official code reads pg19 validation books)"),
    "alpaca": HubSource("tatsu-lab/alpaca", "default", ("train",), ("text",), lambda r: r["text"],
                        "the id SliceGPT's official recovery fine-tuning loads"),
    "alpaca-cleaned": HubSource("yahma/alpaca-cleaned", "default", ("train",), ("instruction", "input", "output"),
                                _alpaca_prompt, "the id LLM-Pruner's official recovery script loads"),
    "bookcorpus": HubSource("bookcorpus/bookcorpus", "plain_text", ("train",), ("text",), lambda r: r["text"],
                            "the id LLM-Pruner's official importance samples come from"),
}

EMBEDDED_SOURCES: dict[str, TextSource] = {"kjv": _kjv_passages}
# What a calibration job has of each hub source: {source: {split: [(local parquet file, size in bytes), ...]}}.
HubFiles = Mapping[str, Mapping[str, Sequence[tuple[Path, int]]]]


def source_names() -> list[str]:
    return sorted([*EMBEDDED_SOURCES, *HUB_SOURCES])


def _texts(source: str, count: int, rng: random.Random, where: str, hub: HubFiles) -> list[str]:
    if source in EMBEDDED_SOURCES:
        return EMBEDDED_SOURCES[source](count, rng)
    if source in HUB_SOURCES:
        if source not in hub:
            raise UserError(f"{where}: calibration source {source!r} has no prefetched files; allowed: a source "
                            "fetched by `snakemake prefetch` (its record is an input of the calibration rule)")
        return HUB_SOURCES[source].texts(count, rng, hub[source], where)
    raise UserError(f"{where}: calibration source {source!r} is unknown; allowed: {', '.join(source_names())}")


def build(spec: dict[str, Any], tokenizer, seed: int, where: str, hub: HubFiles | None = None) -> CalibrationSet:
    """Tokenise the configured mix; sources are drawn in config order with one seeded generator each.

    By default every sample is one text, truncated to ``max_length``. A source with ``pack: true`` has its texts
    tokenised whole, concatenated and cut into ``samples`` consecutive windows of ``max_length`` tokens, the way
    ShortGPT (pg19 books) and SLEB/SliceGPT (WikiText-2) build their calibration windows. ``hub`` holds the
    prefetched files of the hub sources the spec names.
    """
    hub = hub or {}
    max_length = int(spec["max_length"])
    ids_rows: list[list[int]] = []
    names: list[str] = []
    for position, source in enumerate(spec["sources"]):
        rng = random.Random(f"{seed}:{position}:{source['name']}")
        here = f"{where}.sources[{position}]"
        count = int(source["samples"])
        rows = (_packed_windows(source["name"], count, max_length, tokenizer, rng, here, hub) if source.get("pack")
                else [tokenizer(t, truncation=True, max_length=max_length)["input_ids"]
                      for t in _texts(source["name"], count, rng, here, hub)])
        ids_rows += rows
        names += [source["name"]] * len(rows)
    lengths = [len(row) for row in ids_rows]
    if not ids_rows or max(lengths) < 2:
        raise UserError(f"{where}: calibration set has {len(ids_rows)} samples of at most {max(lengths, default=0)} "
                        "tokens; allowed: at least 1 sample of at least 2 tokens (more samples, a longer max_length, "
                        "or a source with text)")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(ids_rows), max_length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(ids_rows), max_length), dtype=torch.long)
    for row, ids in enumerate(ids_rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    meta = {"spec": spec, "seed": seed, "version": CALIBRATION_VERSION, "tokens": int(sum(lengths))}
    return CalibrationSet(input_ids, attention_mask, names, meta)


def _packed_windows(source: str, count: int, max_length: int, tokenizer, rng: random.Random,
                    where: str, hub: HubFiles) -> list[list[int]]:
    """``count`` consecutive ``max_length``-token windows of the source's texts joined end to end."""
    stream: list[int] = []
    drawn = count
    while len(stream) < count * max_length:
        texts = _texts(source, drawn, rng, where, hub)
        stream = [token for text in texts for token in tokenizer(text, verbose=False)["input_ids"]]
        if drawn >= 64 * count:
            raise UserError(f"{where}: source {source!r} gives only {len(stream)} tokens from {drawn} texts, fewer "
                            f"than {count} windows of {max_length}; allowed: fewer samples or a shorter max_length")
        drawn *= 2
    return [stream[i * max_length : (i + 1) * max_length] for i in range(count)]
