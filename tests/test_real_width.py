"""Real widths without the hub (bench/real_width.py): LLM-Pruner's ratio at each LLaMA config's real depth,
and, slow, the full code path on a LLaMA-3 and an OPT config at full width with three decoder layers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.maintainer_scripts import BENCH, load_script
from tests.test_workflow import REPO

real_width = load_script("real_width", BENCH)

# The architecture-sensitive methods (grouped-query heads, folds, reload through custom code); every registered
# method runs in the benchmark itself (docs/cluster.md has its numbers).
CI_VARIANTS = ["dense", "kdp", "llm_pruner"]


@pytest.mark.parametrize("key", ["llama-2-7b", "llama-2-13b", "llama-3-8b", "llama-3.1-8b"])
def test_llm_pruner_lands_within_two_points_of_the_target_at_the_real_depth(key):
    result = real_width.llm_pruner_full_depth(key)
    assert result["layers"] in (32, 40)
    assert 0 < result["kv_heads_kept"] < result["kv_heads"]  # whole key/value heads went
    assert abs(result["achieved"] - result["target"]) <= 0.02, result


@pytest.mark.slow
@pytest.mark.parametrize("key", ["llama-3-8b", "opt-2.7b"])
def test_full_width_model_passes_the_real_code_path(key, tmp_path):
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(BENCH / "real_width.py"), key, "--json", str(out),
                           "--variants", *CI_VARIANTS], capture_output=True, text=True, timeout=3600, cwd=REPO, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (report,) = json.loads(out.read_text())
    assert list(report["variants"]) == CI_VARIANTS
    for variant, row in report["variants"].items():
        assert row["problems"] == [] and row["max_logit_difference"] <= 1e-4 * max(row["logit_scale"], 1.0)
        assert row["analytic_macs"] > 0 and (variant == "dense") == (row["ratio"] == 0)
    assert report["variants"]["dense"]["config_macs"] == report["variants"]["dense"]["measured_macs"]
    assert report["variants"]["kdp"]["class"].startswith("KdpBench")
