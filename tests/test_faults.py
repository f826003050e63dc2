"""Fault injection (issue 8): bad input, killed jobs, interrupted runs, corrupt caches, determinism.

The micro DAG of tests/fixtures/faults/micro.yaml runs once per module (`baseline`); every scenario works on a
private copy of that finished run (results, logs and Snakemake's own records, mtimes kept), so only the resume test
pays for a second full run, and that independent run doubles as the determinism check. Bad input goes through the
real entry points: Snakemake on a config, or a step function under `kdp.steps.run`, which is what each rule's script
calls.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml

from kdp import config as kdp_config
from kdp import steps
from kdp.io import sha256_file

REPO = Path(__file__).resolve().parent.parent
MICRO = REPO / "tests" / "fixtures" / "faults" / "micro.yaml"
TABLE = "results/table1.csv"
MODEL = "micro-llama"
HIDDEN = f"results/hidden/{MODEL}/standard"
SIMILARITY = f"results/similarity/{MODEL}/standard"


# -- running the micro DAG ---------------------------------------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("KDP_PAUSE_BEFORE_RENAME", None)
    return {**env, **extra}


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "2",
            "--directory", str(workdir), f"--configfile={workdir / 'micro.yaml'}", *args]


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(snakemake_command(workdir, *args), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def new_workdir(path: Path) -> Path:
    path.mkdir(parents=True)
    shutil.copy(MICRO, path / "micro.yaml")
    return path


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"snakemake exited ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def press_ctrl_c(process: subprocess.Popen, timeout: float = 300) -> int:
    """SIGINT to the whole foreground group, as Ctrl-C in a terminal sends it."""
    os.killpg(process.pid, signal.SIGINT)
    return process.wait(timeout=timeout)


def _interruptible() -> None:
    # A shell starts background commands with SIGINT ignored and children inherit that, so a suite launched with
    # `&` would see Snakemake shrug off Ctrl-C; a terminal user's Snakemake has the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def leftovers(workdir: Path) -> list[Path]:
    """Temporaries of atomic writes (`kdp.io.atomic_path`) still lying around."""
    return sorted(p for p in (workdir / "results").rglob(".*.tmp-*"))


def results_state(workdir: Path, skip: str | None = None) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file under results/ (except below ``skip``)."""
    files = (p for p in sorted((workdir / "results").rglob("*")) if p.is_file())
    return {str(p.relative_to(workdir)): (sha256_file(p), p.stat().st_mtime_ns) for p in files
            if skip is None or not str(p.relative_to(workdir)).startswith(skip)}


def assert_same_table(produced: Path, expected: Path) -> None:
    """Byte for byte. The one line allowed to differ is the git commit, and only when the checkout itself changed
    between the two runs (other work committed in a shared tree meanwhile); the provenance then says so truly."""
    if produced.read_bytes() == expected.read_bytes():
        return
    ours, theirs = produced.read_text().splitlines(), expected.read_text().splitlines()
    differing = [(a, b) for a, b in zip(ours, theirs, strict=True) if a != b]
    assert all(a.startswith(("# git_commit:", "% git_commit:")) for a, _ in differing), differing[:3]
    pytest.skip(f"the checkout changed between the two runs ({differing[0]}); every other byte is identical")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """One uninterrupted run of the micro DAG up to results/table1.csv."""
    workdir = new_workdir(tmp_path_factory.mktemp("faults") / "baseline")
    result = snakemake(workdir, TABLE)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


@pytest.fixture
def scenario(baseline: Path, tmp_path: Path) -> Path:
    """A private copy of the finished baseline run."""
    return Path(shutil.copytree(baseline, tmp_path / "run", symlinks=True))


# -- 1. bad input: one line, non-zero exit, traceback only in the log, earlier results untouched ------------------
def micro_config(**edits: object) -> dict:
    """The fixture config with ``a.b.c=value`` edits (keys split on '__'), validated as the workflow does."""
    config = yaml.safe_load(MICRO.read_text())
    for dotted, value in edits.items():
        *parents, leaf = dotted.split("__")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return kdp_config.validate(config)


def run_failing_step(step, workdir: Path, capsys, **kwargs) -> str:
    """Run ``step`` as a rule's script does; it must stop with one line on stderr and its traceback in the log."""
    log = workdir / "logs" / "fault" / f"{step.__name__}.log"
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        steps.run(step, str(log), 1, **kwargs)
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("kdp-bench: ") and err.count("\n") == 1, err
    assert "Traceback" in log.read_text()
    return err.strip()


def assert_message(line: str, *parts: str, advice: tuple[str, ...] = ("allowed", "supported")) -> None:
    """Every part is named, and so is what is allowed (or, for damaged files, what to do)."""
    for part in parts:
        assert part in line, f"{part!r} not in: {line}"
    assert any(word in line for word in advice), line


@pytest.fixture
def offline_hub(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once at import; without it an unknown id retries the network for ~25 s.
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _bert_directory(tmp_path: Path) -> str:
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "bert")
    return f"path:{tmp_path / 'bert'}"


@pytest.mark.parametrize("source,parts", [
    (lambda tmp: "hub:no-such-org/no-such-model", ["models.micro-llama.source", "'hub:no-such-org/no-such-model'"]),
    (lambda tmp: f"path:{tmp}/nowhere", ["models.micro-llama.source", "nowhere", "not a model directory"]),
    (_bert_directory, ["models.micro-llama.source", "model_type 'bert' has no adapter", "llama", "opt"]),
], ids=["unknown-hub-id", "unknown-path", "unsupported-architecture"])
def test_bad_model_source(scenario, tmp_path, capsys, offline_hub, source, parts):
    before = results_state(scenario)
    config = micro_config()
    config["models"] = {MODEL: {"source": source(tmp_path)}}
    line = run_failing_step(steps.base_model, scenario, capsys, config=config, model=MODEL,
                            out_dir=str(scenario / f"results/models/{MODEL}/base"))
    assert_message(line, *parts)
    assert results_state(scenario) == before


def test_tokenizer_larger_than_the_embedding(scenario, tmp_path, capsys):
    from transformers import AutoTokenizer

    base = scenario / f"results/models/{MODEL}/base"
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_tokens([f"extra_token_{i}" for i in range(8)])
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    config = micro_config()
    config["models"][MODEL] = {"source": f"path:{base}", "tokenizer": str(tmp_path / "tokenizer")}
    steps.run(steps.base_model, str(tmp_path / "base.log"), 1, config=config, model=MODEL,
              out_dir=str(tmp_path / "base"))
    before = results_state(scenario)
    line = run_failing_step(steps.calibration, scenario, capsys, config=config, model=MODEL, name="standard",
                            base_dir=str(tmp_path / "base"),
                            out_path=str(scenario / f"results/calib/{MODEL}/standard.safetensors"))
    assert_message(line, f"config key models.{MODEL}.tokenizer", str(tmp_path / "tokenizer"),
                   f"has {len(tokenizer)} tokens", "embedding has only")
    assert results_state(scenario) == before


@pytest.mark.parametrize("edits,parts", [
    ({"variants__kdp__target_ratio": 0.95}, ["config key variants.kdp.target_ratio", "0.95 cannot be met"]),
    ({"target_ratio": 0.9}, ["config key target_ratio", "0.9 cannot be met"]),
    ({"selection": {"k_max": 11}}, ["config key selection.k_max", "11 is larger than the eligible span of 10 layers",
                                    "allowed: 1..10"]),
    ({"methods__kdp__selection": {"k_max": 20}}, ["config key methods.kdp.selection.k_max", "20 is larger"]),
    ({"selection": {"blocks": {MODEL: [[3, 5], [5, 6]]}}},
     [f"config key selection.blocks.{MODEL}[1]", "[5, 6] overlaps block [3, 5]", "non-overlapping"]),
    ({"selection": {"blocks": {MODEL: [[2, 3], [10, 12]]}}},
     [f"config key selection.blocks.{MODEL}[1]", "[10, 12] is outside the model's layers 0..11"]),
], ids=["variant-ratio", "ratio", "k-max", "method-k-max", "overlapping-blocks", "out-of-range-blocks"])
def test_bad_block_selection(scenario, capsys, edits, parts):
    before = results_state(scenario)
    line = run_failing_step(steps.select_blocks, scenario, capsys, config=micro_config(**edits), model=MODEL,
                            variant="kdp", similarity_npz=str(scenario / f"{SIMILARITY}.npz"),
                            out_json=str(scenario / f"results/blocks/{MODEL}/kdp.json"))
    assert_message(line, *parts)
    assert results_state(scenario) == before


@pytest.mark.parametrize("sources,parts", [
    ([], ["config key calibration.standard.sources", "[] is too short", "at least 1 item"]),
    ([{"name": "kjv", "samples": 0}],
     ["config key calibration.standard.sources.0.samples", "0 is out of range", ">= 1"]),
    ([{"name": "no_such_corpus", "samples": 4}], ["config key calibration.standard.sources[0]", "'no_such_corpus'",
                                                   "kjv"]),
], ids=["no-sources", "no-samples", "unknown-source"])
def test_empty_calibration_set(scenario, capsys, sources, parts):
    """Empty sets stop at the config check (what the Snakefile runs first); an unknown source at the calibration
    step. Neither touches the calibration file already built."""
    config = yaml.safe_load(MICRO.read_text())
    config["calibration"]["standard"]["sources"] = sources
    try:
        config = kdp_config.validate(config)
    except kdp_config.UserError as error:
        assert_message(str(error), *parts)
        return
    before = results_state(scenario)
    line = run_failing_step(steps.calibration, scenario, capsys, config=config, model=MODEL, name="standard",
                            base_dir=str(scenario / f"results/models/{MODEL}/base"),
                            out_path=str(scenario / f"results/calib/{MODEL}/standard.safetensors"))
    assert_message(line, *parts)
    assert results_state(scenario) == before


def test_calibration_too_short_for_the_method(scenario, tmp_path, capsys):
    """A one-sample set: KDP needs at least one sample to fit on and one to hold out."""
    config = micro_config()
    config["calibration"]["standard"]["sources"] = [{"name": "kjv", "samples": 1}]
    short = tmp_path / "short"
    steps.run(steps.calibration, str(tmp_path / "c.log"), 1, config=config, model=MODEL, name="standard",
              base_dir=str(scenario / f"results/models/{MODEL}/base"), out_path=str(short / "calib.safetensors"))
    steps.run(steps.capture_hidden_states, str(tmp_path / "h.log"), 1, config=config, model=MODEL,
              calibration_name="standard", base_dir=str(scenario / f"results/models/{MODEL}/base"),
              calibration_path=str(short / "calib.safetensors"), out_dir=str(short / "hidden"))
    before = results_state(scenario)
    fold = scenario / f"results/kdp/{MODEL}/kdp/block_3_4"
    line = run_failing_step(steps.fit_block, scenario, capsys, config=config, model=MODEL, variant="kdp",
                            block="block_3_4", base_dir=str(scenario / f"results/models/{MODEL}/base"),
                            inputs={"calibration": str(short / "calib.safetensors"), "hidden": str(short / "hidden")},
                            out_dir=str(fold))
    assert_message(line, "config key calibration.standard", "1 sample")
    assert results_state(scenario) == before


def test_unknown_benchmark_stops_snakemake_with_one_line(scenario):
    config = yaml.safe_load((scenario / "micro.yaml").read_text())
    config["evaluation"]["benchmarks"] = ["kjv_cloze", "no_such_task"]
    (scenario / "micro.yaml").write_text(yaml.safe_dump(config))
    before = results_state(scenario)
    result = snakemake(scenario, TABLE)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("kdp-bench: ")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert_message(lines[0], "config key evaluation.benchmarks", "'no_such_task'", "kjv_cloze")
    assert results_state(scenario) == before


def test_task_missing_from_the_task_folder(scenario, tmp_path, capsys):
    tasks = tmp_path / "tasks"
    shutil.copytree(scenario / "results/tasks/embedded", tasks)
    for task_file in tasks.glob("*cloze*.yaml"):
        task_file.unlink()
    before = results_state(scenario)
    line = run_failing_step(steps.evaluate, scenario, capsys, config=micro_config(), model=MODEL, variant="kdp",
                            variant_dir=str(scenario / f"results/models/{MODEL}/kdp"), tasks_dir=str(tasks),
                            out_json=str(scenario / f"results/eval/{MODEL}/kdp.json"))
    assert_message(line, str(tasks), "kdp_kjv_cloze")
    assert results_state(scenario) == before


# -- 2. atomic outputs: a job killed mid-write leaves nothing a rerun mistakes for a finished output --------------
def test_job_killed_mid_write_leaves_no_output_and_reruns(scenario, baseline):
    table = scenario / TABLE
    table.unlink()
    with open(scenario / "first.out", "w") as out:
        # Every atomic write holds its complete temporary for a minute before the rename: the kill lands there.
        first = subprocess.Popen(snakemake_command(scenario, TABLE), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                 env=_env(KDP_PAUSE_BEFORE_RENAME="60"))
        wait_for(lambda: bool(list(table.parent.glob(".table1.csv.tmp-*"))), first, "the table's temporary")
        for job in psutil.Process(first.pid).children(recursive=True):
            job.send_signal(signal.SIGKILL)
        assert first.wait(timeout=120) != 0
    assert not table.exists()
    assert leftovers(scenario), "the job was not killed mid-write"
    rerun = snakemake(scenario, TABLE)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert leftovers(scenario) == []
    assert_same_table(table, baseline / TABLE)


# -- 3. resume after an interrupt, 5. determinism -----------------------------------------------------------------
@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> tuple[Path, list[str]]:
    """A second, independent run of the micro DAG, interrupted with SIGINT (Ctrl-C) once its first KDP
    fit job has started, then rerun with the same command. Returns the workdir and what existed in between."""
    workdir = new_workdir(tmp_path_factory.mktemp("faults") / "resumed")

    def fit_started() -> bool:
        return any((workdir / "logs" / "fit_block").rglob("*.log"))

    with open(workdir / "interrupted.out", "w") as out:
        first = subprocess.Popen(snakemake_command(workdir, TABLE), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                 env=_env(), start_new_session=True, preexec_fn=_interruptible)
        wait_for(fit_started, first, "the first KDP fit job")
        assert press_ctrl_c(first) != 0
    between = sorted(str(p.relative_to(workdir)) for p in (workdir / "results").rglob("*"))
    rerun = snakemake(workdir, TABLE)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    return workdir, between


def test_interrupted_run_resumes_to_the_same_table(resumed, baseline):
    workdir, between = resumed
    assert TABLE not in between and f"results/eval/{MODEL}/kdp.json" not in between, "the run was not interrupted"
    assert leftovers(workdir) == []
    assert_same_table(workdir / TABLE, baseline / TABLE)


def test_two_runs_give_identical_results(resumed, baseline):
    """Every number, not just the table: blocks, folds, evaluations, hidden states of two independent runs."""
    workdir, _ = resumed
    assert json.loads((workdir / HIDDEN / "manifest.json").read_text())["sha256"] == \
        json.loads((baseline / HIDDEN / "manifest.json").read_text())["sha256"]
    for fold in (baseline / f"results/kdp/{MODEL}/kdp").iterdir():
        assert sha256_file(fold / "fold.safetensors") == sha256_file(workdir / fold.relative_to(baseline) /
                                                                       "fold.safetensors")
    for name in (f"results/blocks/{MODEL}/kdp.json", f"results/eval/{MODEL}/kdp.json",
                 f"results/eval/{MODEL}/dense.json"):
        # lm-eval's recorded task configs name the task files by absolute path, i.e. by working directory.
        ours, theirs = (json.loads((root / name).read_text().replace(str(root), "<workdir>"))
                        for root in (workdir, baseline))
        for record in (ours, theirs):
            record.pop("seconds", None)
            record.get("provenance", {}).pop("git_commit", None)
        assert ours == theirs, name
    assert_same_table(workdir / TABLE.replace(".csv", ".tex"), baseline / TABLE.replace(".csv", ".tex"))


def test_seed_is_recorded_in_every_result(baseline):
    seed = yaml.safe_load(MICRO.read_text())["seed"]
    records = [*(baseline / "results/eval").rglob("*.json"),
               *(baseline / "results/models").glob("*/*/kdp_variant.json"),
               *(baseline / "results/blocks").rglob("*.json"), *(baseline / "results/kdp").rglob("record.json")]
    assert len(records) == 6  # 2 evaluations, 2 variants, 1 block choice, 1 fold
    for path in records:
        assert json.loads(path.read_text())["provenance"]["seed"] == seed, path
    for path in (baseline / "results").rglob("*.csv"):
        assert f"# seed: {seed}" in path.read_text().splitlines()[:12], path
    assert f"% seed: {seed}" in (baseline / TABLE.replace(".csv", ".tex")).read_text().splitlines()[:12]
    assert json.loads((baseline / HIDDEN / "manifest.json").read_text())["key"]["seed"] == seed
    for manifest in (baseline / "results/kdp").rglob("manifest.json"):
        assert json.loads(manifest.read_text())["key"]["seed"] == seed


# -- 4. cache integrity ------------------------------------------------------------------------------------------
def _similarity_kwargs(workdir: Path, config: dict | None = None) -> dict:
    return dict(config=config or micro_config(), model=MODEL, calibration_name="standard",
                base_dir=str(workdir / f"results/models/{MODEL}/base"),
                calibration_path=str(workdir / f"results/calib/{MODEL}/standard.safetensors"),
                hidden_dir=str(workdir / HIDDEN), out_npz=str(workdir / f"{SIMILARITY}.npz"),
                out_csv=str(workdir / f"{SIMILARITY}.csv"))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_bit], ids=["truncated", "bit-flipped"])
def test_damaged_hidden_states_are_rejected(scenario, capsys, damage):
    damage(scenario / HIDDEN / "h_007.npy")
    before = results_state(scenario, skip=HIDDEN)
    line = run_failing_step(steps.similarity, scenario, capsys, **_similarity_kwargs(scenario))
    assert_message(line, "h_007.npy", "does not match its recorded SHA-256", advice=("rerun",))
    assert not (scenario / HIDDEN).exists()  # deleted, never used: Snakemake sees it missing and rebuilds it
    assert results_state(scenario, skip=HIDDEN) == before


def test_rejected_hidden_states_are_rebuilt_by_a_rerun(scenario, baseline, capsys):
    _flip_a_bit(scenario / HIDDEN / "h_007.npy")
    for output in scenario.glob(f"{SIMILARITY}.*"):
        output.unlink()  # so the job that reads the cache is due, and stays due after it fails
    run_failing_step(steps.similarity, scenario, capsys, **_similarity_kwargs(scenario))  # what that job does
    rerun = snakemake(scenario, f"{SIMILARITY}.npz")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (scenario / HIDDEN / "manifest.json").read_bytes() == (baseline / HIDDEN / "manifest.json").read_bytes()
    assert (scenario / f"{SIMILARITY}.npz").read_bytes() == (baseline / f"{SIMILARITY}.npz").read_bytes()


def test_hidden_states_built_for_another_key_are_refused(scenario):
    from kdp.capture import HiddenStates
    from kdp.errors import UserError

    calibration = scenario / f"results/calib/{MODEL}/standard.safetensors"
    key = steps.cache_key(micro_config(), MODEL, "standard", str(calibration))
    HiddenStates.open(scenario / HIDDEN, key)
    with pytest.raises(UserError, match="hidden-state cache was built for .* it was deleted, rerun"):
        HiddenStates.open(scenario / HIDDEN, {**key, "max_length": 24})
    assert not (scenario / HIDDEN).exists()


def test_changed_key_rebuilds_everything_built_for_the_old_one(scenario):
    config = yaml.safe_load((scenario / "micro.yaml").read_text())
    config["calibration"]["standard"]["max_length"] = 24
    (scenario / "micro.yaml").write_text(yaml.safe_dump(config))
    plan = snakemake(scenario, TABLE, "--dry-run")
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = plan.stdout + plan.stderr
    assert "rule calibration:" in planned and "Params have changed" in planned
    # The per-block fit jobs are planned once the select_blocks checkpoint has rerun; a dry run cannot list them.
    for rule in ("rule capture_hidden_states:", "rule similarity:", "checkpoint select_blocks:", "rule prune:",
                 "rule evaluate:", "rule table:"):
        assert rule in planned, rule
    assert "rule base_model:" not in planned


def _prune_kwargs(workdir: Path, config: dict) -> dict:
    folds = sorted(str(p) for p in (workdir / f"results/kdp/{MODEL}/kdp").iterdir())
    return dict(config=config, model=MODEL, variant="kdp", base_dir=str(workdir / f"results/models/{MODEL}/base"),
                inputs={"calibration": str(workdir / f"results/calib/{MODEL}/standard.safetensors"),
                        "hidden": str(workdir / HIDDEN), "blocks": str(workdir / f"results/blocks/{MODEL}/kdp.json"),
                        "block_fits": folds},
                out_dir=str(workdir / f"results/models/{MODEL}/kdp"))


def test_intact_folds_are_used_also_by_a_variant_that_reuses_them(scenario, tmp_path):
    config = yaml.safe_load(MICRO.read_text())
    config["variants"]["kdp_reuse"] = {"method": "kdp", "reuse_fits_of": "kdp"}
    kwargs = {**_prune_kwargs(scenario, kdp_config.validate(config)), "variant": "kdp_reuse",
              "out_dir": str(tmp_path / "kdp_reuse")}
    steps.run(steps.prune, str(tmp_path / "prune.log"), 1, **kwargs)
    reused = json.loads((tmp_path / "kdp_reuse/kdp_variant.json").read_text())
    assert reused["parameters"] == json.loads((scenario / f"results/models/{MODEL}/kdp/kdp_variant.json").read_text())[
        "parameters"]


def test_corrupt_fold_is_rejected_and_deleted(scenario, capsys):
    fold = sorted((scenario / f"results/kdp/{MODEL}/kdp").iterdir())[0]
    kwargs = _prune_kwargs(scenario, micro_config())
    weights = fold / "fold.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    before = results_state(scenario, skip=str(fold.relative_to(scenario)))
    line = run_failing_step(steps.prune, scenario, capsys, **kwargs)
    assert_message(line, str(fold), "fold.safetensors", "does not match its recorded SHA-256", advice=("rerun",))
    assert not fold.exists()
    assert results_state(scenario) == before


def test_fold_fitted_for_other_settings_is_rejected(scenario, capsys):
    fold = sorted((scenario / f"results/kdp/{MODEL}/kdp").iterdir())[0]
    config = micro_config(methods__kdp__fit={"rff_dim": 32, "rank": 3, "kernel_max_epochs": 2, "inverse_epochs": 2,
                                            "kernel_batch_samples": 8, "inverse_batch_samples": 8})
    before = results_state(scenario, skip=str(fold.relative_to(scenario)))
    line = run_failing_step(steps.prune, scenario, capsys, **_prune_kwargs(scenario, config))
    assert_message(line, str(fold), "built for another configuration", "params_sha256", advice=("rerun",))
    assert results_state(scenario) == before
