"""The audit as workflow outputs: audit.csv rows and verdicts, the reproduced join, the report, bad claims files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from kdp import audit, config as kdp_config
from kdp.audit_report import (
    CLAIMS_COLUMNS, OUTPUT_COLUMNS, VERDICT_ORDER, audit_claims, audit_report, audit_tables, build_audit,
    read_audit_csv,
)
from kdp.errors import UserError
from tests.latex import assert_compilable

REPO = Path(__file__).resolve().parent.parent
TABLE_FIELDS = "model,variant,label,ratio,benchmark,column,kind,value,stderr,chance,n"


@pytest.fixture(scope="module")
def embedded():
    return kdp_config.load(REPO / "config" / "config.yaml")


@pytest.fixture(scope="module")
def paper():
    return kdp_config.load(REPO / "config" / "paper.yaml")


def table_csv(path: Path, rows: list[tuple]) -> str:
    """A results/tableN.csv as kdp.tables writes it (provenance lines first)."""
    lines = ["# table: \"synthetic\"", TABLE_FIELDS]
    lines += [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def classification_rows(model: str, variant: str, label: str, ratio: float, hesw: float, avg: float, rp: float):
    return [(model, variant, label, ratio, "hellaswag", "HeSw", "accuracy", hesw, 1.0, 25, 100),
            (model, variant, label, ratio, "Avg", "Avg", "summary", avg, "", "", ""),
            (model, variant, label, ratio, "RP", "RP", "summary", rp, "", "", "")]


@pytest.fixture(scope="module")
def paper_audit(paper, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    rows = (classification_rows("llama-2-7b", "kdp", "Ours", 0.228, 70.0, 60.0, 88.0)
            + classification_rows("llama-2-7b", "kdp_peft", "Ours†", 0.3, 50.0, 45.0, 70.0))
    speed = tmp / "table10.csv"
    speed.write_text("# table: \"synthetic\"\nmodel,variant,label,quantity,value\n"
                     "llama-2-7b,sleb,SLEB,flops_g,664.38\nllama-2-7b,sleb,SLEB,change_pct,21.44\n"
                     "llama-2-7b,sleb,SLEB,flops_speedup,1.273\nllama-2-7b,sleb,SLEB,latency_speedup,1.1\n")
    frame, analogous = build_audit(paper, {"table1": table_csv(tmp / "table1.csv", rows), "table10": str(speed)})
    return frame.set_index("claim_id"), analogous


def test_audit_rows_and_known_inconsistencies(paper_audit):
    frame, _ = paper_audit
    assert list(frame.reset_index().columns) == list(OUTPUT_COLUMNS)
    # Table 10 prints ShortGPT's change as 38.06%, but (845.71 - 612.57) / 845.71 is 27.57%: the speed-up minus one.
    change = frame.loc["T10/LLaMA-2-7B/ShortGPT/Change_pct"]
    assert (change["claimed"], change["verdict"]) == ("38.06", "inconsistent")
    assert float(change["recomputed"]) == pytest.approx(27.5674, abs=1e-4)
    assert "speed-up minus one" in change["note"]
    # App F compares "the three" models but Table 10 has two.
    assert frame.loc["C37/n_models", ["claimed", "recomputed", "verdict"]].tolist() == ["3", "2", "inconsistent"]
    # A claim that holds.
    assert frame.loc["T01/LLaMA-2-7B/Ours/Avg", "verdict"] == "consistent"
    verdicts = frame["verdict"].tolist()
    assert verdicts == sorted(verdicts, key=VERDICT_ORDER.get)


def test_inconsistent_rows_sorted_by_discrepancy(paper_audit):
    frame, _ = paper_audit
    sizes = frame[frame["verdict"] == "inconsistent"]["relative_discrepancy"].abs().dropna().tolist()
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 0.5


def test_analytic_rows_are_reproduced_for_any_profile(paper_audit):
    frame, _ = paper_audit
    dense = frame.loc["T10/LLaMA-2-7B/Dense/FLOPs_G"]
    assert float(dense["reproduced"]) == pytest.approx(845.706, abs=1e-3)
    assert (dense["reproduced_verdict"], dense["reproduced_tolerance"]) == ("agrees", "±1%")
    block = frame.loc["T12/LLaMA-2-13B/Transformer Block/Params/k=3"]
    assert float(block["reproduced"]) == pytest.approx(951.613, abs=1e-3)
    assert "llama-2-13b.json" in block["reproduced_from"]


def test_paper_models_join_evaluated_cells(paper_audit):
    frame, analogous = paper_audit
    assert analogous.empty
    # A plain score gets its own row; 70.0 against the printed 65.1 is within 5 points.
    hesw = frame.loc["T01/LLaMA-2-7B/Ours/HeSw"]
    assert (hesw["claimed"], hesw["reproduced"], hesw["reproduced_verdict"]) == ("65.1", "70", "agrees")
    assert hesw["verdict"] == "not_checkable" and "results/table1.csv (llama-2-7b/kdp)" == hesw["reproduced_from"]
    # The dagger variant joins the normalised "Ours (PEFT)" row: 70.0 against 88.8 differs.
    peft = frame.loc["T01/LLaMA-2-7B/Ours (PEFT)/RP"]
    assert (peft["reproduced"], peft["reproduced_verdict"]) == ("70", "differs")
    assert frame.loc["T01/LLaMA-2-7B/Ours/RP", "reproduced_verdict"] == "agrees"  # 88.0 vs 89.9
    ratio = frame.loc["T01/LLaMA-2-7B/Ours/pruning_ratio"]
    assert float(ratio["reproduced"]) == pytest.approx(22.8) and ratio["reproduced_verdict"] == "agrees"


def test_speedup_table_joins_table10(paper_audit):
    frame, _ = paper_audit
    flops = frame.loc["T10/LLaMA-2-7B/SLEB/FLOPs_G"]
    assert (flops["reproduced"], flops["reproduced_verdict"]) == ("664.38", "agrees")
    # The paper's Change column is the speed-up minus one (27.29); a true reduction, 21.44, is 5.85 points off.
    change = frame.loc["T10/LLaMA-2-7B/SLEB/Change_pct"]
    assert (change["claimed"], change["reproduced"], change["reproduced_verdict"]) == ("27.29", "21.44", "differs")
    assert frame.loc["T10/LLaMA-2-7B/SLEB/SpeedUp_x", "reproduced_verdict"] == "agrees"  # 1.273 vs 1.27


def test_embedded_models_are_analogous_not_judged(embedded, tmp_path):
    rows = (classification_rows("smollm2-135m", "dense", "Dense", 0.0, 40.0, 40.0, 100.0)
            + classification_rows("smollm2-135m", "kdp", "Ours", 0.24, 30.0, 30.0, 75.0))
    tables = {"table1": table_csv(tmp_path / "table1.csv", rows)}
    out = {name: str(tmp_path / "results" / name) for name in ("audit.csv", "audit.tex", "audit_analogous.csv",
                                                                 "claims.csv", "claims.md")}
    audit_claims(embedded, out["claims.csv"], out["claims.md"])
    audit_tables(embedded, out["claims.csv"], tables, out["audit.csv"], out["audit.tex"], out["audit_analogous.csv"])
    frame = read_audit_csv(out["audit.csv"])
    # Only the analytic rows carry a reproduced value.
    reproduced = frame[frame["reproduced"] != ""]
    assert len(reproduced) == 10 and set(reproduced["claim_id"].str[:3]) == {"T10", "T12"}
    analogous = pd.read_csv(out["audit_analogous.csv"], comment="#", dtype=str)
    ours = analogous[analogous["variant"] == "Ours"].iloc[0]
    assert ours["this run"] == "75.0 at 24.0%" and "LLaMA-2-7B 89.9 at 22.8%" in ours["paper"]
    figure = tmp_path / "results" / "figures" / "figure1.png"
    figure.parent.mkdir(parents=True)
    figure.write_bytes(b"")
    report = tmp_path / "results" / "audit_report.md"
    audit_report(embedded, out["audit.csv"], out["audit_analogous.csv"], [str(figure)], str(report))
    text = report.read_text()
    assert "**not the paper's models**" in text and "## Analogous, not comparable" in text
    assert "](figures/figure1.png)" in text
    first = text.split("## What does not hold")[1].split("\n| ")[2]
    assert first.startswith("T12/LLaMA-2-7B/Fold Block/FLOPs")
    tex = Path(out["audit.tex"]).read_text()
    assert_compilable(tex)
    assert r"\begin{longtable}" in tex and r"T10/LLaMA-2-7B/ShortGPT/Change\_pct" in tex
    assert Path(out["audit.csv"]).read_text().startswith("# git_commit:")


def _claims_copy(tmp_path: Path) -> Path:
    target = tmp_path / "claims"
    shutil.copytree(audit.CLAIMS_DIR, target)
    return target


@pytest.mark.parametrize("old,new,message", [
    ("LLaMA-2-7B,SLEB,FLOPs_G,664.38,644", "LLaMA-2-7B,SLEB,FLOPs_G,664.38,",
     "table10.csv line 5, column 'src_line': is blank but a value is required; allowed: a number as printed"),
    ("LLaMA-2-7B,SLEB,FLOPs_G,664.38,644", "LLaMA-2-7B,SLEB,FLOPs_G,about 664,644",
     "table10.csv line 5, column 'value': 'about 664' is not a number; allowed: a number as printed"),
    ("LLaMA-2-7B,SLEB,FLOPs_G,664.38,644", "LLaMA-2-7B,SLEB,GFLOPs,664.38,644",
     "table10.csv line 5, column 'quantity': 'GFLOPs' is not allowed; allowed: FLOPs_G, Change_pct, SpeedUp_x"),
])
def test_malformed_claims_csv_is_one_line(tmp_path, old, new, message):
    claims = _claims_copy(tmp_path)
    path = claims / "table10.csv"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    with pytest.raises(UserError) as caught:
        audit.audit_paper(claims)
    assert message in str(caught.value) and str(path) in str(caught.value)
    assert "allowed:" in str(caught.value) and "\n" not in str(caught.value)


def test_paper_profile_plans_audit_from_tables_only():
    import subprocess
    import sys

    command = [sys.executable, "-m", "snakemake", "-n", "--configfile=config/paper.yaml", "--forcerun", "audit_claims",
               "--", "results/audit_report.md"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    audit_job = out.split("rule audit:")[1].split("output:")[0]
    assert "results/table1.csv" in audit_job and "results/eval/" not in audit_job
    assert "results/audit/claims.csv" in audit_job
    claims_job = out.split("rule audit_claims:")[1].split("output:")[0]
    assert "resources/claims/table01.csv" in claims_job and "results/" not in claims_job
    report_job = out.split("rule audit_report:")[1].split("output:")[0]
    assert all(f"results/figures/figure{n}.png" in report_job for n in (1, 6, 7, 8))


def test_joined_audit_keeps_the_claims_audit_rows(embedded, tmp_path):
    """The full audit's claims section is the claims-only audit, row for row (the join only adds columns)."""
    out = {name: str(tmp_path / name) for name in ("claims.csv", "claims.md", "audit.csv", "audit.tex", "a.csv")}
    audit_claims(embedded, out["claims.csv"], out["claims.md"])
    rows = (classification_rows("smollm2-135m", "kdp", "Ours", 0.24, 30.0, 30.0, 75.0))
    audit_tables(embedded, out["claims.csv"], {"table1": table_csv(tmp_path / "table1.csv", rows)}, out["audit.csv"],
                 out["audit.tex"], out["a.csv"])
    claims, joined = read_audit_csv(out["claims.csv"]), read_audit_csv(out["audit.csv"])
    claimed_rows = joined[joined["rule"] != "printed_cell"][list(CLAIMS_COLUMNS)].reset_index(drop=True)
    pd.testing.assert_frame_equal(claimed_rows, claims[list(CLAIMS_COLUMNS)])
    inconsistent = claims[claims["verdict"] == "inconsistent"]["claim_id"].tolist()
    assert inconsistent and inconsistent == joined[joined["verdict"] == "inconsistent"]["claim_id"].tolist()
    report = Path(out["claims.md"]).read_text()
    assert "## How each derived column was computed" in report and "| T01/Avg |" in report


def test_table_confidence_intervals_reach_the_verdict(paper, tmp_path):
    """A results table with ``ci_low``/``ci_high`` (per cell) is judged by the interval, not the 5-point band."""
    fields = TABLE_FIELDS + ",ci_low,ci_high"
    rows = [("llama-2-7b", "kdp", "Ours", 0.228, "hellaswag", "HeSw", "accuracy", 62.0, 1.0, 25, 100, 61.0, 63.0),
            ("llama-2-7b", "kdp", "Ours", 0.228, "mmlu", "MMLU", "accuracy", 43.0, 1.0, 25, 100, "", "")]
    path = tmp_path / "table1.csv"
    path.write_text("\n".join(["# table: \"synthetic\"", fields, *(",".join(map(str, r)) for r in rows)]) + "\n")
    frame, _ = build_audit(paper, {"table1": str(path)})
    frame = frame.set_index("claim_id")
    # HeSw: 62.0 is within 5 points of the printed 65.1, but its interval [61, 63] misses it.
    hesw = frame.loc["T01/LLaMA-2-7B/Ours/HeSw"]
    assert (hesw["reproduced_tolerance"], hesw["reproduced_verdict"]) == ("CI [61, 63]", "differs")
    mmlu = frame.loc["T01/LLaMA-2-7B/Ours/MMLU"]  # no interval printed: the fixed band
    assert (mmlu["reproduced_tolerance"], mmlu["reproduced_verdict"]) == ("±5", "agrees")
