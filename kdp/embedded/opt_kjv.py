"""The embedded OPT-architecture model: a small pre-LN ``OPTForCausalLM`` pretrained here on the King James Bible.

No pretrained OPT, GPT-2 or Pythia weights can be had offline, yet the paper prunes OPT models; so the project
trains its own, from nothing but the ``train`` books of ``kdp.corpus``: a byte-level BPE tokenizer first, then the
model on the packed chapter text, choosing the checkpoint with the lowest loss on the ``validation`` books. The
``test`` books are only scored at the end, against an add-one unigram model on the same tokens, so the report
shows how much of the text the model has really learned.

Everything is a function of the recipe: BPE training has no randomness, windows are drawn by a generator seeded
from the recipe, and torch runs its deterministic kernels. ``recipe_hash`` names all that decides the weights,
so the workflow can tell whether a shipped artifact is the one its recipe would train.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

from kdp import corpus
from kdp.errors import bad_value
from kdp.io import atomic_path, sha256_file, sha256_json, write_json

# As in OPT, one token both opens every document and ends it.
BOUNDARY = "</s>"
PAD = "<pad>"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
REPORT = "report.json"
# Windows per forward pass when scoring; it changes speed, not the scores.
SCORING_BATCH = 32

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OPTRecipe:
    """Everything that decides the trained weights besides the corpus and this module's code."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    context_length: int
    batch_size: int
    train_tokens: int  # windows x context_length seen in training, over as many passes of the train split as needed
    peak_lr: float
    warmup_steps: int
    min_lr_ratio: float  # the cosine decays the learning rate to peak_lr * min_lr_ratio at the last step
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    grad_clip: float
    dropout: float
    # Training runs its matrix products under autocast to this; the weights and optimizer stay float32.
    compute_dtype: str
    eval_every: int  # steps between validation passes
    patience: int  # validation passes without a new best before training stops
    save_dtype: str  # the stored weights; config.json says float32, so they load in float32 by default
    seed: int

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.context_length

    @property
    def steps(self) -> int:
        return max(1, self.train_tokens // self.tokens_per_step)


# About 2.4 passes over the ~1.0M train tokens: the cost is bounded by train_tokens, not by convergence.
# bfloat16 products halve the training time on a CPU with bf16 instructions (measured: ~1700 vs ~850 tokens/s).
EMBEDDED = OPTRecipe(
    vocab_size=4096,
    hidden_size=256,
    num_layers=12,
    num_heads=4,
    ffn_dim=1024,
    context_length=128,
    batch_size=16,
    train_tokens=2_457_600,
    peak_lr=1.5e-3,
    warmup_steps=100,
    min_lr_ratio=0.1,
    weight_decay=0.1,
    adam_beta1=0.9,
    adam_beta2=0.95,
    grad_clip=1.0,
    dropout=0.0,
    compute_dtype="bfloat16",
    eval_every=100,
    patience=4,
    save_dtype="float16",
    seed=0,
)

# For tests: the same pipeline in seconds, still 12 layers so layer-pruning code has something to cut.
MICRO = replace(
    EMBEDDED,
    vocab_size=512,
    hidden_size=32,
    num_heads=2,
    ffn_dim=64,
    context_length=64,
    batch_size=8,
    train_tokens=200 * 8 * 64,
    peak_lr=5e-3,
    warmup_steps=30,
    compute_dtype="float32",
    eval_every=50,
    patience=3,
)


def recipe_hash(recipe: OPTRecipe) -> str:
    """Hash of the recipe, this module's source, the corpus file and its split: what the weights depend on."""
    return sha256_json(
        {
            "recipe": asdict(recipe),
            "code": sha256_file(__file__),
            "corpus": sha256_file(corpus.kjv_path()),
            "split": {"validation": corpus.VALIDATION_BOOKS, "test": corpus.TEST_BOOKS},
        }
    )


# -- tokenizer -------------------------------------------------------------------------------------------------
def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE as in GPT-2/OPT; encoding prepends ``</s>`` like OPT's tokenizer does.

    BPE training is deterministic (ties between equally frequent pairs break on token ids), so it needs no seed.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOUNDARY, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOUNDARY, eos_token=BOUNDARY, pad_token=PAD, add_bos_token=True
    )


def token_stream(tokenizer: PreTrainedTokenizerFast, documents: Sequence[str]) -> torch.Tensor:
    """The documents' ids end to end, each opened by the boundary token, as OPT was pretrained."""
    # Documents are longer than the model's context; that is what the windows are for, so no warning about it.
    encoded = tokenizer(list(documents), add_special_tokens=True, verbose=False)["input_ids"]
    return torch.tensor(list(itertools.chain.from_iterable(encoded)), dtype=torch.long)


# -- model -----------------------------------------------------------------------------------------------------
def _new_model(recipe: OPTRecipe, tokenizer: PreTrainedTokenizerFast) -> OPTForCausalLM:
    config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        word_embed_proj_dim=recipe.hidden_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        ffn_dim=recipe.ffn_dim,
        max_position_embeddings=recipe.context_length,
        do_layer_norm_before=True,
        dropout=recipe.dropout,
        attention_dropout=recipe.dropout,
        activation_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    return OPTForCausalLM(config)


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seeded, deterministic kernels inside; the caller's RNG state and determinism flag are restored after."""
    previous = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous)


# -- training --------------------------------------------------------------------------------------------------
def _training_windows(stream: torch.Tensor, length: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Contiguous windows, one pass after another; each pass shifts the window grid and shuffles its order."""
    while True:
        offset = int(torch.randint(length, (1,), generator=generator))
        starts = torch.arange(offset, len(stream) - length + 1, length)
        for index in torch.randperm(len(starts), generator=generator).tolist():
            start = int(starts[index])
            yield stream[start : start + length]


def _optimizer(model: torch.nn.Module, recipe: OPTRecipe) -> torch.optim.AdamW:
    # Weight decay shrinks matrices only; decaying biases, norms and embeddings only hurts a model this small.
    decayed, kept = [], []
    for name, parameter in model.named_parameters():
        is_matrix = parameter.ndim == 2 and "embed" not in name
        (decayed if is_matrix else kept).append(parameter)
    return torch.optim.AdamW(
        [{"params": decayed, "weight_decay": recipe.weight_decay}, {"params": kept, "weight_decay": 0.0}],
        lr=recipe.peak_lr,
        betas=(recipe.adam_beta1, recipe.adam_beta2),
    )


def _lr_factor(step: int, recipe: OPTRecipe) -> float:
    """Linear warmup to 1, then cosine down to min_lr_ratio at the last step."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _train(
    model: OPTForCausalLM,
    recipe: OPTRecipe,
    train_stream: torch.Tensor,
    validation_stream: torch.Tensor,
    special_ids: Sequence[int],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Train in place; on return the model holds the weights with the lowest validation loss seen."""
    optimizer = _optimizer(model, recipe)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, recipe))
    windows = _training_windows(train_stream, recipe.context_length, torch.Generator().manual_seed(recipe.seed))
    curve: list[dict[str, float]] = []
    best_loss, best_step, best_state = math.inf, 0, None
    recent_losses: list[float] = []
    started = time.perf_counter()
    model.train()
    progress = tqdm(range(1, recipe.steps + 1), desc="pretrain opt-kjv", unit="step")
    for step in progress:
        batch = torch.stack([next(windows) for _ in range(recipe.batch_size)])
        with torch.autocast("cpu", dtype=DTYPES[recipe.compute_dtype], enabled=recipe.compute_dtype != "float32"):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        recent_losses.append(loss.item())
        progress.set_postfix(loss=f"{recent_losses[-1]:.3f}", refresh=False)
        if step % recipe.eval_every and step != recipe.steps:
            continue
        validation_loss = _mean_text_nll(model, validation_stream, special_ids, recipe)
        model.train()
        curve.append(
            {
                "step": step,
                "tokens_seen": step * recipe.tokens_per_step,
                "train_loss": sum(recent_losses) / len(recent_losses),
                "validation_loss": validation_loss,
            }
        )
        recent_losses.clear()
        log(f"step {step}: train loss {curve[-1]['train_loss']:.4f}, validation loss {validation_loss:.4f}")
        if validation_loss < best_loss:
            best_loss, best_step = validation_loss, step
            best_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        elif (step - best_step) // recipe.eval_every >= recipe.patience:
            log(f"stopping at step {step}: no better validation loss since step {best_step}")
            break
    progress.close()
    model.load_state_dict(best_state)
    model.eval()
    return {
        "steps": step,
        "train_tokens_seen": step * recipe.tokens_per_step,
        "train_passes": step * recipe.tokens_per_step / len(train_stream),
        "stopped_early": step < recipe.steps,
        "best_step": best_step,
        "best_validation_loss": best_loss,
        "validation_curve": curve,
        "train_seconds": time.perf_counter() - started,
    }


# -- scoring ---------------------------------------------------------------------------------------------------
def _scoring_windows(n_tokens: int, length: int) -> list[tuple[int, int]]:
    """(window start, first token scored) pairs; windows end half a window apart, so every token after the first
    is scored once, from at least half a window of the text before it (all of it near the start)."""
    windows, scored_until, end = [], 1, 0
    while scored_until < n_tokens:
        end = min(end + max(1, length // 2), n_tokens) if windows else min(length, n_tokens)
        windows.append((max(0, end - length), scored_until))
        scored_until = end
    return windows


@torch.inference_mode()
def _target_nlls(model: torch.nn.Module, stream: torch.Tensor, length: int) -> torch.Tensor:
    """Negative log-likelihood of ``stream[1:]``, token by token."""
    model.eval()
    length = min(length, len(stream))
    nlls = torch.empty(len(stream) - 1)
    windows = _scoring_windows(len(stream), length)
    for first in range(0, len(windows), SCORING_BATCH):
        chunk = windows[first : first + SCORING_BATCH]
        ids = torch.stack([stream[start : start + length] for start, _ in chunk])
        logprobs = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
        for row, (start, scored_from) in enumerate(chunk):
            offset = scored_from - start
            targets = ids[row, offset:]
            predicted = logprobs[row, offset - 1 : -1].gather(-1, targets[:, None]).squeeze(-1)
            nlls[scored_from - 1 : start + length - 1] = -predicted
    return nlls


def _text_mask(stream: torch.Tensor, special_ids: Sequence[int]) -> torch.Tensor:
    """Which targets of ``stream[1:]`` are text, not document boundaries."""
    return ~torch.isin(stream[1:], torch.tensor(list(special_ids)))


def _mean_text_nll(
    model: torch.nn.Module, stream: torch.Tensor, special_ids: Sequence[int], recipe: OPTRecipe
) -> float:
    nlls = _target_nlls(model, stream, recipe.context_length)
    return float(nlls[_text_mask(stream, special_ids)].mean())


def _unigram_nlls(
    train_stream: torch.Tensor, stream: torch.Tensor, vocab_size: int, special_ids: Sequence[int]
) -> torch.Tensor:
    """NLL of ``stream[1:]`` under add-one smoothed token frequencies of the train text (boundaries excluded)."""
    counts = torch.bincount(train_stream, minlength=vocab_size).double() + 1
    counts[list(special_ids)] = 0
    return -torch.log(counts / counts.sum())[stream[1:]].float()


def _perplexities(total_nll: float, n_tokens: int, n_words: int) -> dict[str, float]:
    return {"token_perplexity": math.exp(total_nll / n_tokens), "word_perplexity": math.exp(total_nll / n_words)}


def heldout_perplexities(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    context_length: int,
    train_stream: torch.Tensor,
    heldout_documents: Sequence[str],
) -> dict[str, Any]:
    """Token- and word-level perplexity of the model and of a unigram baseline on the same held-out documents.

    The unigram model counts the tokens of ``train_stream`` (a ``token_stream`` of the train documents); windows of
    ``context_length`` tokens score the model.
    """
    special_ids = [tokenizer.bos_token_id, tokenizer.pad_token_id]
    stream = token_stream(tokenizer, heldout_documents)
    mask = _text_mask(stream, special_ids)
    n_tokens, n_words = int(mask.sum()), sum(len(document.split()) for document in heldout_documents)
    model_nll = float(_target_nlls(model, stream, context_length)[mask].double().sum())
    unigram_nll = float(_unigram_nlls(train_stream, stream, len(tokenizer), special_ids)[mask].double().sum())
    scores = {
        "documents": len(heldout_documents),
        "tokens": n_tokens,
        "words": n_words,
        "model": _perplexities(model_nll, n_tokens, n_words),
        "unigram": _perplexities(unigram_nll, n_tokens, n_words),
    }
    scores["model_over_unigram_token_perplexity"] = (
        scores["model"]["token_perplexity"] / scores["unigram"]["token_perplexity"]
    )
    return scores


# -- the whole recipe ------------------------------------------------------------------------------------------
def _chapter_texts(split: str) -> list[str]:
    return [text for _, _, text in corpus.chapters(split)]


def _stored_state(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The weights in ``dtype``, each stored once: the output head is the input embedding and is tied on load."""
    stored, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            stored[name] = tensor.to(dtype)
    return stored


def pretrain(recipe: OPTRecipe, out_dir: str | Path, log: Callable[[str], None] = _logger.info) -> dict[str, Any]:
    """Train tokenizer and model, save both to ``out_dir`` with ``report.json``, and return the report."""
    for field in ("save_dtype", "compute_dtype"):
        if getattr(recipe, field) not in DTYPES:
            raise bad_value(f"OPTRecipe.{field}", getattr(recipe, field), DTYPES)
    started = time.perf_counter()
    documents = {split: _chapter_texts(split) for split in corpus.SPLITS}
    tokenizer = train_tokenizer(documents["train"], recipe.vocab_size)
    tokenizer.model_max_length = recipe.context_length
    special_ids = [tokenizer.bos_token_id, tokenizer.pad_token_id]
    train_stream = token_stream(tokenizer, documents["train"])
    validation_stream = token_stream(tokenizer, documents["validation"])
    log(f"tokenizer: {len(tokenizer)} tokens; train split {len(train_stream)} tokens, {recipe.steps} steps planned")
    with _deterministic(recipe.seed):
        model = _new_model(recipe, tokenizer)
        training = _train(model, recipe, train_stream, validation_stream, special_ids, log)
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp, state_dict=_stored_state(model, DTYPES[recipe.save_dtype]))
        tokenizer.save_pretrained(tmp)
        # Score what was stored (rounded to save_dtype), as every later step will load it.
        saved = AutoModelForCausalLM.from_pretrained(tmp)
        heldout = heldout_perplexities(saved, tokenizer, recipe.context_length, train_stream, documents["test"])
        report = {
            "recipe": asdict(recipe),
            "recipe_hash": recipe_hash(recipe),
            "seed": recipe.seed,
            "parameters": sum(parameter.numel() for parameter in saved.parameters()),
            "tokenizer_vocab_size": len(tokenizer),
            "train_split_tokens": len(train_stream),
            **training,
            "heldout_split": "test",
            "heldout": heldout,
            "wall_seconds": time.perf_counter() - started,
            "torch_threads": torch.get_num_threads(),
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__,
            },
        }
        write_json(tmp / REPORT, report)
    log(
        f"held-out token perplexity {heldout['model']['token_perplexity']:.2f} "
        f"vs unigram {heldout['unigram']['token_perplexity']:.2f}"
    )
    return report


def materialize(out_dir: str | Path, seed: int) -> dict[str, Any]:
    """Train the embedded recipe with the workflow's seed into ``out_dir``; the details go in the manifest."""
    recipe = replace(EMBEDDED, seed=seed)
    report = pretrain(recipe, out_dir)
    return {"recipe_hash": report["recipe_hash"], "recipe": report["recipe"], "report": REPORT}
