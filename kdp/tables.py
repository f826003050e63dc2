"""Tables as the paper prints them: tidy CSV (one row per model x variant x benchmark) plus booktabs LaTeX.

Definitions (paper Table 1 caption and Table 2, recomputed from its own numbers by the audit):
  Avg      = arithmetic mean of the row's accuracies (over the benchmarks it has);
  RP       = Avg(variant) / Avg(dense of the same model) x 100;
  RP(PPL)  = sum of dense perplexities / sum of the variant's perplexities x 100 (ratio of sums, the only reading
             that reproduces the paper's Table 2 row values);
  RP(Rouge)= sum of the variant's ROUGE / sum of dense ROUGE x 100;
  Ratio    = 1 - parameters(variant) / parameters(dense), all parameters, a tied head counted once;
  RP on X  = Avg / Avg(variant X) x 100, for a table with ``reference: X`` (Table 11's "RP. on std.").
Kinds ``ablation`` (Tables 3, 9) and ``kmax`` (Table 4) print the scores only, on the table's ``benchmarks`` (any
score kind); ``kmax`` adds each row's pruned layers (dense-model indices) from its variant record.
CSV files start with ``#`` provenance lines (read them with ``pandas.read_csv(path, comment="#")``) and contain no
timestamps, so the same config and seed give byte-identical files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from kdp.config import model_label, variant_label
from kdp.provenance import provenance

TABLE_VERSION = 2
DENSE_METHOD = "dense"

FORMULAS = {
    "classification": "Avg = mean of accuracies; RP = Avg / Avg(dense) * 100; Ratio = 1 - params/params(dense)",
    "generation": "RP(PPL) = sum(dense PPL) / sum(variant PPL) * 100; RP(Rouge) = sum(variant) / sum(dense) * 100",
    "ablation": "scores as measured (accuracy in percent, perplexity, ROUGE); no summary",
    "kmax": "scores as measured; Pruned Layers = dense-model indices of the layers the variant replaced",
}
SCORE_ONLY_KINDS = ("ablation", "kmax")


def render_results_table(config: dict, name: str, evals: Sequence[dict],
                         records: dict[tuple[str, str], dict] | None = None) -> tuple[str, str]:
    """``records`` (model, variant) -> kdp_variant.json, needed by kind ``kmax`` for the pruned layers."""
    spec = config["tables"][name]
    rows = _tidy_rows(config, spec, evals)
    if spec["kind"] == "kmax":
        for row in rows:
            row["pruned_layers"] = pruned_layers(records[(row["model"], row["variant"])])
    summary = _summaries(config, spec, rows)
    header = _header(config, name, spec)
    return header + _csv(rows, summary), _latex(config, name, spec, rows, summary)


def _tidy_rows(config: dict, spec: dict, evals: Sequence[dict]) -> list[dict[str, Any]]:
    kind = spec["kind"]
    index = {(e["model"], e["variant"]): e for e in evals}
    rows = []
    for model in spec["models"]:
        for variant in spec["variants"]:
            result = index.get((model, variant))
            if result is None:
                raise KeyError(f"no evaluation of {model}/{variant} was given to table {spec}")
            for benchmark in spec.get("benchmarks") or config["evaluation"]["benchmarks"]:
                score = result["scores"].get(benchmark)
                if score is None or not (kind in SCORE_ONLY_KINDS or score["table"] == kind):
                    continue  # ablation rows may be evaluated on a subset
                rows.append({
                    "model": model, "variant": variant, "label": variant_label(config, variant),
                    "ratio": result["ratio"], "benchmark": benchmark, "column": score["column"],
                    "kind": score["kind"], "value": score["value"], "stderr": score.get("stderr"),
                    "chance": score.get("chance"), "n": score.get("n"),
                })
    return rows


def pruned_layers(record: dict) -> str:
    """Dense-model indices a variant removed or folded, e.g. ``[6,7,8]``."""
    layers = sorted({i for first, last in record.get("blocks", []) for i in range(first, last + 1)}
                    | set(record.get("layers_removed", [])))
    return "[" + ",".join(map(str, layers)) + "]"


def _summaries(config: dict, spec: dict, rows: list[dict]) -> dict[tuple[str, str], dict[str, float]]:
    dense = {m: _dense_variant(config, spec, m) for m in spec["models"]}
    by_row: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        by_row.setdefault((row["model"], row["variant"]), []).append(row)
    summary = {}
    for (model, variant), cells in by_row.items():
        reference = by_row.get((model, dense[model])) if dense[model] else None
        summary[(model, variant)] = _summary(spec["kind"], cells, reference)
        if spec.get("reference") and spec["kind"] == "classification" and (model, spec["reference"]) in by_row:
            mine = summary[(model, variant)]["Avg"]
            theirs = _summary("classification", by_row[(model, spec["reference"])], None)["Avg"]
            summary[(model, variant)][f"RP on {variant_label(config, spec['reference'])}"] = 100.0 * mine / theirs
    return summary


def _dense_variant(config: dict, spec: dict, model: str) -> str | None:
    return next((v for v in spec["variants"] if config["variants"][v]["method"] == DENSE_METHOD), None)


def _summary(kind: str, cells: list[dict], reference: list[dict] | None) -> dict[str, float]:
    if kind in SCORE_ONLY_KINDS:
        return {}
    if kind == "classification":
        accuracies = [c["value"] for c in cells if c["kind"] == "accuracy"]
        avg = sum(accuracies) / len(accuracies)
        out = {"Avg": avg}
        if reference:
            ref = [c["value"] for c in reference if c["kind"] == "accuracy"]
            out["RP"] = 100.0 * avg / (sum(ref) / len(ref))
        return out
    out = {}
    for kind_name, label, inverse in (("perplexity", "RP(PPL)", True), ("rouge", "RP(Rouge)", False)):
        mine = [c["value"] for c in cells if c["kind"] == kind_name]
        ref = [c["value"] for c in reference or [] if c["kind"] == kind_name]
        if mine and ref:
            out[label] = 100.0 * (sum(ref) / sum(mine) if inverse else sum(mine) / sum(ref))
    return out


def _header(config: dict, name: str, spec: dict) -> str:
    record = provenance(config, config["seed"], table=name, table_version=TABLE_VERSION,
                        formula=FORMULAS[spec["kind"]])
    return "".join(f"# {key}: {json.dumps(value, sort_keys=True)}\n" for key, value in record.items())


def _csv(rows: list[dict], summary: dict) -> str:
    fields = ["model", "variant", "label", "ratio", "benchmark", "column", "kind", "value", "stderr", "chance", "n"]
    if rows and "pruned_layers" in rows[0]:
        fields.insert(4, "pruned_layers")
    lines = [",".join(fields)]
    for row in rows:
        lines.append(",".join(cell(row[f]) for f in fields))
    for (model, variant), values in summary.items():
        label = next(r["label"] for r in rows if r["model"] == model and r["variant"] == variant)
        ratio = next(r["ratio"] for r in rows if r["model"] == model and r["variant"] == variant)
        for key, value in values.items():
            lines.append(",".join(cell(v) for v in (model, variant, label, ratio, key, key, "summary", value, None, None, None)))
    return "\n".join(lines) + "\n"


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return f'"{text}"' if "," in text else text


# -- LaTeX ---------------------------------------------------------------------------------------------------------
def latex_escape(text: str) -> str:
    replacements = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "†": r"$^\dagger$"}
    return "".join(replacements.get(ch, ch) for ch in text)


def _latex(config: dict, name: str, spec: dict, rows: list[dict], summary: dict) -> str:
    columns = list(dict.fromkeys(r["column"] for r in rows))
    chance = {r["column"]: r["chance"] for r in rows}
    counts = {r["column"]: r["n"] for r in rows}
    summary_keys = list(dict.fromkeys(k for values in summary.values() for k in values))
    layers = bool(rows) and "pruned_layers" in rows[0]
    head = ["LLM", "Method", "Ratio", *(["Pruned Layers"] if layers else []), *columns, *summary_keys]
    align = "ll" + "r" * (len(head) - 2)
    lines = [
        f"% {name}: generated by kdp-bench (table version {TABLE_VERSION}); do not edit.",
        *(f"% {k}: {json.dumps(v, sort_keys=True)}" for k, v in provenance(config, config["seed"]).items()),
        f"% {FORMULAS[spec['kind']]}",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        f"\\caption{{{latex_escape(spec.get('title', name))}}}",
        f"\\label{{tab:{name}}}",
        f"\\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in head) + r" \\",
        r"\midrule",
    ]
    for position, model in enumerate(spec["models"]):
        if position:
            lines.append(r"\midrule")
        for variant in spec["variants"]:
            cells = {r["column"]: r for r in rows if r["model"] == model and r["variant"] == variant}
            if not cells:
                continue
            first = next(iter(cells.values()))
            values = [f"{100 * first['ratio']:.1f}\\%", *([first["pruned_layers"]] if layers else [])]
            values += [fmt(cells[c]["value"]) if c in cells else "-" for c in columns]
            values += [fmt(summary[(model, variant)].get(k)) for k in summary_keys]
            lines.append(" & ".join([latex_escape(model_label(config, model)), latex_escape(first["label"]), *values])
                         + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    note = "; ".join(f"{latex_escape(c)}: chance {fmt(chance[c])}, {counts[c]} items"
                     for c in columns if chance.get(c) is not None)
    if note:
        lines.append(f"\\par\\smallskip\\footnotesize {note}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
