"""The BIG-bench scan's own scorer picks what lm-eval picks, and its interval is the Wilson interval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdp import tasks
from tests.maintainer_scripts import load_script

load_script("vendor_bigbench")  # scan_bigbench imports it by name
scan_bigbench = load_script("scan_bigbench")

OPT_KJV = Path(__file__).resolve().parent.parent / "resources" / "embedded" / "opt-kjv"


@pytest.fixture(scope="module")
def opt_kjv():
    return scan_bigbench.load(OPT_KJV, "cpu")


def test_loglikelihoods_match_lm_eval(opt_kjv, tmp_path):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = opt_kjv
    folder = tasks.write_task_suite("embedded", ["bb_bbq_lite_json_race_ethnicity_disambig", "kjv_word_order"],
                                    tmp_path / "suite", seed=0, items_per_task=2)
    bigbench = [json.loads(line) for line in (folder / "bb_bbq_lite_json_race_ethnicity_disambig.jsonl").open()]
    pairs = [pair for item in bigbench for pair in scan_bigbench.requests(item)]
    pairs += [("", " " + choice) for line in (folder / "kjv_word_order.jsonl").open()
              for choice in json.loads(line)["choices"]]  # empty context: lm-eval's prefix token
    ours = scan_bigbench.loglikelihoods(model, tokenizer, pairs, max_length=512, batch_tokens=256, device="cpu")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=128)
    theirs = [ll for ll, _ in lm.loglikelihood(
        [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)],
        disable_tqdm=True)]
    assert ours == pytest.approx(theirs, abs=1e-3)
    assert len(set(round(x, 3) for x in ours)) > len(ours) // 2  # the scores differ: a real comparison


def test_token_count_covers_every_request_lm_eval_asks(opt_kjv, tmp_path):
    _, tokenizer = opt_kjv
    folder = tasks.write_task_suite("embedded", ["bb_general_knowledge", "kjv_next_verse"], tmp_path / "suite",
                                    seed=0, items_per_task=3)
    counts = scan_bigbench.folder_tokens(folder, tokenizer, max_length=10**6)
    rows = {name: [json.loads(line) for line in (folder / f"{name}.jsonl").open()] for name in counts}
    assert tokenizer.bos_token_id is not None  # so every request, even one with an empty context, starts with it
    assert counts["bb_general_knowledge"] == sum(
        len(tokenizer.encode(f"{row['prefix']}Q: {row['question']}\nA: {choice}"))
        for row in rows["bb_general_knowledge"] for choice in row["choices"])
    # acc_mutual_info: each choice after the verse, and each choice alone
    assert counts["kjv_next_verse"] == sum(
        len(tokenizer.encode(f"{row['context']} {choice}")) + len(tokenizer.encode(f" {choice}"))
        for row in rows["kjv_next_verse"] for choice in row["choices"])
    capped = scan_bigbench.folder_tokens(folder, tokenizer, max_length=4)
    assert capped == {"bb_general_knowledge": 4 * sum(len(r["choices"]) for r in rows["bb_general_knowledge"]),
                      "kjv_next_verse": 4 * 2 * sum(len(r["choices"]) for r in rows["kjv_next_verse"])}


def test_wilson_interval_of_known_proportions():
    low, high = scan_bigbench.wilson(50, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    low, high = scan_bigbench.wilson(0, 20)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.1611, abs=1e-4)
