"""Run registry benchmarks on an in-memory model through lm-evaluation-harness and read back one number each.

The model is handed to lm-eval's ``HFLM`` as it is (a pruned model never needs saving first), tasks come from the
folder ``kdp.tasks.write_task_suite`` wrote, and every seed lm-eval takes is set from ``seed``. Accuracies and
ROUGE come back in percent as the paper prints them, perplexities as they are. Embedded benchmarks run with the
Hugging Face hub switched off, so a run that would reach for the network fails instead of downloading.

Each score also keeps its items (``items``, from lm-eval's logged samples): per leaf task the document ids in
order and each document's score (0/1 accuracy, ROUGE), or for perplexity its log-likelihood and word count, in the
layout `kdp.statistics.ItemScores` reads. The items must recompute lm-eval's number; a metric whose aggregation
they cannot reproduce keeps no items (its table cell then has no interval) and the log says so.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdp.errors import UserError
from kdp.statistics import LEAF_MEAN, MEAN, PERPLEXITY, POOLED, ItemScores, Leaf
from kdp.tasks import Benchmark, benchmark, suite_of

log = logging.getLogger(__name__)

_PERCENT_KINDS = ("accuracy", "rouge")
_PERPLEXITY_METRICS = ("word_perplexity", "byte_perplexity")  # per item (log-likelihood, words or bytes)


def evaluate(
    model: Any,
    tokenizer: Any,
    benchmarks: list[str],
    *,
    include_path: Path,
    limit: int | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    seed: int = 0,
    device: str | torch.device | None = None,
    share_contexts: bool = True,
) -> dict[str, Any]:
    """Scores per benchmark (``scores``) plus lm-eval's own record of what it ran (``lm_eval``).

    ``limit`` caps the documents per lm-eval task (for tests and smoke runs; None scores everything).
    ``max_length`` bounds the tokens per forward pass, which also sets the window of rolling perplexity; it is
    capped at the model's position limit, and the value used is recorded. ``share_contexts`` scores each
    multiple-choice context once for all its choices (`kdp.shared_context_lm`); False runs lm-eval's stock HFLM.
    """
    chosen = [benchmark(name) for name in benchmarks]
    include_path = Path(include_path)
    if not include_path.is_dir():
        raise UserError(f"include_path {str(include_path)!r} is not a folder of task files; "
                        f"write one with kdp.tasks.write_task_suite")
    if device is not None:
        model = model.to(device)
    # Rolling perplexity fills whole windows: past the model's positions they would index out of its embeddings.
    max_length = min(max_length, getattr(model.config, "max_position_embeddings", None) or max_length)
    offline = all(suite_of(b.name) == "embedded" for b in chosen)
    with _hub_offline(offline):
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        from kdp.shared_context_lm import SharedContextLM

        task_manager = TaskManager(include_path=str(include_path), include_defaults=not offline)
        missing = [b.task for b in chosen if b.task not in task_manager.all_tasks]
        if missing:
            raise UserError(f"{include_path}: no task file defines {', '.join(missing)}; allowed: a task folder "
                            f"written by the build_tasks rule for benchmarks {', '.join(b.name for b in chosen)} "
                            "(delete the folder and rerun to rebuild it)")
        scorer = SharedContextLM if share_contexts else HFLM
        lm = scorer(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
        output = simple_evaluate(
            model=lm,
            tasks=[b.task for b in chosen],
            task_manager=task_manager,
            limit=limit,
            log_samples=True,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    return {
        "scores": {b.name: _score(b, output) for b in chosen},
        "lm_eval": {
            "version": metadata.version("lm_eval"),
            "limit": limit,
            "batch_size": batch_size,
            "max_length": max_length,
            "scorer": scorer.__name__,
            "seed": seed,
            "versions": _jsonable(output.get("versions", {})),
            "n-shot": _jsonable(output.get("n-shot", {})),
            "configs": _jsonable(output.get("configs", {})),
        },
    }


def _score(b: Benchmark, output: dict[str, Any]) -> dict[str, Any]:
    results = output["results"].get(b.task)
    if results is None or b.metric not in results:
        raise RuntimeError(f"lm-eval returned no {b.metric} for task {b.task}")
    scale = 100.0 if b.kind in _PERCENT_KINDS else 1.0
    stderr = results.get(b.stderr_metric)
    value = scale * float(results[b.metric])
    return {
        "column": b.column,
        "task": b.task,
        "metric": b.metric,
        "kind": b.kind,
        "table": b.table,
        "value": value,
        "stderr": scale * float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None,
        "chance": None if b.chance is None else scale * b.chance,
        "n": _documents_scored(b.task, output),
        "items": _item_record(b, output, scale, value),
    }


def _leaf_tasks(task: str, output: dict[str, Any]) -> list[str]:
    """The scored tasks under ``task``: itself, or the leaves of the group it names."""
    if task in output.get("n-samples", {}):
        return [task]
    return [leaf for child in output.get("group_subtasks", {}).get(task, []) for leaf in _leaf_tasks(child, output)]


def _documents_scored(task: str, output: dict[str, Any]) -> int:
    """Documents lm-eval scored for a task, summed over the leaves when the task is a group."""
    return sum(int(output["n-samples"][leaf]["effective"]) for leaf in _leaf_tasks(task, output))


def _item_record(b: Benchmark, output: dict[str, Any], scale: float, reported: float) -> dict[str, Any] | None:
    """Per-item scores of ``b`` from lm-eval's logged samples, checked to recompute ``reported``; None when a
    metric's per-item values or aggregation are not ones `kdp.statistics` can resample."""
    metric, _, filter_name = b.metric.partition(",")
    leaves, statistic = [], None
    for task in _leaf_tasks(b.task, output):
        logged = sorted((s for s in output.get("samples", {}).get(task, []) if s.get("filter") == filter_name),
                        key=lambda s: s["doc_id"])
        values = [s.get(metric) for s in logged]
        kind = _statistic_of(metric, values)
        if kind is None or statistic not in (None, kind):
            log.warning("%s: per-item %s of task %s cannot be resampled; no interval for it", b.name, metric, task)
            return None
        statistic = kind
        columns = ({"score": np.asarray(values, dtype=np.float64)} if kind == MEAN else
                   dict(zip(("loglikelihood", "weight"), np.asarray(values, dtype=np.float64).T)))
        leaves.append(Leaf(task, tuple(int(s["doc_id"]) for s in logged), columns))
    if not leaves:
        return None
    return _matching_aggregation(b, statistic, scale, leaves, reported)


def _statistic_of(metric: str, values: list[Any]) -> str | None:
    if not values:
        return None
    if metric in _PERPLEXITY_METRICS and all(isinstance(v, (list, tuple)) and len(v) == 2 for v in values):
        return PERPLEXITY
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return MEAN
    return None


def _matching_aggregation(b: Benchmark, statistic: str, scale: float, leaves: list[Leaf],
                          reported: float) -> dict[str, Any] | None:
    """The items under the way lm-eval combined the leaves (a group's weight_by_size is not in its output, so the
    aggregation that recomputes the reported number is the one it used)."""
    for aggregation in (POOLED, LEAF_MEAN):
        items = ItemScores(statistic, aggregation, scale, tuple(leaves))
        if math.isclose(float(items.value()), reported, rel_tol=1e-6, abs_tol=1e-9):
            return items.to_record()
    log.warning("%s: the per-item scores do not recompute lm-eval's %s (%.6g); no interval for it", b.name,
                b.metric, reported)
    return None


def _jsonable(value: Any) -> Any:
    """lm-eval's task configs can hold functions and other objects: keep JSON values, name the rest."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    return str(value)


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Switch the hub off for the duration, also in ``datasets`` and ``huggingface_hub`` if already imported.

    Both libraries read the environment once, at import, into module constants; those are what they consult later.
    """
    if not offline:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved_env = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    modules = ((huggingface_hub.constants, ("HF_HUB_OFFLINE",)),
               (datasets.config, ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")))
    saved_constants = [(module, name, getattr(module, name)) for module, names in modules for name in names]
    os.environ.update({key: "1" for key in saved_env})
    for module, name, _ in saved_constants:
        setattr(module, name, True)
    try:
        yield
    finally:
        for module, name, value in saved_constants:
            setattr(module, name, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
