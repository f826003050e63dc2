"""The audit's newer rule families on crafted claims tables, one case where each rule must fire and one where it
must not: derived-column procedures, like-for-like RP, direction sanity, conventions, likely typos, qualitative
words, layer spans and restated cells of a generic (non-KDP) folder; plus the rule registry itself."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

from kdp import audit
from kdp.audit import CONSISTENT, INCONSISTENT, NOT_CHECKABLE, QUESTIONABLE, claims as claims_io
from kdp.audit.intervals import Check, Printed, mean, printed_as
from kdp.audit.procedures import chance_of_same_digits
from kdp.errors import UserError

TESTS = Path(__file__).resolve().parent


def write(directory: Path, name: str, rows: list[tuple], columns: tuple[str, ...] | None = None) -> None:
    with open(directory / f"{name}.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns or audit.SCHEMAS[name].columns)
        writer.writerows(rows)


def t01(model: str, method: str, ratio: str, cells: dict[str, str], line: int = 1) -> list[tuple]:
    return [(model, method, "", ratio, bench, value, line) for bench, value in cells.items()]


def claim(claim_id: str, value: str, text: str = "") -> tuple:
    return (claim_id, "Sec X", text, "q", value, "")


def run(directory: Path, rule: str, **tables: list[tuple]) -> pd.DataFrame:
    for name, rows in tables.items():
        write(directory, name, rows)
    return audit.run_rules(audit.load_claims(directory, list(tables)), [rule]).set_index("claim_id")


def generic_folder(directory: Path, tables: dict[str, tuple[str, list[tuple], tuple[str, ...]]]) -> Path:
    """A non-KDP claims folder: ``{file: (schema, rows, columns)}`` plus its paper.yaml."""
    lines = ["title: crafted", "source: a test", "rules: generic", "tables:"]
    for name, (schema, rows, columns) in tables.items():
        write(directory, name, rows, columns)
        lines.append(f"  {name}: {schema}")
    (directory / "paper.yaml").write_text("\n".join(lines) + "\n")
    return directory


SCORES = ("model", "method", "marker", "pruning_ratio", "benchmark", "value", "src_line")
LAYERS = ("model", "method", "first_layer", "last_layer", "src_line")


# -------------------------------------------------------------------------------- derived columns


# Row i's twelve one-decimal cells have the mean 50 + (i + 1) / 120, rounded: 50.01, 50.02, 50.02 or 50.03 (a
# tie), 50.03, 50.04, 50.05, 50.06, 50.07, 50.07 or 50.08, 50.08.
ROUNDED_MEANS = ["50.01", "50.02", "50.02", "50.03", "50.04", "50.05", "50.06", "50.07", "50.08", "50.08"]


def _avg_rows(avgs: list[str]) -> list[tuple]:
    """Rows of twelve one-decimal cells printing the given Avgs (see ``ROUNDED_MEANS``)."""
    rows = []
    for i, avg in enumerate(avgs):
        cells = {f"B{j}": "50.0" for j in range(11)}
        cells["B11"] = f"{50.0 + (i + 1) / 10:.1f}"
        rows += t01("m", f"M{i}", "10.0", {**cells, "Avg": avg}, i + 1)
    return rows


def test_procedure_enforced_where_rows_pin_it_down(tmp_path):
    holding = run(tmp_path, "derived_column_procedure", table01=_avg_rows(ROUNDED_MEANS))
    assert holding.loc["T01/Avg/procedure", "verdict"] == CONSISTENT
    assert holding.loc["T01/Avg/procedure", "recomputed"] == "mean of the row's printed cells, rounded"
    assert list(holding.index) == ["T01/Avg/procedure"]
    # The last row prints 50.09: inside interval arithmetic's slack, but the other nine rows round the printed cells.
    firing = run(tmp_path, "derived_column_procedure", table01=_avg_rows([*ROUNDED_MEANS[:-1], "50.09"]))
    assert firing.loc["T01/Avg/procedure", "verdict"] == INCONSISTENT
    exception = firing.loc["T01/m/M9/Avg/procedure"]
    assert (exception["claimed"], exception["recomputed"], exception["verdict"]) == ("50.09", "50.08", INCONSISTENT)
    passes = audit.run_rules(audit.load_claims(tmp_path, ["table01"]), ["avg_is_mean_of_benchmarks"])
    assert set(passes["verdict"]) == {CONSISTENT}  # interval arithmetic alone lets every row pass


def test_procedure_not_enforced_when_inputs_are_precise(tmp_path):
    # Two two-decimal cells averaged to two decimals: unrounded inputs would print the printed cells' digits in
    # most rows anyway, so the one exception (0.01 off, inside the slack) is not held against the paper.
    rows = []
    for k in range(1, 11):
        avg = f"{50 + k / 100 + (0.01 if k == 10 else 0):.2f}"
        rows += t01("m", f"M{k}", "10.0", {"A": "50.00", "B": f"{50 + 2 * k / 100:.2f}", "Avg": avg}, k)
    frame = run(tmp_path, "derived_column_procedure", table01=rows)
    assert frame.loc["T01/Avg/procedure", "verdict"] == NOT_CHECKABLE
    assert frame.loc["T01/Avg/procedure", "recomputed"] == "mean of the row's printed cells, rounded"
    assert "inferred but not enforced" in frame.loc["T01/Avg/procedure", "note"]
    assert list(frame.index) == ["T01/Avg/procedure"]


def test_chance_of_same_digits():
    cells = tuple(Printed.parse("50.0") for _ in range(12))
    avg = Check("", "", "", Printed.parse("50.00"), cells, mean)
    assert chance_of_same_digits(avg) == pytest.approx(1 - 0.1 / 12 ** 0.5 / 12 ** 0.5 * (2 / 3.14159) ** 0.5 / 0.01,
                                                       abs=1e-3)
    exact_inputs = Check("", "", "", Printed.parse("50.00"), (Printed(50.0, None),), lambda x: x)
    assert chance_of_same_digits(exact_inputs) == 1.0


def test_printed_as_rounds_ties_by_mode():
    like = Printed.parse("38.12")
    assert printed_as(38.125, like) == "38.13" and printed_as(38.125, like, "rounded half down") == "38.12"
    assert printed_as(457.6 / 12, like, "truncated") == "38.13"


def test_rp_like_for_like(tmp_path):
    dense = t01("m", "Dense", "0.0", {"A": "90.0", "B": "30.0", "Avg": "60.00", "RP": "100.0"})
    # Without B, the Avg (45.0) over Dense's full Avg (60.0) gives 75.0; over A alone RP would be 50.0.
    lacking = t01("m", "X", "20.0", {"A": "45.0", "B": "", "Avg": "45.00", "RP": "75.0"}, 2)
    even = t01("m", "Y", "20.0", {"A": "45.0", "B": "", "Avg": "45.00", "RP": "50.0"}, 3)
    frame = run(tmp_path, "rp_like_for_like", table01=dense + lacking + even)
    assert frame.loc["T01/m/X/RP/like-for-like", ["recomputed", "verdict"]].tolist() == ["50.0", INCONSISTENT]
    assert frame.loc["T01/m/Y/RP/like-for-like", "verdict"] == CONSISTENT
    assert "B printed as '-'" in frame.loc["T01/m/X/RP/like-for-like", "note"]


# ---------------------------------------------------------------------------------------- direction


def test_pruned_above_dense(tmp_path):
    rows = (t01("m", "Dense", "0.0", {"A": "50.0", "B": "60.0"}) + t01("m", "X", "20.0", {"A": "50.1", "B": "59.0"}, 2)
            + t01("m", "Y", "20.0", {"A": "50.0", "B": "59.9"}, 3))
    frame = run(tmp_path, "pruned_above_dense", table01=rows)
    assert list(frame.index) == ["T01/m/X/above Dense"]
    assert frame.iloc[0]["verdict"] == QUESTIONABLE and frame.iloc[0]["recomputed"] == "A 50.1 vs 50.0 (+0.1)"
    table02 = [("m", "Dense", "WIKI", "PPL", "10.0", 1), ("m", "X", "WIKI", "PPL", "9.0", 2),
               ("m", "Y", "WIKI", "PPL", "12.0", 3)]
    frame = run(tmp_path, "pruned_above_dense", table02=table02)
    assert list(frame.index) == ["T02/m/X/above Dense"]  # a lower perplexity is the better one


def test_retention_above_100(tmp_path):
    rows = (t01("m", "Dense", "0.0", {"A": "50.0", "RP": "100.0"}) + t01("m", "X", "20.0", {"A": "51.0", "RP": "102.0"})
            + t01("m", "Y", "20.0", {"A": "45.0", "RP": "90.0"}))
    frame = run(tmp_path, "retention_above_100", table01=rows)
    assert list(frame.index) == ["T01/m/X/RP/above 100"] and frame.iloc[0]["verdict"] == QUESTIONABLE
    table11 = [("m", "Standard", 8, "4k", "A", "50.0", 1), ("m", "More", 10, "11k", "A", "51.0", 2),
               ("m", "More", 10, "11k", "RP_on_std", "102.0", 2)]
    assert run(tmp_path, "retention_above_100", table11=table11).empty  # relative to another pruned row


def test_ratio_grows_with_layers(tmp_path):
    # LLaMA-2-7B: 8 layers are 24.03% of the parameters, 9 are 27.03%.
    def folder(ratio_of_nine: str) -> Path:
        scores = (t01("LLaMA-2-7B", "P", "24.0", {"A": "1.0"}) + t01("LLaMA-2-7B", "Q", ratio_of_nine, {"A": "1.0"}, 2))
        layers = [("LLaMA-2-7B", "P", 20, 27, 1), ("LLaMA-2-7B", "Q", 20, 28, 2)]
        return generic_folder(tmp_path, {"table2": ("scores", scores, SCORES), "table3": ("layers", layers, LAYERS)})

    frame = audit.run_rules(audit.load_claims(folder("23.0")), ["ratio_grows_with_layers"]).set_index("claim_id")
    assert frame.loc["T02/LLaMA-2-7B/ratio order/P<Q", "verdict"] == INCONSISTENT
    assert "Q from Table 3: 9 layers" in frame.loc["T02/LLaMA-2-7B/ratio order/P<Q", "note"]
    frame = audit.run_rules(audit.load_claims(folder("27.0")), ["ratio_grows_with_layers"]).set_index("claim_id")
    assert frame["verdict"].tolist() == [CONSISTENT]


# -------------------------------------------------------------------------------------- conventions


@pytest.mark.parametrize("k_max, verdict", [(3, INCONSISTENT), (2, CONSISTENT)])
def test_block_length_convention(tmp_path, k_max, verdict):
    table04 = [("LLaMA-2-7B", k_max, 6, 7, "HeSW", "72.1", 270)]
    table12 = [("LLaMA-2-7B", "Transformer Block", "FLOPs", 2, "51.80", 716)]  # two analytic layers
    frame = run(tmp_path, "block_length_convention", table04=table04, table12=table12)
    assert frame.loc["K_max/k/layers per block", "verdict"] == verdict
    assert ("layers replaced + 1" in frame.loc["K_max/k/layers per block", "note"]) == (verdict == INCONSISTENT)


# -------------------------------------------------------------------------------------- likely typos


def _triangle(rp: str, cell_b: str = "40.0", avg: str = "45.00") -> list[tuple]:
    return (t01("m", "Dense", "0.0", {"A": "50.0", "B": "50.0", "Avg": "50.00", "RP": "100.0"})
            + t01("m", "X", "20.0", {"A": "50.0", "B": cell_b, "Avg": avg, "RP": rp}, 2))


def test_likely_typo_in_row_names_the_rp(tmp_path):
    frame = run(tmp_path, "likely_typo_in_row", table01=_triangle("93.0"))
    typo = frame.loc["T01/m/X/RP/likely typo"]
    assert typo["verdict"] == INCONSISTENT and typo["recomputed"] == "likely typo: RP 93.0 (the Avgs give 90.0)"
    assert run(tmp_path, "likely_typo_in_row", table01=_triangle("90.0")).empty


def test_likely_typo_in_row_names_a_cell(tmp_path):
    # Avg 45.00 and RP 90.0 agree; the cells' mean is 49.5: B printed 49.0, one digit from the 40.0 that fits.
    frame = run(tmp_path, "likely_typo_in_row", table01=_triangle("90.0", cell_b="49.0"))
    assert frame.loc["T01/m/X/Avg/likely typo", "recomputed"] == "likely typo: B 49.0 -> 40.0"


def test_likely_typo_across_tables(tmp_path):
    cells = {"A": "50.0", "B": "40.0", "Avg": "45.00"}
    wrong = {"A": "50.0", "B": "43.0", "Avg": "45.00"}  # its own Avg contradicts 43.0

    def folder(other: dict[str, str]) -> Path:
        return generic_folder(tmp_path, {"table2": ("scores", t01("m", "X", "10.0", cells), SCORES),
                                         "table6": ("scores", t01("m", "X", "10.0", other, 4), SCORES)})

    frame = audit.run_rules(audit.load_claims(folder(wrong)), ["likely_typo_across_tables"]).set_index("claim_id")
    assert frame.loc["T06/m/X/B~T02/likely typo", "recomputed"] == "likely typo: Table 6's 43.0"
    assert audit.run_rules(audit.load_claims(folder(cells)), ["likely_typo_across_tables"]).empty


def _layout_tables(spans: list[tuple[int, int]]) -> dict[str, list[tuple]]:
    """LLaMA-2-7B with four layers replaced by two folds, printed consistently everywhere except Table 5's
    ``spans``."""
    model = "LLaMA-2-7B"
    layer, total = claims_io.layer_params(model), claims_io.total_params(model)
    gflops = claims_io.dense_gflops(model) - 4 * claims_io.layer_gflops(model) + 2 * 2.89
    return {
        "table01": (t01(model, "Ours", f"{100 * (4 * layer - 2 * 12.40e6) / total:.1f}", {"A": "1.0"})
                    + t01(model, "w/o Kernel", f"{100 * 4 * layer / total:.1f}", {"A": "1.0"})),
        "table05": [(model, "11.6", i, a, b, 392) for i, (a, b) in enumerate(spans, 1)],
        "table10": [(model, "Ours", "FLOPs_G", f"{gflops:.2f}", 648)],
        "table12": [(model, "Fold Block", "FLOPs", 2, "2.89", 717), (model, "Fold Block", "Params", 2, "12.40", 717)],
    }


def test_likely_typo_in_block_layout(tmp_path):
    frame = run(tmp_path, "likely_typo_in_block_layout", **_layout_tables([(6, 7), (10, 11)]))
    assert frame.loc["T05/LLaMA-2-7B/layout/likely typo", ["recomputed", "verdict"]].tolist() == [
        "4 layers, 2 folds", CONSISTENT]
    frame = run(tmp_path, "likely_typo_in_block_layout", **_layout_tables([(6, 7), (10, 12)]))
    typo = frame.loc["T05/LLaMA-2-7B/layout/likely typo"]
    assert typo["verdict"] == INCONSISTENT and typo["recomputed"] == "4 layers, 2 folds"
    assert typo["note"].startswith("likely typo: Table 5's layer count;")


# ---------------------------------------------------------------------------------- qualitative words


def _rp_rows(table: str, model: str, method: str, ppl: str, rouge: str) -> list[tuple]:
    return [(model, method, "RP(PPL)", "RP", ppl, 1), (model, method, "RP(Rouge)", "RP", rouge, 1)]


@pytest.mark.parametrize("ours_ppl, verdict", [("14.5", CONSISTENT), ("10.1", INCONSISTENT)])
def test_text_comparable_generation(tmp_path, ours_ppl, verdict):
    table02 = _rp_rows("table02", "all", "SLEB", "15.7", "58.5") + _rp_rows("table02", "all", "Ours", ours_ppl, "79.7")
    frame = run(tmp_path, "text_comparable_generation", table02=table02, claims=[claim("C14", "qualitative")])
    assert frame.loc["C14", "verdict"] == verdict


@pytest.mark.parametrize("rouge, verdict", [("96.0", CONSISTENT), ("43.1", INCONSISTENT)])
def test_text_marginal_generation_decline(tmp_path, rouge, verdict):
    table07 = _rp_rows("table07", "o1", "Dense", "100.0", "100.0") + _rp_rows("table07", "o1", "Ours", "97.0", rouge)
    frame = run(tmp_path, "text_marginal_generation_decline", table07=table07, claims=[claim("C30", "marginal")])
    assert frame.loc["C30", "verdict"] == verdict


@pytest.mark.parametrize("ours, verdict", [("1050", CONSISTENT), ("4000", INCONSISTENT)])
def test_text_marginally_more_data(tmp_path, ours, verdict):
    table08 = [("SliceGPT", "no", "1000", 1), ("Ours", "no", ours, 2)]
    frame = run(tmp_path, "text_marginally_more_data", table08=table08, claims=[claim("C31", "4k vs 1k")])
    assert frame.loc["C31", "verdict"] == verdict


@pytest.mark.parametrize("rate, verdict", [("5.59", CONSISTENT), ("12.00", INCONSISTENT)])
def test_text_minimal_overhead(tmp_path, rate, verdict):
    table12 = [("m", "Retention Rate", "FLOPs", 2, rate, 1), ("m", "Retention Rate", "Params", 2, "1.56", 1)]
    frame = run(tmp_path, "text_minimal_overhead", table12=table12, claims=[claim("C53", "1.56-5.59")])
    assert frame.loc["C53", "verdict"] == verdict


def _table4(scores: dict[tuple[int, int, int], str]) -> list[tuple]:
    return [("LLaMA-2-7B", k_max, first, last, "HeSW", value, 270) for (k_max, first, last), value in scores.items()]


DENSE_7B = t01("LLaMA-2-7B", "Dense", "0.0", {"HeSw": "70.0"})


@pytest.mark.parametrize("k4, verdict", [("60.0", CONSISTENT), ("69.0", INCONSISTENT)])
def test_text_stable_k_max(tmp_path, k4, verdict):
    table04 = _table4({(3, 6, 7): "69.0", (4, 6, 8): k4, (5, 6, 9): "50.0"})
    frame = run(tmp_path, "text_stable_k_max", table04=table04, table01=DENSE_7B, claims=[claim("C23", "<=3")])
    assert frame.loc["C23", "verdict"] == verdict


@pytest.mark.parametrize("drops, verdict", [((1, 2, 4, 8), CONSISTENT), ((2, 4, 6, 8), INCONSISTENT)])
def test_text_exponential_degradation(tmp_path, drops, verdict):
    table04 = _table4({(n + 1, 6, 5 + n): f"{70.0 - d:.1f}" for n, d in zip(range(2, 6), drops)})
    frame = run(tmp_path, "text_exponential_degradation", table04=table04, table01=DENSE_7B,
                claims=[claim("C24", "exponential")])
    assert frame.loc["C24", "verdict"] == verdict


@pytest.mark.parametrize("step2, verdict", [("64.0", CONSISTENT), ("60.0", INCONSISTENT)])
def test_text_step2_on_par(tmp_path, step2, verdict):
    table09 = [("LLaMA-2-7B", "Original", "HeSW", "65.1", 1),
               ("LLaMA-2-7B", "Barely Step 1 (5 Epoch)", "HeSW", "52.1", 2),
               ("LLaMA-2-7B", "Barely Step 2 (5 Epoch)", "HeSW", step2, 3)]
    frame = run(tmp_path, "text_step2_on_par", table09=table09, claims=[claim("C32", "qualitative")])
    assert frame.loc["C32", "verdict"] == verdict


# ------------------------------------------------------------------------ generic folders and rules


def test_ratio_from_layer_spans(tmp_path):
    scores = (t01("LLaMA-2-7B", "P", "27.0", {"A": "1.0"}) + t01("LLaMA-2-7B", "Q", "27.1", {"A": "1.0"}, 2)
              + t01("Unknown-7B", "P", "27.0", {"A": "1.0"}, 3))
    layers = [("LLaMA-2-7B", "P", 21, 29, 1), ("LLaMA-2-7B", "Q", 21, 29, 1), ("Unknown-7B", "P", 21, 29, 1)]
    folder = generic_folder(tmp_path, {"table2": ("scores", scores, SCORES), "table9": ("layers", layers, LAYERS)})
    frame = audit.run_rules(audit.load_claims(folder), ["ratio_from_layer_spans"]).set_index("claim_id")
    assert frame.loc["T02/LLaMA-2-7B/P/pruning_ratio", "verdict"] == CONSISTENT  # 9 layers: 27.03%
    assert frame.loc["T02/LLaMA-2-7B/Q/pruning_ratio", "verdict"] == INCONSISTENT
    assert frame.loc["T02/Unknown-7B/P/pruning_ratio", "verdict"] == NOT_CHECKABLE


def test_claim_restates_cell_and_uncovered(tmp_path):
    columns = (*audit.SCHEMAS["claims"].columns, "restates")
    claims_rows = [("S1", "Sec 1", "", "q", "55.0", "", "T02/m/Dense/A"),
                   ("S2", "Sec 1", "", "q", "52.2", "", "T02/m/Dense/A"),
                   ("S3", "Sec 1", "", "q", "1.0", "", "T02/m/Dense/Z"),
                   ("S4", "Sec 1", "about 90%", "q", "~90", "", "")]
    folder = generic_folder(tmp_path, {"table2": ("scores", t01("m", "Dense", "0.0", {"A": "55.00"}), SCORES),
                                       "claims": ("claims", claims_rows, columns)})
    frame = audit.audit_paper(folder).set_index("claim_id")
    assert frame.loc["S1", "verdict"] == CONSISTENT and frame.loc["S2", "verdict"] == INCONSISTENT
    assert frame.loc["S3", "verdict"] == NOT_CHECKABLE and "no loaded table prints" in frame.loc["S3", "note"]
    assert frame.loc["S4", "rule"] == "uncovered_claim"


def test_generic_folder_runs_no_kdp_rule(tmp_path):
    # A claim id the KDP rules know (C01, 'n benchmarks') means nothing in another paper: it stays uncovered.
    folder = generic_folder(tmp_path, {"table2": ("scores", t01("m", "Dense", "0.0", {"A": "55.0"}), SCORES),
                                       "claims": ("claims", [claim("C01", "15")], None)})
    frame = audit.audit_paper(folder)
    kdp_only = {name for name, rule in audit.RULES.items() if not rule.generic}
    assert not set(frame["rule"]) & kdp_only
    assert frame.set_index("claim_id").loc["C01", "rule"] == "uncovered_claim"


@pytest.mark.parametrize("text, message", [
    ("rules: generic\ntables: {table2: score}\n", "tables.table2: 'score' is not allowed; allowed: claims, "),
    ("rules: some\ntables: {table2: scores}\n", "rules: 'some' is not allowed; allowed: all, generic"),
    ("title: x\nrule: generic\ntables: {table2: scores}\n", "key: 'rule' is not allowed"),
    ("rules: generic\n", "tables: must map each CSV file's name"),
])
def test_bad_paper_yaml_is_one_line(tmp_path, text, message):
    (tmp_path / "paper.yaml").write_text(text)
    with pytest.raises(UserError) as caught:
        audit.load_claims(tmp_path)
    assert message in str(caught.value) and "paper.yaml" in str(caught.value) and "\n" not in str(caught.value)


def test_review_named_alone_runs_the_rules_it_reads(tmp_path):
    frame = run(tmp_path, "likely_typo_in_row", table01=_triangle("93.0"))
    assert set(frame["rule"]) == {"likely_typo_in_row"}  # the avg and rp rules ran, but only the review reports


def test_every_rule_is_documented_and_tested():
    names = "".join(path.read_text() for path in TESTS.glob("test_audit*.py"))
    for name, rule in audit.RULES.items():
        assert rule.function.__doc__ and len(rule.function.__doc__.split()) >= 8, name
        assert name in names, f"{name} has no test"


def test_model_config_key_reads_printed_names():
    assert claims_io.model_config_key("Llama2-7B") == claims_io.model_config_key("LLaMA-2-7B") == "llama-2-7b"
    assert claims_io.model_config_key("LLaMA-3.1-8B") == "llama-3.1-8b"
    assert claims_io.model_config_key("Baichuan2-7B") is None


# ----------------------------------------------------------------------------------- reproduced join


def test_reproduced_interval_replaces_the_band():
    checked = pd.DataFrame([{"claim_id": "T01/m/X/A", "model": "m", "method": "X", "quantity": "A", "claimed": "60.0",
                             "verdict": NOT_CHECKABLE}])
    reproduced = pd.DataFrame([{"model": "m", "method": "X", "quantity": "A", "value": 58.0, "ci_low": 57.0,
                                "ci_high": 60.5}])
    joined = audit.attach_reproduced(checked, reproduced).iloc[0]
    assert (joined["reproduced_verdict"], joined["reproduced_tolerance"]) == ("agrees", "CI [57, 60.5]")
    narrow = reproduced.assign(ci_high=59.5)  # misses [59.95, 60.05], although 58 is within the 5-point band
    assert audit.attach_reproduced(checked, narrow).iloc[0]["reproduced_verdict"] == "differs"
    banded = audit.attach_reproduced(checked, reproduced.assign(ci_low=float("nan"), ci_high=float("nan"))).iloc[0]
    assert (banded["reproduced_verdict"], banded["reproduced_tolerance"]) == ("agrees", "±5")


# -------------------------------------------------------------------------------- the second paper

SHORTGPT = TESTS.parent / "resources" / "claims_shortgpt"


@pytest.fixture(scope="module")
def shortgpt_audit() -> pd.DataFrame:
    return audit.audit_paper(SHORTGPT).set_index("claim_id")


def test_shortgpt_folder_audits_with_the_generic_rules(shortgpt_audit):
    frame = shortgpt_audit
    assert not frame.index.duplicated().any()
    assert {rule for rule in frame["rule"]} <= {name for name, rule in audit.RULES.items() if rule.generic}
    # Every printed Avg and RP of Table 2 holds under interval arithmetic.
    derived = frame[frame["rule"].isin(["avg_is_mean_of_benchmarks", "rp_is_avg_over_reference"])]
    assert len(derived) == 20 + 16 + 3 and set(derived["verdict"]) == {CONSISTENT}
    # Table 9's 9 removed layers of LLaMA-2-7B are 27.03% of its parameters; Table 2 prints 27.1%.
    ratio = frame.loc["T02/LLaMA-2-7B/ShortGPT/pruning_ratio"]
    assert (ratio["claimed"], ratio["recomputed"], ratio["verdict"]) == ("27.1", "27.031", INCONSISTENT)
    assert frame.loc["T02/Baichuan2-7B/ShortGPT/pruning_ratio", "verdict"] == NOT_CHECKABLE
    # Sec 1 says MMLU falls "from 55.0 to 52.2"; Table 2 prints 55.00 and 54.69.
    assert frame.loc["S01", "verdict"] == CONSISTENT and frame.loc["S02", "verdict"] == INCONSISTENT
    # Table 6 repeats Table 2's ShortGPT row with BoolQ 74.41 instead of 74.71; each table's Avg follows its own.
    assert frame.loc["T06/LLaMA-2-7B/ShortGPT/BoolQ~T02", "verdict"] == INCONSISTENT
    typo = frame.loc["T06/LLaMA-2-7B/ShortGPT/BoolQ~T02/likely typo"]
    assert typo["recomputed"] == "likely typo: undecided" and "Table 6's Avg supports 74.41" in typo["note"]


def test_shortgpt_folder_matches_its_readme_hashes():
    import hashlib
    import re

    readme = (SHORTGPT / "README.md").read_text(encoding="utf-8")
    listed = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+\.csv)$", readme, re.M))
    assert sorted(listed) == sorted(path.name for path in SHORTGPT.glob("*.csv"))
    for name, digest in listed.items():
        assert hashlib.sha256((SHORTGPT / name).read_bytes()).hexdigest() == digest, name


def test_shortgpt_audit_is_one_config_change():
    import subprocess
    import sys

    command = [sys.executable, "-m", "snakemake", "-n", "--forcerun", "audit_claims", "--config",
               "audit={claims: resources/claims_shortgpt}", "--", "results/audit/claims.csv"]
    result = subprocess.run(command, cwd=TESTS.parent, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    job = result.stdout.split("rule audit_claims:")[1].split("output:")[0]
    assert "resources/claims_shortgpt/table2.csv" in job and "resources/claims/" not in job
    bad = [sys.executable, "-m", "snakemake", "-n", "--config", "audit={claims: resources/no_such_claims}"]
    result = subprocess.run(bad, cwd=TESTS.parent, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "config key audit.claims: 'resources/no_such_claims' is not a folder" in (
        result.stderr)
