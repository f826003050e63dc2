"""GPU smoke: the embedded DAG's OPT-KJV part through Table 1 on CUDA in bf16, and the measured speed-up of a
real-width LLaMA-2-7B stack with a KDP fold replacing two of its layers. No hub, no network.

    bash bench/gpu_smoke.sh                         # on the GPU machine (installs .whl/, see that script)
    python bench/gpu_smoke.py --device cpu --tiny   # here: the same code on micro sizes

Part 1 writes a config that is config/config.yaml cut to OPT-KJV (the shipped artifact, no pretraining), with
``runtime.dtype: bfloat16`` and only Table 1 (its 13 rows: dense, SLEB, ShortGPT, LaCo, Streamline(+†),
LLM-Pruner(+†), SliceGPT(+†), w/o Kernel, KDP, KDP+PEFT), and runs Snakemake on it with the jobs on the device
(several GPU jobs at once: one H200 holds them all). ``--tiny`` puts Micro-OPT (width 32) in OPT-KJV's place and
scores 6 items per benchmark: the same 13 rows through the same rules.

Part 2 builds LLaMA-2-7B from resources/model_configs (all 32 layers at full width; ``--tiny``: 4 layers of width
256) with seeded random weights on the device, captures the calibration states of random token ids, fits one
KDP block of two layers with the registered method's own ``fit_block`` (paper's 2m = 1024, a couple of epochs:
only the fold's shape matters for speed), prunes it in, and times dense against pruned in one process
(`kdp.speed.measure`: alternating repeats, medians, latency at batch 1 and throughput at batch 4, 128 tokens),
next to the analytic FLOPs speed-up of the same two models (`kdp.speed.analytic_counts`).

Everything lands in ``--out``: summary.json (both parts), table1.csv and table1.tex, and the Snakemake log.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dag_config(tiny: bool, dtype: str) -> dict:
    """The embedded config cut to OPT-KJV and Table 1; ``tiny``: Micro-OPT (the CI micro model, width 32) in its
    place with the CI micro DAG's evaluation (three benchmarks of 6 items), so every Table 1 method runs in minutes
    on a CPU."""
    import yaml

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    model = "micro-opt" if tiny else "opt-kjv"
    config["models"] = {model: {"source": f"embedded:{model}", "label": model,
                                **({} if tiny else {"overrides": config["models"]["opt-kjv"]["overrides"]})}}
    if tiny:  # Micro-OPT has 64 positions and a character vocabulary: the CI micro DAG's evaluation fits it
        micro = yaml.safe_load((ROOT / "tests" / "integration" / "config" / "config.yaml").read_text())
        config["evaluation"] = {**config["evaluation"], **micro["evaluation"]}
    config["runtime"] = {**config.get("runtime", {}), "dtype": dtype}
    config["tables"] = {"table1": {**config["tables"]["table1"], "models": [model]}}
    config["variants"] = {name: config["variants"][name] for name in config["tables"]["table1"]["variants"]}
    config["figures"] = {}
    return config


def run_dag(out: Path, work: Path, device: str, tiny: bool, dtype: str) -> dict:
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    (work / "smoke.yaml").write_text(yaml.safe_dump(dag_config(tiny, dtype), sort_keys=False))
    gpu_jobs = "4" if device == "cuda" else "1"
    env = {**os.environ, "KDP_DEVICE": device, "PYTHONPATH": os.pathsep.join(
        filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
               "--configfile", str(work / "smoke.yaml"), "--cores", str(os.cpu_count()), "--resources",
               f"gpu={gpu_jobs}", "--scheduler", "greedy", "--workflow-profile", "none", "--rerun-incomplete", "--keep-going",
               "results/table1.csv", "results/table1.tex"]
    started = time.perf_counter()
    with open(out / "snakemake.log", "w") as log:
        done = subprocess.run(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    result = {"returncode": done.returncode, "seconds": round(seconds, 1), "device": device, "dtype": dtype,
              "model": next(iter(dag_config(tiny, dtype)["models"]))}
    for name in ("table1.csv", "table1.tex"):
        if (work / "results" / name).is_file():
            shutil.copy(work / "results" / name, out / name)
    result["jobs"] = _job_seconds(work / "benchmarks")
    result["failed"] = _failed_jobs((out / "snakemake.log").read_text(), work)
    if done.returncode == 0:
        result["table1_rows"] = _table_rows(work / "results" / "table1.csv")
    return result


def _failed_jobs(log: str, work: Path) -> list[dict]:
    """Each failed job of a --keep-going run: rule, output, and the last lines of its log (the error)."""
    import re

    failed = []
    for match in re.finditer(r"^Error in rule (\w+):\n(.*?)(?=\n\S|\Z)", log, re.MULTILINE | re.DOTALL):
        fields = dict(re.findall(r"^\s+(\w+): (.*)$", match.group(2), re.MULTILINE))
        job_log = work / fields.get("log", "").split(" ")[0]
        tail = job_log.read_text().splitlines()[-3:] if job_log.is_file() else []
        failed.append({"rule": match.group(1), "output": fields.get("output"), "log_tail": tail})
    return failed


def _job_seconds(folder: Path) -> dict[str, float]:
    """Wall seconds per rule, summed over the rule's jobs (Snakemake's benchmark files)."""
    totals: dict[str, float] = {}
    for path in folder.rglob("*.tsv"):
        rule = path.relative_to(folder).parts[0]
        lines = path.read_text().splitlines()
        if len(lines) > 1:
            totals[rule] = round(totals.get(rule, 0.0) + float(lines[1].split("\t")[0]), 1)
    return totals


def _table_rows(csv: Path) -> dict[str, dict]:
    """{variant: {ratio, Avg, RP}} from the tidy Table 1 CSV."""
    import pandas as pd

    frame = pd.read_csv(csv, comment="#")
    rows = frame[frame["kind"] == "summary"]
    return {variant: {"ratio": round(float(group["ratio"].iloc[0]), 4),
                      **{b: round(float(v), 2) for b, v in zip(group["benchmark"], group["value"])}}
            for variant, group in rows.groupby("variant", sort=False)}


def llama_stack(tiny: bool, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    from kdp.flops import load_model_config

    config = load_model_config("llama-2-7b")
    if tiny:
        config.hidden_size, config.intermediate_size, config.num_attention_heads = 256, 688, 4
        config.num_key_value_heads, config.num_hidden_layers, config.vocab_size = 4, 4, 1000
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def run_speed(work: Path, device: str, tiny: bool, dtype: str) -> dict:
    import torch

    from kdp.adapters import adapter_for
    from kdp.calibration import CalibrationSet
    from kdp.capture import HiddenStates, capture
    from kdp.methods.kdp import KDP
    from kdp.registry import PruneContext
    from kdp.selection import Block
    from kdp.speed import SpeedSettings, analytic_counts, device_description, measure

    started = time.perf_counter()
    torch_device, torch_dtype = torch.device(device), getattr(torch, dtype)
    model = llama_stack(tiny, torch_device, torch_dtype)
    layers = model.config.num_hidden_layers
    block = Block(layers // 2 - 1, layers // 2)
    samples, length = (16, 32) if tiny else (64, 128)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (samples, length), generator=generator)
    calibration = CalibrationSet(ids, torch.ones_like(ids), ["random"] * samples, {})
    adapter = adapter_for(model)
    capture(adapter, calibration, work / "hidden", {"smoke": "llama-2-7b"}, "float16", 8, device=torch_device)
    fit = {"rff_dim": 64 if tiny else 1024, "kernel_max_epochs": 2, "inverse_epochs": 2}
    params = {**KDP.defaults, "fit": fit}
    method = KDP(params)
    ctx = PruneContext(model=model, adapter=adapter, tokenizer=None, params=params, target_ratio=0.0, seed=0,
                       device=torch_device, model_name="llama-2-7b", hidden=HiddenStates.open(work / "hidden"),
                       blocks=[block])
    fit_dir = work / "fit" / block.tag
    fit_dir.mkdir(parents=True, exist_ok=True)
    fitted = method.fit_block(ctx, block, fit_dir)
    (fit_dir / "record.json").write_text(json.dumps(fitted, default=str))
    dense = copy.deepcopy(model)
    ctx.block_fits = {block: fit_dir}
    method.prune(ctx)
    prepared = time.perf_counter() - started
    counts = {"dense": analytic_counts(dense), "variant": analytic_counts(model)}
    settings = SpeedSettings(repeats=10 if device == "cuda" else 3, warmup=3 if device == "cuda" else 1)
    timing = measure(dense, model, model.config.vocab_size, settings, seed=0)
    return {
        "model": f"llama-2-7b config, {layers} layers" + (" (tiny: width 256)" if tiny else " at full width"),
        "replaced": [block.first, block.last], "fold_rff_dim": fit["rff_dim"], "dtype": dtype,
        "device": device_description(torch_device), "seconds_to_prepare": round(prepared, 1),
        "analytic": {**counts, "flops_speedup": counts["dense"]["flops"] / counts["variant"]["flops"]},
        "measured": {setting: {k: v for k, v in values.items() if k in ("batch", "seq_len", "speedup")}
                     | {"dense_median_s": values["dense"]["median_s"],
                        "variant_median_s": values["variant"]["median_s"]}
                     for setting, values in timing.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "smoke-out")))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--tiny", action="store_true", help="micro sizes, for a CPU check of this script")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile_dir())
    summary = {"argv": sys.argv[1:]}
    print("part 1: embedded DAG through Table 1", flush=True)
    summary["dag"] = run_dag(args.out, work / "dag", args.device, args.tiny, args.dtype)
    print(json.dumps(summary["dag"], indent=1)[:3000], flush=True)
    print("part 2: LLaMA-2-7B stack, two layers replaced by a KDP fold", flush=True)
    summary["speed"] = run_speed(work / "speed", args.device, args.tiny, args.dtype)
    print(json.dumps(summary["speed"], indent=1), flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0 if summary["dag"]["returncode"] == 0 else 1


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="kdp-smoke-")


if __name__ == "__main__":
    raise SystemExit(main())
