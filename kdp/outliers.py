"""Massive-activation tokens: which tokens a fit, a statistic or a similarity leaves out
(docs/kdp.md, "Massive activations").

The first token of every sequence of SmolLM2 and of LLaMA-2/3 is an attention sink whose residual-stream norm is
about 100x that of every other token, concentrated in one or two dimensions (Sun et al., 2024, "Massive
Activations in Large Language Models"). Any per-dimension statistic over all tokens (the standardisation in front
of phi, least squares, an MSE, linear CKA) is then set by that one token. The gate marks a token as an outlier when
its norm exceeds ``ratio`` times the median token norm of the calibration data; `pass_through` leaves outliers out
of statistics and fits, and a fold hands them on unchanged; `literal` is the paper's text (every token counts).
"""

from __future__ import annotations

import math

import torch

from kdp.errors import bad_value

OUTLIER_MODES = ("pass_through", "literal")
# A multiple of the median token norm, set from the norm profile that bench/kdp_sensitivity.py prints (1,024
# KJV calibration samples): in SmolLM2-135M's layers 12-28 every sink token sits at 26-222x its layer's median and
# every ordinary token at most at 3.4x; in layers 3-9 first tokens reach 5-14x, other tokens up to 12x (a bump, not
# a separate population); OPT-KJV has no token above 4x anywhere. 20 sits in the gap of the massive layers and
# above the bump, so the gate leaves out exactly the massive tokens.
DEFAULT_NORM_RATIO = 20.0


def check_mode(mode: str, ratio: float, where: str) -> None:
    if mode not in OUTLIER_MODES:
        raise bad_value(f"{where}.outlier_tokens", mode, OUTLIER_MODES)
    if not ratio > 1.0:
        raise bad_value(f"{where}.outlier_norm_ratio", ratio, "a number > 1 (a multiple of the median token norm)")


def token_norms(hidden: torch.Tensor) -> torch.Tensor:
    """Per-token L2 norms in float32: a float16 square of a massive activation (~2e4) overflows."""
    return hidden.float().norm(dim=-1)


def norm_threshold(norms: torch.Tensor, mode: str, ratio: float) -> float:
    """The token norm above which a token is an outlier: ``ratio`` x the median of ``norms``; inf when literal."""
    if mode == "literal" or norms.numel() == 0:
        return math.inf
    return ratio * norms.float().median().item()


def ordinary(hidden: torch.Tensor, threshold: float) -> torch.Tensor:
    """True for every token (row of the last dimension) whose norm is at most ``threshold``."""
    if math.isinf(threshold):
        return torch.ones(hidden.shape[:-1], dtype=torch.bool, device=hidden.device)
    return token_norms(hidden) <= threshold
