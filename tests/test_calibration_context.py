"""Calibration windows never run past the model's position table."""

from types import SimpleNamespace

from kdp.steps import _within_context


def test_a_window_longer_than_the_context_is_cut_to_it():
    spec = {"max_length": 256, "sources": [{"name": "kjv", "samples": 4, "pack": True}]}
    assert _within_context(spec, SimpleNamespace(max_position_embeddings=128), "m/s")["max_length"] == 128
    assert spec["max_length"] == 256  # the config itself is left alone


def test_a_window_within_the_context_is_kept():
    spec = {"max_length": 128, "sources": []}
    assert _within_context(spec, SimpleNamespace(max_position_embeddings=2048), "m/s") is spec
    assert _within_context(spec, SimpleNamespace(), "m/s") is spec
