"""Prefetch once, run offline: what the paper profile plans, what `snakemake prefetch` fetches (against a mocked
hub writing a real Hugging Face cache layout), calibration by streaming from the prefetched parquet files, and the
one line a job prints when an asset is missing. Nothing here reaches the network."""

from __future__ import annotations

import copy
import random
import json
import re
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import constants

from kdp import calibration, prefetch
from kdp.config import load
from kdp.errors import UserError
from kdp.steps import run
from tests.test_slurm_profile import _jobs
from tests.test_workflow import REPO, snakemake

PAPER_MODELS = {"llama-2-7b", "llama-2-13b", "llama-3-8b", "llama-3.1-8b", "opt-2.7b", "opt-6.7b"}
COMMIT = "c0ffee" * 6 + "abcd"


@pytest.fixture(scope="module")
def paper():
    return load(REPO / "config" / "paper.yaml")


@pytest.fixture(scope="module")
def paper_plan(paper):
    return prefetch.plan(paper)


# -- the paper profile replaces the embedded one -------------------------------------------------------------------
def test_paper_dag_plans_exactly_its_six_models_and_no_embedded_asset():
    result = snakemake("-n", "--configfile=config/paper.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    jobs = _jobs(out)
    assert {w["model"] for rule, w, _ in jobs if rule == "base_model"} == PAPER_MODELS
    assert {w["model"] for _, w, _ in jobs if "model" in w} == PAPER_MODELS
    for embedded in ("opt-kjv", "smollm2", "kjv", "micro-"):  # no pretraining, no GGUF, no King James text
        assert embedded not in out
    assert re.search(r"Config file\(s\): \[PosixPath\('[^']*config/paper\.yaml'\)\]", out)  # that file alone
    figures = {w["figure"] for rule, w, _ in jobs if rule == "figure"}
    assert figures == {f"figure{n}" for n in (1, 3, 4, 5, 6, 7, 8)}


def test_prefetch_dry_run_lists_every_asset_as_local_jobs(paper):
    result = snakemake("-n", "prefetch", "--workflow-profile", "profiles/slurm", "--configfile=config/paper.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    jobs = _jobs(out)
    assert {w["model"] for rule, w, _ in jobs if rule == "prefetch_model"} == PAPER_MODELS
    sources = {s["name"] for spec in paper["calibration"].values() for s in spec["sources"]}
    assert {w["source"] for rule, w, _ in jobs if rule == "prefetch_calibration"} == sources
    assert [rule for rule, _, _ in jobs if rule == "prefetch_evaluation"] == ["prefetch_evaluation"]
    assert {rule for rule, _, _ in jobs} == {"prefetch", "prefetch_model", "prefetch_calibration",
                                             "prefetch_evaluation"}
    # on a cluster they run on the submit host, the one node with internet (a dry run does not show it)
    rules = re.split(r"\n(?=rule \w+:)", (REPO / "workflow" / "rules" / "prefetch.smk").read_text())[1:]
    assert len(rules) == 4 and all("\n    localrule: True\n" in rule for rule in rules)


def test_the_asset_listing_names_every_repository(paper, paper_plan):
    repos = {(a["kind"], a["repo"]) for a in paper_plan}
    assert {repo for kind, repo in repos if kind == "model"} == {
        "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf", "meta-llama/Meta-Llama-3-8B",
        "meta-llama/Llama-3.1-8B", "facebook/opt-2.7b", "facebook/opt-6.7b"}
    used = {s["name"] for spec in paper["calibration"].values() for s in spec["sources"]}
    assert {repo for kind, repo in repos if kind == "calibration"} == {calibration.HUB_SOURCES[n].repo for n in used}
    evaluation = {repo for kind, repo in repos if kind == "evaluation"}
    assert {"cais/mmlu", "haonan-li/cmmlu", "clue/clue", "ehovy/race", "EdinburghNLP/xsum", "allenai/c4",
            "Rowan/hellaswag", "EleutherAI/wikitext_document_level", "lighteval/winograd_wsc"} <= evaluation
    assert prefetch.plan(load(REPO / "config" / "config.yaml")) == []  # the embedded default needs no hub


# -- no configured dataset relies on a loading script --------------------------------------------------------------
def test_no_configured_dataset_relies_on_a_loading_script(paper):
    for config in (paper, load(REPO / "config" / "config.yaml")):
        for spec in config["calibration"].values():
            for source in spec["sources"]:
                hub = calibration.HUB_SOURCES.get(source["name"])
                # calibration reads parquet files itself, from the hub's export: no builder, no script
                assert hub is None and source["name"] in calibration.EMBEDDED_SOURCES or \
                    hub.revision == prefetch.PARQUET_EXPORT, source
        for dataset in prefetch.evaluation_datasets(config):
            prefetch.loading_route(dataset)  # raises for an id with no evidence


def test_the_checked_in_ids_are_what_lm_eval_itself_loads():
    from lm_eval.tasks import TaskManager

    index = TaskManager().task_index
    for repo, task in prefetch.LM_EVAL_IDS.items():
        assert index[task].cfg["dataset_path"] == repo, (repo, task)


def test_an_unlisted_id_is_refused_in_one_line():
    dataset = {"dataset_path": "someone/script_dataset", "dataset_name": None, "dataset_kwargs": {},
               "tasks": ["my_task"]}
    with pytest.raises(UserError, match=r"'someone/script_dataset' \(tasks my_task\) is neither an id lm-eval"):
        prefetch.loading_route(dataset)
    dataset["dataset_kwargs"] = {"revision": "refs/convert/parquet", "data_files": {"test": "x/test/*.parquet"}}
    assert prefetch.loading_route(dataset) == "the hub's parquet export, files named"


def test_docs_carry_the_dataset_table_of_the_paper_profile(paper):
    assert prefetch.dataset_table(paper) in (REPO / "docs" / "cluster.md").read_text()


# -- a mocked hub that writes a real cache layout -------------------------------------------------------------------
class FakeHub:
    """Repositories as {repo: {path: bytes}}; downloads land where huggingface_hub's cache lookup finds them."""

    def __init__(self, cache: Path, repos: dict[str, dict[str, bytes]]):
        self.cache, self.repos, self.downloads = cache, repos, []

    def download(self, repo, path, *, revision, repo_type="model"):
        self.downloads.append((repo, path))
        target = self.cache / f"{repo_type}s--{repo.replace('/', '--')}" / "snapshots" / revision / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.repos[repo][path])
        return str(target)

    def api(self):
        hub = self

        class Api:
            def model_info(self, repo, revision, files_metadata):
                return SimpleNamespace(sha=COMMIT, siblings=[SimpleNamespace(rfilename=p, size=len(b))
                                                             for p, b in hub.repos[repo].items()])

            def dataset_info(self, repo, revision):
                assert revision == prefetch.PARQUET_EXPORT
                return SimpleNamespace(sha=COMMIT)

            def list_repo_tree(self, repo, revision, repo_type, recursive):
                return [SimpleNamespace(path=p, size=len(b)) for p, b in hub.repos[repo].items()]

        return Api


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv(prefetch.COMMAND_VARIABLE, "snakemake prefetch --configfile=config/paper.yaml")
    fake = FakeHub(cache, {})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.download)
    monkeypatch.setattr(huggingface_hub, "HfApi", fake.api())
    return fake


def _parquet(rows: list[dict], row_group_size: int) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=row_group_size)
    return sink.getvalue().to_pybytes()


def _cmmlu_repo(test_rows: int = 2000) -> dict[str, bytes]:
    def rows(subject, split, n):
        return [{"Question": f"{subject} {split} q{i}", "A": "a", "B": "b", "C": "c", "D": "d", "Answer": "A"}
                for i in range(n)]

    files = {}
    for subject in ("agronomy", "anatomy"):
        files[f"{subject}/dev/0000.parquet"] = _parquet(rows(subject, "dev", 5), 5)
        files[f"{subject}/test/0000.parquet"] = _parquet(rows(subject, "test", test_rows), 10)
    return files


def test_a_model_prefetch_takes_one_weight_format_and_is_found_offline(hub, tmp_path):
    hub.repos["meta-llama/Llama-2-7b-hf"] = {
        "config.json": b"{}", "tokenizer.json": b"{}", "tokenizer.model": b"spm", "README.md": b"#",
        "model.safetensors.index.json": b"{}", "model-00001-of-00002.safetensors": b"w" * 10,
        "model-00002-of-00002.safetensors": b"w" * 7, "pytorch_model-00001-of-00002.bin": b"b" * 10,
        "original/consolidated.00.pth": b"p" * 50, "original/params.json": b"{}"}
    record = prefetch.fetch_model({"seed": 0, "models": {}}, "llama-2-7b", "meta-llama/Llama-2-7b-hf", "main",
                                  str(tmp_path / "llama.json"))
    assert [f["path"] for f in record["files"]] == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "tokenizer.json", "tokenizer.model"]
    assert record["commit"] == COMMIT and record["files"][1]["size"] == 10
    snapshot = prefetch.model_snapshot(str(tmp_path / "llama.json"))
    assert snapshot.name == COMMIT and (snapshot / "config.json").is_file()

    (snapshot / "model-00002-of-00002.safetensors").write_bytes(b"w")  # an interrupted download
    with pytest.raises(UserError, match="has 1 bytes, the hub 7: a partial download"):
        prefetch.model_snapshot(str(tmp_path / "llama.json"))
    (snapshot / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(UserError) as caught:
        prefetch.model_snapshot(str(tmp_path / "llama.json"))
    message = str(caught.value)
    assert message.startswith("hub asset model 'llama-2-7b' (hub:meta-llama/Llama-2-7b-hf@c0ffeec0ffee) is not in the "
                              "local Hugging Face cache (model-00002-of-00002.safetensors at commit c0ffeec0ffee)")
    assert "run `snakemake prefetch --configfile=config/paper.yaml` on a node with internet" in message


def test_a_repository_with_only_bin_weights_prefetches_those(hub, tmp_path):
    hub.repos["facebook/opt-2.7b"] = {"config.json": b"{}", "vocab.json": b"{}", "merges.txt": b"m",
                                      "pytorch_model.bin": b"b" * 9, "tf_model.h5": b"t" * 9}
    record = prefetch.fetch_model({"seed": 0, "models": {}}, "opt-2.7b", "facebook/opt-2.7b", "main",
                                  str(tmp_path / "opt.json"))
    assert [f["path"] for f in record["files"]] == ["config.json", "merges.txt", "pytorch_model.bin", "vocab.json"]


def test_calibration_streams_exactly_the_samples_asked_dev_before_test(hub, tmp_path, monkeypatch):
    hub.repos["haonan-li/cmmlu"] = _cmmlu_repo()
    record = prefetch.fetch_calibration_source({"seed": 0, "models": {}}, "cmmlu", 2 * 13, str(tmp_path / "c.json"))
    assert sorted(record["splits"]) == ["dev", "test"] and record["commit"] == COMMIT
    assert [f["rows"] for f in record["splits"]["test"]] == [2000, 2000]  # a small split is fetched whole
    files = prefetch.calibration_files([str(tmp_path / "c.json")])

    groups = []
    real_read = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, i, **kw: groups.append(i) or real_read(self, i, **kw))
    texts = calibration.HUB_SOURCES["cmmlu"].texts(13, random.Random("0:1:cmmlu"), files["cmmlu"], "w")
    assert len(texts) == 13
    assert all(" dev " in t for t in texts[:10]) and all(" test " in t for t in texts[10:])  # all 10 dev rows first
    assert len(groups) <= 2 + 11  # the two dev row groups, then at most one per test row drawn (of 400 groups)
    again = calibration.HUB_SOURCES["cmmlu"].texts(13, random.Random("0:1:cmmlu"), files["cmmlu"], "w")
    other = calibration.HUB_SOURCES["cmmlu"].texts(13, random.Random("1:1:cmmlu"), files["cmmlu"], "w")
    assert again == texts and other != texts

    with pytest.raises(UserError, match=r"has 4010 non-empty rows in its prefetched files, fewer than 5000 requested"):
        calibration.HUB_SOURCES["cmmlu"].texts(5000, random.Random(0), files["cmmlu"], "w")


def test_empty_rows_are_skipped_and_a_huge_split_is_fetched_only_in_part(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(prefetch, "SLICE_BYTES", 1)
    lines = [{"text": "" if i % 3 else f"line {i}"} for i in range(300)]
    hub.repos["Salesforce/wikitext"] = {f"wikitext-2-raw-v1/train/{k:04d}.parquet": _parquet(lines[k::5], 20)
                                        for k in range(5)}
    record = prefetch.fetch_calibration_source({"seed": 0, "models": {}}, "wikitext2", 100, str(tmp_path / "w.json"))
    assert [f["path"] for f in record["splits"]["train"]] == ["wikitext-2-raw-v1/train/0000.parquet",
                                                              "wikitext-2-raw-v1/train/0001.parquet"]
    assert len(hub.downloads) == 2
    files = prefetch.calibration_files([str(tmp_path / "w.json")])
    texts = calibration.HUB_SOURCES["wikitext2"].texts(30, random.Random(0), files["wikitext2"], "w")
    assert len(texts) == 30 and all(t.strip() for t in texts)


def test_a_stale_layout_names_the_configs_that_exist(hub, tmp_path):
    hub.repos["clue/clue"] = {"afqmc/train/0000.parquet": _parquet([{"x": 1}], 1)}
    with pytest.raises(UserError, match=r"has no files c3/train/\*\.parquet or c3/partial-train/\*\.parquet; the "
                                        r"layout in kdp/calibration.py is stale; configs there: afqmc"):
        prefetch.fetch_calibration_source({"seed": 0, "models": {}}, "c3", 10, str(tmp_path / "c3.json"))


def test_a_job_whose_asset_is_missing_prints_one_line_naming_it(hub, tmp_path, capsys):
    hub.repos["haonan-li/cmmlu"] = _cmmlu_repo(test_rows=20)
    prefetch.fetch_calibration_source({"seed": 0, "models": {}}, "cmmlu", 10, str(tmp_path / "c.json"))
    (hub.cache / "datasets--haonan-li--cmmlu" / "snapshots" / COMMIT / "anatomy" / "dev" / "0000.parquet").unlink()
    with pytest.raises(SystemExit):
        run(prefetch.calibration_files, str(tmp_path / "job.log"), record_paths=[str(tmp_path / "c.json")])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "kdp-bench: hub asset calibration source 'cmmlu' (haonan-li/cmmlu@c0ffeec0ffee) is not in the local Hugging "
        "Face cache (anatomy/dev/0000.parquet at commit c0ffeec0ffee); run `snakemake prefetch "
        "--configfile=config/paper.yaml` on a node with internet first")


def test_evaluation_prefetch_records_the_cache_and_names_a_loading_script(paper, tmp_path, monkeypatch):
    import datasets

    config = copy.deepcopy(paper)
    config["evaluation"]["benchmarks"] = ["hellaswag", "race"]
    cache_file = tmp_path / "cache-train.arrow"
    cache_file.write_bytes(b"arrow")
    part = SimpleNamespace(num_rows=3, cache_files=[{"filename": str(cache_file)}])
    loaded = []
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name, **kw: loaded.append((path, name, kw)) or
                        {"train": part})
    record = prefetch.fetch_evaluation(config, str(tmp_path / "evaluation.json"))
    assert sorted(path for path, _, _ in loaded) == ["Rowan/hellaswag", "ehovy/race", "ehovy/race"]
    race = [kw for path, _, kw in loaded if path == "ehovy/race"]
    assert all(kw["revision"] == "refs/convert/parquet" for kw in race)  # as lm-eval passes the task's kwargs
    assert {kw["data_files"]["test"] for kw in race} == {"high/test/*.parquet", "middle/test/*.parquet"}
    assert record["datasets"][0]["splits"]["train"]["cache_files"] == [{"path": str(cache_file), "size": 5}]
    prefetch.require_evaluation(str(tmp_path / "evaluation.json"))
    cache_file.unlink()
    with pytest.raises(UserError, match=r"hub asset evaluation dataset .* is not in the local Hugging Face cache"):
        prefetch.require_evaluation(str(tmp_path / "evaluation.json"))

    def script(path, name, **kw):
        if path == "Rowan/hellaswag":
            raise RuntimeError("Dataset scripts are no longer supported, but found hellaswag.py")
        return {"train": part}

    cache_file.write_bytes(b"arrow")
    monkeypatch.setattr(datasets, "load_dataset", script)
    with pytest.raises(UserError, match=r"'Rowan/hellaswag' \(config None, lm-eval tasks hellaswag\) is a dataset "
                                        r"loading script, which datasets .* refuses; allowed: its parquet export"):
        prefetch.fetch_evaluation(config, str(tmp_path / "evaluation.json"))


def test_the_prefetch_target_of_the_embedded_config_writes_an_empty_manifest(tmp_path):
    result = snakemake("--cores", "1", "--directory", str(tmp_path), "prefetch",
                       f"--configfile={REPO / 'tests' / 'fixtures' / 'faults' / 'micro.yaml'}")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "results" / "prefetch" / "manifest.json").read_text())
    assert manifest["assets"] == [] and manifest["provenance"]["seed"] == 0


def test_a_hub_model_and_its_calibration_run_offline_from_the_prefetched_cache(hub, tmp_path, monkeypatch):
    """base_model records the local snapshot (so no later job needs the hub), calibration tokenises the streamed
    hub rows with that snapshot's tokenizer, and both record the commit they read."""
    from kdp import steps
    from kdp.calibration import CalibrationSet
    from kdp.embedded import micro

    micro.materialize("micro-llama", tmp_path / "built", seed=0)
    hub.repos["org/micro"] = {p.name: p.read_bytes() for p in (tmp_path / "built").iterdir()}
    hub.repos["haonan-li/cmmlu"] = _cmmlu_repo(test_rows=30)
    config = load(REPO / "tests" / "fixtures" / "faults" / "micro.yaml")
    config["models"] = {"m": {"source": "hub:org/micro", "label": "M", "overrides": {}}}
    config["calibration"]["standard"] = {"max_length": 32, "sources": [{"name": "cmmlu", "samples": 12}]}
    prefetch.fetch_model(config, "m", "org/micro", "main", str(tmp_path / "m.json"))
    prefetch.fetch_calibration_source(config, "cmmlu", 24, str(tmp_path / "cmmlu.json"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", None)  # a compute node: nothing may download
    monkeypatch.setattr(huggingface_hub, "HfApi", None)

    steps.base_model(config, "m", str(tmp_path / "base"), asset=str(tmp_path / "m.json"))
    manifest = json.loads((tmp_path / "base" / "manifest.json").read_text())
    assert manifest["weights"] == str(hub.cache / "models--org--micro" / "snapshots" / COMMIT)
    assert manifest["details"]["commit"] == COMMIT and manifest["source"] == "hub:org/micro"
    steps.calibration(config, "m", "standard", str(tmp_path / "base"), str(tmp_path / "calib.safetensors"),
                      sources=[str(tmp_path / "cmmlu.json")])
    built = CalibrationSet.load(tmp_path / "calib.safetensors")
    assert built.num_samples == 12 and built.sources == ["cmmlu"] * 12
    assert built.meta["hub_sources"] == {"cmmlu": {"repo": "haonan-li/cmmlu", "commit": COMMIT}}
