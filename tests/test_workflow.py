"""The DAG itself: lint, dry runs of both profiles, bad configs, and the micro DAG end to end."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.latex import assert_compilable

REPO = Path(__file__).resolve().parent.parent
INTEGRATION = REPO / "tests" / "integration"
GOLDEN = REPO / "tests" / "fixtures" / "golden" / "micro_dag"


def snakemake(*args: str, cwd: Path = REPO, timeout: int = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "good condition" in result.stdout + result.stderr


def test_paper_profile_plans_every_model_and_table():
    result = snakemake("-n", "--configfile=config/paper.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    for model in ("llama-2-7b", "llama-2-13b", "llama-3-8b", "llama-3.1-8b", "opt-2.7b", "opt-6.7b"):
        assert f"results/models/{model}/base" in out
    for table in ("table1", "table2", "table6", "table7"):
        assert f"results/{table}.tex" in out


def test_dry_run_plans_a_stochastic_variant_per_seed_and_a_deterministic_one_once():
    result = snakemake("-n", "results/table1.tex")  # the embedded default: seeds [0, 1]
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    for model in ("smollm2-135m", "opt-kjv"):
        assert f"results/eval/{model}/kdp~s1.json" in out and f"results/models/{model}/kdp~s1" in out
        assert f"results/eval/{model}/shortgpt.json" in out and "shortgpt~s" not in out


def test_values_given_with_config_are_typed_as_in_a_config_file():
    # Snakemake alone reads `seeds=[0,2]` as ['0', '2'], which the schema refuses.
    result = snakemake("-n", "results/table1.tex", "--config", "seeds=[0,2]")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "results/eval/opt-kjv/kdp~s2.json" in out and "kdp~s1" not in out


@pytest.mark.parametrize("override,message", [
    ("target_ratio=1.5", "config key target_ratio: 1.5 is out of range; allowed: > 0 and < 1"),
    ("target_ratio=0", "config key target_ratio: 0 is out of range"),
])
def test_bad_config_is_one_clear_line(override, message):
    result = snakemake("-n", "--config", override)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("yaml_text,message", [
    ("variants: {x: {method: nope}}", "config key variants.x.method: method 'nope' is unknown; allowed: dense"),
    ("selection: {k_max: 0}", "config key selection.k_max: 0 is out of range; allowed: >= 1"),
    ("models: {m: {source: 'embedded:bert'}}", "config key models.m.source: embedded model 'bert' is unknown"),
    ("variants: {kdp: {method: kdp, fit: {rff_dimm: 512}, label: Ours}}",
     "variants.kdp.fit.rff_dimm: unknown key of 'fit' for method 'kdp'; allowed: cos_weight_max_exponent"),
    ("variants: {slicegpt_rft: {method: slicegpt, finetune: true, recovery: {lr: '2e-4'}, label: x}}",
     "variants.slicegpt_rft.recovery.lr: '2e-4' is not allowed; allowed: a number"),
])
def test_bad_config_file_is_one_clear_line(tmp_path, yaml_text, message):
    # A --configfile replaces the embedded config whole, so the bad file is the embedded one with one bad entry.
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, value in yaml.safe_load(yaml_text).items():
        config[key] = {**config[key], **value}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake("-n", f"--configfile={bad}")
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory) -> Path:
    """The micro DAG of tests/integration, run to the end once for this module."""
    workdir = tmp_path_factory.mktemp("micro")
    shutil.copytree(INTEGRATION / "config", workdir / "config")
    result = snakemake("--cores", "2", "--directory", str(workdir), f"--configfile={workdir / 'config' / 'config.yaml'}",
                       timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


@pytest.mark.slow
def test_micro_dag_runs_end_to_end(micro_run):
    workdir = micro_run
    table1 = pd.read_csv(workdir / "results" / "table1.csv", comment="#")
    rows = table1[table1["kind"] == "summary"]
    assert set(rows["variant"]) == {"dense", "wo_kernel", "kdp", "kdp_peft"}
    ratios = table1.groupby(["model", "variant"])["ratio"].first()
    assert all(ratios.loc[(m, "dense")] == 0 for m in ("micro-llama", "micro-opt"))
    assert all(ratios.loc[(m, v)] > 0.2 for m in ("micro-llama", "micro-opt") for v in ("wo_kernel", "kdp"))
    # intervals from the evaluations' items (docs/statistics.md): every score cell, Avg and RP, and each row's
    # paired Avg difference from w/o Kernel and from the best baseline
    scored = table1[table1["kind"].isin(["accuracy", "summary"])]
    assert scored[["ci_low", "ci_high"]].notna().all().all()
    assert ((scored["ci_low"] <= scored["value"] + 1e-9) & (scored["value"] <= scored["ci_high"] + 1e-9)).all()
    tests = table1[table1["kind"] == "paired_difference"]
    assert set(tests["benchmark"]) == {"Avg - w/o Kernel", "Avg - best baseline"} and tests["p_holm"].notna().all()
    assert r"{\scriptsize$\pm$" in (workdir / "results" / "table1.tex").read_text()
    # seeds [0, 1]: KDP's rows average two builds whose folds differ; deterministic rows are built once
    built = table1[table1["kind"] != "paired_difference"]
    seeds = built.groupby(["variant", "benchmark"])[["seeds", "seed_sd"]].first()
    assert (seeds.loc["kdp", "seeds"] == 2).all() and seeds.loc[("kdp", "Avg"), "seed_sd"] >= 0
    assert (seeds.loc["wo_kernel", "seeds"] == 1).all() and seeds.loc["wo_kernel", "seed_sd"].isna().all()
    assert r"{\scriptsize$\sigma$" in (workdir / "results" / "table1.tex").read_text()
    results = workdir / "results"
    assert json.loads((results / "eval" / "micro-llama" / "kdp~s1.json").read_text())["seed"] == 1
    assert not (results / "models" / "micro-llama" / "wo_kernel~s1").exists()
    block = sorted(path.name for path in (results / "kdp" / "micro-llama" / "kdp").glob("block_*"))[0]
    folds = [(results / "kdp" / "micro-llama" / run / block / "fold.safetensors").read_bytes() for run in ("kdp", "kdp~s1")]
    assert folds[0] != folds[1]
    for name in ("table2", "table3"):
        cells = pd.read_csv(workdir / "results" / f"{name}.csv", comment="#")
        assert cells.loc[cells["kind"] != "paired_difference", ["ci_low", "ci_high"]].notna().all().all(), name
    configured = yaml.safe_load((workdir / "config" / "config.yaml").read_text())["tables"]
    for name in [*configured, "audit"]:
        assert_compilable((workdir / "results" / f"{name}.tex").read_text())


# Where the golden files were rendered (`_machine`): byte identity holds only on the same CPU and packages.
MACHINE = "MACHINE.txt"
# Tables whose cells are measured wall-clock times, which no two runs share.
TIMED_TABLES = {"table10"}
# Provenance lines that name the checkout and the installed packages rather than the computation.
VOLATILE_LINES = ("# git_commit:", "% git_commit:", "# packages:", "% packages:")


def _rendered(path: Path) -> str:
    return "".join(line for line in path.read_text().splitlines(keepends=True) if not line.startswith(VOLATILE_LINES))


def _machine() -> str:
    """What the golden files' floats depend on besides the code: the packages and the CPU's instruction set (the
    micro models are trained, so a different kernel's rounding moves their tables)."""
    import hashlib

    import torch

    from kdp.provenance import package_versions

    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    versions = {name: version for name, version in package_versions().items() if name != "kdp-bench"}
    return (f"packages: {json.dumps(versions, sort_keys=True)}\ncpu capability: {torch.backends.cpu.get_cpu_capability()}"
            f"\ncpu flags sha256: {hashlib.sha256(flags.encode()).hexdigest()[:16]}\n")


@pytest.mark.slow
def test_micro_dag_tables_are_byte_identical_to_the_golden_files(micro_run):
    """A pure speed or design change leaves every rendered table as it was (issues 18 and 19). The golden files are
    the micro DAG's tables on this CPU wheel, less the commit and package lines; a change that is meant to move a
    number regenerates them with ``KDP_UPDATE_GOLDEN=1 python -m pytest tests/test_workflow.py -k golden`` and
    says why in its commit."""
    produced = sorted(p for p in (micro_run / "results").glob("*.*") if p.suffix in (".csv", ".tex")
                      and p.stem not in TIMED_TABLES)
    assert {p.stem for p in produced} >= {"table1", "table2", "table3", "table12", "audit"}
    if os.environ.get("KDP_UPDATE_GOLDEN") == "1":
        shutil.rmtree(GOLDEN, ignore_errors=True)
        GOLDEN.mkdir(parents=True)
        for path in produced:
            (GOLDEN / path.name).write_text(_rendered(path))
        (GOLDEN / MACHINE).write_text(_machine())
    assert sorted(p.name for p in GOLDEN.iterdir() if p.name != MACHINE) == [p.name for p in produced]
    differing = [p.name for p in produced if _rendered(p) != (GOLDEN / p.name).read_text()]
    recorded, here = (GOLDEN / MACHINE).read_text(), _machine()
    elsewhere = "" if recorded == here else (
        f"; the golden files were rendered on another machine or package set ({recorded!r}, here {here!r}): "
        "regenerate them at the base commit here, then compare the change")
    assert not differing, f"rendered differently from tests/fixtures/golden/micro_dag: {differing}{elsewhere}"


def _rows_by_variant(path: Path) -> dict[str, list[str]]:
    """The table's raw CSV lines (less provenance comments and paired tests), by variant, byte for byte."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    header = next(csv.reader([lines[0]]))
    variant, kind = header.index("variant"), header.index("kind")
    rows: dict[str, list[str]] = {}
    for line in lines[1:]:
        fields = next(csv.reader([line]))  # labels may be quoted
        if fields[kind] != "paired_difference":
            rows.setdefault(fields[variant], []).append(line)
    return rows


@pytest.mark.slow
def test_another_seed_rebuilds_only_the_seeded_rows(micro_run, tmp_path):
    """Issue 14: re-running with another seed changes the seed-dependent rows; the deterministic ones are neither
    rebuilt nor changed by a byte."""
    workdir = tmp_path / "micro"
    shutil.copytree(micro_run, workdir, symlinks=True)  # mtimes and Snakemake's records kept
    results = workdir / "results"
    tables = [results / f"{name}.csv" for name in ("table1", "table2")]
    before = [_rows_by_variant(path) for path in tables]
    deterministic = [results / "eval" / model / f"{variant}.json"
                     for model in ("micro-llama", "micro-opt") for variant in ("dense", "wo_kernel")]
    stamps = [path.stat().st_mtime_ns for path in deterministic]
    result = snakemake("--cores", "2", "--directory", str(workdir), f"--configfile={workdir / 'config' / 'config.yaml'}",
                       "results/table1.tex", "results/table2.tex", "--config", "seeds=[0,2]", timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert [path.stat().st_mtime_ns for path in deterministic] == stamps
    assert json.loads((results / "eval" / "micro-llama" / "kdp~s2.json").read_text())["seed"] == 2
    after = [_rows_by_variant(path) for path in tables]
    for old, new in zip(before, after):
        assert {v: new[v] for v in ("dense", "wo_kernel")} == {v: old[v] for v in ("dense", "wo_kernel")}
    # KDP's second build is now seed 2's: its KJV perplexity (table2) and spread move
    assert after[1]["kdp"] != before[1]["kdp"] and after[1]["kdp_peft"] != before[1]["kdp_peft"]
