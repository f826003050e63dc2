"""Conventions across tables: the same symbol counted the same way everywhere. In the KDP paper a block's length
appears as K_max (Sec 3.1, Algorithm 1, Eq. 5, Table 4, Appendix I) and as k (Table 12); each source fixes how
many decoder layers a given value stands for."""

from __future__ import annotations

from collections.abc import Iterator

from kdp.audit.claims import ClaimsTables, config, layer_gflops, source
from kdp.audit.intervals import CONSISTENT, INCONSISTENT, Finding, join
from kdp.audit.registry import audit_rule

# Sec 3.1, Eq. 5 and Algorithm 1 (lines 76-79, 139-141 of the paper text) train operators A_1 ... A_{K_max}, one
# per layer transition h_{l+i-1} -> h_{l+i}, over a block F_{l:l+K_max}; Appendix I (line 694) says "when we
# replace a block of K_max consecutive layers". Both count K_max as the number of layers replaced.
TEXT_OFFSET = 0
TEXT_SOURCE = "Eq. 5 / Algorithm 1 / App I (K_max operators, 'a block of K_max consecutive layers')"


@audit_rule("conventions across tables")
def block_length_convention(tables: ClaimsTables) -> Iterator[Finding]:
    """K_max and k against the layers they stand for: recomputes, for each Table 4 row, K_max minus its printed
    pruned layers; for each Table 12 'Transformer Block' FLOPs cell, k minus the number of analytic decoder layers
    its printed FLOPs amount to; and compares both offsets with the text's (0: K_max counts the layers
    replaced). Inconsistent when two sources count the same symbol differently."""
    offsets: dict[str, set[int]] = {}
    lines = []
    if "table04" in tables:
        frame = tables["table04"].drop_duplicates(["K_max", "first_layer", "last_layer"])
        offsets["Table 4 (K_max)"] = {int(r["K_max"]) - int(r["last_layer"] - r["first_layer"] + 1)
                                      for r in frame.to_dict("records")}
        lines.append(source("table04", frame.iloc[0]["src_line_text"]))
    if "table12" in tables:
        frame = tables["table12"]
        blocks = frame[(frame["component"] == "Transformer Block") & (frame["quantity"] == "FLOPs")]
        found = {int(r["k"]) - round(float(r["value"]) / layer_gflops(r["model"]))
                 for r in blocks.to_dict("records") if config(r["model"]) is not None}
        if found:
            offsets["Table 12 (k)"] = found
            lines.append(source("table12", blocks.iloc[0]["src_line_text"]))
    if not offsets:
        return
    offsets[TEXT_SOURCE] = {TEXT_OFFSET}
    distinct = {offset for found in offsets.values() for offset in found}
    described = "; ".join(f"{where}: " + ", ".join(_counted(offset) for offset in sorted(found))
                          for where, found in offsets.items())
    same_span = ("Table 4's K_max=3 row prunes [6,7], the same 2-layer span as Table 5's first LLaMA-2-7B block"
                 if len(distinct) > 1 and "table05" in tables else "")
    verdict = CONSISTENT if len(distinct) == 1 else INCONSISTENT
    yield Finding("K_max/k/layers per block", "; ".join(lines), "layers a block-length symbol stands for",
                  "one convention", f"{len(distinct)} convention(s)", verdict, join(described, same_span))


def _counted(offset: int) -> str:
    if offset == 0:
        return "the symbol equals the layers replaced"
    return f"the symbol is the layers replaced {'+' if offset > 0 else '-'} {abs(offset)}"
