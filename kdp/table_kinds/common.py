"""What every table kind shares: its provenance header, and plain-text cells for `kdp.tables.latex_table`; CSV text
comes from `kdp.tables.csv_text`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kdp import tables
from kdp.provenance import provenance_header
from kdp.tables import TABLE_VERSION, latex_escape

KIND_VERSION = 1


def header(config: dict, name: str, formula: str, **extra: Any) -> str:
    return provenance_header(config, table=name, table_version=TABLE_VERSION, kind_version=KIND_VERSION,
                             formula=formula, **extra)


def latex_table(config: dict, name: str, formula: str, head: Sequence[str], body: Sequence[Sequence[str] | None],
                note: str = "") -> str:
    """``head``, ``body`` cells and ``note`` are plain text, escaped here; ``None`` draws a \\midrule."""
    escaped = [None if row is None else [latex_escape(str(c)) for c in row] for row in body]
    return tables.latex_table(config, name, f"{TABLE_VERSION}.{KIND_VERSION}", formula,
                              [latex_escape(h) for h in head], escaped, latex_escape(note) if note else "")


def grouped(rows: Sequence[tuple[str, Sequence[str]]], models: Sequence[str]) -> list[Sequence[str] | None]:
    """Body rows ``(model, cells)`` in the table's model order, a rule between models."""
    body: list[Sequence[str] | None] = []
    for model in models:
        mine = [cells for key, cells in rows if key == model]
        if body and mine:
            body.append(None)
        # the model's name only on its first row, as the paper prints it
        body.extend(cells if position == 0 else ["", *cells[1:]] for position, cells in enumerate(mine))
    return body


def model_config_label(config: dict, model: str) -> str:
    return config["models"][model].get("label", model)
