"""A draft without a model: n-gram lookup in the row's own tokens (prompt lookup decoding; vLLM's
"ngram" speculative method, transformers' `prompt_lookup_num_tokens`).

The proposal for a row whose tokens so far (prompt, then everything emitted) are h[0..L-1]:
  match   the longest suffix h[L-n..L-1] (n <= max_ngram) that also occurs earlier in h, ending before L-1;
          none when even its last token never occurred before, or n < min_ngram;
  where   its latest earlier occurrence (the most recent context is the likeliest to repeat);
  count   min(n, k) tokens, the ones that followed that occurrence (fewer where h ends first): a longer
          match is more evidence, so it drafts more, and a 2-token match risks at most 2.
Why the count follows the match: on this CPU a verify of K+1 tokens costs v(K) = 1.2-1.9 one-token steps
(K = 1..4, SmolLM2 on gguf-q8a; 2.2 on gguf), so a wasted long proposal is not free. Replayed over
SmolLM2's greedy outputs for 78 Spec-Bench first turns (bench/ngram_replay.py; bench/RESULTS.md, "A draft
without a model"), at 128 tokens on gguf-q8a: count = min(n, cap) against a fixed count, 1.208x against
1.162x predicted at cap 4, 1.197x against 1.001x at cap 8; min_ngram 2 beat 1 and 3; cap 4 (AUTO_CAP)
came within 0.3 % / 1.4 % (128 / 256 tokens) of the best cap there, and within 0.6 % of the best or the
best on gguf, whose v is steeper.

Lossless: the proposal is a deterministic function of tokens already committed, so the distribution it
was "sampled" from is one-hot at the proposed token (q = 1 there): the rejection test accepts it with
probability p(x), and a rejection samples from norm(max(p - q, 0)), p without x. `one_hot_logits` is
that q as logits, for `verify`.

Cost: NumPy on the host, no model: one compare over the L tokens, then one over the survivors for each
further matched token; ~10-30 us a row at L ~ 300-1000 (RESULTS), against a ~8 ms target step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..common.values import check_int

# One source of truth for the defaults (the CLI's `--draft ngram` and the API's NgramDraft()).
MIN_NGRAM = 2
MAX_NGRAM = 16
AUTO_CAP = 4     # gamma="auto": the match sizes every round, capped here (the replays above: the robust cap)
NAME = "ngram"   # what `--draft` / SpeculativeDecoder(draft=...) take for this draft


@dataclass(frozen=True)
class NgramDraft:
    """The n-gram lookup draft's settings: pass one as SpeculativeDecoder's `draft` (or the string "ngram"
    for the defaults). A round drafts at most the decoder's gamma tokens a row: an int, or "auto" for
    AUTO_CAP (the count is chosen every round by the match already; there is no draft step to cost)."""
    min_ngram: int = MIN_NGRAM
    max_ngram: int = MAX_NGRAM

    def __post_init__(self):
        check_int(self.min_ngram, "min_ngram", 1)
        check_int(self.max_ngram, "max_ngram", self.min_ngram)

    def propose(self, history: np.ndarray, k: int) -> np.ndarray:
        return propose(history, k, self.max_ngram, self.min_ngram)

    def describe(self) -> str:
        return f"{NAME} (min_ngram {self.min_ngram}, max_ngram {self.max_ngram})"


def as_ngram(draft) -> NgramDraft | None:
    """The NgramDraft that `draft` names ("ngram" or an NgramDraft), else None (a model)."""
    if isinstance(draft, NgramDraft):
        return draft
    if isinstance(draft, str) and draft == NAME:
        return NgramDraft()
    return None


def match(history: np.ndarray, max_ngram: int = MAX_NGRAM) -> tuple[int, int]:
    """(n, j): the longest suffix of history [L] (n <= max_ngram tokens) that occurs earlier, ending at
    j < L-1, j its latest such end; (0, -1) when even the last token never occurred before."""
    L = history.shape[0]
    if L < 2:
        return 0, -1
    # end positions j < L-1 of earlier occurrences of the suffix, extended one token at a time
    ends = np.flatnonzero(history[:L - 1] == history[L - 1])
    n = 1
    while ends.size and n < max_ngram:
        e = ends[ends >= n]
        e = e[history[e - n] == history[L - 1 - n]]
        if not e.size:
            break
        ends, n = e, n + 1
    return (n, int(ends[-1])) if ends.size else (0, -1)


def propose(history: np.ndarray, k: int, max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM) -> np.ndarray:
    """history [L] int64 (the row's tokens, last = the pending token) -> the proposal [<= k] (module
    docstring): the tokens after the latest earlier occurrence of the longest matching suffix, min(n, k)
    of them; empty without a match of at least min_ngram tokens."""
    if k <= 0:
        return history[:0]
    n, j = match(history, max_ngram)
    if n < max(min_ngram, 1):
        return history[:0]
    return history[j + 1:j + 1 + min(n, k)]


def one_hot_logits(drafts: torch.Tensor, V: int) -> torch.Tensor:
    """drafts [B, K] -> q logits [B, K, V]: 0 at each proposed id, -inf elsewhere (a deterministic
    proposal's distribution; every position holds a real id, padding too, so no row is all -inf)."""
    q = torch.full((*drafts.shape, V), float("-inf"), dtype=torch.float32, device=drafts.device)
    return q.scatter_(-1, drafts.unsqueeze(-1), 0.0)


class LookupTimer:
    """StepTimer's interface for the lookup (costmodel.measure_step_costs times the draft "step" with
    it): step(S) times S proposals on the prompt's tokens, as many rows as the batch."""

    def __init__(self, draft: NgramDraft, prompt_ids: torch.Tensor, batch_size: int):
        self.draft, self.batch_size = draft, batch_size
        self.history = prompt_ids[0].cpu().numpy().astype(np.int64)

    def step(self, S: int) -> float:
        t0 = time.perf_counter()
        for _ in range(S * self.batch_size):
            self.draft.propose(self.history, 8)
        return time.perf_counter() - t0
