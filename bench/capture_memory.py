"""Peak host memory of the hidden-state capture: one decoder layer at a time (streamed) vs the whole model loaded.

    python bench/capture_memory.py                      # LLaMA-2-7B config at full width, 4 layers
    python bench/capture_memory.py --config llama-2-13b --layers 2 --samples 16 --length 256

A checkpoint with random weights is written in the layout of a real hub model (fp16, one safetensors shard per
decoder layer plus an index) from ``resources/model_configs/<config>.json`` with ``--layers`` decoder layers.
Each capture then runs in a fresh process on CPU (fp32, as the capture rule runs without a GPU) and reports its
peak RSS; the streamed peak is checked against its bound: what the process held before loading + one layer's
weights (or the embeddings, if larger: they are dropped before the first layer runs) + one layer's activations
+ a small constant (the model skeleton, one tensor being read, one batch's intermediate activations).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


def write_checkpoint(config_name: str, layers: int, out: Path) -> dict:
    """Random fp16 weights for the config, one shard per decoder layer, without ever holding the whole model."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(ROOT / "resources" / "model_configs" / f"{config_name}.json")
    config.num_hidden_layers = layers
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    shapes = {name: tuple(p.shape) for name, p in skeleton.state_dict().items()}
    groups: dict[str, list[str]] = {}
    for name in shapes:
        parts = name.split(".")
        groups.setdefault(f"layer-{int(parts[2]):03d}" if parts[1] == "layers" else "rest", []).append(name)
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    for group, names in sorted(groups.items()):
        shard = f"model-{group}.safetensors"
        save_file({n: (torch.randn(shapes[n], generator=generator) * 0.02).half() for n in names}, out / shard)
        weight_map.update(dict.fromkeys(names, shard))
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config.save_pretrained(out)
    layer_params = sum(int(torch.tensor(shapes[n]).prod()) for n in groups["layer-000"])
    embed_params = int(torch.tensor(shapes["model.embed_tokens.weight"]).prod())
    return {"layer_params": layer_params, "embed_params": embed_params, "hidden_size": config.hidden_size}


def run_capture(mode: str, weights: Path, samples: int, length: int, out: Path) -> dict:
    """One capture in this process; returns its peak RSS (the caller runs each mode in a fresh process)."""
    import torch
    from transformers import AutoModelForCausalLM

    from kdp.adapters import adapter_for
    from kdp.calibration import CalibrationSet
    from kdp.capture import capture, open_layerwise

    torch.manual_seed(0)
    ids = torch.randint(3, 32000, (samples, length))
    calib = CalibrationSet(ids, torch.ones_like(ids), ["random"] * samples, {})
    before = _current_rss()
    started = time.perf_counter()
    if mode == "streamed":
        adapter, layers = open_layerwise(weights, torch.float32, torch.device("cpu"))
    else:
        adapter = adapter_for(AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32).eval())
        layers = None
    capture(adapter, calib, out, {"benchmark": mode}, "float32", batch_size=4, layers=layers)
    return {"mode": mode, "before_mib": before / MiB, "peak_mib": _peak_rss() / MiB,
            "seconds": time.perf_counter() - started}


def _current_rss() -> int:
    return _status_bytes("VmRSS")


def _peak_rss() -> int:
    # VmHWM belongs to this process's own address space; getrusage's ru_maxrss would also count the parent's
    # peak (it survives fork + exec), i.e. the checkpoint writer's.
    return _status_bytes("VmHWM")


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="llama-2-7b", help="a file name in resources/model_configs/")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--slack-mib", type=float, default=512.0, help="the small constant of the bound")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, work = args.child
        print(json.dumps(run_capture(mode, Path(work) / "weights", args.samples, args.length,
                                     Path(work) / f"hidden-{mode}")))
        return
    with tempfile.TemporaryDirectory(prefix="kdp-capture-memory-") as work:
        (Path(work) / "weights").mkdir()
        sizes = write_checkpoint(args.config, args.layers, Path(work) / "weights")
        results = {mode: _child(mode, work, args) for mode in ("streamed", "whole")}
    report(args, sizes, results)


def _child(mode: str, work: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--samples", str(args.samples), "--length", str(args.length),
               "--child", mode, work]
    done = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(args: argparse.Namespace, sizes: dict, results: dict) -> None:
    fp32 = 4
    layer = sizes["layer_params"] * fp32 / MiB
    embed = sizes["embed_params"] * fp32 / MiB
    activations = args.samples * args.length * sizes["hidden_size"] * fp32 / MiB
    streamed, whole = results["streamed"], results["whole"]
    # Embeddings are dropped once the layer inputs are computed, so they and a layer are never held together.
    bound = streamed["before_mib"] + max(embed, layer) + activations + args.slack_mib
    print(f"model: {args.config} at full width, {args.layers} decoder layers, random fp16 weights (sharded)")
    print(f"calibration: {args.samples} samples x {args.length} tokens; capture in fp32 on CPU")
    print(f"one layer's weights {layer:.0f} MiB, embeddings {embed:.0f} MiB, one layer's activations "
          f"{activations:.0f} MiB")
    for result in (streamed, whole):
        print(f"{result['mode']:>8}: peak RSS {result['peak_mib']:.0f} MiB (process before loading "
              f"{result['before_mib']:.0f} MiB), {result['seconds']:.1f} s")
    print(f"ratio whole / streamed peak RSS: {whole['peak_mib'] / streamed['peak_mib']:.2f}")
    verdict = "within" if streamed["peak_mib"] <= bound else "ABOVE"
    print(f"streamed peak {streamed['peak_mib']:.0f} MiB is {verdict} the bound {bound:.0f} MiB "
          f""
          f"(before + max(embeddings, one layer) + one layer's activations + {args.slack_mib:.0f} MiB)")
    if verdict != "within":
        sys.exit(1)


if __name__ == "__main__":
    main()
