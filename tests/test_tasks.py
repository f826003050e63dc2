"""The benchmark registry and its task files: they load into lm-eval, are deterministic, never leak training text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lm_eval
import pytest
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

from kdp import corpus, tasks
from kdp.errors import UserError
from kdp.io import sha256_file

from tests.maintainer_scripts import load_script

vendor_bigbench = load_script("vendor_bigbench")

PAPER_CUSTOM = {b.name: b for b in tasks.SUITES["paper"].values() if b.task.startswith("kdp_")}
PAPER_BUILTIN = {b.name: b for b in tasks.SUITES["paper"].values() if not b.task.startswith("kdp_")}
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"


def _builtin_folders(names: set[str]) -> list[Path]:
    """Folders of lm-eval's own task tree whose YAMLs define one of ``names`` (indexing all of them takes ~30 s)."""
    defines = re.compile(r"^(?:task|group):\s*['\"]?([\w\-]+)", re.MULTILINE)
    folders = set()
    for path in LM_EVAL_TASKS.rglob("*.yaml"):
        if any(match in names for match in defines.findall(path.read_text(encoding="utf-8", errors="ignore"))):
            folders.add(path.parent)
    return sorted(folders)


def test_every_paper_benchmark_is_registered_with_lm_eval():
    builtin = {b.task for b in PAPER_BUILTIN.values()}
    manager = TaskManager(include_path=[*map(str, _builtin_folders(builtin)), str(tasks.PAPER_TASKS_DIR)],
                          include_defaults=False)
    missing = [b.task for b in tasks.SUITES["paper"].values() if b.task not in manager.all_tasks]
    assert not missing
    assert "kdp_race" in manager.all_groups
    for name in ("mmlu", "cmmlu"):
        assert name in manager.all_groups


@pytest.mark.parametrize("name", sorted(PAPER_CUSTOM))
def test_custom_paper_yaml_resolves_its_functions(name):
    manager = TaskManager(include_path=str(tasks.PAPER_TASKS_DIR), include_defaults=False)
    config = load_yaml(manager.task_index[PAPER_CUSTOM[name].task].yaml_path, resolve_func=True, recursive=True)
    functions = [value for value in config.values() if callable(value)]
    assert all(f.__module__.endswith("utils") for f in functions)


def _local_task(task_name: str, rows: list[dict], split: str, tmp_path: Path) -> ConfigurableTask:
    """A custom paper task with its hub dataset swapped for ``rows`` written in the hub dataset's schema."""
    manager = TaskManager(include_path=str(tasks.PAPER_TASKS_DIR), include_defaults=False)
    config = load_yaml(manager.task_index[task_name].yaml_path, resolve_func=True, recursive=True)
    data = tmp_path / f"{task_name}.jsonl"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    config.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": {split: str(data)}})
    for key in ("training_split", "validation_split", "test_split"):
        config.pop(key, None)
    config[f"{split}_split"] = split
    return ConfigurableTask(config=config)


def test_chid_turns_each_blank_into_one_document(tmp_path):
    candidates = [f"成语{i}" for i in range(10)]
    row = {"idx": 0, "candidates": candidates,
           "content": ["甲#idiom000001#乙。丙#idiom000002#丁。", "戊#idiom000003#己"],
           "answers": {"text": ["成语3", "成语7", "成语1"], "candidate_id": [3, 7, 1]}}
    task = _local_task("kdp_chid", [row], "validation", tmp_path)
    docs = list(task.validation_docs())
    assert [task.doc_to_text(d) for d in docs] == ["甲", "甲____乙。丙", "戊"]
    assert [task.doc_to_target(d) for d in docs] == [3, 7, 1]
    assert task.doc_to_choice(docs[0])[3] == "成语3乙。"  # the rest of the sentence only
    assert task.doc_to_choice(docs[1])[7] == "成语7丁。"
    assert task.doc_to_choice(docs[2])[0] == "成语0己"


def test_c3_cmnli_and_race_read_their_hub_schemas(tmp_path):
    c3 = _local_task("kdp_c3", [{"id": 0, "context": ["男：你好", "女：再见"], "question": "她说什么？",
                                 "choice": ["你好", "再见", "谢谢"], "answer": "再见"}], "validation", tmp_path)
    doc = next(iter(c3.validation_docs()))
    assert c3.doc_to_text(doc) == "男：你好\n女：再见\n问：她说什么？\n答："
    assert c3.doc_to_target(doc) == 1
    cmnli = _local_task("kdp_cmnli", [{"sentence1": "他来了", "sentence2": "他没来", "label": 2, "idx": 0}],
                        "validation", tmp_path)
    doc = next(iter(cmnli.validation_docs()))
    assert cmnli.doc_to_choice(doc)[cmnli.doc_to_target(doc)] == "错"  # ClassLabel 2 = contradiction
    race = _local_task("kdp_race_middle", [{"example_id": "m1", "article": "A text.", "question": "Why?",
                                           "options": ["a", "b", "c", "d"], "answer": "C"}], "test", tmp_path)
    doc = next(iter(race.test_docs()))
    assert race.doc_to_target(doc) == 2
    assert race.doc_to_text(doc) == "Article: A text.\n\nQuestion: Why?\nAnswer:"


def test_xsum_rouge1_matches_a_hand_count():
    utils = load_yaml(tasks.PAPER_TASKS_DIR / "kdp_xsum.yaml", resolve_func=True)["process_results"]
    # reference: the cat sat on the mat / prediction: the cat lay on a mat -> 4 shared unigrams of 6 and 6
    score = utils({"summary": "The cat sat on the mat."}, [" the cat lay on a mat\n"])["rouge1"]
    assert score == pytest.approx(4 / 6)


# -- embedded suite ----------------------------------------------------------------------------------------------
EMBEDDED = list(tasks.SUITES["embedded"])


def test_embedded_suite_is_deterministic_and_seed_dependent(tmp_path):
    first = tasks.write_task_suite("embedded", EMBEDDED, tmp_path / "a", seed=3)
    second = tasks.write_task_suite("embedded", EMBEDDED, tmp_path / "b", seed=3)
    other = tasks.write_task_suite("embedded", EMBEDDED, tmp_path / "c", seed=4)
    for name in ("kjv_next_verse", "kjv_cloze", "kjv_perplexity", "bb_general_knowledge"):
        assert (first / f"{name}.jsonl").read_bytes() == (second / f"{name}.jsonl").read_bytes()
    for name in ("kjv_next_verse", "kjv_cloze", "kjv_perplexity"):
        assert (first / f"{name}.jsonl").read_bytes() != (other / f"{name}.jsonl").read_bytes()


def test_embedded_yaml_points_at_absolute_data_files_and_loads(tmp_path):
    out = tasks.write_task_suite("embedded", EMBEDDED, tmp_path / "suite", seed=0)
    manager = TaskManager(include_path=str(out), include_defaults=False)
    for b in tasks.SUITES["embedded"].values():
        assert b.task in manager.all_tasks
        config = load_yaml(manager.task_index[b.task].yaml_path, resolve_func=True)
        data = Path(config["dataset_kwargs"]["data_files"]["test"])
        assert data.is_absolute() and data.is_file() and data.parent == out
    loaded = manager.load([tasks.SUITES["embedded"]["kjv_cloze"].task])["tasks"]
    docs = list(next(iter(loaded.values())).test_docs())
    assert len(docs) == tasks.KJV_POOL_SIZES["kjv_cloze"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_kjv_items_hold_only_held_out_text(tmp_path):
    out = tasks.write_task_suite("embedded", ["kjv_next_verse", "kjv_cloze", "kjv_word_order", "kjv_perplexity"],
                                 tmp_path / "s", 0)
    held_out = {v["citation"]: v["text"] for v in corpus.verses("test")}
    seen = {v["text"] for split in ("train", "validation") for v in corpus.verses(split)}
    for row in _rows(out / "kjv_next_verse.jsonl"):
        assert held_out[row["citation"]] == row["context"]
        for choice in row["choices"]:
            assert choice in held_out.values() and choice not in seen
        assert row["context"] not in seen
    for row in _rows(out / "kjv_cloze.jsonl"):
        verse = held_out[row["citation"]]
        assert verse.startswith(row["context"]) and verse not in seen
    for row in _rows(out / "kjv_word_order.jsonl"):
        verse = row["choices"][row["label"]]
        assert held_out[row["citation"]] == verse and verse not in seen
    chapters = {f"{book} {chapter}": text for book, chapter, text in corpus.chapters("test")}
    documents = _rows(out / "kjv_perplexity.jsonl")
    assert all(chapters[row["citation"]] == row["text"] for row in documents)
    assert sum(len(row["text"].split()) for row in documents) >= tasks.KJV_PERPLEXITY_WORDS


def test_kjv_items_are_well_formed():
    verses = corpus.verses("test")
    by_citation = {v["citation"]: i for i, v in enumerate(verses)}
    next_verse = tasks.kjv_next_verse_items(seed=0)
    for item in next_verse:
        true = verses[by_citation[item["citation"]] + 1]
        assert item["choices"][item["label"]] == true["text"]
        assert len(set(item["choices"])) == tasks.KJV_CHOICES
    labels = [item["label"] for item in next_verse]
    assert len(set(labels)) == tasks.KJV_CHOICES  # the answer's position varies
    cloze = tasks.kjv_cloze_items(seed=0)
    for item in cloze:
        verse = verses[by_citation[item["citation"]]]["text"]
        word = item["choices"][item["label"]]
        assert re.fullmatch(re.escape(item["context"]) + r"\s+" + word + r"\W*", verse)
        assert len({c.lower() for c in item["choices"]}) == tasks.KJV_CHOICES
    for item in tasks.kjv_word_order_items(seed=0):
        verse = verses[by_citation[item["citation"]]]["text"]
        assert item["context"] == "" and item["choices"][item["label"]] == verse
        assert len(set(item["choices"])) == tasks.KJV_CHOICES
        for choice in item["choices"]:  # the same words; a distractor differs from the verse in two neighbours
            differ = [i for i, (a, b) in enumerate(zip(choice.split(" "), verse.split(" "))) if a != b]
            assert sorted(choice.split(" ")) == sorted(verse.split(" "))
            assert choice == verse or (len(differ) == 2 and differ[1] == differ[0] + 1 and differ[0] > 0)


def test_kjv_pools_hold_every_qualifying_verse():
    for name, size in tasks.KJV_POOL_SIZES.items():
        pool = tasks.KJV_ITEMS[name](seed=0)
        assert len(pool) == size == tasks.benchmark(name).n_items
        assert len({item["citation"] for item in pool}) == size  # one item per verse (pair)


def test_held_out_books_are_disjoint_from_training_text():
    books = {split: {v["book"] for v in corpus.verses(split)} for split in corpus.SPLITS}
    assert books["test"] == set(corpus.TEST_BOOKS)
    assert not books["test"] & books["train"] and not books["test"] & books["validation"]


MC = [b.name for b in tasks.SUITES["embedded"].values() if b.kind == "accuracy"]


def test_item_limit_writes_one_seeded_subset_for_every_run(tmp_path):
    full = tasks.write_task_suite("embedded", MC + ["kjv_perplexity"], tmp_path / "full", seed=0)
    first = tasks.write_task_suite("embedded", MC + ["kjv_perplexity"], tmp_path / "a", seed=0, items_per_task=30)
    again = tasks.write_task_suite("embedded", MC + ["kjv_perplexity"], tmp_path / "b", seed=0, items_per_task=30)
    other = tasks.write_task_suite("embedded", ["kjv_cloze", "bb_bbq_lite_json_race_ethnicity_disambig"],
                                   tmp_path / "c", seed=1, items_per_task=30)
    manifest = json.loads((first / tasks.MANIFEST).read_text())
    assert manifest["items_per_task"] == 30
    for name in MC:
        pool, chosen = _rows(full / f"{name}.jsonl"), _rows(first / f"{name}.jsonl")
        assert (first / f"{name}.jsonl").read_bytes() == (again / f"{name}.jsonl").read_bytes()
        assert len(pool) == tasks.benchmark(name).n_items
        assert len(chosen) == min(30, len(pool))
        positions = [pool.index(row) for row in chosen]  # every chosen item is a pool item, in pool order
        assert positions == sorted(positions)
        assert manifest["written"][name] == {"n": len(chosen), "chance": pytest.approx(tasks.chance_of(chosen))}
    for name in ("kjv_cloze", "bb_bbq_lite_json_race_ethnicity_disambig"):
        assert (other / f"{name}.jsonl").read_bytes() != (first / f"{name}.jsonl").read_bytes()
    # perplexity documents are never cut
    assert (first / "kjv_perplexity.jsonl").read_bytes() == (full / "kjv_perplexity.jsonl").read_bytes()
    with pytest.raises(UserError, match="items_per_task 0"):
        tasks.write_task_suite("embedded", ["kjv_cloze"], tmp_path / "d", seed=0, items_per_task=0)


def test_build_tasks_honours_the_config_switch(tmp_path):
    from kdp.steps import build_tasks

    config = {"seed": 0, "evaluation": {"suite": "embedded", "benchmarks": ["kjv_word_order"], "items_per_task": 7}}
    build_tasks(config, str(tmp_path / "subset"))
    assert len(_rows(tmp_path / "subset" / "kjv_word_order.jsonl")) == 7
    config["evaluation"]["items_per_task"] = None
    build_tasks(config, str(tmp_path / "full"))
    assert len(_rows(tmp_path / "full" / "kjv_word_order.jsonl")) == tasks.KJV_POOL_SIZES["kjv_word_order"]


def test_unknown_benchmark_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(UserError, match="'hellaswag'.*allowed: .*kjv_cloze"):
        tasks.write_task_suite("embedded", ["kjv_cloze", "hellaswag"], tmp_path / "x", seed=0)
    with pytest.raises(UserError, match="'nope'"):
        tasks.check_benchmarks("nope", ["kjv_cloze"], "config key evaluation.suite")
    assert not (tmp_path / "x").exists()


def test_paper_suite_copies_the_static_task_folder(tmp_path):
    out = tasks.write_task_suite("paper", ["race", "xsum"], tmp_path / "paper", seed=0)
    assert (out / "kdp_race.yaml").read_bytes() == (tasks.PAPER_TASKS_DIR / "kdp_race.yaml").read_bytes()
    assert json.loads((out / tasks.MANIFEST).read_text())["benchmarks"].keys() == {"race", "xsum"}


def test_chance_levels_match_the_vendored_items():
    items = _rows(tasks.BIGBENCH_DIR / "general_knowledge.jsonl")
    # 69 items with one right answer among their choices, one ("tongue colour") with two right among 12
    expected = sum(len(i["labels"]) / len(i["choices"]) for i in items) / len(items)
    assert tasks.SUITES["embedded"]["bb_general_knowledge"].chance == pytest.approx(expected)
    assert sum(len(i["labels"]) == 2 for i in items) == 1
    assert tasks.SUITES["embedded"]["bb_human_organs_senses"].chance == pytest.approx(0.25)
    assert tasks.SUITES["embedded"]["bb_emoji_movie"].chance == pytest.approx(0.2)


def test_mapping_table_has_one_row_per_paper_column():
    table = tasks.mapping_table("paper")
    columns = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert columns == ["CMNLI", "HeSw", "PIQA", "CHD", "WSC", "CoQA", "BoolQ", "MMLU", "CMMLU", "Race", "SST2",
                       "C3", "WIKI", "C4", "Xsum"]


def test_vendored_bigbench_files_match_their_notice():
    notice = (tasks.BIGBENCH_DIR / "NOTICE.md").read_text(encoding="utf-8")
    for b in tasks.SUITES["embedded"].values():
        if b.name.startswith("bb_"):
            path = tasks.BIGBENCH_DIR / f"{b.name.removeprefix('bb_')}.jsonl"
            row = next(line for line in notice.splitlines() if line.startswith(f"| `{path.name}`"))
            assert f"`{sha256_file(path)}`" in row and f"| {b.n_items} / " in row
            assert "canary" not in path.read_text(encoding="utf-8").lower()
            licence = row.split(" | ")[-2]  # the licence column: every vendored task names its terms
            assert "Apache-2.0" in licence
            items = _rows(path)
            assert len(items) <= vendor_bigbench.MAX_ITEMS
            assert all(set(item) == {"prefix", "question", "choices", "labels"} for item in items)


def test_every_vendored_file_has_provenance():
    vendored = {p.stem for p in tasks.BIGBENCH_DIR.glob("*.jsonl")}
    assert vendored == {vendor_bigbench.file_stem(path) for path in vendor_bigbench.PROVENANCE}
    assert vendored == {b.name.removeprefix("bb_") for b in tasks.SUITES["embedded"].values()
                        if b.name.startswith("bb_")}
    for source in vendor_bigbench.PROVENANCE.values():
        assert source.author and source.origin and source.licence


def test_only_permissively_licensed_tasks_are_vendored():
    for path, source in vendor_bigbench.PROVENANCE.items():
        vendor_bigbench.check_permissive(path, source)
        assert set(source.data_licences.values()) <= set(vendor_bigbench.PERMISSIVE)
    registered = {b.name for b in tasks.SUITES["embedded"].values()}
    for path in vendor_bigbench.NOT_VENDORED:
        stem = vendor_bigbench.file_stem(path)
        assert not (tasks.BIGBENCH_DIR / f"{stem}.jsonl").exists() and f"bb_{stem}" not in registered
        assert path not in vendor_bigbench.PROVENANCE
    notice = (tasks.BIGBENCH_DIR / "NOTICE.md").read_text(encoding="utf-8")
    assert all(f"[{path}](" in notice for path in vendor_bigbench.NOT_VENDORED)


def test_vendoring_refuses_a_non_permissive_source_before_writing(tmp_path, monkeypatch):
    wikihow = vendor_bigbench.Source("someone", "wikiHow articles", {"wikiHow": "CC-BY-NC-SA-3.0"})
    assert wikihow.licence == "wikiHow: CC-BY-NC-SA-3.0; task: Apache-2.0 (BIG-bench)"
    monkeypatch.setitem(vendor_bigbench.PROVENANCE, "goal_step_wikihow/step_inference", wikihow)
    with pytest.raises(UserError, match=r"goal_step_wikihow/step_inference.*CC-BY-NC-SA-3.0; allowed: Apache-2.0"):
        vendor_bigbench.vendor(tmp_path / "no-sdist.tar.gz", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
