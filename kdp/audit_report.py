"""The claims audit as workflow outputs. Two steps:

  ``audit_claims``  the paper against itself, from the claims folder and the shipped model configs alone
                    (``results/audit/claims.csv`` and its report section ``claims.md``): seconds, no tables;
  ``audit_tables``  that audit joined with this run's tables (``results/audit.csv``, ``audit.tex``), and
  ``audit_report``  the readable ``results/audit_report.md``.

Three kinds of numbers sit beside each claim:
  recomputed  from the paper's own other numbers (``kdp.audit``: interval arithmetic over printed digits);
  reproduced  from this project: analytic FLOPs/parameters of the paper's model configs (valid for any run
              profile), and evaluated cells of the configured tables, but only where a configured model names
              the paper model it is (``models.<m>.paper_name``) and the variant the paper row it reproduces
              (``variants.<v>.paper_method``);
  analogous   the same table cells measured on models that are not the paper's (the embedded default): shown
              side by side in the report, never judged.

The join is deliberately small: config table ``tableN`` against the paper's Table N, a model by ``paper_name``,
a variant by ``paper_method`` (printed with its dagger, as in the configs, or in the claims' normalised form),
a cell by its printed column name. The audit reads the table CSVs rather than every variant's evaluation, so
it needs only what the configured tables already need.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kdp import audit, flops
from kdp.audit import CONSISTENT, INCONSISTENT, NOT_CHECKABLE, QUESTIONABLE, ClaimsTables, Tolerance
from kdp.io import atomic_path, sha256_file, write_text
from kdp.provenance import provenance_header
from kdp.tables import latex_escape

AUDIT_OUTPUT_VERSION = 1
ANALYTIC_MODELS = ("LLaMA-2-7B", "LLaMA-2-13B")  # the two models Tables 10 and 12 print
SUMMARY_QUANTITIES = ("RP", "RP(PPL)", "RP(Rouge)")
OUTPUT_COLUMNS = (
    "claim_id", "source", "model", "method", "quantity", "claimed", "recomputed", "tolerance", "verdict",
    "reproduced", "reproduced_tolerance", "reproduced_verdict", "reproduced_from", "relative_discrepancy", "rule",
    "note",
)
CLAIMS_COLUMNS = tuple(c for c in OUTPUT_COLUMNS if not c.startswith("reproduced"))


# ------------------------------------------------------------------------------------------- reproduced values


def analytic_reproduced(claims: ClaimsTables) -> pd.DataFrame:
    """Dense FLOPs (Table 10) and Transformer-block cost (Table 12) of LLaMA-2-7B/13B, counted from the model
    configs in ``resources/model_configs`` by ``kdp.flops`` (the same for every run profile)."""
    rows = []
    for model in ANALYTIC_MODELS:
        key = audit.model_config_key(model)
        config = flops.load_model_config(key)
        origin = f"kdp.flops analytic count of resources/model_configs/{key}.json"
        rows.append({"table": "T10", "model": model, "method": "Dense", "quantity": "FLOPs_G",
                     "value": flops.model_flops(config) / 1e9, "reproduced_from": origin})
        for k in sorted(_table12_block_sizes(claims)):
            gflops, params = flops.block_cost(config, k)
            for quantity, value in (("FLOPs", gflops / 1e9), ("Params", params / 1e6)):
                rows.append({"table": "T12", "model": model, "method": "Transformer Block",
                             "quantity": f"{quantity} (k={k})", "value": value, "reproduced_from": origin})
    return pd.DataFrame(rows)


def _table12_block_sizes(claims: ClaimsTables) -> set[int]:
    return {int(k) for k in claims["table12"]["k"]} if "table12" in claims else set()


def _method_names(claims: ClaimsTables, name: str) -> dict[str, str]:
    """Printed row name (with its dagger) and normalised name, both to the claims' normalised method."""
    frame = claims[name]
    printed = next((c for c in ("method_printed", "setting_printed") if c in frame.columns), None)
    names = {m: m for m in frame["method"]}
    if printed:
        names.update(zip(frame[printed], frame["method"]))
    return names


def _read_table_csv(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#", keep_default_na=False)


# Speed-up tables (kind speedup) print one row per quantity; these are the ones Table 10 prints.
SPEEDUP_QUANTITIES = {"flops_g": "FLOPs_G", "change_pct": "Change_pct", "flops_speedup": "SpeedUp_x"}


def table_cells(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """(model, variant, quantity, value, ratio, ci_low, ci_high) of a rendered table CSV: a score table's printed
    columns, or a speed-up table's Table 10 quantities; other table kinds have no cell the paper prints as a
    number here. ``ci_low``/``ci_high`` are the cell's confidence interval where the table prints one."""
    columns = set(frame.columns)
    if {"column", "value"} <= columns:
        return [{"model": r["model"], "variant": r["variant"], "quantity": r["column"], "value": float(r["value"]),
                 "ratio": float(r["ratio"]) if r.get("ratio", "") != "" else None, **_interval(r)}
                for r in frame.to_dict("records")]
    if {"quantity", "value"} <= columns:
        return [{"model": r["model"], "variant": r["variant"], "quantity": SPEEDUP_QUANTITIES[r["quantity"]],
                 "value": float(r["value"]), "ratio": None, **_interval(r)}
                for r in frame.to_dict("records") if r["quantity"] in SPEEDUP_QUANTITIES]
    return []


def _interval(record: Mapping[str, Any]) -> dict[str, float]:
    """The cell's ``ci_low``/``ci_high`` as numbers, NaN where the table has none (the join falls back to the
    fixed tolerance band then)."""
    return {c: float(record[c]) if str(record.get(c, "")).strip() not in ("", "nan") else math.nan
            for c in audit.reproduced.INTERVAL_COLUMNS}


def evaluated_values(config: dict, claims: ClaimsTables, table_csvs: Mapping[str, str | Path]
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reproduced, analogous) cells of the configured tables (``{table name: csv path}``)."""
    reproduced, analogous = [], []
    for table, path in table_csvs.items():
        name = f"table{int(table.removeprefix('table')):02d}"
        if name not in claims or not {"method", "model"} <= set(claims[name].columns):
            continue
        methods = _method_names(claims, name)
        for cell in table_cells(_read_table_csv(path)):
            if cell["model"] not in config["models"] or cell["variant"] not in config["variants"]:
                continue  # a table rendered under another config
            model_spec = config["models"][cell["model"]]
            paper_method = methods.get(config["variants"][cell["variant"]].get("paper_method", ""))
            if paper_method is None:
                continue
            origin = f"results/{table}.csv ({cell['model']}/{cell['variant']})"
            if model_spec.get("paper_name"):
                reproduced += _reproduced_cells(cell, f"T{name[-2:]}", paper_method, model_spec["paper_name"],
                                                origin, claims[name])
            elif cell["quantity"] in SUMMARY_QUANTITIES and paper_method != "Dense":  # dense RP is 100 by definition
                analogous.append({**cell, "table": f"T{name[-2:]}", "method": paper_method, "config_table": table})
    return pd.DataFrame(reproduced), pd.DataFrame(analogous)


def _reproduced_cells(cell: dict, table: str, method: str, paper_model: str, origin: str,
                      printed: pd.DataFrame) -> list[dict]:
    base = {"table": table, "model": paper_model, "method": method, "reproduced_from": origin}
    rows = [{**base, "quantity": cell["quantity"], "value": cell["value"],
             **{c: cell.get(c, math.nan) for c in audit.reproduced.INTERVAL_COLUMNS}}]
    if "pruning_ratio" in printed.columns and cell["quantity"] == "Avg" and cell["ratio"] is not None:
        rows.append({**base, "quantity": "pruning_ratio", "value": 100 * cell["ratio"]})  # printed in percent
    return rows


def analogous_rows(analogous: pd.DataFrame, claims: ClaimsTables, config: dict) -> list[dict]:
    """The embedded RP beside every paper model's RP for the same paper row: context, not a comparison."""
    rows = []
    for record in analogous.to_dict("records"):
        name = f"table{record['table'][1:]}"
        frame = claims[name]
        hits = frame[(frame["method"] == record["method"]) & (frame["benchmark"] == record["quantity"])]
        paper = "; ".join(f"{r['model']} {r['value_text']}" + (f" at {r['pruning_ratio_text']}%" if
                                                               r.get("pruning_ratio_text") else "")
                          for r in hits.to_dict("records") if r["value_text"])
        ratio = "" if record["ratio"] is None or pd.isna(record["ratio"]) else f" at {100 * record['ratio']:.1f}%"
        rows.append({"table": record["config_table"], "model": config["models"][record["model"]].get(
            "label", record["model"]), "variant": config["variants"][record["variant"]].get("label", record["variant"]),
            "paper row": record["method"], "quantity": record["quantity"],
            "this run": f"{record['value']:.1f}{ratio}", "paper": paper or "-"})
    return rows


def reproduction_tolerances(config: dict) -> dict[str, Tolerance]:
    settings = config.get("audit", {})
    tolerances: dict[str, Tolerance] = {}
    if "perplexity_relative" in settings:
        tolerances.update({q: Tolerance("relative", settings["perplexity_relative"]) for q in ("WIKI", "C4")})
    if "accuracy_points" in settings:
        tolerances["*"] = Tolerance("absolute", settings["accuracy_points"])
    return tolerances


# ------------------------------------------------------------------------------------------------ the audit table


def claims_audit(claims_dir: str | Path = audit.CLAIMS_DIR) -> pd.DataFrame:
    """The paper against itself: every rule that applies to the folder's paper, sorted for reading."""
    return sort_by_discrepancy(audit.audit_paper(claims_dir))[list(CLAIMS_COLUMNS)]


def build_audit(config: dict, table_csvs: Mapping[str, str | Path], claims_dir: str | Path = audit.CLAIMS_DIR,
                checked: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(audit rows with reproduced values, analogous cells); ``checked`` is the claims audit when already made
    (``results/audit/claims.csv``), so the joined audit holds exactly its rows."""
    claims = audit.load_claims(claims_dir)
    checked = claims_audit(claims_dir) if checked is None else checked
    checked = checked.assign(reproduced="") if "reproduced" not in checked.columns else checked
    measured, analogous = evaluated_values(config, claims, table_csvs)
    reproduced = pd.concat([analytic_reproduced(claims), measured], ignore_index=True)
    joined = audit.attach_reproduced(checked, reproduced, reproduction_tolerances(config), claims)
    return sort_by_discrepancy(joined)[list(OUTPUT_COLUMNS)], analogous


VERDICT_ORDER = {INCONSISTENT: 0, QUESTIONABLE: 1, NOT_CHECKABLE: 2, CONSISTENT: 3}


def sort_by_discrepancy(frame: pd.DataFrame) -> pd.DataFrame:
    """Inconsistent rows first, largest relative discrepancy first; ties keep the rules' order."""
    keys = pd.DataFrame({
        "verdict": frame["verdict"].map(VERDICT_ORDER).fillna(len(VERDICT_ORDER)),
        "size": -pd.to_numeric(frame["relative_discrepancy"], errors="coerce").abs().fillna(-1),
    })
    order = keys.sort_values(["verdict", "size"], kind="stable").index
    return frame.loc[order].reset_index(drop=True)


def claims_fingerprint(claims_dir: str | Path = audit.CLAIMS_DIR) -> dict[str, str]:
    files = [*Path(claims_dir).glob("*.csv"), *Path(claims_dir).glob(audit.claims.PAPER_FILE)]
    return {path.name: sha256_file(path)[:16] for path in sorted(files)}


def write_audit_csv(frame: pd.DataFrame, path: str | Path, header: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(header)
            frame.to_csv(handle, index=False, float_format="%.6g")


def read_audit_csv(path: str | Path) -> pd.DataFrame:
    frame = pd.read_csv(path, comment="#", keep_default_na=False, dtype=str)
    frame["relative_discrepancy"] = pd.to_numeric(frame["relative_discrepancy"], errors="coerce")
    frame["reproduced"] = frame["reproduced"] if "reproduced" in frame.columns else ""
    return frame


# ------------------------------------------------------------------------------------------------------ LaTeX


def audit_latex(frame: pd.DataFrame, comments: Sequence[str]) -> str:
    """The inconsistent rows as a booktabs longtable, largest discrepancy first, plus the verdict counts."""
    lines = [*(f"% {line}" for line in comments),
             r"\begin{longtable}{p{0.22\linewidth}p{0.12\linewidth}rp{0.14\linewidth}rp{0.24\linewidth}}",
             f"\\caption{{Claims audit: {_counts(frame)}}}\\label{{tab:audit}}\\\\",
             r"\toprule", r"Claim & Source & Claimed & Recomputed & Off by & Note \\", r"\midrule", r"\endhead"]
    for row in frame[frame["verdict"] == INCONSISTENT].to_dict("records"):
        cells = (row["claim_id"], row["source"], row["claimed"], row["recomputed"], _off_by(row),
                 _short(row["note"], 90))
        lines.append(" & ".join(latex_escape(str(c)) for c in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{longtable}"]
    return "\n".join(lines) + "\n"


def _off_by(row: Mapping[str, Any]) -> str:
    size = row["relative_discrepancy"]
    return "" if size is None or (isinstance(size, float) and math.isnan(size)) else f"{100 * float(size):+.1f}%"


def _short(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------------- Markdown


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def paper_models(config: dict) -> dict[str, str]:
    return {m: spec["paper_name"] for m, spec in config["models"].items() if spec.get("paper_name")}


def _counts(frame: pd.DataFrame) -> str:
    counts = frame["verdict"].value_counts()
    return (f"{counts.get(INCONSISTENT, 0)} inconsistent, {counts.get(QUESTIONABLE, 0)} questionable, "
            f"{counts.get(CONSISTENT, 0)} consistent, {counts.get(NOT_CHECKABLE, 0)} not checkable")


def claims_sections(frame: pd.DataFrame) -> list[str]:
    """The paper against itself: what does not hold, what needs a second look, the procedure each derived column
    follows, and what holds, by rule (the report section of ``results/audit/claims.md``)."""
    return [*_inconsistent_section(frame), *_questionable_section(frame), *_procedures_section(frame),
            *_holds_section(frame)]


def claims_markdown(frame: pd.DataFrame, paper: audit.Paper, claims_dir: str, provenance_lines: Sequence[str]) -> str:
    """``results/audit/claims.md``: the claims audit alone, from the claims folder and the model configs."""
    lines = [f"# Claims audit: {paper.title}", "",
             f"Generated by kdp-bench from `{claims_dir}` ({paper.source}) and the model configs in "
             "`resources/model_configs`, without any run of this project. Each row of `claims.csv` is one printed "
             "cell or text claim. **recomputed**: the value the paper's own other numbers give (interval arithmetic "
             "over the printed digits, so rounding alone never fails a row; **tolerance** is that rounding slack).",
             "", f"**{_counts(frame)}** (of {len(frame)} rows).", ""]
    lines += claims_sections(frame)
    lines += ["## Provenance", "", *(f"- {line}" for line in provenance_lines), ""]
    return "\n".join(lines)


def audit_markdown(frame: pd.DataFrame, analogous: Sequence[Mapping[str, Any]], config: dict,
                   figures: Mapping[str, str], provenance_lines: Sequence[str], title: str = "") -> str:
    """What holds, what does not and by how much (largest first), what this run reproduces, and the figures."""
    lines = [f"# Claims audit: {title or audit.Paper().title}", "",
             "Generated by kdp-bench from the claims folder (the paper's printed numbers) and this run's tables. "
             "Each row is one printed cell or text claim. **recomputed**: the value the paper's own other numbers "
             "give (interval arithmetic over the printed digits, so rounding alone never fails a row; the "
             "**tolerance** column is that rounding slack). **reproduced**: this project's value. Read "
             "`audit.csv` (one row per claim, same order) for every row.", "",
             f"**{_counts(frame)}** (of {len(frame)} rows).", ""]
    lines += _profile_section(config)
    lines += [*_inconsistent_section(frame), *_questionable_section(frame), *_procedures_section(frame)]
    lines += _reproduced_section(frame)
    lines += _analogous_section(analogous)
    lines += _holds_section(frame)
    lines += _figures_section(figures)
    lines += ["## Provenance", "", *(f"- {line}" for line in provenance_lines), ""]
    return "\n".join(lines)


def _profile_section(config: dict) -> list[str]:
    mapped = paper_models(config)
    if mapped:
        names = ", ".join(f"`{m}` = {p}" for m, p in mapped.items())
        return ["## Which numbers are comparable", "",
                f"This run's models name the paper models they are ({names}); their evaluated table cells are "
                "joined to the paper's cells and judged within the reproduction tolerance.", ""]
    labels = ", ".join(spec.get("label", m) for m, spec in config["models"].items())
    return ["## Which numbers are comparable", "",
            f"This run's models ({labels}) are **not the paper's models**. Their RP (retained performance) is "
            "shown under *Analogous, not comparable* beside the paper's, never with a verdict: other models, "
            "other data and other benchmarks say nothing about LLaMA-2-7B on MMLU. Only the analytic FLOPs and "
            "parameter counts of the paper's model configs are reproduced here (they hold for any profile). "
            "To judge evaluated cells, give each model `paper_name` and each variant `paper_method` "
            "(config/paper.yaml does).", ""]


def _inconsistent_section(frame: pd.DataFrame) -> list[str]:
    bad = frame[frame["verdict"] == INCONSISTENT]
    rows = [(r["claim_id"], r["source"], r["claimed"], r["recomputed"], r["tolerance"] or "-", _off_by(r) or "-",
             _short(r["note"], 200)) for r in bad.to_dict("records")]
    return ["## What does not hold (largest discrepancy first)", "",
            "*Off by* = (claimed - recomputed) / recomputed; set/count findings have no single size and come last.",
            "", *_md_table(("claim", "source", "claimed", "recomputed", "tolerance", "off by", "note"), rows), ""]


def _questionable_section(frame: pd.DataFrame) -> list[str]:
    odd = frame[frame["verdict"] == QUESTIONABLE]
    if odd.empty:
        return []
    rows = [(r["claim_id"], r["source"], r["recomputed"], _short(r["note"], 120)) for r in odd.to_dict("records")]
    return ["## Worth a second look (questionable)", "",
            "Nothing printed contradicts these, but they run against what pruning does (a pruned row above its "
            "dense model, a retention above 100).", "",
            *_md_table(("claim", "source", "found", "note"), rows), ""]


def _procedures_section(frame: pd.DataFrame) -> list[str]:
    """One line per derived column: the procedure inferred from its rows, and whether it is enforced."""
    columns = frame[(frame["rule"] == "derived_column_procedure") & frame["claim_id"].str.count("/").eq(2)]
    if columns.empty:
        return []
    rows = [(r["claim_id"].rsplit("/", 1)[0], r["claimed"], r["recomputed"], r["verdict"], _short(r["note"], 160))
            for r in columns.to_dict("records")]
    return ["## How each derived column was computed", "",
            "Inferred from the rows: the procedure (formula on the printed inputs, rounded or truncated) that "
            "reproduces the printed digits of at least 90% of at least 5 rows. Where the rows tell it apart from "
            "computing on unrounded inputs it is enforced, and its exceptions are listed above as inconsistent.", "",
            *_md_table(("column", "rows", "inferred procedure", "verdict", "counts"), rows), ""]


def _reproduced_section(frame: pd.DataFrame) -> list[str]:
    done = frame[frame["reproduced"].astype(str) != ""].copy()
    if done.empty:
        return ["## Reproduced by this run", "", "No claimed cell has a reproduced value in this run.", ""]
    claimed = pd.to_numeric(done["claimed"], errors="coerce")
    done["gap"] = (pd.to_numeric(done["reproduced"], errors="coerce") - claimed) / claimed.abs()
    done = done.sort_values("gap", key=lambda s: -s.abs().fillna(0), kind="stable")
    rows = [(r["claim_id"], r["claimed"], r["reproduced"], f"{100 * r['gap']:+.2f}%", r["reproduced_tolerance"],
             r["reproduced_verdict"], r["reproduced_from"]) for r in done.to_dict("records")]
    agrees = int((done["reproduced_verdict"] == "agrees").sum())
    return ["## Reproduced by this run", "", f"{agrees} of {len(done)} reproduced cells agree within tolerance.", "",
            *_md_table(("claim", "claimed", "reproduced", "gap", "tolerance", "verdict", "from"), rows), ""]


def _analogous_section(analogous: Sequence[Mapping[str, Any]]) -> list[str]:
    if not analogous:
        return []
    headers = ("table", "model", "variant", "paper row", "quantity", "this run", "paper")
    return ["## Analogous, not comparable", "",
            "The same quantity on this run's models beside the paper's, at each row's own pruning ratio. No "
            "verdict: the models, data and benchmarks differ.", "",
            *_md_table(headers, ([row[h] for h in headers] for row in analogous)), ""]


def _holds_section(frame: pd.DataFrame) -> list[str]:
    summary = frame.groupby("rule", sort=False)["verdict"].value_counts().unstack(fill_value=0)
    families = {name: rule.family for name, rule in audit.RULES.items()}
    rows = [(families.get(rule, ""), rule, *(int(row.get(v, 0)) for v in (CONSISTENT, INCONSISTENT, QUESTIONABLE,
                                                                          NOT_CHECKABLE)))
            for rule, row in summary.iterrows()]
    rows.sort(key=lambda r: (-r[3], r[0], r[1]))
    return ["## What holds, by rule", "",
            *_md_table(("family", "rule", "consistent", "inconsistent", "questionable", "not checkable"), rows), ""]


def _figures_section(figures: Mapping[str, str]) -> list[str]:
    if not figures:
        return []
    lines = ["## Figures", ""]
    for title, path in figures.items():
        lines += [f"### {title}", "", f"![{title}]({path}) ([PDF]({Path(path).with_suffix('.pdf').as_posix()}))", ""]
    return lines


# ---------------------------------------------------------------------------------------------- workflow steps


def _provenance_lines(config: dict, claims_dir: str | Path) -> list[str]:
    header = provenance_header(config, audit_version=AUDIT_OUTPUT_VERSION, claims=claims_fingerprint(claims_dir))
    return [line.removeprefix("# ") for line in header.splitlines()]


def audit_claims(config: dict, out_csv: str, out_md: str, claims_dir: str | Path = audit.CLAIMS_DIR) -> None:
    """Rule ``audit_claims``: the paper against itself (``results/audit/claims.csv`` and its report section),
    from the claims folder and the shipped model configs only."""
    frame = claims_audit(claims_dir)
    provenance = _provenance_lines(config, claims_dir)
    write_audit_csv(frame, out_csv, "".join(f"# {line}\n" for line in provenance))
    paper = audit.claims.load_paper(Path(claims_dir))
    write_text(out_md, claims_markdown(frame, paper, _shown(claims_dir), provenance))


def _shown(claims_dir: str | Path) -> str:
    """The folder as the README names it: relative to the checkout when inside it."""
    path = Path(claims_dir).resolve()
    root = audit.CLAIMS_DIR.parents[1]
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def audit_tables(config: dict, claims_csv: str, table_csvs: Mapping[str, str], out_csv: str, out_tex: str,
                 out_analogous: str, claims_dir: str | Path = audit.CLAIMS_DIR) -> None:
    """Rule ``audit``: the claims audit (``claims_csv``, rows unchanged) joined with this run's tables: audit.csv
    (every row), audit.tex (the inconsistent ones) and the analogous cells."""
    checked = read_audit_csv(claims_csv)[list(CLAIMS_COLUMNS)]
    frame, analogous = build_audit(config, table_csvs, claims_dir, checked)
    provenance = _provenance_lines(config, claims_dir)
    header = "".join(f"# {line}\n" for line in provenance)
    write_audit_csv(frame, out_csv, header)
    write_text(out_tex, audit_latex(frame, provenance))
    claims = audit.load_claims(claims_dir)
    rows = analogous_rows(analogous, claims, config) if not analogous.empty else []
    write_audit_csv(pd.DataFrame(rows, columns=["table", "model", "variant", "paper row", "quantity", "this run",
                                                "paper"]), out_analogous, header)


def audit_report(config: dict, audit_csv: str, analogous_csv: str, figure_pngs: Sequence[str], out_md: str,
                 claims_dir: str | Path = audit.CLAIMS_DIR) -> None:
    """Rule ``audit_report``: the Markdown report beside audit.csv, figures linked relative to it."""
    frame = read_audit_csv(audit_csv)
    analogous = pd.read_csv(analogous_csv, comment="#", keep_default_na=False, dtype=str).to_dict("records")
    here = Path(out_md).parent
    figures = {_figure_title(config, Path(p).stem): Path(p).relative_to(here).as_posix()
               if Path(p).is_relative_to(here) else p for p in figure_pngs}
    provenance = [line for line in Path(audit_csv).read_text(encoding="utf-8").splitlines() if line.startswith("# ")]
    title = audit.claims.load_paper(Path(claims_dir)).title
    write_text(out_md, audit_markdown(frame, analogous, config, figures, [p[2:] for p in provenance], title))


def _figure_title(config: dict, name: str) -> str:
    spec = config.get("figures", {}).get(name, {})
    return f"{name.replace('figure', 'Figure ')}: {spec['title']}" if spec.get("title") else name
