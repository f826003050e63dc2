"""lm-eval's HF model, scoring each multiple-choice context once for all its answer choices.

Stock ``HFLM`` scores a request (context, continuation) by running context + continuation through the model, so a
question with four choices runs its context four times, and the unconditional requests of ``acc_mutual_info`` run
once more per choice. `SharedContextLM` groups a batch's requests by their context tokens, runs each distinct
context once (keeping its key-values and only its last position's logits), then runs every continuation but its
last token against those key-values. The log-likelihoods are the stock ones up to floating-point rounding (the
same positions attend to the same tokens; only the matrix shapes differ); `tests/test_evaluation.py` checks this
against stock ``HFLM``.

What is left to the stock path: rolling-perplexity windows (lm-eval's ``loglikelihood_rolling`` hands them over
with ``override_bs``; every window has its own context), requests whose context + continuation would be truncated
on the left, and non-causal models.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM

Request = tuple[tuple[str, str], list[int], list[int]]


class SharedContextLM(HFLM):
    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        if override_bs is not None or self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        contexts: dict[tuple[int, ...], list[int]] = {}
        truncated = []
        for index, (_, context, continuation) in enumerate(requests):
            if len(context) + len(continuation) > self.max_length + 1:
                truncated.append(index)
            else:
                contexts.setdefault(tuple(context), []).append(index)
        # Longest contexts first, as stock HFLM orders its batches: little padding, and memory errors come early.
        ordered = sorted(contexts.items(), key=lambda entry: (-len(entry[0]), entry[0]))
        size = int(self.batch_size)
        for start in range(0, len(ordered), size):
            for index, answer in self._score_batch(requests, ordered[start: start + size]):
                results[index] = answer
                if requests[index][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
        if truncated:
            stock = super()._loglikelihood_tokens([requests[i] for i in truncated], disable_tqdm=disable_tqdm)
            for index, answer in zip(truncated, stock, strict=True):
                results[index] = answer
        return results  # type: ignore[return-value]

    def _score_batch(self, requests: Sequence[Request], batch: list[tuple[tuple[int, ...], list[int]]]):
        """(request index, (log-likelihood, greedy)) for every request of a batch of contexts."""
        contexts = [list(context) for context, _ in batch]
        last, cache, mask = self._run_contexts(contexts)
        rows = []
        for position, (_, indices) in enumerate(batch):
            for index in indices:
                if len(requests[index][2]) == 1:
                    yield index, _answer(last[position: position + 1], requests[index][2])
                else:
                    rows.append((position, index))
        # Longer continuations run their first len - 1 tokens against a copy of their context's key-values.
        for chunk in self._chunks(requests, rows):
            later = self._run_continuations(requests, contexts, chunk, copy.deepcopy(cache), mask)
            for row, (position, index) in enumerate(chunk):
                continuation = requests[index][2]
                logprobs = torch.cat([last[position: position + 1], later[row, : len(continuation) - 1]])
                yield index, _answer(logprobs, continuation)

    def _chunks(self, requests: Sequence[Request], rows: list[tuple[int, int]]):
        """Continuation rows, longest first, ``batch_size`` at a time, as stock HFLM batches its sequences: little
        padding, and no chunk's logits larger than a stock batch's (one context may have hundreds of rows, e.g. the
        empty context of every unconditional request)."""
        rows = sorted(rows, key=lambda row: -len(requests[row[1]][2]))
        size = int(self.batch_size)
        for start in range(0, len(rows), size):
            yield rows[start: start + size]

    def _run_contexts(self, contexts: list[list[int]]):
        """Log-probabilities after each context's last token, the contexts' key-values, and their attention mask;
        contexts are padded on the left so that every one ends where its continuations start."""
        width = max(map(len, contexts))
        ids = torch.full((len(contexts), width), self._pad_id(), dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for row, context in enumerate(contexts):
            ids[row, width - len(context):] = torch.tensor(context, device=self.device)
            mask[row, width - len(context):] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        extra = {"logits_to_keep": 1} if self._keeps_logits() else {}
        output = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        return self._log_softmax(output.logits[:, -1]), output.past_key_values, mask

    def _run_continuations(self, requests: Sequence[Request], contexts: list[list[int]],
                           rows: list[tuple[int, int]], cache, mask: torch.Tensor) -> torch.Tensor:
        """Log-probabilities at every position of each row's continuation but its last token (rows x tokens x vocab)."""
        inputs = [requests[index][2][:-1] for _, index in rows]
        width = max(map(len, inputs))
        ids = torch.full((len(rows), width), self._pad_id(), dtype=torch.long, device=self.device)
        for row, tokens in enumerate(inputs):
            ids[row, : len(tokens)] = torch.tensor(tokens, device=self.device)
        owner = torch.tensor([position for position, _ in rows], device=self.device)
        cache.reorder_cache(owner)  # one copy of its context's key-values per row
        # Right padding needs no mask: a padded position only follows the tokens that are scored.
        full_mask = torch.cat([mask[owner], torch.ones_like(ids)], dim=1)
        starts = torch.tensor([len(contexts[position]) for position, _ in rows], device=self.device)
        # A padded position repeats its row's last real one: counting on past it could leave the model's position
        # table (OPT's is exactly max_length long) when a short row shares a chunk with a long one.
        last = torch.tensor([max(len(tokens) - 1, 0) for tokens in inputs], device=self.device)
        offsets = torch.minimum(torch.arange(width, device=self.device).unsqueeze(0), last.unsqueeze(1))
        positions = starts.unsqueeze(1) + offsets
        output = self._forward(input_ids=ids, attention_mask=full_mask, position_ids=positions,
                               past_key_values=cache, use_cache=True)
        return self._log_softmax(output.logits)

    def _forward(self, **inputs):
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            return self.model(**inputs)

    def _log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)

    def _keeps_logits(self) -> bool:
        return "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.eot_token_id if pad is None else pad


def _answer(logprobs: torch.Tensor, continuation: list[int]) -> tuple[float, bool]:
    """(log-likelihood of the continuation, whether greedy decoding gives it) from its positions' log-probabilities."""
    tokens = torch.tensor(continuation, device=logprobs.device)
    picked = logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
    return float(picked.sum()), bool((logprobs.argmax(dim=-1) == tokens).all())
