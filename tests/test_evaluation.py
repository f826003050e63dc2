"""The lm-eval wrapper on a micro model: numbers land in range, every item is kept and recomputes its score, one
accuracy matches a brute-force recount item by item, and the shared-context scorer gives stock HFLM's
log-likelihoods."""

from __future__ import annotations

import json
import math
import os

from types import SimpleNamespace

import datasets.config
import huggingface_hub.constants
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

from kdp import corpus, tasks
from kdp.adapters import adapter_for
from kdp.errors import UserError
from kdp.evaluation import _documents_scored, _hub_offline, evaluate
from kdp.hf_custom import apply_edit
from kdp.statistics import ItemScores

LIMIT = 6


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=["</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([v["text"] for v in corpus.verses("train")[:3000]], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="</s>", eos_token="</s>", pad_token="</s>")


# Weights drawn wider than transformers' 0.02, so that attention is sharp and a log-likelihood moves when a
# position or a masked token is wrong (at 0.02 a micro model's outputs hardly depend on either).
INIT_STD = 0.3


def micro_llama(tokenizer, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         initializer_range=INIT_STD,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


def micro_opt(tokenizer, positions: int = 128) -> OPTForCausalLM:
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=3,
                       num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=positions, dropout=0.0,
                       attention_dropout=0.0, init_std=INIT_STD, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return OPTForCausalLM(config).eval()


def pruned_llama(tokenizer) -> LlamaForCausalLM:
    """Layer 0 removed and layers 1-2 of the rest folded, as w/o Kernel and KDP leave a model."""
    network = micro_llama(tokenizer, layers=5)
    adapter = adapter_for(network)
    adapter.remove_layers([0])
    fold = {"kind": "kdp", "hidden_size": 32, "rff_dim": 16, "rank": 4, "sigma": "precision", "inverse_hidden": 16,
            "inverse_activation": "gelu", "output_size": 32}
    apply_edit(adapter, {"factory": "kdp.methods.kdp:install_fold", "first": 1, "last": 2, "fold": fold})
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in network.parameters():
            if not parameter.abs().sum():  # the fold is built empty: give it weights to carry
                parameter.normal_(0.0, INIT_STD)
    return network.eval()


@pytest.fixture(scope="module")
def model(tokenizer) -> LlamaForCausalLM:
    return micro_llama(tokenizer)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return tasks.write_task_suite("embedded", list(tasks.SUITES["embedded"]), tmp_path_factory.mktemp("suite"), 0)


@pytest.fixture(scope="module")
def result(model, tokenizer, suite):
    # max_length above the model's 128 positions: the wrapper must cap it, or rolling windows overflow.
    return evaluate(model, tokenizer, list(tasks.SUITES["embedded"]), include_path=suite, limit=LIMIT,
                    batch_size=4, max_length=512, seed=0)


def test_every_benchmark_gets_a_number_in_range(result):
    scores = result["scores"]
    assert list(scores) == list(tasks.SUITES["embedded"])
    for name, score in scores.items():
        b = tasks.SUITES["embedded"][name]
        assert score["n"] == LIMIT
        assert (score["kind"], score["table"], score["column"]) == (b.kind, b.table, b.column)
        if b.kind == "accuracy":
            assert 0.0 <= score["value"] <= 100.0
            assert score["chance"] == pytest.approx(100 * b.chance)
            assert score["stderr"] is not None
        else:
            assert score["value"] > 1.0 and math.isfinite(score["value"])
        items = ItemScores.from_record(score["items"])  # every item kept, and they recompute the score
        assert [leaf.doc_ids for leaf in items.leaves] == [tuple(range(LIMIT))]
        assert float(items.value()) == pytest.approx(score["value"], rel=1e-9)
    assert result["lm_eval"]["max_length"] == 128 and result["lm_eval"]["scorer"] == "SharedContextLM"
    json.dumps(result)  # the whole record goes into a JSON file


def _loglikelihood(model, context_ids: list[int], continuation_ids: list[int]) -> float:
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids[:, :-1]).logits.float(), dim=-1)[0]
    return sum(logprobs[len(context_ids) - 1 + k, token].item() for k, token in enumerate(continuation_ids))


def _conditional(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), the pair split into tokens the way lm-eval's HFLM splits it."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    return _loglikelihood(model, context_ids, whole[len(context_ids):])


def _unconditional(model, tokenizer, continuation: str) -> float:
    """log p(continuation) after only the tokenizer's BOS token, lm-eval's stand-in for an empty context."""
    continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    return _loglikelihood(model, [tokenizer.bos_token_id], continuation_ids)


def _per_character(model, tokenizer, item: dict, choice: str) -> float:
    return _conditional(model, tokenizer, item["context"], " " + choice) / len(choice)


def _mutual_information(model, tokenizer, item: dict, choice: str) -> float:
    conditional = _conditional(model, tokenizer, item["context"], " " + choice)
    return conditional - _unconditional(model, tokenizer, " " + choice)


@pytest.mark.parametrize("name, score", [("kjv_cloze", _per_character), ("kjv_next_verse", _mutual_information)])
def test_kjv_accuracy_matches_a_brute_force_recount(result, model, tokenizer, suite, name, score):
    items = [json.loads(line) for line in (suite / f"{name}.jsonl").read_text().splitlines()][:LIMIT]
    correct = []
    for item in items:
        scores = [score(model, tokenizer, item, choice) for choice in item["choices"]]
        correct.append(float(max(range(len(scores)), key=scores.__getitem__) == item["label"]))
    assert result["scores"][name]["value"] == pytest.approx(100.0 * sum(correct) / len(items))
    assert result["scores"][name]["items"]["leaves"][f"kdp_{name}"]["score"] == correct


def short_context_opt(tokenizer) -> OPTForCausalLM:
    """OPT with a position table exactly as long as the evaluation's max_length (as OPT-KJV's 128): a padded
    continuation position past the table would index out of range."""
    return micro_opt(tokenizer, positions=64)


def choice_requests(suite, per_task: int = 8) -> list[SimpleNamespace]:
    """(context, " choice") pairs of the embedded multiple-choice tasks, and each choice with an empty context as
    acc_mutual_info asks for it: contexts of many lengths, continuations of one token and of many."""
    requests = []
    for name in ("kjv_next_verse", "kjv_cloze", "bb_general_knowledge", "bb_emoji_movie"):
        for line in (suite / f"{name}.jsonl").read_text().splitlines()[:per_task]:
            item = json.loads(line)
            context = item.get("context") or f"Q: {item['question']}\nA:"
            for choice in item["choices"]:
                requests += [SimpleNamespace(args=(context, " " + choice)), SimpleNamespace(args=("", " " + choice))]
    return requests


@pytest.mark.parametrize("build, max_length", [(micro_llama, 128), (micro_opt, 128), (pruned_llama, 128),
                                               (micro_llama, 64),  # 64: the longest requests take the stock path
                                               (short_context_opt, 64)])
def test_shared_context_scorer_gives_stock_hflm_log_likelihoods(tokenizer, suite, build, max_length):
    from lm_eval.models.huggingface import HFLM

    from kdp.shared_context_lm import SharedContextLM

    network, requests = build(tokenizer), choice_requests(suite)
    stock, shared = (cls(pretrained=network, tokenizer=tokenizer, batch_size=8, max_length=max_length)
                     .loglikelihood(requests, disable_tqdm=True) for cls in (HFLM, SharedContextLM))
    assert len(shared) == len(stock) == len(requests)
    for (ours, ours_greedy), (theirs, theirs_greedy) in zip(shared, stock):
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-4) and ours_greedy == theirs_greedy


def test_either_scorer_gives_the_same_item_scores(result, model, tokenizer, suite):
    stock = evaluate(model, tokenizer, list(tasks.SUITES["embedded"]), include_path=suite, limit=LIMIT,
                     batch_size=4, max_length=512, seed=0, share_contexts=False)
    assert stock["lm_eval"]["scorer"] == "HFLM"
    for name, score in result["scores"].items():
        theirs = stock["scores"][name]
        assert score["value"] == pytest.approx(theirs["value"], rel=1e-9)
        for leaf, kept in score["items"]["leaves"].items():
            column = "score" if "score" in kept else "loglikelihood"
            assert kept[column] == pytest.approx(theirs["items"]["leaves"][leaf][column], rel=1e-9)


def test_lm_eval_provenance_is_recorded(result):
    record = result["lm_eval"]
    assert record["version"].startswith("0.4")
    for b in tasks.SUITES["embedded"].values():
        assert b.task in record["versions"] and record["n-shot"][b.task] == 0
        assert record["configs"][b.task]["task"] == b.task


def test_hub_is_off_during_embedded_runs_and_restored_after(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with _hub_offline(True):
        assert huggingface_hub.constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE
        assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert not huggingface_hub.constants.HF_HUB_OFFLINE and not datasets.config.HF_HUB_OFFLINE
    assert "HF_HUB_OFFLINE" not in os.environ


def test_bad_requests_are_user_errors(model, tokenizer, suite, tmp_path):
    with pytest.raises(UserError, match="'nope'"):
        evaluate(model, tokenizer, ["nope"], include_path=suite)
    with pytest.raises(UserError, match="not a folder"):
        evaluate(model, tokenizer, ["kjv_cloze"], include_path=tmp_path / "missing")
    partial = tasks.write_task_suite("embedded", ["kjv_cloze"], tmp_path / "partial", seed=0)
    with pytest.raises(UserError, match="kdp_kjv_next_verse"):
        evaluate(model, tokenizer, ["kjv_next_verse"], include_path=partial)


def test_documents_of_a_group_are_summed_over_its_leaves():
    output = {"n-samples": {"high": {"effective": 3, "original": 3}, "middle": {"effective": 4, "original": 9},
                            "other": {"effective": 100, "original": 100}},
              "group_subtasks": {"race": ["part"], "part": ["high", "middle"]}}
    assert _documents_scored("race", output) == 7
    assert _documents_scored("middle", output) == 4
