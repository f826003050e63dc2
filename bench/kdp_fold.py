"""Cost of one KDP fold against the k decoder layers it replaces (Appendix I, Table 12), measured on CPU.

    OMP_NUM_THREADS=1 python bench/kdp_fold.py            # both widths, < 3 min on one core
    python bench/kdp_fold.py --widths smollm2 --samples 32

For each width (SmolLM2-135M, d = 576, config read from the embedded GGUF; LLaMA-2-7B, d = 4096, from
resources/model_configs/llama-2-7b.json) one real-size decoder layer is built with random weights (the timing does
not depend on their values) and a fold with the fit's defaults (2m = 1024, r = 16, inverse hidden d / 2):

* fold training: Steps 1 and 2 (`kdp.linearize.fit_kdp`) on a synthetic block, the layer applied k = 2 times to
  random inputs, for ``--epochs`` epochs each, in a fresh process whose peak RSS is reset just before the fit (the
  peak includes the block data already held); wall time per
  epoch is extrapolated linearly to the paper's budget (4000 samples x 128 tokens, 100 + 100 epochs), marked as such;
* forward time: the real layer called k = 2 times (with its rotary embeddings and causal mask, as in the model)
  against one call of the fold, on the same (1, 128, d) input, median of repeated timings;
* the Appendix I analytic ratio from `kdp.flops` (linear-layer MACs, the paper's convention) and the fold's
  parameters next to the two layers'.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

K = 2
SEQ_LEN = 128
PAPER_SAMPLES, PAPER_EPOCHS = 4000, (100, 100)


def model_config(width: str):
    from transformers import AutoConfig

    if width == "smollm2":
        from kdp.embedded.smollm2 import GGUF_FILE, gguf_dir

        return AutoConfig.from_pretrained(gguf_dir(), gguf_file=GGUF_FILE)
    from kdp.flops import load_model_config

    return load_model_config(width)


def one_layer_model(config):
    """A one-layer model of ``config``'s family with a tiny vocabulary: the decoder layer is full size."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    small = copy.deepcopy(config)
    small.num_hidden_layers, small.vocab_size = 1, 128
    if hasattr(small, "quantization_config"):
        del small.quantization_config
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(small, dtype=torch.float32).eval()


def fold_config(hidden_size: int, epochs: int, samples: int):
    from kdp.linearize import KDPConfig

    return KDPConfig(kernel_max_epochs=epochs, inverse_epochs=epochs, held_out_fraction=0.1,
                     eval_batch_samples=64, kernel_batch_samples=100, inverse_batch_samples=128)


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so the peak read afterwards is the fit's alone."""
    Path("/proc/self/clear_refs").write_text("5")


def fit_in_child(width: str, samples: int, epochs: int, threads: int) -> dict:
    """Runs in a fresh process: build the block data, fit, report time and memory."""
    import torch

    from kdp.adapters import adapter_for
    from kdp.linearize import BlockData, fit_kdp

    torch.set_num_threads(threads)
    config = model_config(width)
    adapter = adapter_for(one_layer_model(config))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128, (samples, SEQ_LEN), generator=generator)
    states = []
    with torch.no_grad():
        inputs = adapter.layer_inputs(ids, torch.ones_like(ids))
        # a random residual stream, then the layer applied twice: a real-shaped k = 2 block
        hidden = torch.randn(samples, SEQ_LEN, config.hidden_size, generator=generator)
        states.append(hidden)
        for _ in range(K):
            hidden = adapter.run_layers(hidden, inputs.layer_kwargs, 0, 1)
            states.append(hidden)
    del adapter
    data = BlockData(states, torch.ones(samples, SEQ_LEN, dtype=torch.bool))
    _reset_peak_rss()
    before = _status_mib("VmRSS")
    started = time.perf_counter()
    fold, record = fit_kdp(data, fold_config(config.hidden_size, epochs, samples))
    wall = time.perf_counter() - started
    peak = _status_mib("VmHWM")
    return {
        "width": config.hidden_size,
        "samples": samples,
        "epochs": epochs,
        "step1_s": record["step1"]["wall_s"],
        "step2_s": record["step2"]["wall_s"],
        "step1_epoch_s": statistics.median(e["wall_s"] for e in record["step1"]["epochs"][1:]),
        "step2_epoch_s": statistics.median(e["wall_s"] for e in record["step2"]["epochs"][1:]),
        "wall_s": wall,
        "rss_before_fit_mib": before,
        "peak_rss_mib": peak,
        "fold_parameters": fold.parameter_count(),
    }


def time_call(function, repeats: int, min_seconds: float = 2.0) -> float:
    """Median wall time of ``function`` over at least ``repeats`` calls and ``min_seconds`` (fast calls repeat
    more, so the small width's median is not one noisy sample on a shared machine)."""
    function()  # warm-up
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_seconds:
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def forward_times(width: str, repeats: int, threads: int) -> dict:
    import torch

    from kdp.adapters import adapter_for
    from kdp.flops import PAPER_CONVENTION, block_cost, fold_macs_per_token, fold_parameters
    from kdp.fold import FoldedBlock, InverseNetwork
    from kdp.kernel import LearnableRFF

    torch.set_num_threads(threads)
    config = model_config(width)
    d = config.hidden_size
    settings = fold_config(d, 1, 1)
    hidden_units = settings.inverse_hidden or d // 2
    adapter = adapter_for(one_layer_model(config))
    fold = FoldedBlock(LearnableRFF(d, settings.rff_dim, settings.rank),
                       torch.eye(settings.rff_dim), InverseNetwork(settings.rff_dim, hidden_units, d)).eval()
    ids = torch.randint(0, 128, (1, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        inputs = adapter.layer_inputs(ids, torch.ones_like(ids))
        hidden = torch.randn(1, SEQ_LEN, d, generator=torch.Generator().manual_seed(1))

        def layers():
            state = hidden
            for _ in range(K):
                state = adapter.run_layers(state, inputs.layer_kwargs, 0, 1)
            return state

        layers_s = time_call(layers, repeats)
        fold_s = time_call(lambda: fold(hidden), repeats)
    block_flops, block_params = block_cost(config, K, PAPER_CONVENTION)
    fold_flops = PAPER_CONVENTION.flops_per_mac * PAPER_CONVENTION.seq_len * fold_macs_per_token(
        d, settings.rff_dim, hidden_units)
    return {
        "width": d,
        "layers_ms": 1e3 * layers_s,
        "fold_ms": 1e3 * fold_s,
        "measured_ratio": fold_s / layers_s,
        "analytic_flops_ratio": fold_flops / block_flops,
        "block_gflops": block_flops / 1e9,
        "fold_gflops": fold_flops / 1e9,
        "block_params_m": block_params / 1e6,
        "fold_params_m": fold_parameters(d, settings.rff_dim, settings.rank, hidden_units) / 1e6,
        "fold_shape": f"2m={settings.rff_dim}, r={settings.rank}, inverse hidden={hidden_units}",
    }


def report(width: str, fit: dict, speed: dict) -> None:
    d = speed["width"]
    tokens = fit["samples"] * SEQ_LEN
    scale = PAPER_SAMPLES * SEQ_LEN / tokens
    paper_minutes = scale * (PAPER_EPOCHS[0] * fit["step1_epoch_s"] + PAPER_EPOCHS[1] * fit["step2_epoch_s"]) / 60
    print(f"== {width} (d = {d}), k = {K} layers vs one fold ({speed['fold_shape']}) ==")
    print(f"fold training, {fit['samples']} samples x {SEQ_LEN} tokens, {fit['epochs']} + {fit['epochs']} epochs: "
          f"{fit['wall_s']:.1f} s (step 1 {fit['step1_epoch_s']:.2f} s/epoch, step 2 {fit['step2_epoch_s']:.2f} "
          f"s/epoch); peak RSS {fit['peak_rss_mib']:.0f} MiB ({fit['rss_before_fit_mib']:.0f} MiB held before the "
          f"fit, incl. the block data)")
    print(f"  linear extrapolation to the paper's 4000 x {SEQ_LEN} tokens, 100 + 100 epochs, on this CPU: "
          f"~{paper_minutes:.0f} min (not measured)")
    print(f"forward of one (1, {SEQ_LEN}, {d}) input, median of repeats: {K} layers {speed['layers_ms']:.2f} ms, "
          f"fold {speed['fold_ms']:.2f} ms -> measured ratio fold / layers = {speed['measured_ratio']:.3f}")
    print(f"Appendix I analytic (linear MACs, seq {SEQ_LEN}): {K} layers {speed['block_gflops']:.2f} GFLOPs, fold "
          f"{speed['fold_gflops']:.2f} GFLOPs -> ratio {speed['analytic_flops_ratio']:.3f}; parameters "
          f"{speed['block_params_m']:.2f} M vs fold {speed['fold_params_m']:.2f} M "
          f"({speed['fold_params_m'] / speed['block_params_m']:.3f})")
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", default=["smollm2", "llama-2-7b"])
    parser.add_argument("--samples", type=int, default=32, help="synthetic calibration samples for the fit")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each step in the timed fit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    import torch

    print(f"CPU, {args.threads} thread(s), torch {torch.__version__}, float32\n")
    context = multiprocessing.get_context("spawn")
    for width in args.widths:
        with context.Pool(1) as pool:
            fit = pool.apply(fit_in_child, (width, args.samples, args.epochs, args.threads))
        with context.Pool(1) as pool:
            speed = pool.apply(forward_times, (width, args.repeats, args.threads))
        report(width, fit, speed)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
