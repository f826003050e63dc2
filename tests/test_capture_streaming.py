"""Bounded-memory capture: decoder layers streamed one at a time from safetensors give the whole model's states."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kdp.adapters import adapter_for
from kdp.calibration import CalibrationSet
from kdp.capture import HiddenStates, StreamedLayers, capture, checkpoint_index, open_layerwise
from tests.conftest import MICRO_MODELS


def _calibration() -> CalibrationSet:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 128, (5, 10), generator=generator)
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0  # right padding reaches the per-layer kwargs (causal + padding mask)
    return CalibrationSet(ids, mask, ["test"] * 5, {})


def _states(root) -> list[np.ndarray]:
    cache = HiddenStates.open(root)
    return [np.asarray(cache.states(i)) for i in range(cache.num_states)]


class _Watched(StreamedLayers):
    """Records how many decoder layers hold real weights whenever one is materialised."""

    def __init__(self, inner: StreamedLayers):
        self.__dict__.update(inner.__dict__)
        self.resident = []

    def materialise(self, index: int) -> None:
        super().materialise(index)
        self.resident.append(sum(not next(layer.parameters()).is_meta for layer in self.adapter.layers))


@pytest.mark.parametrize("family,shard", [("llama", None), ("opt", "40KB")])
def test_layerwise_capture_matches_whole_model(tmp_path, family, shard):
    model = MICRO_MODELS[family]()
    model.save_pretrained(tmp_path / "base", **({"max_shard_size": shard} if shard else {}))
    assert (len(set(checkpoint_index(tmp_path / "base").values())) > 1) == bool(shard)
    calib = _calibration()
    capture(adapter_for(model), calib, tmp_path / "whole", {"k": 1}, "float32", batch_size=2)

    adapter, layers = open_layerwise(tmp_path / "base", torch.float32, torch.device("cpu"))
    assert isinstance(layers, StreamedLayers)
    assert all(p.is_meta for p in adapter.layers.parameters())
    watched = _Watched(layers)
    capture(adapter, calib, tmp_path / "streamed", {"k": 1}, "float32", batch_size=2, layers=watched)

    assert watched.resident == [1] * adapter.num_layers  # never more than one layer's weights
    assert all(p.is_meta for p in adapter.layers.parameters())  # and each is dropped after use
    whole, streamed = _states(tmp_path / "whole"), _states(tmp_path / "streamed")
    assert len(whole) == len(streamed) == model.config.num_hidden_layers + 1
    for expected, got in zip(whole, streamed, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert np.abs(whole[-1] - whole[0]).max() > 0.1  # the layers really ran


def test_bare_backbone_and_bin_checkpoints_stream_too(tmp_path):
    """Keys without ``model.`` (a backbone checkpoint) and ``.bin`` checkpoints (the OPT hub repos) stream too;
    a directory without any checkpoint file falls back to a full load."""
    model = MICRO_MODELS["opt"]()
    model.save_pretrained(tmp_path / "full")
    bare = tmp_path / "bare"
    model.config.save_pretrained(bare)
    save_file({k: v.contiguous() for k, v in model.model.state_dict().items()}, bare / "model.safetensors")
    calib = _calibration()
    capture(adapter_for(model), calib, tmp_path / "whole", {}, "float32", batch_size=5)
    adapter, layers = open_layerwise(bare, torch.float32, torch.device("cpu"))
    capture(adapter, calib, tmp_path / "bare_states", {}, "float32", batch_size=5, layers=layers)
    np.testing.assert_array_equal(_states(tmp_path / "bare_states")[-1], _states(tmp_path / "whole")[-1])

    (tmp_path / "full" / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    torch.save(model.state_dict(), tmp_path / "full" / "pytorch_model.bin")
    adapter, layers = open_layerwise(tmp_path / "full", torch.float32, torch.device("cpu"))
    assert isinstance(layers, StreamedLayers)
    capture(adapter, calib, tmp_path / "bin_states", {}, "float32", batch_size=5, layers=layers)
    np.testing.assert_array_equal(_states(tmp_path / "bin_states")[-1], _states(tmp_path / "whole")[-1])

    (tmp_path / "full" / "pytorch_model.bin").unlink()
    with pytest.raises(OSError):  # no checkpoint file: the full-load fallback, which needs weights to exist
        open_layerwise(tmp_path / "full", torch.float32, torch.device("cpu"))


def test_bfloat16_layerwise_capture_matches_a_bfloat16_whole_model_load(tmp_path):
    """The GPU runtime dtype: shards are cast the way from_pretrained casts them (rotary buffers stay float32)."""
    from transformers import AutoModelForCausalLM

    MICRO_MODELS["llama"]().save_pretrained(tmp_path / "base")
    whole = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.bfloat16).eval()
    calib = _calibration()
    capture(adapter_for(whole), calib, tmp_path / "whole", {}, "float32", batch_size=2)
    adapter, layers = open_layerwise(tmp_path / "base", torch.bfloat16, torch.device("cpu"))
    capture(adapter, calib, tmp_path / "streamed", {}, "float32", batch_size=2, layers=layers)
    for expected, got in zip(_states(tmp_path / "whole"), _states(tmp_path / "streamed"), strict=True):
        np.testing.assert_array_equal(got, expected)
