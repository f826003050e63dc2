"""Adding a method is one module with one registered class plus one config entry: a method defined only in a test
fixture (tests/fixtures/plugin_method/kdp_plugin_example.py) is built, evaluated and tabulated by snakemake."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pandas as pd
from transformers import AutoModelForCausalLM

from tests.test_workflow import REPO, snakemake

FIXTURE = REPO / "tests" / "fixtures" / "plugin_method"


def test_a_method_from_an_outside_module_is_built_evaluated_and_tabulated(tmp_path, monkeypatch):
    assert importlib.util.find_spec("kdp_plugin_example") is None  # not part of kdp-bench: only PYTHONPATH finds it
    workdir = tmp_path / "plugin"
    (workdir / "config").mkdir(parents=True)
    shutil.copy(FIXTURE / "config.yaml", workdir / "config" / "config.yaml")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FIXTURE), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # Two one-thread jobs at a time: the dense and the new variant are pruned and evaluated side by side.
    result = snakemake("--cores", "2", "--resources", "gpu=2", "--set-threads", "prune=1", "evaluate=1",
                       "--directory", str(workdir), f"--configfile={workdir / 'config' / 'config.yaml'}",
                       "results/table1.csv", timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]

    record = json.loads((workdir / "results/models/micro-llama/top_cut/kdp_variant.json").read_text())
    assert record["method"] == "drop_last_layers" and record["ratio"] >= 0.25
    dense_layers = record["num_layers"] + len(record["layers_removed"])
    assert record["layers_removed"] == list(range(record["num_layers"], dense_layers))  # the top of the stack
    reloaded = AutoModelForCausalLM.from_pretrained(workdir / "results/models/micro-llama/top_cut")
    assert reloaded.config.num_hidden_layers == record["num_layers"]

    evaluation = json.loads((workdir / "results/eval/micro-llama/top_cut.json").read_text())
    assert evaluation["scores"]["kjv_cloze"]["n"] == 4
    table = pd.read_csv(workdir / "results" / "table1.csv", comment="#")
    row = table[(table["variant"] == "top_cut") & (table["benchmark"] == "kjv_cloze")].iloc[0]
    assert row["label"] == "Top cut" and row["ratio"] == round(record["ratio"], 6)
    assert set(table["variant"]) == {"dense", "top_cut"}
