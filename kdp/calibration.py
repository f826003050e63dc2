"""Calibration sets: the token ids every method calibrates or trains on, built once per model and set name.

A calibration set is a mix of sources (config ``calibration.<name>.sources``), each contributing ``samples``
samples, tokenised with the model's own tokenizer, truncated to ``max_length`` and right-padded; the mask marks
real tokens. The embedded default draws from the King James train split only (never the books its evaluation
tasks come from). The paper profile's sources are hub datasets, formatted as plain text per Section 4.1.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
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


@dataclass(frozen=True)
class HubSource:
    """A hub dataset formatted to plain text; used by the paper profile where the hub is reachable."""

    path: str
    config: str | None
    split: str
    format: Callable[[dict], str]

    def __call__(self, count: int, rng: random.Random) -> list[str]:
        from datasets import concatenate_datasets, get_dataset_config_names, load_dataset

        try:
            # "*" = every config of the dataset (CMMLU ships one per subject; the paper does not say which it used).
            configs = get_dataset_config_names(self.path) if self.config == "*" else [self.config]
            rows = concatenate_datasets([load_dataset(self.path, c, split=self.split) for c in configs])
        except Exception as error:  # datasets raises many types when offline or the id is wrong
            raise UserError(
                f"calibration source {self.path!r} ({self.config}, {self.split}) cannot be loaded: "
                f"{str(error).splitlines()[0]}; it needs the Hugging Face hub or a warm datasets cache"
            ) from error
        texts = []
        for index in rng.sample(range(len(rows)), len(rows)):
            text = self.format(rows[index])
            if text.strip():  # WikiText-2 interleaves empty lines with paragraphs
                texts.append(text)
                if len(texts) == count:
                    return texts
        raise UserError(f"calibration source {self.path!r} has {len(texts)} non-empty rows, fewer than {count} requested")


def _alpaca_prompt(row: dict) -> str:
    """The Stanford Alpaca template that LLM-Pruner's recovery data uses."""
    context = f"### Input:\n{row['input']}\n\n" if row["input"] else ""
    return ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            f"request.\n\n### Instruction:\n{row['instruction']}\n\n{context}### Response:\n{row['output']}")


def _choices_text(question: str, choices: list[str], answer: str) -> str:
    return f"{question}\n" + "\n".join(choices) + f"\nAnswer: {answer}"


HUB_SOURCES: dict[str, HubSource] = {
    "piqa": HubSource("baber/piqa", None, "train",
                      lambda r: f"Goal: {r['goal']}\nSolution: {r['sol1'] if r['label'] == 0 else r['sol2']}"),
    "cmmlu": HubSource("haonan-li/cmmlu", "*", "dev",
                       lambda r: _choices_text(r["Question"], [r["A"], r["B"], r["C"], r["D"]], r["Answer"])),
    "boolq": HubSource("aps/super_glue", "boolq", "train",
                       lambda r: f"{r['passage']}\nQuestion: {r['question']}?\nAnswer: {'yes' if r['label'] else 'no'}"),
    "c3": HubSource("clue/clue", "c3", "train",
                    lambda r: _choices_text(" ".join(r["context"]) + "\n" + r["question"], r["choice"], r["answer"])),
    "mnli": HubSource("nyu-mll/glue", "mnli", "train",
                      lambda r: f"{r['premise']}\nQuestion: {r['hypothesis']}\nLabel: {r['label']}"),
    "race-high": HubSource("ehovy/race", "high", "train",
                           lambda r: _choices_text(r["article"] + "\n" + r["question"], r["options"], r["answer"])),
    "race-middle": HubSource("ehovy/race", "middle", "train",
                             lambda r: _choices_text(r["article"] + "\n" + r["question"], r["options"], r["answer"])),
    "slimpajama": HubSource("DKYoon/SlimPajama-6B", None, "train", lambda r: r["text"]),
    "coqa": HubSource("EleutherAI/coqa", None, "train", lambda r: r["story"]),
    "hellaswag": HubSource("Rowan/hellaswag", None, "train", lambda r: r["ctx"] + " " + r["endings"][int(r["label"])]),
    "wikitext2": HubSource("Salesforce/wikitext", "wikitext-2-raw-v1", "train", lambda r: r["text"]),
    "pg19": HubSource("emozilla/pg19", None, "validation", lambda r: r["text"]),
    "alpaca": HubSource("tatsu-lab/alpaca", None, "train", lambda r: r["text"]),
    "alpaca-cleaned": HubSource("yahma/alpaca-cleaned", None, "train", lambda r: _alpaca_prompt(r)),
    "bookcorpus": HubSource("bookcorpus/bookcorpus", None, "train", lambda r: r["text"]),
}

EMBEDDED_SOURCES: dict[str, TextSource] = {"kjv": _kjv_passages}


def source_names() -> list[str]:
    return sorted([*EMBEDDED_SOURCES, *HUB_SOURCES])


def _texts(source: str, count: int, rng: random.Random, where: str) -> list[str]:
    if source in EMBEDDED_SOURCES:
        return EMBEDDED_SOURCES[source](count, rng)
    if source in HUB_SOURCES:
        return HUB_SOURCES[source](count, rng)
    raise UserError(f"{where}: calibration source {source!r} is unknown; allowed: {', '.join(source_names())}")


def build(spec: dict[str, Any], tokenizer, seed: int, where: str) -> CalibrationSet:
    """Tokenise the configured mix; sources are drawn in config order with one seeded generator each.

    By default every sample is one text, truncated to ``max_length``. A source with ``pack: true`` has its texts
    tokenised whole, concatenated and cut into ``samples`` consecutive windows of ``max_length`` tokens, the way
    ShortGPT (pg19 books) and SLEB/SliceGPT (WikiText-2) build their calibration windows.
    """
    max_length = int(spec["max_length"])
    ids_rows: list[list[int]] = []
    names: list[str] = []
    for position, source in enumerate(spec["sources"]):
        rng = random.Random(f"{seed}:{position}:{source['name']}")
        here = f"{where}.sources[{position}]"
        count = int(source["samples"])
        rows = (_packed_windows(source["name"], count, max_length, tokenizer, rng, here) if source.get("pack")
                else [tokenizer(t, truncation=True, max_length=max_length)["input_ids"]
                      for t in _texts(source["name"], count, rng, here)])
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
                    where: str) -> list[list[int]]:
    """``count`` consecutive ``max_length``-token windows of the source's texts joined end to end."""
    stream: list[int] = []
    drawn = count
    while len(stream) < count * max_length:
        texts = _texts(source, drawn, rng, where)
        stream = [token for text in texts for token in tokenizer(text, verbose=False)["input_ids"]]
        if drawn >= 64 * count:
            raise UserError(f"{where}: source {source!r} gives only {len(stream)} tokens from {drawn} texts, fewer "
                            f"than {count} windows of {max_length}; allowed: fewer samples or a shorter max_length")
        drawn *= 2
    return [stream[i * max_length : (i + 1) * max_length] for i in range(count)]
