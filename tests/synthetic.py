"""Synthetic inputs several test modules share."""

import torch

from kdp.calibration import CalibrationSet


def random_calibration(samples: int, length: int, low: int, high: int, pad_id: int) -> CalibrationSet:
    """Random token ids in [low, high), seeded; every third sample is right-padded from mid-length, so masks matter."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(low, high, (samples, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[::3, length // 2:] = 0
    ids[mask == 0] = pad_id
    return CalibrationSet(ids, mask, ["random"] * samples, {})
