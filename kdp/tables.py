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

Uncertainty (docs/statistics.md): every cell, Avg and RP whose evaluations kept their items gets a 95% percentile
bootstrap interval over items (``ci_low``, ``ci_high``; LaTeX ``±`` half its width), every row of a model
resampled with the same draw per benchmark (`kdp.statistics`), so RP and differences are paired. Classification
tables add, per row, the paired difference of its Avg from w/o Kernel (the row of method ``drop_blocks``) and from
the best baseline (the highest Avg among the model's rows whose method is neither ``dense`` nor ``kdp``), with a
bootstrap p-value and Holm's correction over the table's rows of each comparison (``kind`` paired_difference;
``significant`` when the Holm-adjusted p-value is below 5%); LaTeX marks the Avg of such rows.

Seeds (docs/statistics.md): a stochastic variant is built and evaluated once per configured seed, on the same
items. Its cell value and bootstrap replicates are the means over its seeds; ``seeds`` counts them and
``seed_sd``, ``seed_min``, ``seed_max`` give the spread of the per-seed values (of a cell, or of Avg, RP and kin
computed seed by seed against the deterministic rows); LaTeX adds ``σ`` and the standard deviation to a row of
several seeds.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from kdp import statistics
from kdp.config import model_label, variant_label
from kdp.errors import UserError
from kdp.provenance import provenance_header

TABLE_VERSION = 4
DENSE_METHOD = "dense"
KDP_METHOD = "kdp"
WITHOUT_KERNEL_METHOD = "drop_blocks"
COMPARISONS = ("w/o Kernel", "best baseline")
INTERVALS = (f"{100 * statistics.CONFIDENCE:.0f}% percentile bootstrap over items, {statistics.REPLICATES} "
             "replicates, one draw per (model, benchmark) seeded by the config seed and shared by the model's rows; "
             "paired differences of Avg with Holm's correction per comparison")

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
    cells = _evaluations_per_cell(spec, evals)
    rows = _tidy_rows(config, spec, cells)
    if spec["kind"] == "kmax":
        for row in rows:
            row["pruned_layers"] = pruned_layers(records[(row["model"], row["variant"])])
    summary = _summaries(config, spec, rows)
    spread = _seed_spread(config, spec, rows)
    replicates = _cell_replicates(config, name, cells, rows)
    for row in rows:
        drawn = replicates.get((row["model"], row["variant"], row["benchmark"]))
        row["ci"] = None if drawn is None else statistics.interval(drawn)
    resampled = _summaries(config, spec, _resampled_rows(rows, replicates))
    summary_ci = {key: {k: statistics.interval(v) for k, v in values.items()} for key, values in resampled.items()}
    comparisons = _comparisons(config, spec, summary, resampled)
    header = _header(config, name, spec)
    return (header + _csv(rows, summary, summary_ci, spread, comparisons),
            _latex(config, name, spec, rows, summary, summary_ci, spread, comparisons))


def _evaluations_per_cell(spec: dict, evals: Sequence[dict]) -> dict[tuple[str, str], list[dict]]:
    """(model, variant) -> its evaluations (one, or one per seed), in the table's order."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for result in evals:
        cells.setdefault((result["model"], result["variant"]), []).append(result)
    for (model, variant), results in cells.items():
        seeds = [r["seed"] for r in results if "seed" in r]
        if len(set(seeds)) < len(seeds):
            raise UserError(f"table evaluations of {model}/{variant}: seeds {seeds} repeat; allowed: one evaluation "
                            "per seed")
    missing = [f"{m}/{v}" for m in spec["models"] for v in spec["variants"] if (m, v) not in cells]
    if missing:
        raise KeyError(f"no evaluation of {', '.join(missing)} was given to table {spec}")
    return cells


def _tidy_rows(config: dict, spec: dict, cells: dict[tuple[str, str], list[dict]]) -> list[dict[str, Any]]:
    kind = spec["kind"]
    rows = []
    for model in spec["models"]:
        for variant in spec["variants"]:
            results = cells[(model, variant)]
            for benchmark in spec.get("benchmarks") or config["evaluation"]["benchmarks"]:
                scores = [r["scores"].get(benchmark) for r in results]
                score = scores[0]
                if score is None or not (kind in SCORE_ONLY_KINDS or score["table"] == kind):
                    continue  # ablation rows may be evaluated on a subset
                rows.append({
                    "model": model, "variant": variant, "label": variant_label(config, variant),
                    "ratio": results[0]["ratio"], "benchmark": benchmark, "column": score["column"],
                    "kind": score["kind"], "value": float(np.mean([s["value"] for s in scores])),
                    "stderr": score.get("stderr") if len(scores) == 1 else None,
                    "chance": score.get("chance"), "n": score.get("n"),
                    "seed_values": np.array([s["value"] for s in scores]),
                })
    return rows


def _seed_spread(config: dict, spec: dict, rows: list[dict]) -> dict[tuple[str, ...], np.ndarray]:
    """Per-seed values of every cell (model, variant, benchmark) and summary (model, variant, name): Avg, RP and
    their kin are computed seed by seed (seed k of a row against seed k of a stochastic reference, or against the
    single build of a deterministic one), so a summary has as many values as the most seeded row it involves."""
    per_seed = _summaries(config, spec, [{**r, "value": r["seed_values"]} for r in rows])
    values = {(r["model"], r["variant"], r["benchmark"]): r["seed_values"] for r in rows}
    values.update({(*key, name): np.atleast_1d(value) for key, named in per_seed.items() for name, value in named.items()})
    return values


def seed_columns(values: np.ndarray | None) -> dict[str, Any]:
    """The CSV's spread columns of one cell or summary: count, and SD (n-1), min, max when there are several."""
    if values is None:
        return {}
    several = len(values) > 1
    return {"seeds": len(values), "seed_sd": float(np.std(values, ddof=1)) if several else None,
            "seed_min": float(np.min(values)) if several else None,
            "seed_max": float(np.max(values)) if several else None}


# -- intervals and paired comparisons ------------------------------------------------------------------------------
def _cell_replicates(config: dict, name: str, cells: dict[tuple[str, str], list[dict]], rows: list[dict]
                     ) -> dict[tuple[str, str, str], np.ndarray]:
    """Bootstrap replicates of each row's value; rows whose evaluations kept no items are left out."""
    replicates = {}
    for model, benchmark in dict.fromkeys((r["model"], r["benchmark"]) for r in rows):
        variants = [r["variant"] for r in rows if r["model"] == model and r["benchmark"] == benchmark]
        items = {}
        for variant in variants:
            records = [e["scores"][benchmark].get("items") for e in cells[(model, variant)]]
            if all(records):
                items.update({(variant, k): statistics.ItemScores.from_record(rec) for k, rec in enumerate(records)})
        if not items:
            continue
        try:
            drawn = statistics.paired_replicates(items, statistics.draw_seed(config["seed"], model, benchmark))
        except ValueError as error:
            raise UserError(f"table {name}, {model} {benchmark}: {error}") from None
        for variant in dict.fromkeys(v for v, _ in items):
            replicates[(model, variant, benchmark)] = np.mean([r for (v, _), r in drawn.items() if v == variant],
                                                              axis=0)
    return replicates


def _resampled_rows(rows: list[dict], replicates: dict) -> list[dict]:
    """The rows with replicate arrays for values, for the models whose every row has them."""
    complete = {r["model"] for r in rows} - {r["model"] for r in rows
                                              if (r["model"], r["variant"], r["benchmark"]) not in replicates}
    return [{**r, "value": replicates[(r["model"], r["variant"], r["benchmark"])]} for r in rows
            if r["model"] in complete]


def _comparisons(config: dict, spec: dict, summary: dict, resampled: dict) -> list[dict[str, Any]]:
    """Each row's Avg against w/o Kernel and against the best baseline of its model, Holm-corrected per comparison."""
    if spec["kind"] != "classification":
        return []
    out = []
    for comparison in COMPARISONS:
        found = []
        for model in spec["models"]:
            reference = _comparison_reference(config, spec, summary, model, comparison)
            if reference is None:
                continue
            for variant in spec["variants"]:
                if (variant == reference or config["variants"][variant]["method"] == DENSE_METHOD
                        or "Avg" not in summary.get((model, variant), {})):
                    continue
                found.append(_difference(summary, resampled, model, variant, reference, comparison))
        tested = [c for c in found if c["p_value"] is not None]
        for entry, adjusted in zip(tested, statistics.holm([c["p_value"] for c in tested])):
            entry["p_holm"] = adjusted
            entry["significant"] = adjusted < statistics.ALPHA
        out += found
    return out


def _comparison_reference(config: dict, spec: dict, summary: dict, model: str, comparison: str) -> str | None:
    """The variant a comparison measures against: the first row of method drop_blocks for w/o Kernel; for the best
    baseline the highest Avg among rows of any other method than dense and kdp (the first of equal ones)."""
    method = {v: config["variants"][v]["method"] for v in spec["variants"]}
    if comparison == COMPARISONS[0]:
        return next((v for v in spec["variants"] if method[v] == WITHOUT_KERNEL_METHOD), None)
    baselines = [v for v in spec["variants"] if method[v] not in (DENSE_METHOD, KDP_METHOD)]
    scored = [v for v in baselines if "Avg" in summary.get((model, v), {})]
    return max(scored, key=lambda v: summary[(model, v)]["Avg"], default=None)


def _difference(summary: dict, resampled: dict, model: str, variant: str, reference: str, comparison: str
                ) -> dict[str, Any]:
    entry = {"model": model, "variant": variant, "comparison": comparison, "reference": reference,
             "value": summary[(model, variant)]["Avg"] - summary[(model, reference)]["Avg"],
             "ci": None, "p_value": None, "p_holm": None, "significant": None}
    if (model, variant) in resampled and (model, reference) in resampled:
        drawn = resampled[(model, variant)]["Avg"] - resampled[(model, reference)]["Avg"]
        entry.update(ci=statistics.interval(drawn), p_value=statistics.paired_p_value(drawn))
    return entry


def pruned_layers(record: dict) -> str:
    """Dense-model indices a variant removed or folded, e.g. ``[6,7,8]``."""
    layers = sorted({i for first, last in record.get("blocks", []) for i in range(first, last + 1)}
                    | set(record.get("layers_removed", [])))
    return "[" + ",".join(map(str, layers)) + "]"


def _summaries(config: dict, spec: dict, rows: list[dict]) -> dict[tuple[str, str], dict[str, Any]]:
    """Avg, RP and their kin per (model, variant); values may be numbers or arrays of bootstrap replicates."""
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
    return provenance_header(config, table=name, table_version=TABLE_VERSION, formula=FORMULAS[spec["kind"]],
                             intervals=INTERVALS)


CSV_FIELDS = ["model", "variant", "label", "ratio", "benchmark", "column", "kind", "value", "stderr", "chance", "n",
              "seeds", "seed_sd", "seed_min", "seed_max", "ci_low", "ci_high", "reference", "p_value", "p_holm",
              "significant"]


def _csv(rows: list[dict], summary: dict, summary_ci: dict, spread: dict, comparisons: list[dict]) -> str:
    fields = list(CSV_FIELDS)
    if rows and "pruned_layers" in rows[0]:
        fields.insert(4, "pruned_layers")
    first = {}
    for row in rows:
        first.setdefault((row["model"], row["variant"]), row)
    lines = [{**row, **seed_columns(spread[(row["model"], row["variant"], row["benchmark"])])} for row in rows]
    for key, values in summary.items():
        for name, value in values.items():
            lines.append({**first[key], "benchmark": name, "column": name, "kind": "summary", "value": value,
                          "ci": summary_ci.get(key, {}).get(name), "stderr": None, "chance": None, "n": None,
                          **seed_columns(spread.get((*key, name)))})
    for entry in comparisons:
        name = f"Avg - {entry['comparison']}"
        lines.append({**first[(entry["model"], entry["variant"])], **entry, "benchmark": name, "column": name,
                      "kind": "paired_difference", "stderr": None, "chance": None, "n": None, "seeds": None})
    return csv_text(fields, [_with_bounds(line) for line in lines])


def _with_bounds(row: dict) -> dict:
    low, high = row.get("ci") or (None, None)
    return {**row, "ci_low": low, "ci_high": high}


def csv_text(fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """The body of every table CSV: a header row and one line per row, written by the csv module (a field holding a
    comma, quote or newline is quoted); floats to 6 significant digits, None as an empty field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields)
    writer.writerows([_csv_value(row.get(field)) for field in fields] for row in rows)
    return buffer.getvalue()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


# -- LaTeX ---------------------------------------------------------------------------------------------------------
def latex_escape(text: str) -> str:
    replacements = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "†": r"$^\dagger$"}
    return "".join(replacements.get(ch, ch) for ch in text)


def _latex(config: dict, name: str, spec: dict, rows: list[dict], summary: dict, summary_ci: dict, spread: dict,
           comparisons: list[dict]) -> str:
    columns = list(dict.fromkeys(r["column"] for r in rows))
    chance = {r["column"]: r["chance"] for r in rows}
    counts = {r["column"]: r["n"] for r in rows}
    summary_keys = list(dict.fromkeys(k for values in summary.values() for k in values))
    layers = bool(rows) and "pruned_layers" in rows[0]
    head = ["LLM", "Method", "Ratio", *(["Pruned Layers"] if layers else []), *columns, *summary_keys]
    body: list[list[str] | None] = []
    for position, model in enumerate(spec["models"]):
        if position:
            body.append(None)
        for variant in spec["variants"]:
            cells = {r["column"]: r for r in rows if r["model"] == model and r["variant"] == variant}
            if not cells:
                continue
            first = next(iter(cells.values()))
            values = [f"{100 * first['ratio']:.1f}\\%", *([first["pruned_layers"]] if layers else [])]
            values += [_with_interval(cells[c]["value"], cells[c]["ci"])
                       + _seed_mark(spread[(model, variant, cells[c]["benchmark"])]) if c in cells else "-"
                       for c in columns]
            values += [_with_interval(summary[(model, variant)].get(k), summary_ci.get((model, variant), {}).get(k))
                       + _seed_mark(spread.get((model, variant, k)))
                       + (_marks(comparisons, model, variant) if k == "Avg" else "") for k in summary_keys]
            body.append([latex_escape(model_label(config, model)), latex_escape(first["label"]), *values])
    note = "; ".join(f"{latex_escape(c)}: chance {fmt(chance[c])}, {counts[c]} items"
                     for c in columns if chance.get(c) is not None)
    note = ". ".join(part for part in (note, _interval_note(config, rows, comparisons), _seed_note(rows)) if part)
    return latex_table(config, name, str(TABLE_VERSION), FORMULAS[spec["kind"]],
                       [latex_escape(h) for h in head], body, note)


def latex_table(config: dict, name: str, version: str, formula: str, head: Sequence[str],
                body: Sequence[Sequence[str] | None], note: str = "") -> str:
    """Every table's LaTeX: provenance comments, a booktabs tabular under the spec's title and ``tab:<name>``, and an
    optional footnote. ``head``, ``body`` cells and ``note`` are LaTeX already (escape plain text with
    `latex_escape`); a ``None`` body row draws a \\midrule."""
    lines = [
        f"% {name}: generated by kdp-bench (table version {version}); do not edit.",
        *provenance_header(config, marker="%").splitlines(),
        f"% {formula}",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        f"\\caption{{{latex_escape(config['tables'][name].get('title', name))}}}",
        f"\\label{{tab:{name}}}",
        f"\\begin{{tabular}}{{{'ll' + 'r' * (len(head) - 2)}}}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
    lines += [r"\midrule" if row is None else " & ".join(row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if note:
        lines.append(f"\\par\\smallskip\\footnotesize {note}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _with_interval(value: float | None, ci: tuple[float, float] | None) -> str:
    """A value and, compactly, half the width of its interval (``45.20{\\scriptsize$\\pm$3.1}``)."""
    if value is None or ci is None:
        return fmt(value)
    width = statistics.half_width(*ci)
    return f"{fmt(value)}{{\\scriptsize$\\pm${width:.{1 if width < 100 else 0}f}}}"


def _seed_mark(values: np.ndarray | None) -> str:
    """``{\\scriptsize$\\sigma$0.8}``: the standard deviation across seeds of a value built with several."""
    if values is None or len(values) < 2:
        return ""
    sd = float(np.std(values, ddof=1))
    return f"{{\\scriptsize$\\sigma${sd:.{1 if sd < 100 else 0}f}}}"


def _seed_note(rows: list[dict]) -> str:
    counts = sorted({len(r["seed_values"]) for r in rows} - {1})
    if not counts:
        return ""
    return (f"Rows built with {' or '.join(map(str, counts))} seeds print the mean over seeds; $\\sigma$: the "
            "standard deviation across seeds (n-1; min and max in the CSV); deterministic rows are built once")


MARKS = {COMPARISONS[0]: "k", COMPARISONS[1]: "b"}


def _marks(comparisons: list[dict], model: str, variant: str) -> str:
    """``$^{k+b-}$``: the row's Avg is above w/o Kernel and below the best baseline, both differences holding."""
    held = [MARKS[c["comparison"]] + ("+" if c["value"] > 0 else "-") for c in comparisons
            if c["model"] == model and c["variant"] == variant and c["significant"]]
    return f"$^{{{''.join(held)}}}$" if held else ""


def _interval_note(config: dict, rows: list[dict], comparisons: list[dict]) -> str:
    if not any(row["ci"] for row in rows):
        return ""
    note = (f"$\\pm$: half the width of the {100 * statistics.CONFIDENCE:.0f}\\% bootstrap interval over items "
            f"({statistics.REPLICATES} resamples, paired within a model; bounds in the CSV)")
    if not any(c["p_value"] is not None for c in comparisons):
        return note
    best = dict.fromkeys((c["model"], c["reference"]) for c in comparisons if c["comparison"] == COMPARISONS[1])
    named = ", ".join(f"{latex_escape(model_label(config, m))} {latex_escape(variant_label(config, v))}"
                      for m, v in best)
    return (f"{note}. Avg marks: the paired difference from w/o Kernel (k) or the best baseline (b; {named}) "
            f"holds under Holm's correction at {100 * statistics.ALPHA:.0f}\\%, + above, - below")


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
