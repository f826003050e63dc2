"""Bootstrap intervals and paired tests over evaluation items.

An evaluation keeps every item's score (``kdp.evaluation``): a 0/1 accuracy or a ROUGE value per document, or a
document's log-likelihood and word count for perplexity. Everything here resamples those items:

* a draw is a matrix of counts, one row per bootstrap replicate and one column per item (how often the replicate
  holds that item), drawn per (model, benchmark) from a generator seeded by the config seed and both names; every
  variant of one model is resampled with the same draw, so any difference, ratio or average of its rows is paired;
* a benchmark's value under a draw is the statistic lm-eval aggregates (mean of the item scores, or
  exp(-sum log-likelihood / sum words) for perplexity), per leaf task and then over a group's leaves as lm-eval
  combines them; without a draw it is the value lm-eval reported;
* an interval is the percentile interval of the replicates; a paired test's two-sided p-value is twice the smaller
  tail of the replicated difference around zero, with the usual +1 correction so it is never 0;
* several comparisons in one table are corrected with Holm's step-down method.

Items of two evaluations pair only when they are the same documents in the same order (same leaf tasks, same
``doc_id`` sequence); `paired_replicates` refuses anything else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

REPLICATES = 2000
CONFIDENCE = 0.95
ALPHA = 1.0 - CONFIDENCE
# Replicates drawn at once: bounds the count matrix of a large pool (MMLU's 14k items) to a few tens of MB.
CHUNK = 250

MEAN = "mean"  # column "score"; value = mean over items
PERPLEXITY = "perplexity"  # columns "loglikelihood", "weight"; value = exp(-sum loglikelihood / sum weight)
STATISTICS = {MEAN: ("score",), PERPLEXITY: ("loglikelihood", "weight")}
POOLED, LEAF_MEAN = "pooled", "leaf_mean"  # a group's value: size-weighted over its leaves, or their plain mean
AGGREGATIONS = (POOLED, LEAF_MEAN)
AGREES, DIFFERS = "agrees", "differs"


@dataclass(frozen=True)
class Leaf:
    """One lm-eval task's items: document ids in order and one array per column of the statistic."""

    task: str
    doc_ids: tuple[int, ...]
    columns: Mapping[str, np.ndarray]

    @property
    def size(self) -> int:
        return len(self.doc_ids)


@dataclass(frozen=True)
class ItemScores:
    """One benchmark of one evaluation, item by item (the ``items`` record `kdp.evaluation` writes)."""

    statistic: str
    aggregation: str
    scale: float
    leaves: tuple[Leaf, ...]

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ItemScores:
        statistic, aggregation = record["statistic"], record.get("aggregation", POOLED)
        if statistic not in STATISTICS or aggregation not in AGGREGATIONS:
            raise ValueError(f"item record: statistic {statistic!r} or aggregation {aggregation!r} is not one of "
                             f"{sorted(STATISTICS)} / {AGGREGATIONS}")
        leaves = tuple(Leaf(task, tuple(int(i) for i in leaf["doc_id"]),
                            {c: np.asarray(leaf[c], dtype=np.float64) for c in STATISTICS[statistic]})
                       for task, leaf in record["leaves"].items())
        return cls(statistic, aggregation, float(record.get("scale", 1.0)), leaves)

    def to_record(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "aggregation": self.aggregation, "scale": self.scale,
                "leaves": {leaf.task: {"doc_id": list(leaf.doc_ids),
                                       **{c: [float(v) for v in values] for c, values in leaf.columns.items()}}
                           for leaf in self.leaves}}

    @property
    def layout(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """What two evaluations must share to be paired: the leaf tasks and their documents, in order."""
        return tuple((leaf.task, leaf.doc_ids) for leaf in self.leaves)

    @property
    def sizes(self) -> list[int]:
        return [leaf.size for leaf in self.leaves]

    def value(self, counts: Sequence[np.ndarray] | None = None) -> float | np.ndarray:
        """The benchmark's value, or one value per replicate given each leaf's count matrix (replicates x items)."""
        per_leaf = [self._leaf_value(leaf, None if counts is None else counts[i])
                    for i, leaf in enumerate(self.leaves)]
        if self.aggregation == LEAF_MEAN:
            combined = sum(per_leaf) / len(per_leaf)
        else:
            combined = sum(v * leaf.size for v, leaf in zip(per_leaf, self.leaves)) / sum(self.sizes)
        return self.scale * combined

    def _leaf_value(self, leaf: Leaf, counts: np.ndarray | None) -> float | np.ndarray:
        def total(column: str) -> float | np.ndarray:
            values = leaf.columns[column]
            return values.sum() if counts is None else counts @ values

        if self.statistic == MEAN:
            return total("score") / leaf.size
        return np.exp(-total("loglikelihood") / total("weight"))


def draw_seed(seed: int, *names: str) -> np.random.SeedSequence:
    """A generator seed for one (model, benchmark): stable across processes and Python versions."""
    digest = hashlib.sha256("/".join(names).encode("utf-8")).digest()
    return np.random.SeedSequence([seed, int.from_bytes(digest[:8], "little")])


def _count_chunks(seed: np.random.SeedSequence, sizes: Sequence[int], replicates: int
                  ) -> Iterator[list[np.ndarray]]:
    """Per chunk of replicates, one count matrix per leaf: each row resamples that leaf's items with replacement."""
    rng = np.random.default_rng(seed)
    for start in range(0, replicates, CHUNK):
        rows = min(CHUNK, replicates - start)
        yield [rng.multinomial(n, np.full(n, 1.0 / n), size=rows).astype(np.float64) for n in sizes]


def paired_replicates(items: Mapping[Hashable, ItemScores], seed: np.random.SeedSequence,
                      replicates: int = REPLICATES) -> dict[Hashable, np.ndarray]:
    """Bootstrap replicates of every evaluation's value under one shared draw (so differences are paired)."""
    layouts = {key: scores.layout for key, scores in items.items()}
    first_key, first = next(iter(layouts.items()))
    for key, layout in layouts.items():
        if layout != first:
            raise ValueError(f"items of {key!r} are not the documents of {first_key!r} in the same order; "
                             "evaluate both on the same task files and limit")
    sizes = items[first_key].sizes
    chunks: dict[Hashable, list[np.ndarray]] = {key: [] for key in items}
    for counts in _count_chunks(seed, sizes, replicates):
        for key, scores in items.items():
            chunks[key].append(np.asarray(scores.value(counts)))
    return {key: np.concatenate(parts) for key, parts in chunks.items()}


def interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of the replicates where the statistic is defined: RP divides by the dense Avg, so a
    replicate whose resampled items give dense 0 has none (small pools near chance) and is left out."""
    replicates = np.asarray(replicates, dtype=float)
    defined = replicates[np.isfinite(replicates)]
    if defined.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(defined, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_p_value(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a paired difference being zero: twice the smaller share of replicates on
    either side of zero (counting ties on both sides), with +1 in numerator and denominator."""
    below, above = int(np.sum(differences <= 0)), int(np.sum(differences >= 0))
    return min(1.0, 2.0 * (min(below, above) + 1) / (len(differences) + 1))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order: sorted ascending, the j-th smallest (from 0) is
    multiplied by m - j, and each is at least the one before it; a hypothesis is rejected when its adjusted
    p-value is below alpha."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def half_width(low: float, high: float) -> float:
    return (high - low) / 2.0


def items_for_half_width(n: int, measured_half_width: float, target_half_width: float) -> int:
    """Items needed for ``target_half_width``, extrapolated from ``n`` items by the 1/sqrt(n) law."""
    return int(np.ceil(n * (measured_half_width / target_half_width) ** 2))


def interval_verdict(claimed: float, ci_low: float | None, ci_high: float | None) -> str | None:
    """``agrees`` when the claimed number lies in the reproduced cell's interval, ``differs`` when it does not, and
    None when the cell has no interval (no per-item results), so the caller keeps its fixed tolerance."""
    if ci_low is None or ci_high is None or not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return None
    return AGREES if ci_low <= claimed <= ci_high else DIFFERS
