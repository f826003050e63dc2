"""Hub assets, fetched once on a node with internet, then read offline by every compute job.

Compute nodes of most clusters cannot reach the Hugging Face hub, and the gated LLaMA repositories need a token,
so nothing inside a compute job downloads. ``snakemake prefetch`` (workflow/rules/prefetch.smk, local rules run on
the submit host) fetches into the Hugging Face cache (``HF_HOME``, which must be the same shared directory on the
compute nodes) everything the active config needs, and writes one record per asset under ``results/prefetch/``:

* ``models/{model}.json``: every ``hub:`` model's config, custom code, tokenizer files and one weight format
  (safetensors where the repository has them, else ``.bin``), at the commit its revision resolved to;
* ``calibration/{source}.json``: the parquet files of each hub calibration source (`kdp.calibration.HubSource`),
  the whole split or, for a split over `SLICE_BYTES`, its first files holding `SLICE_MARGIN` times the most rows any
  calibration set asks of it;
* ``evaluation.json``: every dataset the configured lm-eval tasks load, prepared in the ``datasets`` cache;
* ``manifest.json``: all of them together (repository, revision, commit, files and their sizes).

Workflow jobs run with ``HF_HUB_OFFLINE=1`` and ``HF_DATASETS_OFFLINE=1`` and take the records as inputs. A job whose
asset is missing from the cache stops with one line naming the asset and the prefetch command (`missing`).
``python -m kdp.prefetch [--configfile FILE]`` lists every asset of a config without touching the network.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kdp.errors import UserError
from kdp.io import write_json

OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
# The command a missing asset's message names (set by workflow/rules/prefetch.smk from the command line).
COMMAND_VARIABLE = "KDP_PREFETCH_COMMAND"
DEFAULT_COMMAND = "snakemake prefetch --configfile=<your config>"
# What a model job reads of a hub repository besides its weights: configs, custom code, tokenizer files.
MODEL_FILES = ("*.json", "*.py", "*.model", "*.txt", "*.tiktoken")
WEIGHT_FORMATS = ("*.safetensors", "*.bin")
SLICE_BYTES = 2 * 2**30
SLICE_MARGIN = 2
PACKED_TEXTS_PER_WINDOW = 64  # the most texts `kdp.calibration._packed_windows` draws per window before giving up
# Packaged `datasets` builders: with local data files they never reach the hub (the embedded suite's json tasks).
PACKAGED_BUILDERS = ("json", "parquet", "csv", "text", "arrow")
# Suites whose lm-eval tasks load hub datasets (the embedded suite writes its own local json files).
HUB_SUITES = ("paper",)
PARQUET_EXPORT = "refs/convert/parquet"
# Hub ids that lm-eval 0.4.13's own task YAMLs load at their main revision, with the task: the checked-in list of
# ids this project loads without a parquet export. lm-eval keeps its ids loadable with the `datasets` it supports:
# its 2025-26 sweeps against datasets 4 and 5 (issue #3171) moved every script-only id to a parquet copy, and all of
# these are unchanged on lm-eval main of 2026-08-21 (4e7e0d4). tests/test_prefetch.py checks each against lm-eval's
# task index, and `snakemake prefetch` stops with one line if one turns out to be a loading script after all.
LM_EVAL_IDS = {
    "Rowan/hellaswag": "hellaswag",
    "baber/piqa": "piqa",
    "lighteval/winograd_wsc": "wsc273",
    "tau/commonsense_qa": "commonsense_qa",
    "aps/super_glue": "boolq",
    "cais/mmlu": "mmlu_anatomy",
    "haonan-li/cmmlu": "cmmlu_agronomy",
    "nyu-mll/glue": "sst2",
    "EleutherAI/wikitext_document_level": "wikitext",
    "allenai/c4": "c4",
}


def going_online() -> None:
    """Clear the offline switches the workflow sets for every job; call before importing huggingface_hub."""
    for name in OFFLINE_SWITCHES:
        os.environ[name] = "0"


def prefetch_command() -> str:
    return os.environ.get(COMMAND_VARIABLE, DEFAULT_COMMAND)


def missing(asset: str, detail: str) -> UserError:
    return UserError(f"hub asset {asset} is not in the local Hugging Face cache ({detail}); run `{prefetch_command()}` "
                     f"on a node with internet first, with HF_HOME on a filesystem the compute nodes share "
                     f"(now {_cache_root()})")


def _cache_root() -> str:
    from huggingface_hub import constants

    return constants.HF_HOME


# -- what a config needs (offline) ---------------------------------------------------------------------------------
def hub_models(config: dict) -> dict[str, tuple[str, str]]:
    """{model: (hub repository, revision)} of every ``hub:`` model."""
    out = {}
    for name, spec in config["models"].items():
        kind, _, ref = spec["source"].partition(":")
        if kind == "hub":
            out[name] = (ref, spec.get("revision") or "main")
    return out


def calibration_rows(config: dict) -> dict[str, int]:
    """{hub calibration source: rows its prefetched files must hold} over every configured calibration set."""
    from kdp.calibration import HUB_SOURCES

    rows: dict[str, int] = {}
    for spec in config["calibration"].values():
        for source in spec["sources"]:
            if source["name"] in HUB_SOURCES:
                per_sample = PACKED_TEXTS_PER_WINDOW if source.get("pack") else 1
                rows[source["name"]] = max(rows.get(source["name"], 0),
                                           SLICE_MARGIN * int(source["samples"]) * per_sample)
    return rows


def calibration_set_sources(config: dict, name: str) -> list[str]:
    """The hub sources one calibration set reads, in config order."""
    from kdp.calibration import HUB_SOURCES

    names = [source["name"] for source in config["calibration"][name]["sources"]]
    return list(dict.fromkeys(n for n in names if n in HUB_SOURCES))


def evaluation_datasets(config: dict) -> list[dict[str, Any]]:
    """Every distinct (dataset_path, dataset_name, dataset_kwargs) the configured benchmarks' lm-eval tasks load.

    Read from lm-eval's task index and the paper suite's YAMLs without instantiating any task, so nothing is
    downloaded; each entry lists the tasks that load it.
    """
    suite = config["evaluation"]["suite"]
    if suite not in HUB_SUITES:
        return []
    from lm_eval.tasks import TaskManager

    from kdp.tasks import PAPER_TASKS_DIR, check_benchmarks

    manager = TaskManager(include_path=str(PAPER_TASKS_DIR))
    found: dict[str, dict[str, Any]] = {}
    for benchmark in check_benchmarks(suite, config["evaluation"]["benchmarks"], "config key evaluation.benchmarks"):
        for task in _task_configs(manager, benchmark.task):
            entry = {"dataset_path": task["dataset_path"], "dataset_name": task.get("dataset_name"),
                     "dataset_kwargs": task.get("dataset_kwargs") or {}}
            key = json.dumps(entry, sort_keys=True)
            found.setdefault(key, {**entry, "tasks": []})["tasks"].append(task["task"])
    return [found[key] for key in sorted(found)]


def _task_configs(manager, name: str) -> list[dict[str, Any]]:
    """The task configs a task, group or tag name expands to."""
    from lm_eval.tasks._index import Kind

    entry = manager.task_index.get(name)
    if entry is None:
        raise UserError(f"lm-eval task {name!r} is not registered; allowed: a task of lm-eval 0.4.13 or of "
                        "workflow/tasks/paper")
    if entry.kind == Kind.TASK:
        return [entry.cfg]
    if entry.kind == Kind.TAG:
        return [e.cfg for e in manager.task_index.values() if e.kind == Kind.TASK and name in e.tags]
    if entry.kind == Kind.GROUP:
        members = entry.cfg["task"]
        return [config for member in ([members] if isinstance(members, str) else members)
                for config in ([member] if isinstance(member, dict) else _task_configs(manager, member))]
    raise UserError(f"lm-eval task {name!r} is a Python-defined task; allowed: YAML tasks, whose datasets "
                    "prefetch can read without running them")


def plan(config: dict) -> list[dict[str, Any]]:
    """Every hub asset of a config: what ``snakemake prefetch`` downloads, for the listing."""
    from kdp.calibration import HUB_SOURCES

    assets = [{"kind": "model", "name": name, "repo": repo, "revision": revision,
               "files": "config, tokenizer, code and " + " or ".join(WEIGHT_FORMATS)}
              for name, (repo, revision) in hub_models(config).items()]
    for name, rows in calibration_rows(config).items():
        source = HUB_SOURCES[name]
        assets.append({"kind": "calibration", "name": name, "repo": source.repo, "revision": source.revision,
                       "files": " then ".join(source.file_patterns(split)[0] for split in source.splits)
                       + f" (the whole split; over {SLICE_BYTES / 2**30:.0f} GiB, its first files holding {rows} "
                       "rows)"})
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for dataset in evaluation_datasets(config):
        revision = dataset["dataset_kwargs"].get("revision", "main")
        grouped.setdefault((dataset["dataset_path"], revision), []).append(dataset)
    for (repo, revision), datasets in grouped.items():
        tasks = [task for dataset in datasets for task in dataset["tasks"]]
        names = sorted({d["dataset_name"] for d in datasets if d["dataset_name"]})
        files = sorted({pattern for d in datasets for pattern in _data_file_patterns(d["dataset_kwargs"])})
        assets.append({"kind": "evaluation", "name": ", ".join(tasks[:2]) + (f" ... ({len(tasks)} tasks)"
                                                                             if len(tasks) > 2 else ""),
                       "repo": repo, "revision": revision,
                       "files": ", ".join(files) or (f"config {names[0]}" if len(names) == 1 else
                                                     f"{len(names)} configs ({names[0]} ... {names[-1]})"
                                                     if names else "default config")})
    return assets


def _data_file_patterns(kwargs: Mapping[str, Any]) -> list[str]:
    files = kwargs.get("data_files") or {}
    return [p for value in (files.values() if isinstance(files, Mapping) else [files])
            for p in ([value] if isinstance(value, str) else value)]


def plan_table(assets: Sequence[Mapping[str, Any]]) -> str:
    rows = ["| kind | name | repository | revision | files |", "|---|---|---|---|---|"]
    rows += [f"| {a['kind']} | {a['name']} | {a['repo']} | {a['revision']} | {a['files']} |" for a in assets]
    return "\n".join(rows)


def loading_route(dataset: Mapping[str, Any]) -> str:
    """How an evaluation dataset loads without a loading script, or a `UserError` if nothing says it does."""
    path, kwargs = dataset["dataset_path"], dataset["dataset_kwargs"]
    if path in PACKAGED_BUILDERS:
        return "packaged builder on local files"
    if kwargs.get("revision") == PARQUET_EXPORT and _data_file_patterns(kwargs) and all(
            p.endswith(".parquet") for p in _data_file_patterns(kwargs)):
        return "the hub's parquet export, files named"
    if path in LM_EVAL_IDS:
        return f"lm-eval 0.4.13's id (task {LM_EVAL_IDS[path]})"
    raise UserError(f"evaluation dataset {path!r} (tasks {', '.join(dataset['tasks'][:3])}) is neither an id lm-eval "
                    f"0.4.13 loads nor its parquet export; allowed: dataset_kwargs {{revision: {PARQUET_EXPORT}, "
                    "data_files: {<split>: <config>/<split>/*.parquet}}, or an id added to kdp.prefetch.LM_EVAL_IDS "
                    "with its evidence")


def dataset_table(config: dict) -> str:
    """Markdown: every hub dataset a config reads, the revision and the reason for the id (docs/cluster.md)."""
    from kdp.calibration import HUB_SOURCES

    rows = ["| used for | name | hub id | config / split | revision | why this id |", "|---|---|---|---|---|---|"]
    for name in calibration_rows(config):
        source = HUB_SOURCES[name]
        rows.append(f"| calibration | `{name}` | {source.repo} | {source.config} / {' then '.join(source.splits)} | "
                    f"{source.revision} | {source.evidence} |")
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for dataset in evaluation_datasets(config):
        grouped.setdefault((dataset["dataset_path"], dataset["dataset_kwargs"].get("revision", "main")), []
                           ).append(dataset)
    for (repo, revision), datasets in grouped.items():
        tasks = [task for dataset in datasets for task in dataset["tasks"]]
        names = sorted({d["dataset_name"] for d in datasets if d["dataset_name"]})
        configs = (", ".join(sorted({p.split("/")[0] for d in datasets for p in _data_file_patterns(d["dataset_kwargs"])}))
                   if revision == PARQUET_EXPORT else ", ".join(names) if len(names) <= 3 else f"{len(names)} configs")
        task_text = ", ".join(tasks) if len(tasks) <= 3 else f"{tasks[0].split('_')[0]}_* ({len(tasks)} tasks)"
        rows.append(f"| evaluation | `{task_text}` | {repo} | {configs or 'default'} | {revision} | "
                    f"{loading_route(datasets[0])} |")
    return "\n".join(rows)


# -- fetching (on a node with internet) ----------------------------------------------------------------------------
def _hub_call(what: str, call, *args, **kwargs):
    """Run a hub request; its failure becomes one line naming the asset (gated repos say how to get access)."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    # The hub client's HTTP library raises its own transport errors (not OSError); its HTTP error class names it.
    transport = tuple(base for base in HfHubHTTPError.__bases__ if base is not OSError)
    try:
        return call(*args, **kwargs)
    except FileNotFoundError as error:  # `datasets` finds no file matching a task's data_files
        raise UserError(f"{what}: {str(error).splitlines()[0]}; the file layout named for it is stale; allowed: "
                        "data_files that exist at that revision") from error
    except GatedRepoError as error:
        raise UserError(f"{what} is gated: accept its licence on huggingface.co with your account, then log in on "
                        "this node (`hf auth login`, or set HF_TOKEN)") from error
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise UserError(f"{what} does not exist on the hub ({str(error).splitlines()[0]}); allowed: a repository "
                        "id and revision that exist") from error
    except (OSError, *transport) as error:
        raise UserError(f"{what} cannot be fetched ({str(error).splitlines()[0]}); prefetch needs a node that "
                        "reaches huggingface.co") from error


def fetch_model(config: dict, name: str, repo: str, revision: str, out_json: str) -> dict[str, Any]:
    from huggingface_hub import HfApi, hf_hub_download

    from kdp.provenance import provenance

    what = f"model {name!r} (hub:{repo}@{revision})"
    info = _hub_call(what, HfApi().model_info, repo, revision=revision, files_metadata=True)
    sizes = {sibling.rfilename: sibling.size for sibling in info.siblings}
    files = sorted(model_files(sizes))
    for path in files:
        _hub_call(what, hf_hub_download, repo, path, revision=info.sha)
    record = {"kind": "model", "name": name, "repo": repo, "revision": revision, "commit": info.sha,
              "files": [{"path": path, "size": sizes[path]} for path in files],
              "provenance": provenance(config, config["seed"], model=name)}
    write_json(out_json, record)
    return record


def model_files(sizes: Mapping[str, int | None]) -> list[str]:
    """What a layer-by-layer load reads of a repository: configs, code, tokenizer files and one weight format."""
    for weights in WEIGHT_FORMATS:
        chosen = [path for path in sizes if _top_level(path) and fnmatch.fnmatch(path, weights)]
        if chosen:
            return [path for path in sizes if _top_level(path) and any(fnmatch.fnmatch(path, p) for p in MODEL_FILES)
                    ] + chosen
    raise UserError(f"the repository holds no weights ({', '.join(WEIGHT_FORMATS)} at its top level); allowed: a "
                    "transformers checkpoint")


def _top_level(path: str) -> bool:
    return "/" not in path  # LLaMA repos also hold the original checkpoint under original/: never needed


def fetch_calibration_source(config: dict, name: str, rows_needed: int, out_json: str) -> dict[str, Any]:
    """Download a hub calibration source's parquet files (the whole split, or its first files if it is huge)."""
    import pyarrow.parquet as pq
    from huggingface_hub import HfApi, hf_hub_download

    from kdp.calibration import HUB_SOURCES
    from kdp.provenance import provenance

    source = HUB_SOURCES[name]
    what = f"calibration source {name!r} ({source.repo}@{source.revision})"
    api = HfApi()
    commit = _hub_call(what, api.dataset_info, source.repo, revision=source.revision).sha
    tree = {entry.path: entry.size for entry in _hub_call(what, lambda: list(api.list_repo_tree(
        source.repo, revision=commit, repo_type="dataset", recursive=True))) if hasattr(entry, "size")}
    splits: dict[str, list[dict[str, Any]]] = {}
    for split in source.splits:
        paths = sorted(path for path in tree if any(fnmatch.fnmatch(path, p) for p in source.file_patterns(split)))
        if not paths:
            configs = sorted({path.split("/")[0] for path in tree if path.endswith(".parquet")})
            raise UserError(f"{what} has no files {' or '.join(source.file_patterns(split))}; the layout in "
                            f"kdp/calibration.py is stale; configs there: {', '.join(configs) or 'none'}")
        whole = sum(tree[path] for path in paths) <= SLICE_BYTES
        splits[split] = []
        for path in paths:
            local = _hub_call(what, hf_hub_download, source.repo, path, revision=commit, repo_type="dataset")
            metadata = pq.ParquetFile(local).metadata
            splits[split].append({"path": path, "size": tree[path], "rows": metadata.num_rows,
                                  "largest_row_group_bytes": max(metadata.row_group(g).total_byte_size
                                                                 for g in range(metadata.num_row_groups))})
            if not whole and sum(f["rows"] for f in splits[split]) >= rows_needed:
                break
        rows_needed -= sum(f["rows"] for f in splits[split])
        if rows_needed <= 0:
            break
    record = {"kind": "calibration", "name": name, "repo": source.repo, "revision": source.revision,
              "commit": commit, "splits": splits, "provenance": provenance(config, config["seed"])}
    write_json(out_json, record)
    return record


def fetch_evaluation(config: dict, out_json: str) -> dict[str, Any]:
    """Prepare every dataset the configured lm-eval tasks load in the ``datasets`` cache, as lm-eval loads it."""
    import datasets

    from kdp.provenance import provenance

    entries = []
    for dataset in evaluation_datasets(config):
        what = f"evaluation dataset {dataset['dataset_path']!r} (config {dataset['dataset_name']}, lm-eval tasks " \
               f"{', '.join(dataset['tasks'][:3])})"
        kwargs = {k: v for k, v in dataset["dataset_kwargs"].items() if k != "trust_remote_code"}
        try:
            loaded = _hub_call(what, datasets.load_dataset, dataset["dataset_path"], dataset["dataset_name"], **kwargs)
        except RuntimeError as error:
            if "scripts are no longer supported" not in str(error):
                raise
            raise UserError(f"{what} is a dataset loading script, which datasets {datasets.__version__} refuses; "
                            "allowed: its parquet export, dataset_kwargs {revision: refs/convert/parquet, data_files:"
                            " {<split>: <config>/<split>/*.parquet}} in the task YAML (docs/cluster.md)") from error
        entries.append({**dataset, "splits": {split: {"rows": part.num_rows, "cache_files": [
            {"path": f["filename"], "size": os.path.getsize(f["filename"])} for f in part.cache_files]}
            for split, part in loaded.items()}})
    record = {"kind": "evaluation", "datasets": entries, "provenance": provenance(config, config["seed"])}
    write_json(out_json, record)
    return record


def write_manifest(config: dict, record_paths: Iterable[str], out_json: str) -> None:
    from kdp.provenance import provenance

    records = [json.loads(Path(path).read_text()) for path in record_paths]
    write_json(out_json, {"hf_home": _cache_root(), "assets": records,
                          "provenance": provenance(config, config["seed"])})


# -- offline use in compute jobs -----------------------------------------------------------------------------------
def _cached(repo: str, path: str, commit: str, repo_type: str, size: int | None, asset: str) -> Path:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, path, revision=commit, repo_type=repo_type)
    if not isinstance(found, str):
        raise missing(asset, f"{path} at commit {commit[:12]}")
    if size is not None and os.path.getsize(found) != size:
        raise missing(asset, f"{path} has {os.path.getsize(found)} bytes, the hub {size}: a partial download")
    return Path(found)


def model_snapshot(record_path: str) -> Path:
    """The local snapshot directory of a prefetched model, every recorded file checked present and complete."""
    record = json.loads(Path(record_path).read_text())
    asset = f"model {record['name']!r} (hub:{record['repo']}@{record['commit'][:12]})"
    local = [_cached(record["repo"], f["path"], record["commit"], "model", f["size"], asset) for f in record["files"]]
    return local[0].parent  # every recorded file sits at the snapshot's top level


def calibration_files(record_paths: Sequence[str]) -> dict[str, dict[str, list[tuple[Path, int]]]]:
    """{source: {split: [(local parquet file, size)]}} of prefetched calibration sources (`kdp.calibration`)."""
    out = {}
    for record_path in record_paths:
        record = json.loads(Path(record_path).read_text())
        asset = f"calibration source {record['name']!r} ({record['repo']}@{record['commit'][:12]})"
        out[record["name"]] = {split: [(_cached(record["repo"], f["path"], record["commit"], "dataset", f["size"],
                                                asset), f["size"]) for f in files]
                               for split, files in record["splits"].items()}
    return out


def require_evaluation(record_path: str) -> None:
    """Every prepared evaluation dataset is still in the ``datasets`` cache (lm-eval then loads it offline)."""
    for dataset in json.loads(Path(record_path).read_text())["datasets"]:
        for split in dataset["splits"].values():
            for cache_file in split["cache_files"]:
                if not Path(cache_file["path"]).is_file():
                    raise missing(f"evaluation dataset {dataset['dataset_path']!r} (config {dataset['dataset_name']})",
                                  f"{cache_file['path']} is gone")


def read_bytes(record_paths: Sequence[str]) -> tuple[int, int]:
    """(largest row group, all bytes) of prefetched calibration files: what a calibration job holds and reads."""
    largest, total = 0, 0
    for record_path in record_paths:
        for files in json.loads(Path(record_path).read_text())["splits"].values():
            for f in files:
                largest = max(largest, f["largest_row_group_bytes"])
                total += f["size"]
    return largest, total


def main(argv: Sequence[str] | None = None) -> int:
    """List every hub asset of a config (default config/config.yaml), without network access."""
    import argparse

    from kdp.config import load

    parser = argparse.ArgumentParser(prog="python -m kdp.prefetch", description=main.__doc__)
    parser.add_argument("--configfile", default="config/config.yaml")
    args = parser.parse_args(argv)
    try:
        assets = plan(load(args.configfile))
    except UserError as error:
        sys.stderr.write(f"kdp-bench: {error}\n")
        return 1
    print(plan_table(assets) if assets else f"{args.configfile}: no hub assets (nothing to prefetch)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
