"""The ``kdp-bench`` command: the console script pyproject.toml declares, and each subcommand in a fresh process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from kdp.io import write_json
from kdp.provenance import provenance
from kdp.registry import BUILTIN_METHODS
from tests.test_workflow import REPO

tomllib = pytest.importorskip("tomllib")


def kdp_bench(*args: str) -> subprocess.CompletedProcess:
    """What the installed ``kdp-bench`` script runs (``kdp.cli:main``), on this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "kdp.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_declared_console_script_is_the_cli():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"kdp-bench": "kdp.cli:main"}
    done = kdp_bench("--help")
    assert done.returncode == 0, done.stderr
    for command in ("methods", "variants", "show", "audit", "provenance"):
        assert command in done.stdout


def test_methods_lists_every_builtin_with_its_inputs_and_class():
    done = kdp_bench("methods")
    assert done.returncode == 0, done.stderr
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in done.stdout.splitlines()}
    assert set(rows) == set(BUILTIN_METHODS)
    assert rows["kdp"] == ["block_fits, blocks, calibration, hidden_states, teacher", "kdp.methods.kdp:KDP"]
    assert rows["dense"] == ["the model only", "kdp.methods.dense:Dense"]


def test_variants_and_a_resolved_variant_of_the_paper_profile():
    done = kdp_bench("variants", "--config", "config/paper.yaml")
    assert done.returncode == 0, done.stderr
    assert "slicegpt_rft\tslicegpt\tSliceGPT†" in done.stdout.splitlines()

    done = kdp_bench("show", "kdp_peft", "--model", "opt-2.7b", "--config", "config/paper.yaml")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["method"] == "kdp" and shown["model"] == "opt-2.7b" and shown["target_ratio"] == 0.25
    assert shown["params"]["finetune"] is True and shown["params"]["reuse_fits_of"] == "kdp"
    assert shown["params"]["peft"]["kd_weight"] == 0.5  # a spec default, under the config's values
    assert shown["runs"] == {"kdp_peft": 0}  # the paper profile: one seed

    # the embedded default: seeds [0, 1] for a stochastic variant, one build of a deterministic one
    assert json.loads(kdp_bench("show", "kdp_peft").stdout)["runs"] == {"kdp_peft": 0, "kdp_peft~s1": 1}
    assert json.loads(kdp_bench("show", "slicegpt").stdout)["runs"] == {"slicegpt": 0}


@pytest.mark.parametrize("args,message", [
    (["show", "kdpp"], "kdp-bench: variant (config config/config.yaml): 'kdpp' is not allowed; allowed: dense,"),
    (["show", "kdp", "--model", "gpt2"], "--model (config config/config.yaml): 'gpt2' is not allowed; allowed:"),
    (["variants", "--config", "nowhere.yaml"], "kdp-bench: nowhere.yaml: cannot read the config"),
    (["provenance", "README.md"], "provenance: README.md is not a result file kdp-bench reads"),
])
def test_bad_input_is_one_line(args, message):
    done = kdp_bench(*args)
    assert done.returncode == 1
    assert message in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


def test_audit_prints_the_claims_audit_as_csv():
    done = kdp_bench("audit")
    assert done.returncode == 0, done.stderr
    audit = pd.read_csv(io.StringIO(done.stdout))
    assert {"claim_id", "claimed", "recomputed", "verdict"} <= set(audit.columns) and len(audit) > 100
    counts = audit["verdict"].value_counts()
    assert done.stderr.startswith(f"kdp-bench audit: {len(audit)} checks; ")
    assert f"{counts['inconsistent']} inconsistent" in done.stderr


def test_provenance_of_a_json_result_a_variant_directory_and_a_table(tmp_path):
    record = provenance({"seed": 3}, 3, model="m", variant="v")
    write_json(tmp_path / "eval.json", {"scores": {}, "provenance": record})
    (tmp_path / "variant").mkdir()
    write_json(tmp_path / "variant" / "kdp_variant.json", {"ratio": 0.25, "provenance": record})
    expected = [f"{key}: {json.dumps(value, sort_keys=True)}" for key, value in sorted(record.items())]
    for path in (tmp_path / "eval.json", tmp_path / "variant"):
        done = kdp_bench("provenance", str(path))
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == expected

    (tmp_path / "table1.csv").write_text('# git_commit: "abc"\n# seed: 3\nmodel,value\nm,1\n')
    done = kdp_bench("provenance", str(tmp_path / "table1.csv"))
    assert done.stdout.splitlines() == ['git_commit: "abc"', "seed: 3"]
