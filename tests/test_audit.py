"""Audit rules on small hand-made claims tables (one consistent and one planted case each), the audit of the
paper's own numbers, malformed inputs, and the reproduced-value join."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import pandas as pd
import pytest

from kdp import audit
from kdp.audit import CONSISTENT, INCONSISTENT, NOT_CHECKABLE, QUESTIONABLE
from kdp.errors import UserError

# --------------------------------------------------------------------------------------- fixtures


def write(directory: Path, name: str, rows: list[tuple]) -> None:
    with open(directory / f"{name}.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(audit.SCHEMAS[name].columns)
        writer.writerows(rows)


def t01(model: str, method: str, ratio: str, cells: dict[str, str], line: int = 1) -> list[tuple]:
    return [(model, method, "", ratio, bench, value, line) for bench, value in cells.items()]


def claim(claim_id: str, value: str, text: str = "", quantity: str = "q") -> tuple:
    return (claim_id, "Sec X", text, quantity, value, "")


def run(directory: Path, rule: str, **tables: list[tuple]) -> dict[str, str]:
    for name, rows in tables.items():
        write(directory, name, rows)
    frame = audit.run_rules(audit.load_claims(directory, list(tables)), [rule])
    return dict(zip(frame["claim_id"], frame["verdict"]))


def run_frame(directory: Path, rule: str, **tables: list[tuple]) -> pd.DataFrame:
    for name, rows in tables.items():
        write(directory, name, rows)
    return audit.run_rules(audit.load_claims(directory, list(tables)), [rule]).set_index("claim_id")


# ------------------------------------------------------------------------------- table arithmetic


def test_avg_is_mean_of_benchmarks(tmp_path):
    rows = (t01("LLaMA-2-7B", "Dense", "0.0", {"A": "10.0", "B": "20.0", "Avg": "15.00"})
            + t01("LLaMA-2-7B", "LaCo", "27.1", {"A": "8.0", "B": "", "Avg": "8.00"})
            + t01("LLaMA-2-7B", "Bad", "27.1", {"A": "8.0", "B": "9.0", "Avg": "8.60"}))
    frame = run_frame(tmp_path, "avg_is_mean_of_benchmarks", table01=rows)
    assert frame.loc["T01/LLaMA-2-7B/Dense/Avg", "verdict"] == CONSISTENT
    assert frame.loc["T01/LLaMA-2-7B/LaCo/Avg", "verdict"] == CONSISTENT
    assert "'-'" in frame.loc["T01/LLaMA-2-7B/LaCo/Avg", "note"]
    assert frame.loc["T01/LLaMA-2-7B/Bad/Avg", "verdict"] == INCONSISTENT


def test_rp_is_avg_over_reference(tmp_path):
    rows = (t01("LLaMA-2-7B", "Dense", "0.0", {"A": "10.0", "B": "20.0", "Avg": "15.00", "RP": "100.0"})
            + t01("LLaMA-2-7B", "Ours", "20.0", {"A": "9.0", "B": "15.0", "Avg": "12.00", "RP": "80.0"})
            + t01("LLaMA-2-7B", "LaCo", "20.0", {"A": "9.0", "B": "", "Avg": "9.00", "RP": "60.0"})
            + t01("LLaMA-2-7B", "Bad", "20.0", {"A": "9.0", "B": "15.0", "Avg": "12.00", "RP": "81.0"}))
    frame = run_frame(tmp_path, "rp_is_avg_over_reference", table01=rows)
    assert frame.loc["T01/LLaMA-2-7B/Ours/RP", "verdict"] == CONSISTENT
    assert frame.loc["T01/LLaMA-2-7B/Bad/RP", "verdict"] == INCONSISTENT
    # like for like, LaCo keeps 9/10 of the dense score on the one benchmark it reports
    assert "RP would be 90.0" in frame.loc["T01/LLaMA-2-7B/LaCo/RP", "note"]


def _generation_rows(ours_rp_ppl: str) -> tuple[list[tuple], list[tuple]]:
    scores = {  # (model, method) -> WIKI PPL, Xsum ROUGE
        ("m1", "Dense"): ("5.0", "20.0"), ("m2", "Dense"): ("10.0", "10.0"),
        ("m1", "Ours"): ("10.0", "10.0"), ("m2", "Ours"): ("40.0", "10.0"),
        ("m1", "SLEB"): ("10.0", "10.0"), ("m2", "SLEB"): ("20.0", "5.0"),
    }
    table02 = []
    for (model, method), (ppl, rouge) in scores.items():
        table02.append((model, method, "WIKI", "PPL", ppl, 1))
        table02.append((model, method, "Xsum", "ROUGE-1", rouge, 1))
    # pooled: PPL 15/50 and ROUGE 20/30 for Ours (per-model means would be 37.5 and 75.0)
    table02 += [("all", "Ours", "RP(PPL)", "RP", ours_rp_ppl, 1), ("all", "Ours", "RP(Rouge)", "RP", "66.7", 1),
                ("all", "SLEB", "RP(PPL)", "RP", "50.0", 1), ("all", "SLEB", "RP(Rouge)", "RP", "50.0", 1)]
    table07 = [("m3", "Dense", "WIKI", "PPL", "10.0", 2), ("m3", "Dense", "C4", "PPL", "10.0", 2),
               ("m3", "Ours", "WIKI", "PPL", "20.0", 2), ("m3", "Ours", "C4", "PPL", "10.0", 2),
               ("m3", "Ours", "RP(PPL)", "RP", "75.0", 2)]  # mean of ratios (ratio of sums: 66.7)
    return table02, table07


def test_generation_rp_definition(tmp_path):
    table02, table07 = _generation_rows("30.0")
    verdicts = run(tmp_path, "generation_rp_definition", table02=table02, table07=table07)
    assert verdicts["T02/all/Ours/RP(PPL)"] == CONSISTENT and verdicts["T02/all/Ours/RP(Rouge)"] == CONSISTENT
    assert verdicts["T07/m3/Ours/RP(PPL)"] == CONSISTENT
    assert verdicts["T02-T07/RP definition"] == INCONSISTENT
    table02, _ = _generation_rows("35.0")
    verdicts = run(tmp_path, "generation_rp_definition", table02=table02)
    assert verdicts["T02/all/Ours/RP(PPL)"] == INCONSISTENT and verdicts["T02/all/SLEB/RP(PPL)"] == CONSISTENT


def _t10(*rows: tuple[str, str, str, str, str]) -> list[tuple]:
    out = []
    for model, method, gflops, change, speedup in rows:
        out += [(model, method, "FLOPs_G", gflops, 1), (model, method, "Change_pct", change, 1),
                (model, method, "SpeedUp_x", speedup, 1)]
    return out


def test_flops_change_and_speedup(tmp_path):
    table10 = _t10(("LLaMA-2-7B", "Dense", "845.71", "", ""), ("LLaMA-2-7B", "SLEB", "664.38", "21.44", "1.27"),
                   ("LLaMA-2-7B", "ShortGPT", "612.57", "38.06", "1.40"))
    frame = run_frame(tmp_path, "flops_change_is_relative_reduction", table10=table10)
    assert frame.loc["T10/LLaMA-2-7B/SLEB/Change_pct", "verdict"] == CONSISTENT
    assert frame.loc["T10/LLaMA-2-7B/ShortGPT/Change_pct", "verdict"] == INCONSISTENT
    assert "speed-up minus one" in frame.loc["T10/LLaMA-2-7B/ShortGPT/Change_pct", "note"]
    verdicts = run(tmp_path, "speedup_is_flops_ratio", table10=table10)
    assert verdicts["T10/LLaMA-2-7B/SLEB/SpeedUp_x"] == CONSISTENT
    assert verdicts["T10/LLaMA-2-7B/ShortGPT/SpeedUp_x"] == INCONSISTENT


def test_dense_flops_and_whole_layer_removal(tmp_path):
    table10 = _t10(("LLaMA-2-7B", "Dense", "845.71", "", ""), ("LLaMA-2-13B", "Dense", "1650.00", "", ""),
                   ("LLaMA-2-7B", "SLEB", "664.38", "", ""), ("LLaMA-2-7B", "ShortGPT", "620.00", "", ""))
    verdicts = run(tmp_path, "dense_flops_analytic", table10=table10)
    assert verdicts == {"T10/LLaMA-2-7B/Dense/FLOPs_G": CONSISTENT, "T10/LLaMA-2-13B/Dense/FLOPs_G": INCONSISTENT}
    frame = run_frame(tmp_path, "variant_flops_is_whole_layer_removal", table10=table10)
    assert frame.loc["T10/LLaMA-2-7B/SLEB/FLOPs_G", "verdict"] == CONSISTENT
    assert "nearest whole number 7" in frame.loc["T10/LLaMA-2-7B/SLEB/FLOPs_G", "note"]
    assert frame.loc["T10/LLaMA-2-7B/ShortGPT/FLOPs_G", "verdict"] == INCONSISTENT


def test_sliced_flops_width(tmp_path):
    # width 3072 with two shortcut matrices per layer: 711.59 GFLOPs
    table10 = _t10(("LLaMA-2-7B", "SliceGPT", "711.59", "", ""), ("LLaMA-2-13B", "SliceGPT", "1392.89", "", ""))
    frame = run_frame(tmp_path, "sliced_flops_width", table10=table10)
    assert set(frame["verdict"]) == {NOT_CHECKABLE}
    assert frame.loc["T10/LLaMA-2-7B/SliceGPT/FLOPs_G", "recomputed"] == "width 3072"
    assert "2 shortcut matrices: width 3072 (25.0% sliced)" in frame.loc["T10/LLaMA-2-7B/SliceGPT/FLOPs_G", "note"]
    assert frame.loc["T10/LLaMA-2-13B/SliceGPT/FLOPs_G", "recomputed"] == "no width fits"


def test_ratio_matches_layer_count(tmp_path):
    table01 = (t01("LLaMA-2-7B", "SLEB", "21.0", {"A": "1.0"}) + t01("LLaMA-2-7B", "ShortGPT", "20.1", {"A": "1.0"}))
    table10 = _t10(("LLaMA-2-7B", "Dense", "845.71", "", ""), ("LLaMA-2-7B", "SLEB", "664.38", "", ""))
    frame = run_frame(tmp_path, "ratio_matches_layer_count", table01=table01, table10=table10)
    assert frame.loc["T01/LLaMA-2-7B/SLEB/pruning_ratio", "verdict"] == CONSISTENT
    assert "Table 10" in frame.loc["T01/LLaMA-2-7B/SLEB/pruning_ratio", "note"]
    assert frame.loc["T01/LLaMA-2-7B/ShortGPT/pruning_ratio", "verdict"] == INCONSISTENT


def _fold_table12(model: str, fold_gflops: str, fold_mparams: str) -> list[tuple]:
    return [(model, "Fold Block", "FLOPs", 2, fold_gflops, 1), (model, "Fold Block", "Params", 2, fold_mparams, 1)]


def test_ratio_from_table5_blocks(tmp_path):
    # two LLaMA-2-7B layers are 6.007% of the model; minus one 12.40 M fold, 5.823%
    table01 = (t01("LLaMA-2-7B", "Ours", "5.8", {"A": "1.0"}) + t01("LLaMA-2-7B", "w/o Kernel", "6.0", {"A": "1.0"})
               + t01("LLaMA-2-7B", "Ours (PEFT)", "5.0", {"A": "1.0"}))
    table05 = [("LLaMA-2-7B", "5.8", 1, 6, 7, 1)]
    verdicts = run(tmp_path, "ratio_from_table5_blocks", table01=table01, table05=table05,
                   table12=_fold_table12("LLaMA-2-7B", "2.89", "12.40"))
    assert verdicts == {"T01/LLaMA-2-7B/Ours/pruning_ratio": CONSISTENT,
                        "T01/LLaMA-2-7B/Ours (PEFT)/pruning_ratio": INCONSISTENT,
                        "T01/LLaMA-2-7B/w/o Kernel/pruning_ratio": CONSISTENT,
                        "T05/LLaMA-2-7B/pruning_ratio": CONSISTENT}


def test_ours_flops_from_blocks(tmp_path):
    # 845.706 - 2 x 25.904 + 2.89 = 796.79; 1645.006 - 2 x 40.601 + 3.4 = 1567.2 (not 1600.00)
    table10 = _t10(("LLaMA-2-7B", "Ours", "796.79", "", ""), ("LLaMA-2-13B", "Ours", "1600.00", "", ""))
    table05 = [("LLaMA-2-7B", "5.8", 1, 6, 7, 1), ("LLaMA-2-13B", "5.8", 1, 3, 4, 2)]
    table12 = _fold_table12("LLaMA-2-7B", "2.89", "12.40") + _fold_table12("LLaMA-2-13B", "3.4", "14.83")
    verdicts = run(tmp_path, "ours_flops_from_blocks", table10=table10, table05=table05, table12=table12)
    assert verdicts == {"T10/LLaMA-2-7B/Ours/FLOPs_G": CONSISTENT, "T10/LLaMA-2-13B/Ours/FLOPs_G": INCONSISTENT}


def test_block_cost_and_retention(tmp_path):
    table12 = [("LLaMA-2-7B", "Transformer Block", "FLOPs", 2, "51.81", 1),
               ("LLaMA-2-7B", "Transformer Block", "Params", 2, "404.77", 1),
               ("LLaMA-2-13B", "Transformer Block", "FLOPs", 2, "90.00", 2),
               ("LLaMA-2-7B", "Fold Block", "FLOPs", 2, "2.89", 1),
               ("LLaMA-2-7B", "Retention Rate", "FLOPs", 2, "5.58", 1),
               ("LLaMA-2-13B", "Fold Block", "FLOPs", 2, "3.4", 2),
               ("LLaMA-2-13B", "Retention Rate", "FLOPs", 2, "5.00", 2)]
    verdicts = run(tmp_path, "block_cost_analytic", table12=table12)
    assert verdicts == {"T12/LLaMA-2-7B/Transformer Block/FLOPs/k=2": CONSISTENT,
                        "T12/LLaMA-2-7B/Transformer Block/Params/k=2": CONSISTENT,
                        "T12/LLaMA-2-13B/Transformer Block/FLOPs/k=2": INCONSISTENT}
    verdicts = run(tmp_path, "retention_is_fold_over_block", table12=table12)
    assert verdicts == {"T12/LLaMA-2-7B/Retention Rate/FLOPs/k=2": CONSISTENT,
                        "T12/LLaMA-2-13B/Retention Rate/FLOPs/k=2": INCONSISTENT}


def test_fold_block_size(tmp_path):
    # 1.80 GFLOPs needs d_hidden of about 2130, which the 12.40 M parameters allow; 2.89 needs about 3795
    table12 = _fold_table12("LLaMA-2-7B", "1.80", "12.40") + _fold_table12("LLaMA-2-13B", "3.4", "14.83")
    frame = run_frame(tmp_path, "fold_block_size", table12=table12)
    assert frame.loc["T12/LLaMA-2-7B/Fold Block/Params", "verdict"] == NOT_CHECKABLE
    assert "d_hidden=2048 needs r=208-210" in frame.loc["T12/LLaMA-2-7B/Fold Block/Params", "note"]
    assert frame.loc["T12/LLaMA-2-7B/Fold Block/FLOPs", "verdict"] == CONSISTENT
    assert frame.loc["T12/LLaMA-2-13B/Fold Block/FLOPs", "verdict"] == INCONSISTENT


def test_same_values_across_tables(tmp_path):
    table01 = t01("LLaMA-2-7B", "Ours", "22.8", {"HeSw": "65.1", "MMLU": "44.7", "CMMLU": "28.1"})
    table09 = [("LLaMA-2-7B", "Original", "HeSW", "65.1", 1), ("LLaMA-2-7B", "Original", "MMLU", "28.1", 1)]
    frame = run_frame(tmp_path, "same_values_across_tables", table01=table01, table09=table09)
    assert frame.loc["T09/LLaMA-2-7B/Original/HeSW~T01", "verdict"] == CONSISTENT
    assert frame.loc["T09/LLaMA-2-7B/Original/MMLU~T01", "verdict"] == INCONSISTENT
    assert "CMMLU" in frame.loc["T09/LLaMA-2-7B/Original/MMLU~T01", "note"]


def test_cross_model_duplicate_rows(tmp_path):
    cells = {"A": "30.8", "B": "34.5", "C": "57.1", "D": "12.8", "C3": "23.5"}
    table01 = t01("LLaMA-2-7B", "w/o Kernel", "24.8", cells)
    copied = [("OPT-2.7B", "w/o Kernel", "", bench, value, 2) for bench, value in
              {**cells, "D": "15.8", "CS": "23.5"}.items() if bench != "C3"]
    independent = [("OPT-6.7B", "SLEB", "", bench, value, 3) for bench, value in
                   {"A": "30.8", "B": "40.0", "C": "60.0", "D": "20.0", "CS": "25.0"}.items()]
    frame = run_frame(tmp_path, "cross_model_duplicate_rows", table01=table01, table06=copied + independent)
    assert list(frame.index) == ["T01/LLaMA-2-7B/w/o Kernel=T06/OPT-2.7B/w/o Kernel"]
    assert frame.iloc[0]["verdict"] == INCONSISTENT
    assert frame.iloc[0]["recomputed"].startswith("4/5") and "one printed digit" in frame.iloc[0]["note"]


# --------------------------------------------------------------------------------- textual claims


def _table1_rp(model: str, rps: dict[str, str]) -> list[tuple]:
    return [row for method, rp in rps.items() for row in t01(model, method, "20.0", {"RP": rp})]


def test_text_rp_gaps(tmp_path):
    table01 = (_table1_rp("LLaMA-2-7B", {"Dense": "100.0", "Ours": "89.9", "Streamline (FT)": "81.8",
                                         "SLEB": "79.5", "w/o Kernel": "58.0"})
               + _table1_rp("LLaMA-2-13B", {"Ours": "92.9", "ShortGPT": "84.6", "w/o Kernel": "69.8"}))
    claims = [claim("C07", "8.1"), claim("C08", "9.1"), claim("C10", "31.9"), claim("C11", "20.0")]
    table08 = [("SLEB", "no", "", 1), ("Streamline", "yes", "30000", 2)]
    frame = run_frame(tmp_path, "text_beats_best_baseline", table01=table01, claims=claims, table08=table08)
    assert frame.loc["C07", "verdict"] == CONSISTENT and frame.loc["C08", "verdict"] == INCONSISTENT
    assert "without fine-tuning only (SLEB): 10.4 pp" in frame.loc["C07", "note"]
    verdicts = run(tmp_path, "text_kernel_gain", table01=table01, claims=claims)
    assert verdicts == {"C10": CONSISTENT, "C11": INCONSISTENT}


def test_text_counts(tmp_path):
    table01 = (t01("m1", "Dense", "0.0", {"A": "1.0", "B": "1.0", "Avg": "1.00"})
               + t01("m2", "SLEB", "1.0", {"A": "1.0", "B": "1.0"}) + t01("m2", "LaCo", "1.0", {"A": "1.0"}))
    table02 = [("m1", "Dense", bench, "PPL", "1.0", 1) for bench in ("WIKI", "C4", "Xsum")]
    table10 = _t10(("m1", "Dense", "1.00", "", ""), ("m2", "Dense", "1.00", "", ""))
    claims = [claim("C01", "5"), claim("C02", "2"), claim("C06", "3"), claim("C37", "92.9; 3")]
    verdicts = run(tmp_path, "text_counts", table01=table01, table02=table02, table10=table10, claims=claims)
    assert verdicts == {"C01": CONSISTENT, "C02": CONSISTENT, "C06": INCONSISTENT, "C37/n_models": INCONSISTENT}


def test_text_training_set_sizes(tmp_path):
    table11 = [("LLaMA-2-7B", "Standard", 8, "4k", "A", "1.0", 1), ("LLaMA-2-7B", "Fewer", 3, "0.6k", "A", "1.0", 2)]
    claims = [claim("C04", "4000", "Training set = 4000 samples: 500 from each of A, B"),
              claim("C39", "500", "'Fewer' = 200 samples each from BoolQ, CMMLU, SlimPajama (0.6k)")]
    verdicts = run(tmp_path, "text_training_set_sizes", table11=table11, claims=claims)
    assert verdicts == {"C04": CONSISTENT, "C39": INCONSISTENT}


@pytest.mark.parametrize("columns, verdict", [(["PIQA", "CMNLI", "HeSw", "SST2"], CONSISTENT),
                                              (["PIQA", "CMNLI", "HeSw", "SST2", "MMLU"], INCONSISTENT)])
def test_text_benchmark_list(tmp_path, columns, verdict):
    table01 = t01("m", "Dense", "0.0", {column: "1.0" for column in columns})
    claims = [claim("C04", "4000", "Training set = 4000 samples: 500 from each of PIQA, MNLI, SlimPajama"),
              claim("C05", "12", "Classification = training sets except SlimPajama + 2 additional (HellaSwag, SST2)")]
    frame = run_frame(tmp_path, "text_benchmark_list", table01=table01, claims=claims)
    assert frame.loc["C05", "verdict"] == verdict
    assert ("never named: MMLU" in frame.loc["C05", "note"]) == (verdict == INCONSISTENT)


def test_text_ours_beats_others(tmp_path):
    table01 = (t01("m1", "Ours", "20.0", {"SST2": "90.0"}) + t01("m1", "SLEB", "20.0", {"SST2": "80.0"})
               + t01("m1", "w/o Kernel", "20.0", {"SST2": "95.0"})
               + t01("m2", "Ours", "20.0", {"SST2": "80.0"}) + t01("m2", "ShortGPT", "20.0", {"SST2": "85.0"}))
    verdicts = run(tmp_path, "text_ours_best_on_sst2", table01=table01, claims=[claim("C13", "qualitative")])
    assert verdicts == {"C13/m1": CONSISTENT, "C13/m2": INCONSISTENT}
    table03 = [("m", "Ours", "HeSW", "61.5", 1), ("m", "Direct OLS", "HeSW", "31.3", 2),
               ("m", "Ours", "CoQA", "0.0", 1), ("m", "Sequential OLS", "CoQA", "0.5", 3)]
    verdicts = run(tmp_path, "text_ours_beats_ols", table03=table03, claims=[claim("C22", "qualitative")])
    assert verdicts == {"C22/m": INCONSISTENT}
    table06 = [("o1", "Ours", "", "RP", "92.6", 1), ("o1", "SLEB", "", "RP", "91.7", 2),
               ("o2", "Ours", "", "RP", "80.0", 3), ("o2", "SLEB", "", "RP", "88.1", 4)]
    verdicts = run(tmp_path, "text_ours_best_rp_on_opt", table06=table06, claims=[claim("C29", "best")])
    assert verdicts == {"C29/o1": CONSISTENT, "C29/o2": INCONSISTENT}


@pytest.mark.parametrize("stated, spans, verdict", [("10-11", [(10, 11)], CONSISTENT),
                                                    ("10-14", [(10, 11), (14, 15)], INCONSISTENT)])
def test_text_replaced_layers(tmp_path, stated, spans, verdict):
    table05 = [("LLaMA-2-7B", "22.8", i, a, b, 1) for i, (a, b) in enumerate(spans)]
    assert run(tmp_path, "text_replaced_layers", table05=table05, claims=[claim("C15", stated)]) == {"C15": verdict}


@pytest.mark.parametrize("value, verdict", [("1024", CONSISTENT), ("512", INCONSISTENT)])
def test_text_kernel_dim_and_sequence_length(tmp_path, value, verdict):
    claims = [claim("C16", value, "rows reshaped to 32x32"), claim("C27", value)]
    assert run(tmp_path, "text_kernel_dim", claims=claims) == {"C16": verdict}
    seq = "128" if verdict == CONSISTENT else "256"
    assert run(tmp_path, "text_sequence_length", claims=[claim("C26", seq)]) == {"C26": verdict}


def test_text_cmmlu_retention(tmp_path):
    table01 = (t01("m1", "Dense", "0.0", {"CMMLU": "30.0"}) + t01("m1", "Ours", "22.8", {"CMMLU": "28.0"})
               + t01("m2", "Dense", "0.0", {"CMMLU": "50.0"}) + t01("m2", "Ours", "25.8", {"CMMLU": "34.0"}))
    verdicts = run(tmp_path, "text_cmmlu_retention", table01=table01, claims=[claim("C20", ">90 at ~28% ratio")])
    assert verdicts == {"C20/m1": CONSISTENT, "C20/m2": INCONSISTENT}


def test_text_edge_exclusion(tmp_path):
    table05 = [("LLaMA-2-7B", "22.8", 1, 6, 7, 1), ("LLaMA-2-13B", "23.4", 1, 3, 4, 2)]
    verdicts = run(tmp_path, "text_edge_exclusion", table05=table05, claims=[claim("C25", "10")])
    assert verdicts == {"C25/LLaMA-2-7B": CONSISTENT, "C25/LLaMA-2-13B": INCONSISTENT}


def test_text_peft_keeps_ratio(tmp_path):
    table01 = (t01("m1", "Ours", "23.4", {"A": "1.0"}) + t01("m1", "Ours (PEFT)", "23.4", {"A": "1.0"})
               + t01("m2", "Ours", "25.8", {"A": "1.0"}) + t01("m2", "Ours (PEFT)", "22.8", {"A": "1.0"}))
    assert run(tmp_path, "text_peft_keeps_ratio", table01=table01) == {"C28/m1": CONSISTENT, "C28/m2": INCONSISTENT}


def test_text_approximate_ratio_reports_layer_share(tmp_path):
    table05 = [("LLaMA-2-7B", "22.8", i, a, a + 1, 1) for i, a in enumerate((6, 10, 14, 18, 22))]
    frame = run_frame(tmp_path, "text_approximate_ratio", table05=table05, claims=[claim("C03", "~25")])
    assert frame.loc["C03", "verdict"] == NOT_CHECKABLE
    assert "LLaMA-2-7B 30.0% (10 layers)" in frame.loc["C03", "recomputed"]


def test_restated_and_uncovered_claims(tmp_path):
    write(tmp_path, "table10", _t10(("LLaMA-2-7B", "Dense", "845.71", "", ""),
                                    ("LLaMA-2-7B", "Ours", "650.06", "23.13", "1.30")))
    write(tmp_path, "claims", [claim("C33", "23.13"), claim("C34", "1.40"), claim("C99", "qualitative")])
    frame = audit.run_rules(audit.load_claims(tmp_path, ["claims", "table10"])).set_index("claim_id")
    assert frame.loc["C33", "verdict"] == CONSISTENT and frame.loc["C33", "rule"] == "restates_table_cell"
    assert frame.loc["C34", "verdict"] == INCONSISTENT
    assert frame.loc["C99", "verdict"] == NOT_CHECKABLE and frame.loc["C99", "rule"] == "uncovered_claim"


def test_interval_arithmetic_propagates_rounding():
    bound = audit.Printed.parse("2.89").bound("rounded") / audit.Printed.parse("51.80").bound("rounded") * 100
    assert bound.lo == pytest.approx(2.885 / 51.805 * 100) and bound.hi == pytest.approx(2.895 / 51.795 * 100)
    assert audit.Printed.parse("1.30").bound("truncated") == audit.Bound(1.30, 1.31)
    with pytest.raises(ZeroDivisionError):
        audit.Bound(1, 2) / audit.Bound(-1, 1)


# ---------------------------------------------------------------------------- the paper itself


@pytest.fixture(scope="module")
def paper_audit() -> pd.DataFrame:
    return audit.audit_paper()


# Rules with nothing to check in the KDP paper: it has no layers table, no `restates` column, no retention above 100.
NO_KDP_ROWS = {"ratio_from_layer_spans", "claim_restates_cell", "retention_above_100"}
# The rules of the audit before the split into rule families: their rows must not change.
ORIGINAL_RULES = {
    "avg_is_mean_of_benchmarks", "rp_is_avg_over_reference", "generation_rp_definition",
    "flops_change_is_relative_reduction", "speedup_is_flops_ratio", "dense_flops_analytic",
    "variant_flops_is_whole_layer_removal", "sliced_flops_width", "ratio_matches_layer_count",
    "ratio_from_table5_blocks", "ours_flops_from_blocks", "block_cost_analytic", "retention_is_fold_over_block",
    "fold_block_size", "same_values_across_tables", "cross_model_duplicate_rows", "text_beats_best_baseline",
    "text_kernel_gain", "text_counts", "text_training_set_sizes", "text_benchmark_list", "text_ours_best_on_sst2",
    "text_ours_beats_ols", "text_ours_best_rp_on_opt", "text_replaced_layers", "text_kernel_dim",
    "text_sequence_length", "text_cmmlu_retention", "text_edge_exclusion", "text_peft_keeps_ratio",
    "text_approximate_ratio", "restates_table_cell",
}


def test_paper_audit_shape(paper_audit):
    assert list(paper_audit.columns) == list(audit.AUDIT_COLUMNS)
    assert set(paper_audit["verdict"]) == {CONSISTENT, INCONSISTENT, NOT_CHECKABLE, QUESTIONABLE}
    assert set(paper_audit["rule"]) == set(audit.RULES) - NO_KDP_ROWS
    claim_ids = set(pd.read_csv(audit.CLAIMS_DIR / "claims.csv")["claim_id"])
    audited = {claim_id.split("/")[0] for claim_id in paper_audit["claim_id"]}
    assert claim_ids <= audited
    assert not paper_audit["claim_id"].duplicated().any()


def test_paper_audit_findings(paper_audit):
    verdict = paper_audit.set_index("claim_id")["verdict"]
    note = paper_audit.set_index("claim_id")["note"]
    for claim_id in ("C08", "C10", "C11", "C12", "T10/LLaMA-2-7B/Dense/FLOPs_G", "T10/LLaMA-2-13B/Dense/FLOPs_G",
                     "T12/LLaMA-2-13B/Transformer Block/FLOPs/k=2", "T01/LLaMA-2-13B/Ours/RP"):
        assert verdict[claim_id] == CONSISTENT, claim_id
    for claim_id in ("C07", "C09", "C37/n_models", "T09/LLaMA-2-7B/Original/MMLU~T01", "T02-T07/RP definition",
                     "T01/LLaMA-2-7B/Ours/RP", "T01/LLaMA-2-7B/Ours/pruning_ratio", "T10/LLaMA-2-7B/Ours/FLOPs_G",
                     "T01/LLaMA-2-7B/w/o Kernel=T06/OPT-2.7B/w/o Kernel", "C25/LLaMA-2-13B", "C15"):
        assert verdict[claim_id] == INCONSISTENT, claim_id
    assert "speed-up minus one" in note["T10/LLaMA-2-7B/SLEB/Change_pct"]
    assert "truncated" in note["T12/LLaMA-2-7B/Transformer Block/FLOPs/k=2"]
    assert "8 layers removed + 4 folds" in note["T10/LLaMA-2-7B/Ours/FLOPs_G"]
    original = paper_audit[paper_audit["rule"].isin(ORIGINAL_RULES)]
    assert (original["verdict"] == INCONSISTENT).sum() == 54  # as before the new rule families


def test_vendored_claims_match_readme_hashes():
    readme = (audit.CLAIMS_DIR / "README.md").read_text(encoding="utf-8")
    listed = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+\.csv)$", readme, re.M))
    files = sorted(path.name for path in audit.CLAIMS_DIR.glob("*.csv"))
    assert sorted(listed) == files
    for name in files:
        assert hashlib.sha256((audit.CLAIMS_DIR / name).read_bytes()).hexdigest() == listed[name], name


# ------------------------------------------------------------------------------ malformed inputs


def test_missing_column_names_file_and_column(tmp_path):
    (tmp_path / "table10.csv").write_text("model,method,quantity,src_line\nm,Dense,FLOPs_G,1\n")
    with pytest.raises(UserError, match=r"table10\.csv line 1: missing column\(s\) 'value'"):
        audit.load_claims(tmp_path, ["table10"])


def test_non_numeric_value_names_file_line_and_column(tmp_path):
    (tmp_path / "table10.csv").write_text(
        "model,method,quantity,value,src_line\nm,Dense,FLOPs_G,845.71,1\nm,Ours,FLOPs_G,about 650,2\n")
    with pytest.raises(UserError, match=r"table10\.csv line 3, column 'value': 'about 650' is not a number"):
        audit.load_claims(tmp_path, ["table10"])


def test_blank_required_cell_is_a_user_error(tmp_path):
    (tmp_path / "table12.csv").write_text("model,component,quantity,k,value,src_line\nm,Fold Block,FLOPs,2,,7\n")
    with pytest.raises(UserError, match=r"table12\.csv line 2, column 'value'"):
        audit.load_claims(tmp_path, ["table12"])


def test_non_numeric_claim_value_is_a_user_error(tmp_path):
    write(tmp_path, "table01", _table1_rp("LLaMA-2-7B", {"Ours": "89.9", "w/o Kernel": "58.0"}))
    write(tmp_path, "claims", [claim("C01", "many"), claim("C10", "about thirty")])
    with pytest.raises(UserError, match=r"claims\.csv line 3, column 'value': 'about thirty'"):
        audit.run_rules(audit.load_claims(tmp_path, ["claims", "table01"]), ["text_kernel_gain"])


def test_write_audit(tmp_path):
    frame = run_frame(tmp_path, "text_peft_keeps_ratio", table01=t01("m", "Ours", "23.4", {"A": "1.0"})
                      + t01("m", "Ours (PEFT)", "22.8", {"A": "1.0"})).reset_index()
    audit.write_audit(frame, tmp_path / "out" / "audit.csv")
    written = pd.read_csv(tmp_path / "out" / "audit.csv", keep_default_na=False)
    assert written["claim_id"].tolist() == ["C28/m"] and written["verdict"].tolist() == [INCONSISTENT]


def test_missing_file_and_unknown_rule(tmp_path):
    with pytest.raises(UserError, match="table05.csv"):
        audit.load_claims(tmp_path, ["table05"])
    write(tmp_path, "claims", [])
    with pytest.raises(UserError, match="no_such_rule"):
        audit.run_rules(audit.load_claims(tmp_path, ["claims"]), ["no_such_rule"])


# ------------------------------------------------------------------------------------ reproduction


def test_attach_reproduced(paper_audit):
    reproduced = pd.DataFrame([
        {"model": "LLaMA-2-7B", "method": "Ours", "quantity": "RP", "value": 87.0},
        {"model": "LLaMA-2-7B", "method": "SLEB", "quantity": "RP", "value": 60.0},
        {"model": "LLaMA-2-7B", "method": "Dense", "quantity": "FLOPs_G", "value": 845.0},
    ])
    joined = audit.attach_reproduced(paper_audit, reproduced).set_index("claim_id")
    assert joined.loc["T01/LLaMA-2-7B/Ours/RP", ["reproduced", "reproduced_verdict"]].tolist() == ["87", "agrees"]
    assert joined.loc["T01/LLaMA-2-7B/SLEB/RP", "reproduced_verdict"] == "differs"
    assert joined.loc["T10/LLaMA-2-7B/Dense/FLOPs_G", "reproduced_tolerance"] == "±1%"
    assert joined.loc["T10/LLaMA-2-7B/Dense/FLOPs_G", "reproduced_verdict"] == "agrees"
    assert joined.loc["C07", "reproduced_verdict"] == ""
    with pytest.raises(UserError, match="quantity"):
        audit.attach_reproduced(paper_audit, reproduced.drop(columns="quantity"))
