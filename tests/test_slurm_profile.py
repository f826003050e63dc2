"""The paper profile planned for a SLURM cluster: the executor plugin resolves, GPU rules ask for GPUs, and memory
and time follow each model's parameter count."""

from __future__ import annotations

import re
import shutil

import yaml

from tests.test_workflow import REPO, snakemake

GPU_RULES = {"capture_hidden_states", "prune", "evaluate"}


def _jobs(text: str) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """(rule, wildcards, resources) of every job in a dry-run listing."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", text):
        head = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block)
        if not head:
            continue
        fields = {}
        for name in ("wildcards", "resources"):
            found = re.search(rf"^\s+{name}: (.*)$", block, re.MULTILINE)
            fields[name] = dict(p.split("=", 1) for p in found.group(1).split(", ")) if found else {}
        jobs.append((head.group(1), fields["wildcards"], fields["resources"]))
    return jobs


def test_paper_profile_plans_on_the_slurm_executor():
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert shutil.which("sbatch") is None  # planning needs no cluster: nothing is submitted in a dry run
    result = snakemake("-n", "--workflow-profile", "profiles/slurm", "--configfile=config/paper.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = _jobs(result.stdout + result.stderr)
    assert {rule for rule, _, _ in jobs} >= GPU_RULES | {"base_model", "calibration", "similarity", "table"}

    for rule, _, resources in jobs:
        assert rule not in GPU_RULES or resources.get("gpu") == "1", (rule, resources)
        if "gpu" in resources:  # every job that asks for a GPU lands on a partition that has them
            assert resources.get("slurm_partition") == "gpu", (rule, resources)
        elif "slurm_partition" in resources:  # local rules run on the submit host and carry no partition
            assert resources["slurm_partition"] == "cpu", (rule, resources)

    prune = {w["model"]: r for rule, w, r in jobs if rule == "prune" and w["variant"] == "dense"}
    order = ["opt-2.7b", "llama-2-7b", "llama-3-8b", "llama-2-13b"]  # increasing parameter count
    for field in ("mem_mb", "runtime"):
        values = [int(prune[model][field]) for model in order]
        assert values == sorted(values) and len(set(values)) == len(values), (field, values)
    # 13B weights in bf16 are 24 GiB: the memory asked for must hold them more than once (model + teacher).
    assert int(prune["llama-2-13b"]["mem_mb"]) > 2 * 13.0e9 * 2 / 2**20
