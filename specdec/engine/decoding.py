"""The decode loops: plain autoregressive decoding (the baseline) and batched speculative decoding.

Each model runs on a ModelRunner (specdec/engine/runner.py): its KV cache is preallocated and written in
place, with holes. A row that rejects drafts does not shrink its cache: the rejected columns become
holes that attention skips, and positions come from an explicit per-row counter, so each row advances
by its own accepted count and no row is cut back to the batch minimum or recomputed for another's
sake. Trailing columns that are holes in every row are cropped after each round (at batch size 1 that
is every hole); when holes pile up inside the batch the cache is compacted with one gather. Finished
rows (EOS or length) leave the batch.

One speculative round, over the live rows (named steps below):
  count   each row's draft count: gamma, or with gamma="auto" the K that maximises the batch's expected
          tokens per unit of cost (below), never past what max_new_tokens leaves;
  draft   the draft proposes K tokens autoregressively (K = the largest per-row count this round);
  verify  the target scores [pending, d_1..d_K] in one forward; `verify` accepts a prefix per row and
          emits one recovered or bonus token after it;
  commit  both caches keep exactly the accepted prefix as valid columns; trailing holes are cropped;
  retire  rows that hit EOS or their length limit leave the batch.
The draft cache lags the committed sequence by at most one token: when a row accepts all K drafts,
the draft never saw d_K, so the next round feeds [d_K, bonus] (2 tokens); rows that rejected feed a
masked dummy in that first column.

gamma="auto": before each round, K = argmax_k sum_r tau(alpha_r, min(k, cap_r)) / cost(k)
(metrics.best_draft_count) over k in 1..max_gamma, from each live row's running acceptance estimate
alpha_r (a Beta posterior whose prior is the batch's pooled estimate, itself shrunk towards AUTO_PRIOR;
observations discounted by AUTO_DECAY per round) and the cost of a round drafting k at this batch size:
the seconds of the decoder's own rounds (measure_round_costs; handed over, or read from the cost cache,
or measured once and cached, see specdec/costs.py), or k c + v(k) from step costs, either way through
a robust straight line in k (metrics.linear_round_costs: one noisy k cannot make auto skip to another).
Every row pays for K draft steps and a (K+1)-token verify, so K is chosen for the batch and each row
drafts min(K, cap_r). Lossless: a round's counts depend only on earlier rounds' verdicts, never on its
own.

Host synchronisation: one read per round of the verified tokens, the accepted counts and a NaN flag
(needed to decide what each row emits and when it stops). Sampling uses the exponential race, which
needs no sync.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field

import torch

from ..costs import CostCache, context_bucket, cost_key, costs_at, entry_from_json, round_costs, sync
from ..metrics import AUTO, DecodeStats, best_draft_count, discounted_counts, linear_round_costs, shrunk_alpha
from .runner import ModelRunner, cache_kwarg  # noqa: F401 (cache_kwarg re-exported)
from .sampling import mask_logits, pad_vocab, sample_tokens, unusable_rows
from .devices import input_device, logit_width
from ..common.values import BadType, check_gamma, check_int, check_lenience
from .params import (SamplingParams, check_cache_memory, check_context, check_engine, check_logits_flag,
                     check_model, embedding_rows, max_positions, prepare_inputs)
from .verify import verify


@dataclass
class GenerationOutput:
    new_tokens: list          # list[list[int]]: per input row, only the generated ids (EOS kept if hit)
    stats: DecodeStats = field(default_factory=DecodeStats)


@dataclass
class RoundInfo:
    """What `generate(..., on_round=f)` hands f after every round (between rounds, caches settled).

    target, draft: the two ModelRunners (their caches hold exactly each live row's committed tokens,
    the draft's minus d_K where prev_needed; `peek` runs a forward without changing them);
    pending [B]: each live row's last committed token, in neither cache yet; pos [B]: its position;
    prev [B], prev_needed [B]: d_K and whether the draft still owes it; live: the original row index
    of each live batch row; outputs: every row's emitted tokens so far."""
    target: ModelRunner
    draft: ModelRunner
    pending: torch.Tensor
    pos: torch.Tensor
    prev: torch.Tensor
    prev_needed: torch.Tensor
    live: list
    outputs: list


# ----------------------------------------------------------------------------------------------------
# Shared input handling and bookkeeping.

def capacity_for(prompt_columns: int, max_new_tokens: int, gamma: int) -> int:
    """Cache columns a decode needs: the prompt, every new token, one round of drafts, and room for the
    holes that pile up between compactions (kvcache.COMPACT_SLACK and a quarter of the cache)."""
    need = prompt_columns + max_new_tokens + gamma + 2
    return need + max(64, need // 3)


def _generator(seed, device):
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def _check_costs(costs):
    """A cost table handed to gamma="auto", checked: batch size -> a costs entry (see specdec/costs.py)."""
    if costs is None:
        return None
    hint = ("costs must map a batch size to a costs entry: measure_costs's {'c': float > 0, 'v': {gamma: float "
            "> 0}} and/or round times {'round_s': {'greedy' or 'sampling': {gamma: seconds > 0}}}")

    def positive(table):
        return bool(table) and all(int(k) >= 1 and math.isfinite(x) and x > 0 for k, x in table.items())

    try:
        table = {int(bs): entry_from_json(e) for bs, e in dict(costs).items()}
        ok = bool(table) and all(b >= 1 for b in table)
        for e in table.values():
            rounds = [t for t in (e.get("round_s") or {}).values() if t]
            if rounds:
                ok = ok and all(positive(t) for t in rounds)
            else:
                ok = ok and math.isfinite(e["c"]) and e["c"] > 0 and positive(e["v"])
    except (TypeError, ValueError, KeyError, AttributeError):
        ok = False
    if not ok:
        raise ValueError(hint)
    return table


class _Rows:
    """Host-side per-row bookkeeping: what each live row emitted, its budget, and when it stops."""

    def __init__(self, B, params: SamplingParams):
        self.out = [[] for _ in range(B)]
        self.live = list(range(B))       # original row index of each live batch row
        self.params = params
        self.eos = params.eos_ids

    def remaining(self):
        return [self.params.max_new_tokens - len(self.out[r]) for r in self.live]

    def emit(self, emitted_per_live_row):
        """Append tokens; returns the batch indices of rows still live afterwards."""
        keep = []
        for b, toks in enumerate(emitted_per_live_row):
            r = self.live[b]
            room = self.params.max_new_tokens - len(self.out[r])
            toks = toks[:room]
            done = len(toks) == room
            for i, t in enumerate(toks):
                if t in self.eos:
                    toks = toks[:i + 1]
                    done = True
                    break
            self.out[r].extend(toks)
            if not done:
                keep.append(b)
        return keep


class _Timer:
    """Wall-time sections. On CUDA it records events and reads them once at the end (no per-step sync)."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.totals: dict = {}
        self.events: list = []

    def start(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def stop(self, name, t0):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.events.append((name, t0, e))
        else:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0

    def finish(self, stats: DecodeStats, t_all: float) -> None:
        if self.events:
            torch.cuda.synchronize()
            for name, a, b in self.events:
                self.totals[name] = self.totals.get(name, 0.0) + a.elapsed_time(b) / 1000.0
            self.events = []
        for name, secs in self.totals.items():
            setattr(stats, name, secs)
        stats.total_s = time.perf_counter() - t_all


def _start(models, names, input_ids, attention_mask, params: SamplingParams, gamma: int, impl, cuda_graphs):
    """Validated inputs and one prefilled ModelRunner per model (the setup both loops share)."""
    device = input_device(models[0])
    ids, mask, lengths = prepare_inputs(input_ids, attention_mask, device, embedding_rows(models))
    for model, name in zip(models, names):
        check_context(model, name, lengths, params.max_new_tokens)
    capacity = capacity_for(ids.shape[1], params.max_new_tokens, gamma)
    check_cache_memory(models, ids.shape[0], capacity, impl, aligned=cuda_graphs)
    runners = []
    t0 = time.perf_counter()
    for model in models:
        runner = ModelRunner(model, ids.shape[0], capacity, impl=impl, cuda_graphs=cuda_graphs)
        runner.prefill(ids, mask)
        runners.append(runner)
    if device.type == "cuda":
        torch.cuda.synchronize(device)   # once per decode: the prefill's share of the wall time
    return ids, mask, lengths, runners, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------
# Plain autoregressive decoding (the baseline).

@torch.no_grad()
def autoregressive_generate(target, input_ids, attention_mask=None, max_new_tokens=64, temperature=0.0,
                            top_k=0, top_p=1.0, seed=None, eos_token_id=None, vocab_size=None,
                            impl: str = "auto", cuda_graphs: bool = False) -> GenerationOutput:
    """Plain decoding of `target` with a KV cache: one forward per token for the whole batch.

    vocab_size: only ids below it are ever emitted (default: the model's logit width, as SpeculativeDecoder's:
    README, Vocabularies). impl and cuda_graphs as in SpeculativeDecoder (the same model path, so speedups
    compare like with like).
    """
    params = SamplingParams(max_new_tokens, temperature, top_k, top_p, seed, eos_token_id)
    check_model(target, "target")
    check_engine(impl, cuda_graphs)
    if vocab_size is not None:
        vocab_size = check_int(vocab_size, "vocab_size", 1, logit_width(target))
    t_all = time.perf_counter()
    ids, mask, lengths, (tgt,), prefill_s = _start([target], ["target"], input_ids, attention_mask, params, 0,
                                                   impl, cuda_graphs)
    device = ids.device
    gen = _generator(params.seed, device)
    stats = DecodeStats(gamma=0, prefill_calls=1, prefill_s=prefill_s)
    timer = _Timer(device)
    rows = _Rows(ids.shape[0], params)
    pending = ids[:, -1:]                                  # [B, 1]
    pos = mask.sum(1, keepdim=True) - 1                    # [B, 1] position of the pending token
    ones = torch.ones_like(pending, dtype=torch.bool)
    while rows.live:
        t0 = timer.start()
        logits = tgt.forward(pending, pos, ones[:pending.shape[0]])[:, -1]   # [B, V]
        if vocab_size is not None:
            logits = logits[:, :vocab_size]
        masked = mask_logits(logits, params.temperature, params.top_k, params.top_p)
        nxt = sample_tokens(masked, params.temperature, gen)                                  # [B]
        timer.stop("target_s", t0)
        host = torch.cat([nxt, unusable_rows(logits).any().view(1)]).tolist()   # the one host sync per step
        stats.target_calls += 1
        check_logits_flag(host[-1], {1: ("target", target)}, f"decode step {stats.target_calls}")
        keep = rows.emit([[t] for t in host[:-1]])
        pending, pos = nxt.unsqueeze(1), pos + 1
        if len(keep) < len(host) - 1:
            rows.live = [rows.live[b] for b in keep]
            if not keep:
                break
            idx = torch.tensor(keep, device=device)
            tgt.select_rows(idx)
            pending, pos = pending.index_select(0, idx), pos.index_select(0, idx)
    timer.finish(stats, t_all)
    stats.new_tokens = sum(len(o) for o in rows.out)
    return GenerationOutput(new_tokens=rows.out, stats=stats)


# ----------------------------------------------------------------------------------------------------
# Speculative decoding.

AUTO_MAX_GAMMA = 8      # the largest count gamma="auto" considers (and the caches' room for drafts)
# The estimate's constants were chosen by replaying greedy and sampled decodes of the bundled pair on 24
# held-out prompts (not the benchmark's) under its measured round costs (tokens per modelled second, no
# clock): strength 8 beat 2 and 4 (steadier counts); decay 0.95 was no better than 0.9.
AUTO_PRIOR = 0.6        # alpha before the first verdict of a decode (a typical draft)
AUTO_STRENGTH = 8.0     # verdicts a prior is worth: AUTO_PRIOR against the pooled ones, the pool against a row's
AUTO_DECAY = 0.9        # per-round discount of old verdicts: an estimate remembers ~10 rounds
_ROUND_TOKENS = 64      # new tokens per decode when round costs are measured (~3 cycles through k = 1..8)


def _lower_quartile(xs: list) -> float:
    return statistics.quantiles(xs, n=4, method="inclusive")[0] if len(xs) > 1 else xs[0]


class _FixedCounts:
    """Each round's per-row draft counts (the loop asks `choose(caps)` before drafting, reports the
    round's verdicts to `observe` after it and the surviving rows to `select`): here gamma, or what
    max_new_tokens leaves (caps)."""

    def __init__(self, gamma: int):
        self.gamma = gamma

    def choose(self, caps: list) -> list:
        return [min(self.gamma, cap) for cap in caps]

    def observe(self, drafted: list, accepted: list) -> None:
        pass

    def select(self, keep: list) -> None:
        pass


class _CycleCounts(_FixedCounts):
    """Round i drafts gammas[(i + offset) % len(gammas)] (for timing rounds: every count in turn, so a
    load change on a shared machine hits each count alike); `log` holds (count, cut short by caps)."""

    def __init__(self, gammas: list, offset: int = 0):
        self.gammas, self.offset, self.log = list(gammas), offset, []

    def choose(self, caps: list) -> list:
        k = self.gammas[(len(self.log) + self.offset) % len(self.gammas)]
        self.log.append((k, min(caps) < k))
        return [min(k, cap) for cap in caps]


class _AutoCounts(_FixedCounts):
    """gamma="auto": the live rows' acceptance estimates and each round's draft counts from them.
    Fed only the verdicts of finished rounds (observe), so a round's counts never depend on its own."""

    def __init__(self, batch: int, costs: dict, sampling: bool, max_gamma: int):
        self.rows = [(0.0, 0.0)] * batch     # [B] discounted (accepted, rejections) per live row
        self.pooled = (0.0, 0.0)             # the same over every row of this decode
        # batch size -> {k: cost of a round drafting k}, the robust line through what was measured
        self.cost = {b: linear_round_costs(round_costs(entry, sampling), max_gamma) for b, entry in costs.items()}
        self.max_gamma = max_gamma

    def alphas(self) -> list:
        prior = shrunk_alpha(*self.pooled, AUTO_PRIOR, AUTO_STRENGTH)
        return [shrunk_alpha(a, r, prior, AUTO_STRENGTH) for a, r in self.rows]

    def choose(self, caps: list) -> list:
        k = best_draft_count(self.alphas(), caps, costs_at(self.cost, len(caps)), self.max_gamma)
        return [min(k, cap) for cap in caps]

    def observe(self, drafted: list, accepted: list) -> None:
        self.rows = discounted_counts(self.rows, drafted, accepted, AUTO_DECAY)
        rounds = discounted_counts([(0.0, 0.0)] * len(drafted), drafted, accepted, 0.0)
        self.pooled = (self.pooled[0] * AUTO_DECAY + sum(a for a, _ in rounds),
                       self.pooled[1] * AUTO_DECAY + sum(r for _, r in rounds))

    def select(self, keep: list) -> None:
        self.rows = [self.rows[b] for b in keep]


@dataclass
class _Live:
    """Device state of the live rows, re-indexed together when rows retire."""
    pending: torch.Tensor        # [B] last committed token, in neither cache yet
    pos: torch.Tensor            # [B] its position
    prev: torch.Tensor           # [B] d_K of rows that accepted every draft (the draft still owes it)
    prev_needed: torch.Tensor    # [B] bool
    any_prev_needed: bool        # host copy of prev_needed.any(), from the round's one sync

    def select(self, idx: torch.Tensor, any_prev_needed: bool) -> None:
        for name in ("pending", "pos", "prev", "prev_needed"):
            setattr(self, name, getattr(self, name).index_select(0, idx))
        self.any_prev_needed = any_prev_needed


class SpeculativeDecoder:
    """Batched, lossless speculative decoding of `target` with `draft` (two HF causal LMs sharing a
    tokenizer). Greedy output equals plain greedy decoding of the target token for token; sampled output
    is distributed exactly as the target's (after the same temperature / top-k / top-p), unless a lossy
    `lenience` ("lin", "sq", "exp" with lenience_eps in (0, 1]) is asked for.

    gamma: draft tokens per round, or "auto": each round's count from the cost model (module docstring),
    at most max_gamma. costs (auto): batch size -> a costs entry (specdec/costs.py: round times
    `{"round_s": {"greedy" | "sampling": {k: seconds}}}` and/or step costs `{"c", "v"}`; the benchmark
    hands over its own measurement); without them the round times are read from the cost cache
    (`cost_cache`: a folder, default `costs.default_cache_dir()`) or measured once per batch size,
    context bucket and greedy / sampled (a few seconds) and stored there.
    vocab_size: only ids below it are emitted (default: the target's logit width, as autoregressive_generate's;
    load_pair's shared vocabulary excludes logit padding); the draft may have fewer or more logits.
    impl: "auto" (the lean forward for Llama-family models, else transformers'), "lean" or "hf".
    cuda_graphs: capture the draft step and the verify as CUDA graphs (CUDA and the lean forward).
    """

    def __init__(self, target, draft, gamma: int | str = 4, vocab_size: int | None = None, backend: str = "auto",
                 lenience: str | None = None, lenience_eps: float = 1.0, impl: str = "auto",
                 cuda_graphs: bool = False, max_gamma: int = AUTO_MAX_GAMMA, costs: dict | None = None,
                 cost_cache=None):
        check_model(target, "target")
        check_model(draft, "draft")
        gamma = check_gamma(gamma, "gamma")
        max_gamma = check_gamma(max_gamma, "max_gamma", auto=False)
        lenience, lenience_eps = check_lenience(lenience, lenience_eps)
        check_engine(impl, cuda_graphs, backend)
        if cost_cache is not None and not isinstance(cost_cache, (str, os.PathLike)):
            raise BadType(f"cost_cache must be a folder path or None, got {type(cost_cache).__name__}")
        self.target, self.draft = target, draft
        self.gamma = gamma
        self.max_gamma = max_gamma if gamma == AUTO else gamma   # the widest round
        self.costs = _check_costs(costs)
        self.cost_cache = cost_cache
        self._measured: dict = {}   # (batch size, context, sampled) -> costs measured or read by this decoder
        self.device = input_device(target)
        ddev = input_device(draft)
        if ddev != self.device:
            raise ValueError(f"target and draft are on different devices ({self.device} vs {ddev}); "
                             "move the draft to the target's input device")
        # The vocabulary rule, as in autoregressive_generate: ids below vocab_size (default: the target's logit
        # width) are emitted, so plain and speculative decoding agree without passing it (README, Vocabularies).
        t_width = logit_width(target)
        self.vocab_size = t_width if vocab_size is None else check_int(vocab_size, "vocab_size", 1, t_width)
        # A draft with fewer logits proposes only the ids it has: its q is -inf (probability 0) beyond them,
        # which verification handles exactly. A target id beyond the draft's embedding (e.g. Qwen2.5-0.5B's
        # 151936 rows under the 7B's 152064 logits) reaches the draft as its last row: only its proposals
        # change, never the output's distribution (q is what the drafts were sampled from either way).
        self._draft_rows = embedding_rows([draft])
        self.backend, self.lenience, self.lenience_eps = backend, lenience, lenience_eps
        self.impl, self.cuda_graphs = impl, cuda_graphs

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens=64, temperature=0.0, top_k=0, top_p=1.0,
                 seed=None, eos_token_id=None, on_round=None, _counts=None) -> GenerationOutput:
        """Decode; on_round(RoundInfo) is called after every round (for inspection and tests).
        _counts: the draft counts' strategy in place of gamma's (measure_round_costs times rounds so)."""
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, seed, eos_token_id)
        if on_round is not None and not callable(on_round):
            raise BadType(f"on_round must be a function of a RoundInfo or None, got {type(on_round).__name__}")
        t_all = time.perf_counter()
        ids, mask, lengths, (tgt, drf), prefill_s = _start(
            [self.target, self.draft], ["target", "draft"], input_ids, attention_mask, params, self.max_gamma,
            self.impl, self.cuda_graphs)
        counts = _counts
        if counts is None and self.gamma == AUTO:   # before this decode's own state: a first call times rounds
            t0 = time.perf_counter()
            counts = _AutoCounts(ids.shape[0], self._costs_for(ids, mask, not params.greedy), not params.greedy,
                                 self.max_gamma)
            t_all += time.perf_counter() - t0   # a first measurement of the costs is not decoding time
        counts = counts or _FixedCounts(self.gamma)
        self._gen = _generator(params.seed, ids.device)
        self._params = params
        stats = DecodeStats(gamma=self.max_gamma, prefill_calls=2, prefill_s=prefill_s)
        timer = _Timer(ids.device)
        rows = _Rows(ids.shape[0], params)
        pending = ids[:, -1]
        live = _Live(pending=pending, pos=mask.sum(1) - 1, prev=pending.clone(),
                     prev_needed=torch.zeros_like(pending, dtype=torch.bool), any_prev_needed=False)
        while rows.live:
            # Per-row draft count: never draft past max_new_tokens (the last token needs no draft).
            caps = [r - 1 for r in rows.remaining()]
            n_row = counts.choose(caps)
            K = max(n_row)
            t0 = timer.start()
            drafts, q_logits, h = self._draft(drf, live, K, stats)
            timer.stop("draft_s", t0)
            t0 = timer.start()
            p_logits = self._score(tgt, live, drafts, stats)
            timer.stop("target_s", t0)
            t0 = timer.start()
            res, host = self._verify(p_logits, q_logits, drafts, n_row, stats)
            timer.stop("verify_s", t0)
            accepted = [row[-1] for row in host]
            stats.observe(n_row, accepted)
            counts.observe(n_row, accepted)
            self._commit(tgt, drf, live, drafts, res, K, h, max(accepted))
            keep = self._retire(rows, tgt, drf, live, lengths, [row[:a + 1] for row, a in zip(host, accepted)],
                                accepted, K)
            counts.select(keep)
            if on_round is not None and rows.live:
                on_round(RoundInfo(tgt, drf, live.pending, live.pos, live.prev, live.prev_needed,
                                   list(rows.live), rows.out))
        timer.finish(stats, t_all)
        stats.new_tokens = sum(len(o) for o in rows.out)
        return GenerationOutput(new_tokens=rows.out, stats=stats)

    def _costs_for(self, ids, mask, sampling: bool) -> dict:
        """gamma="auto"'s costs: the table handed over, else the round costs read from the cost cache or
        measured once per (batch size, context bucket, greedy or sampled) on this call's own prompts."""
        if self.costs is not None:
            return self.costs
        B = ids.shape[0]
        context = context_bucket(ids.shape[1])
        memo = (B, context, sampling)
        if memo not in self._measured:
            gammas = range(1, self.max_gamma + 1)
            key = cost_key(self.target, self.draft, B, context, sampling, gammas, self.impl, self.cuda_graphs,
                           sources=(__file__,))
            self._measured[memo] = CostCache(self.cost_cache).get(key, lambda: {"round_s": {
                "sampling" if sampling else "greedy": self.measure_round_costs(ids, mask, sampling, gammas)}})
        return {B: self._measured[memo]}

    def measure_round_costs(self, input_ids, attention_mask=None, sampling: bool = False, gammas=None,
                            repeats: int = 3, new_tokens: int | None = None) -> dict:
        """k -> seconds of one round drafting k tokens (k in gammas, default 1..max_gamma) on this decoder's
        models and settings, greedy or sampled at temperature 1: `repeats` decodes of new_tokens (default
        _ROUND_TOKENS, less where the context ends first) whose rounds cycle through the counts (each
        decode starting one count further), each round timed between the on_round calls around it; per k
        the lower quartile of its rounds (load from other jobs only ever adds time). Rounds that
        max_new_tokens cut short are left out."""
        gammas = list(gammas or range(1, self.max_gamma + 1))
        if max(gammas) > self.max_gamma or min(gammas) < 1:
            raise ValueError(f"gammas must lie in 1..max_gamma={self.max_gamma}, got {gammas}")
        if new_tokens is None:   # _ROUND_TOKENS, or what the models' context leaves after the prompts
            limit = min(m for m in (max_positions(self.target), max_positions(self.draft), 1 << 30) if m)
            new_tokens = max(1, min(_ROUND_TOKENS, limit - input_ids.shape[-1]))
        kw = dict(max_new_tokens=new_tokens, temperature=1.0 if sampling else 0.0)
        samples = {k: [] for k in gammas}
        self.generate(input_ids, attention_mask, seed=0, _counts=_CycleCounts(gammas), **kw)   # warm-up
        for r in range(repeats):
            cycle, stamps = _CycleCounts(gammas, offset=r), []

            def stamp(_info):
                sync(self.device)
                stamps.append(time.perf_counter())

            self.generate(input_ids, attention_mask, seed=r, on_round=stamp, _counts=cycle, **kw)
            for i in range(1, len(stamps)):   # round i ran between the calls after rounds i-1 and i
                k, cut = cycle.log[i]
                if not cut:
                    samples[k].append(stamps[i] - stamps[i - 1])
        return {k: _lower_quartile(v) for k, v in samples.items() if v}

    def _draft(self, drf: ModelRunner, live: _Live, K: int, stats: DecodeStats):
        """K draft tokens per row. Returns drafts [B, K], q logits [B, K, V] (None when greedy: the
        greedy test needs no q) and h (1 if this round fed the owed d_K first)."""
        p, V = self._params, self.vocab_size
        B = live.pending.shape[0]
        drafts = torch.empty((B, K), dtype=torch.long, device=live.pending.device)
        q_logits = None if p.greedy else []
        h = 1 if (K > 0 and live.any_prev_needed) else 0
        if K == 0:
            return drafts, (None if q_logits is None else drafts.new_zeros((B, 0, V), dtype=torch.float)), 0
        if h:  # [d_K or a masked dummy, pending]
            ids = torch.stack([live.prev, live.pending], 1)
            pos = torch.stack([live.pos - 1, live.pos], 1)
            valid = torch.stack([live.prev_needed, torch.ones_like(live.prev_needed)], 1)
        else:
            ids, pos = live.pending[:, None], live.pos[:, None]
            valid = torch.ones((B, 1), dtype=torch.bool, device=ids.device)
        if self._draft_rows < V:
            ids = ids.clamp_max(self._draft_rows - 1)
        ones = valid[:, -1:]
        for k in range(K):
            logits = drf.forward(ids, pos, valid, logits_to_keep=1)[:, -1, :V]      # [B, V]
            stats.draft_calls += 1
            masked = mask_logits(logits, p.temperature, p.top_k, p.top_p)
            tok = sample_tokens(masked, p.temperature, self._gen)                    # [B]
            drafts[:, k] = tok
            if q_logits is not None:
                q_logits.append(masked)
            if k + 1 < K:  # d_K itself is fed next round, only where it is accepted
                ids, pos, valid = tok[:, None], live.pos[:, None] + (k + 1), ones
        q = None if q_logits is None else pad_vocab(torch.stack(q_logits, 1), V)   # [B, K, V]
        return drafts, q, h

    def _score(self, tgt: ModelRunner, live: _Live, drafts, stats: DecodeStats):
        """One target forward over [pending, d_1..d_K]: logits [B, K+1, V] on the decoder's device."""
        K = drafts.shape[1]
        ids = torch.cat([live.pending[:, None], drafts], 1)                         # [B, K+1]
        pos = live.pos[:, None] + torch.arange(K + 1, device=ids.device)            # [B, K+1]
        logits = tgt.forward(ids, pos, torch.ones_like(ids, dtype=torch.bool))
        stats.target_calls += 1
        return logits[:, :, :self.vocab_size].to(self.device)

    def _verify(self, p_logits, q_logits, drafts, n_row, stats: DecodeStats):
        """The rejection test on the target's logits [B, K+1, V] and the draft's q logits [B, K, V]
        (None when greedy). Returns the VerifyResult and the round's one host read: per row its K+1
        emitted-token slots, then its accepted count."""
        p = self._params
        B, K = drafts.shape
        p_masked = mask_logits(p_logits, p.temperature, p.top_k, p.top_p)             # same as q's
        greedy = q_logits is None
        q = p_masked[:, :K] if greedy else q_logits.to(p_masked.dtype)  # greedy never reads q
        res = verify(p_masked, q, drafts, temperature=p.temperature,
                     num_draft_tokens=torch.tensor(n_row, device=drafts.device), generator=self._gen,
                     backend=self.backend, lenience=self.lenience, lenience_eps=self.lenience_eps,
                     validate=False)
        # 1: the target's logits, 2: the draft's (sampled only; a greedy draft's bad row is a rejected draft)
        nan = unusable_rows(p_logits).any().long()
        if not greedy:
            nan = nan + 2 * unusable_rows(q_logits).any().long()
        host = torch.cat([res.tokens, res.num_accepted[:, None], nan.view(1, 1).expand(B, 1)], 1).tolist()
        check_logits_flag(host[0][-1], {1: ("target", self.target), 2: ("draft", self.draft)},
                          f"decode round {stats.target_calls}")
        return res, [row[:-1] for row in host]

    @staticmethod
    def _commit(tgt: ModelRunner, drf: ModelRunner, live: _Live, drafts, res, K: int, h: int, max_acc: int):
        """Both caches keep exactly the accepted prefix as valid columns; trailing holes are cropped."""
        acc = res.num_accepted                                                       # [B]
        ar = torch.arange(K + 1, device=acc.device)[None]
        tgt.set_tail_validity(ar <= acc[:, None])             # pending + accepted drafts
        if K > 0:
            drf_tail = ar[:, :K] <= acc[:, None]              # pending, d_1..d_{K-1} where accepted
            if h:
                drf_tail = torch.cat([live.prev_needed[:, None], drf_tail], 1)
            drf.set_tail_validity(drf_tail)
        # Columns that are holes in every row are cropped (host ints: no sync). The target added K+1
        # columns (pending + drafts); the draft added h + K (maybe d_K of last round, pending, d_1..d_{K-1}).
        tgt.crop(tgt.columns - (K + 1) + max_acc + 1)
        if K > 0:
            drf.crop(drf.columns - (h + K) + h + min(max_acc, K - 1) + 1)
        live.pending = res.tokens.gather(1, acc[:, None]).squeeze(1)                 # recovered / bonus
        live.prev = drafts[:, -1] if K > 0 else live.pending
        live.prev_needed = acc == K if K > 0 else torch.zeros_like(live.prev_needed)
        live.any_prev_needed = K > 0 and max_acc == K
        live.pos = live.pos + acc + 1

    @staticmethod
    def _retire(rows: _Rows, tgt, drf, live: _Live, lengths, emitted, accepted, K: int) -> list:
        """Emit each row's tokens; rows that hit EOS or their length leave the batch; compact if holes
        waste much of the caches. Returns the batch indices of the rows still live."""
        keep = rows.emit(emitted)
        if len(keep) < len(emitted):
            rows.live = [rows.live[b] for b in keep]
            if not keep:
                return keep
            idx = torch.tensor(keep, device=live.pending.device)
            for runner in (tgt, drf):
                runner.select_rows(idx)
            live.select(idx, K > 0 and any(accepted[b] == K for b in keep))
        # Valid columns of the longest row >= its committed tokens minus the pending one (and minus d_K
        # for the draft): a host-side bound, so the exact count is read only when compaction may pay.
        longest = max(lengths[r] + len(rows.out[r]) for r in rows.live) - 2
        tgt.maybe_compact(longest)
        drf.maybe_compact(longest)
        return keep
