"""Every pruned model is a directory that stock tools load: `AutoModelForCausalLM.from_pretrained` in a fresh
process gives the in-memory pruned model's logits (plain loading where the architecture is unchanged, custom code
through ``auto_map`` where it changed), and the stock ``lm_eval`` command line evaluates a saved variant.

Each method runs for real on a micro model (few samples, few steps); one subprocess reloads every directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.laco import LaCo
from baselines.llm_pruner import LLMPruner
from baselines.shortgpt import ShortGPT
from baselines.slicegpt import SliceGPT
from baselines.streamline import Streamline
from kdp import models
from kdp.adapters import adapter_for
from kdp.calibration import CalibrationSet
from kdp.capture import HiddenStates, capture
from kdp.io import write_json
from kdp.methods.drop_blocks import DropBlocks
from kdp.methods.kdp import KDP
from kdp.registry import PruneContext
from kdp.selection import Block
from tests.synthetic import random_calibration
from tests.conftest import MICRO_MODELS

REPO = Path(__file__).resolve().parent.parent
FAST_TRAINING = {"batch_size": 4, "grad_accum": 1, "epochs": 1, "lr": 1e-3, "min_lr": 1e-4, "eval_every": 2}
KDP_FIT = {"rff_dim": 64, "rank": 4, "inverse_hidden": 32, "kernel_max_epochs": 1, "inverse_epochs": 3,
           "kernel_batch_samples": 8, "inverse_batch_samples": 8, "eval_batch_samples": 32, "held_out_fraction": 0.25}

# name -> (family, method class, parameter overrides, whether the architecture changed)
VARIANTS = {
    "drop_blocks": ("opt", DropBlocks, {}, False),
    "shortgpt": ("llama", ShortGPT, {}, False),
    "laco": ("llama", LaCo, {"layers_per_merge": 2, "threshold": 0.0}, False),
    "streamline_layer": ("llama", Streamline, {"replacement": "layer", "selection_samples": 6,
                                               "validation_samples": 8, "training": FAST_TRAINING}, False),
    "streamline_ffn": ("opt", Streamline, {"replacement": "ffn", "selection_samples": 6, "validation_samples": 8,
                                           "training": FAST_TRAINING}, True),
    "slicegpt": ("opt", SliceGPT, {"pca_samples": 24, "batch_size": 8, "round_interval": 2}, True),
    "llm_pruner": ("llama", LLMPruner, {}, True),
    "kdp": ("llama", KDP, {"fit": KDP_FIT}, True),
}
BLOCK = Block(2, 3)


def char_tokenizer():
    """One token per printable character, within the micro models' 128-row vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models as tok_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {token: i for i, token in enumerate(specials + [chr(c) for c in range(32, 127)] + ["\n"])}
    backend = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=256)


def calibration(samples: int = 32, length: int = 16) -> CalibrationSet:
    return random_calibration(samples, length, low=4, high=99, pad_id=3)


def prune(name: str, root: Path):
    family, cls, overrides, _ = VARIANTS[name]
    model = MICRO_MODELS[family](layers=6, seed=1)
    params = {**cls.defaults, **overrides}
    ctx = PruneContext(model=model, adapter=adapter_for(model), tokenizer=None, params=params, target_ratio=0.25,
                       seed=0, device=torch.device("cpu"), model_name="micro", calibration=calibration(),
                       blocks=[BLOCK], load_teacher=lambda: MICRO_MODELS[family](layers=6, seed=1))
    method = cls(params)
    if cls is KDP:
        # The per-block fit the workflow's fit_block job does, from a real capture of the dense model.
        capture(ctx.adapter, ctx.calibration, root / "hidden", {"test": name}, "float32", 8)
        fit_dir = root / "fit" / BLOCK.tag
        fit_dir.mkdir(parents=True)
        ctx.hidden = HiddenStates.open(root / "hidden")
        write_json(fit_dir / "record.json", method.fit_block(ctx, BLOCK, fit_dir))
        ctx.block_fits = {BLOCK: fit_dir}
    record = method.prune(ctx)
    return model.eval(), record


def probe_ids() -> torch.Tensor:
    return torch.randint(4, 99, (2, 11), generator=torch.Generator().manual_seed(5))


RELOAD = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from transformers import AutoModelForCausalLM
    ids = torch.from_numpy(np.load(sys.argv[1]))
    for directory, remote in json.loads(sys.argv[2]).items():
        model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=remote, dtype=torch.float32).eval()
        with torch.no_grad():
            np.save(directory + "/reloaded_logits.npy", model(input_ids=ids).logits.numpy())
        print(json.dumps({"dir": directory, "class": type(model).__module__ + "." + type(model).__name__}))
""")


def fresh_env(tmp: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_MODULES_CACHE": str(tmp / "hf_modules"), "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (directory, in-memory logits, record); every variant pruned, saved and reloaded once."""
    root = tmp_path_factory.mktemp("artifacts")
    ids, tokenizer, out = probe_ids(), char_tokenizer(), {}
    for name in VARIANTS:
        model, record = prune(name, root / "work" / name)
        with torch.no_grad():
            logits = model(input_ids=ids).logits.numpy()
        models.save_variant(model, tokenizer, root / name, {"variant": name, "layers_removed": record.layers_removed})
        out[name] = (root / name, logits)
    np.save(root / "ids.npy", ids.numpy())
    remote = {str(root / name): VARIANTS[name][3] for name in VARIANTS}  # plain loading where nothing changed
    done = subprocess.run([sys.executable, "-c", RELOAD, str(root / "ids.npy"), json.dumps(remote)], cwd=root,
                          env=fresh_env(root), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    classes = {Path(row["dir"]).name: row["class"] for row in map(json.loads, done.stdout.split("\n")[:-1])}
    return root, out, classes


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_saved_variant_reloads_in_a_fresh_process_with_the_same_logits(saved, name):
    _, out, classes = saved
    directory, logits = out[name]
    changed = VARIANTS[name][3]
    config = json.loads((directory / "config.json").read_text())
    assert ("auto_map" in config) == changed
    if changed:
        assert (directory / "modeling_kdp_bench.py").is_file() and classes[name].split(".")[-1].startswith("KdpBench")
    else:
        assert classes[name].startswith("transformers.models.")  # the stock class, no custom code
    reloaded = np.load(directory / "reloaded_logits.npy")
    assert reloaded.shape == logits.shape
    np.testing.assert_allclose(reloaded, logits, rtol=0, atol=1e-5)
    dense = MICRO_MODELS[VARIANTS[name][0]](layers=6, seed=1).eval()
    with torch.no_grad():
        dense_logits = dense(input_ids=probe_ids()).logits.numpy()
    assert np.abs(dense_logits - logits).max() > 1e-3  # the method really changed the model


def test_stock_lm_eval_cli_evaluates_a_saved_kdp_variant(saved):
    from kdp.tasks import benchmark, write_task_suite

    root, out, _ = saved
    tasks = write_task_suite("embedded", ["kjv_cloze"], root / "tasks", seed=0)
    task = benchmark("kjv_cloze").task
    command = [sys.executable, "-m", "lm_eval", "--model", "hf",
               "--model_args", f"pretrained={out['kdp'][0]},trust_remote_code=True,dtype=float32",
               "--tasks", task, "--include_path", str(tasks), "--limit", "4", "--device", "cpu",
               "--batch_size", "4", "--output_path", str(root / "lm_eval_out")]
    done = subprocess.run(command, cwd=root, env=fresh_env(root), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in (root / "lm_eval_out").rglob("results*.json")]
    assert len(results) == 1
    scores = results[0]["results"][task]
    assert 0.0 <= scores["acc,none"] <= 1.0 and results[0]["n-samples"][task]["effective"] == 4
