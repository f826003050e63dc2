"""Which blocks of consecutive layers KDP folds and "w/o Kernel" removes (paper Section 3.1, Algorithm 1).

A candidate block replaces layers ``first..last`` (``k_max`` layers); its input is h_first and its output
h_{last+1}. Each candidate is scored by the linear CKA between those two states (Algorithm 1 line 2: CKA(h_l,
h_{l+K_max})). The first and last ``edge_fraction`` of layers are never touched (Section 3.1: "we exclude the
initial and final 10% of the model's layers"). Non-overlapping candidates are taken best-first until the removed
layers reach the target fraction of the model's parameters.

Counting convention: ``edge = round(edge_fraction * num_layers)`` layers at each end (3 of 32, 4 of 40, 3 of 30);
the paper does not say how it rounds. ``k_max`` is the number of layers a block replaces, as in Appendix I
(Params(A_i) = K_max (1 + (2m)^2)) and Table 12; Table 4 lists K_max - 1 layers per row, which this harness
reports as an inconsistency of the paper rather than following it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kdp.errors import UserError
from kdp.io import read_json


@dataclass(frozen=True, order=True)
class Block:
    first: int
    last: int

    @property
    def layers(self) -> range:
        return range(self.first, self.last + 1)

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def tag(self) -> str:
        return f"block_{self.first}_{self.last}"

    @classmethod
    def from_tag(cls, tag: str) -> "Block":
        _, first, last = tag.split("_")
        return cls(int(first), int(last))

    def overlaps(self, other: "Block") -> bool:
        return self.first <= other.last and other.first <= self.last


def edge_layers(num_layers: int, edge_fraction: float) -> int:
    return int(round(edge_fraction * num_layers))


def candidate_blocks(num_layers: int, k_max: int, edge_fraction: float, where: str = "selection.k_max") -> list[Block]:
    """``where`` names the config key ``k_max`` came from, for the error message."""
    if k_max < 1:
        raise UserError(f"{where}: {k_max} is not allowed; allowed: an integer >= 1")
    edge = edge_layers(num_layers, edge_fraction)
    eligible_first, eligible_last = edge, num_layers - 1 - edge
    if eligible_last - eligible_first + 1 < k_max:
        raise UserError(
            f"{where}: {k_max} is larger than the eligible span of {max(0, eligible_last - eligible_first + 1)}"
            f" layers (layers {eligible_first}..{eligible_last} of {num_layers} after excluding {edge} at each end);"
            f" allowed: 1..{max(1, eligible_last - eligible_first + 1)}"
        )
    return [Block(first, first + k_max - 1) for first in range(eligible_first, eligible_last - k_max + 2)]


def select_blocks(
    scores: dict[Block, float],
    layer_parameters: Sequence[int],
    total_parameters: int,
    target_ratio: float,
    max_blocks: int | None = None,
    where: str = "target_ratio",
) -> list[Block]:
    """Best-scoring non-overlapping blocks until the removed parameters reach ``target_ratio`` of the model.

    With ``max_blocks`` (the K_max ablation of Table 4 replaces a single block) at most that many blocks are taken
    and the ratio is not required.
    """
    chosen: list[Block] = []
    removed = 0
    for block in sorted(scores, key=lambda b: (-scores[b], b)):
        if removed >= target_ratio * total_parameters or (max_blocks is not None and len(chosen) >= max_blocks):
            break
        if any(block.overlaps(other) for other in chosen):
            continue
        chosen.append(block)
        removed += sum(layer_parameters[i] for i in block.layers)
    if max_blocks is None and removed < target_ratio * total_parameters:
        raise UserError(
            f"{where}: {target_ratio} cannot be met with the allowed blocks (at most "
            f"{removed / total_parameters:.3f} of the parameters are removable with non-overlapping blocks outside "
            "the excluded edge layers); allowed: a smaller target_ratio, a smaller selection.edge_fraction, or "
            "another selection.k_max"
        )
    return sorted(chosen)


def validate_manual_blocks(blocks: Sequence[Sequence[int]], num_layers: int, where: str) -> list[Block]:
    """A hand-written block list (e.g. the paper's Table 5): in range, ordered, non-overlapping."""
    parsed = []
    for position, pair in enumerate(blocks):
        if len(pair) != 2 or not all(isinstance(v, int) for v in pair) or pair[0] > pair[1]:
            raise UserError(f"{where}[{position}]: {list(pair)} is not allowed; allowed: [first, last] with first <= last")
        block = Block(*pair)
        if block.first < 0 or block.last >= num_layers:
            raise UserError(f"{where}[{position}]: block {list(pair)} is outside the model's layers 0..{num_layers - 1};"
                            f" allowed: [first, last] with 0 <= first <= last <= {num_layers - 1}")
        clash = next((other for other in parsed if other.overlaps(block)), None)
        if clash is not None:
            raise UserError(f"{where}[{position}]: block {list(pair)} overlaps block {[clash.first, clash.last]}; "
                            "allowed: non-overlapping blocks")
        parsed.append(block)
    return sorted(parsed)


def read_blocks(path: str) -> list[Block]:
    """The blocks a `select_blocks` job chose, from its JSON (light: the workflow reads it while planning)."""
    return [Block(b["first"], b["last"]) for b in read_json(path)["blocks"]]
