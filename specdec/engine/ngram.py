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

A row that repeats itself: under gamma="auto" a match shorter than max_ngram drafts at most AUTO_CAP, and
one that reached max_ngram (16 tokens seen before, in order: the row is copying itself) drafts up to the
decoder's long cap, which costmodel.policy.LookupAuto chooses from the target's measured verify costs v(k)
(predict.long_count). Why: on SmolLM2's greedy answers to 39 Spec-Bench first turns at 1024
tokens (gguf-q8a), 93 % of the tokens such proposals drafted were accepted (0.97-1.0 per token given the
earlier ones; shorter matches: 32-54 % of their drafted tokens), so their count is worth raising where one
more verified token is cheap; on the Xeon's
AVX-512 kernels a verify of up to 8 rows streams the weights once (v(7) 2.04 against v(8) 2.61), on the
float-activation path 5 rows do (v(5) 2.66 against v(4) 1.98), so the cap is measured, not fixed.
Replayed there: 2.00x -> 2.14x predicted (bench/RESULTS.md, "A row that repeats itself").

Lossless: the proposal is a deterministic function of tokens already committed, so the distribution it
was "sampled" from is one-hot at the proposed token (q = 1 there): the rejection test accepts it with
probability p(x), and a rejection samples from norm(max(p - q, 0)), p without x. `one_hot_logits` is
that q as logits, for `verify`.

Cost: NumPy on the host, no model: one compare over the L tokens, then one over the survivors for each
further matched token; ~10-30 us a row at L ~ 300-1000 (RESULTS), against a ~8 ms target step.

A store (NgramStore; `--draft ngram:FILE`): where the row's own tokens give no proposal, the round asks
a table of what the target wrote elsewhere (its outputs on other prompts, e.g. the samples specdec
generates to train a draft; REST and SuffixDecoding do this with a corpus / earlier outputs):
  context the longest suffix of the row's tokens, n in STORE_NS, seen at least min_count times in the store
          followed by a token
  token   the token that most often followed it there (ties: the smallest id); p = its share of them
  chain   append it and ask again, while the product of the p's stays >= tau and fewer than k are drafted
Why a threshold: the row's own matches are specific to the row, the store's are generic ("Here is",
"I'm sorry"), and with v(1) ~1.1-1.2 a drafted token must be accepted more often than ~1 in 4 to pay.
On SmolLM2 with a store of its own answers to 6.8k self-made requests (0.86 M tokens, no Spec-Bench
prompt; bench/RESULTS.md, "An n-gram store"): tau 0.55 and min_count 3 replayed best of tau 0.4 / 0.55 /
0.7 x min_count 2 / 3 over its greedy answers to 215 Spec-Bench first turns; bench/ngram_replay.py
predicts 1.292x -> 1.380x at 128 tokens (1.41 -> 1.55 tokens a round), 1.536x -> 1.620x at 256; end to
end greedy 1.18 -> 1.20x (gguf-q8a) and 1.16 -> 1.19x (gguf) decode speedup. Lossless as the own lookup:
a deterministic function of committed tokens and the store.
"""
from __future__ import annotations

import functools
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..common.files import write_bytes_atomic
from ..common.values import check_int

# One source of truth for the defaults (the CLI's `--draft ngram` and the API's NgramDraft()).
MIN_NGRAM = 2
MAX_NGRAM = 16
AUTO_CAP = 4     # gamma="auto": the match sizes every round, capped here (the replays above: the robust cap)...
LONG_CAP_MAX = 12   # ... except for a row repeating itself (its match reached max_ngram): up to this many,
LONG_ALPHA = 0.97   # priced at this per-token acceptance (costmodel.policy.LookupAuto; "A row that repeats itself")
NAME = "ngram"   # what `--draft` / SpeculativeDecoder(draft=...) take for this draft; "ngram:FILE" with a store
STORE_NS = (2, 3, 4, 5, 6)   # the store's context lengths (longest first at a query)
STORE_MIN_COUNT = 3          # a context is kept when it was followed by a token at least this often
STORE_TAU = 0.55             # a store's chain drafts while the product of its tokens' shares stays >= this
STORE_FORMAT = 1


@dataclass(frozen=True)
class NgramDraft:
    """The n-gram lookup draft's settings: pass one as SpeculativeDecoder's `draft` (or the string "ngram"
    for the defaults). A round drafts at most the decoder's gamma tokens a row: an int, or "auto" for
    AUTO_CAP, or more for a row repeating itself (module docstring; the count is chosen every round by
    the match already; there is no draft step to cost)."""
    min_ngram: int = MIN_NGRAM
    max_ngram: int = MAX_NGRAM
    store: "NgramStore | None" = field(default=None, compare=False)   # asked where the row's tokens give nothing

    def __post_init__(self):
        check_int(self.min_ngram, "min_ngram", 1)
        check_int(self.max_ngram, "max_ngram", self.min_ngram)

    def propose(self, history: np.ndarray, k: int, short: int | None = None) -> np.ndarray:
        """At most k tokens; with `short`, at most short unless the row's match reached max_ngram."""
        d = propose(history, k, self.max_ngram, self.min_ngram, short)
        if d.size or self.store is None or k <= 0:
            return d
        return self.store.propose(history, k if short is None else min(k, short))

    def describe(self) -> str:
        store = f", store {self.store.describe()}" if self.store is not None else ""
        return f"{NAME} (min_ngram {self.min_ngram}, max_ngram {self.max_ngram}{store})"


def as_ngram(draft) -> NgramDraft | None:
    """The NgramDraft that `draft` names ("ngram", "ngram:FILE" with FILE an NgramStore, or an
    NgramDraft), else None (a model). A store that cannot be read raises ValueError saying why."""
    if isinstance(draft, NgramDraft):
        return draft
    if isinstance(draft, str) and draft == NAME:
        return NgramDraft()
    if store_path(draft) is not None:
        return NgramDraft(store=NgramStore.load(store_path(draft)))
    return None


def is_lookup(draft) -> bool:
    """Whether `draft` names the n-gram lookup draft (as_ngram would return one), without reading a store."""
    return isinstance(draft, NgramDraft) or (isinstance(draft, str) and draft == NAME) or store_path(draft) is not None


def store_path(draft) -> str | None:
    """FILE for a draft named "ngram:FILE" (what a run's inputs fingerprint), else None."""
    return draft[len(NAME) + 1:] if isinstance(draft, str) and draft.startswith(NAME + ":") else None


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


def propose(history: np.ndarray, k: int, max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM,
            short: int | None = None) -> np.ndarray:
    """history [L] int64 (the row's tokens, last = the pending token) -> the proposal [<= k] (module
    docstring): the tokens after the latest earlier occurrence of the longest matching suffix, min(n, k)
    of them (min(n, k, short) when `short` is given and n < max_ngram); empty without a match of at least
    min_ngram tokens."""
    if k <= 0:
        return history[:0]
    n, j = match(history, max_ngram)
    if n < max(min_ngram, 1):
        return history[:0]
    if short is not None and n < max_ngram:
        k = min(k, short)
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


# ----------------------------------------------------------------------------------------------------
# The store: what the target wrote elsewhere, as a table context -> (its most frequent next token, share)

_MUL = 0x9E3779B97F4A7C15          # odd: h -> h * _MUL + t is a bijection mod 2^64 for each t
_MASK = (1 << 64) - 1


def _context_keys(windows: np.ndarray) -> np.ndarray:
    """windows [m, n] int64 token ids -> [m] uint64 keys (n is hashed in, so lengths never share a key).
    _context_key is the same function on one context in Python ints."""
    h = np.full(windows.shape[0], windows.shape[1], dtype=np.uint64)
    for j in range(windows.shape[1]):
        h = h * np.uint64(_MUL) + (windows[:, j] + 1).astype(np.uint64)
    return h


def _context_key(tokens) -> int:
    h = len(tokens)
    for t in tokens:
        h = (h * _MUL + int(t) + 1) & _MASK
    return h


class NgramStore:
    """Token sequences the target wrote, as the table the lookup asks (module docstring, "A store").
    Built in memory from the sequences (1.2-1.7 s for 0.86 M tokens on the 2-core Xeon); a file holds
    the sequences (`save` / `load`, an .npz), so a store's settings can change without regenerating
    anything."""

    def __init__(self, sequences, min_count: int = STORE_MIN_COUNT, tau: float = STORE_TAU,
                 source: str = "", ns=STORE_NS):
        self.min_count = check_int(min_count, "min_count", 1)
        if not 0.0 < float(tau) <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        self.tau, self.source, self.ns = float(tau), source, tuple(sorted(ns, reverse=True))
        seqs = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sequences]
        if any(s.size and s.min() < 0 for s in seqs):
            raise ValueError("an n-gram store holds token ids >= 0")
        self.sequences, self.tokens = seqs, sum(s.size for s in seqs)
        self.max_id = max((int(s.max()) for s in seqs if s.size), default=-1)   # the decoder checks it < vocab
        # every (context, next token) of every sequence: windows over the sequences joined by -1, those
        # without a -1 (one sequence's tokens)
        flat = np.concatenate([np.append(s, -1) for s in seqs]) if seqs else np.zeros(0, np.int64)
        keys, nxt = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)]
        for n in self.ns:
            if flat.size > n:
                w = np.lib.stride_tricks.sliding_window_view(flat, n + 1)              # [N-n, n+1]
                w = w[(w >= 0).all(1)]
                keys.append(_context_keys(w[:, :n]))
                nxt.append(w[:, n])
        keys, nxt = np.concatenate(keys), np.concatenate(nxt)
        if keys.size:   # contexts seen fewer than min_count times go first (most of them): a smaller sort
            _, inv, seen = np.unique(keys, return_inverse=True, return_counts=True)
            often = seen[inv] >= self.min_count
            keys, nxt = keys[often], nxt[often]
        o = np.lexsort((nxt, keys))                                       # by context, then token
        keys, nxt = keys[o], nxt[o]
        if keys.size:   # one row per (context, token): its count
            start = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]) | (nxt[1:] != nxt[:-1])])
            count = np.diff(np.r_[start, keys.size])
            keys, nxt = keys[start], nxt[start]
            first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])    # each context's first row
            total = np.add.reduceat(count, first)
            o = np.lexsort((nxt, -count, keys))                           # each context's most frequent first
            best = o[np.searchsorted(keys[o], keys[first])]
            self.keys = keys[first]                                       # [C] uint64, sorted (total >= min_count)
            self.next = nxt[best]                                         # [C] the most frequent next token
            self.share = count[best] / total                              # [C] float64: its share
        else:
            self.keys, self.next, self.share = keys, nxt, np.zeros(0)

    def lookup(self, history) -> tuple[int, float, int]:
        """(token, share, n) for the longest context of the history's suffix in the table; (-1, 0.0, 0)
        without one."""
        ns = [n for n in self.ns if len(history) >= n]                  # longest first
        if not ns or not self.keys.size:
            return -1, 0.0, 0
        q = np.array([_context_key(history[len(history) - n:]) for n in ns], dtype=np.uint64)
        at = np.minimum(np.searchsorted(self.keys, q), self.keys.size - 1)
        hit = np.flatnonzero(self.keys[at] == q)
        if not hit.size:
            return -1, 0.0, 0
        i = at[hit[0]]                                                    # the longest context found
        return int(self.next[i]), float(self.share[i]), ns[hit[0]]

    def propose(self, history: np.ndarray, k: int) -> np.ndarray:
        """history [L] int64 -> up to k tokens (module docstring): the chain of most frequent next tokens
        while the product of their shares stays >= tau."""
        m = max(self.ns)
        h, out, p = [int(t) for t in history[-m:]], [], 1.0
        while len(out) < k:
            t, share, _ = self.lookup(h)
            p *= share
            if t < 0 or p < self.tau:
                break
            out.append(t)
            h = (h + [t])[-m:]
        return np.array(out, dtype=np.int64)

    def describe(self) -> str:
        return (f"{self.source or 'in memory'}: {self.tokens} tokens, {self.keys.size} contexts, "
                f"min_count {self.min_count}, tau {self.tau:g}")

    def save(self, path) -> None:
        """The sequences and settings as one .npz (written atomically)."""
        lengths = np.array([s.size for s in self.sequences], dtype=np.int64)
        flat = np.concatenate(self.sequences) if self.sequences else np.zeros(0, np.int64)
        dtype = np.uint16 if flat.size == 0 or flat.max() < 2 ** 16 else np.int32
        meta = {"format": STORE_FORMAT, "min_count": self.min_count, "tau": self.tau, "ns": list(self.ns)}
        buf = io.BytesIO()
        np.savez_compressed(buf, tokens=flat.astype(dtype), lengths=lengths, meta=np.array(json.dumps(meta)))
        write_bytes_atomic(path, buf.getvalue())

    @staticmethod
    def load(path) -> "NgramStore":
        path = Path(path).expanduser().resolve()
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ValueError(f"n-gram store {path} does not exist: pass --draft ngram:FILE with a file that "
                             "bench/ngram_store.py wrote, or --draft ngram for the row's own tokens only") from None
        return _load_store(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _load_store(path: str, mtime_ns: int, size: int) -> NgramStore:
    """One build per file version and process (the config check, load_pair and the decoder each ask
    as_ngram; the key includes the file's mtime and size, so a rewritten file is read again)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != STORE_FORMAT:
                raise ValueError(f"format {meta.get('format')}, this specdec reads {STORE_FORMAT}")
            flat, lengths = z["tokens"].astype(np.int64), z["lengths"]
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path} is not an n-gram store ({e}): write one with bench/ngram_store.py") from None
    seqs = np.split(flat, np.cumsum(lengths)[:-1]) if lengths.size else []
    return NgramStore(seqs, meta["min_count"], meta["tau"], source=path, ns=meta["ns"])
