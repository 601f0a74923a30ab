"""The decode loops: plain autoregressive decoding (the baseline) and batched speculative decoding.

Each model runs on a ModelRunner (specdec/engine/runner.py): its KV cache is preallocated and written in
place, with holes. A row that rejects drafts does not shrink its cache: the rejected columns become
holes that attention skips, and positions come from an explicit per-row counter, so each row advances
by its own accepted count and no row is cut back to the batch minimum or recomputed for another's
sake. Trailing columns that are holes in every row are cropped after each round (at batch size 1 that
is every hole); when holes pile up inside the batch the cache is compacted with one gather. Finished
rows (EOS or length) leave the batch.

One speculative round, over the live rows (named steps below):
  count   each row's draft count from the draft-count policy (specdec/costmodel/policy.py: gamma every
          round, or with gamma="auto" the K that maximises the batch's expected tokens per unit of
          cost), never past what max_new_tokens leaves;
  draft   the draft proposes K tokens autoregressively (K = the largest per-row count this round);
  verify  the target scores [pending, d_1..d_K] in one forward; `verify` accepts a prefix per row and
          emits one recovered or bonus token after it;
  commit  both caches keep exactly the accepted prefix as valid columns; trailing holes are cropped;
  retire  rows that hit EOS or their length limit leave the batch.
The draft cache lags the committed sequence by at most one token: when a row accepts all K drafts,
the draft never saw d_K, so the next round feeds [d_K, bonus] (2 tokens); rows that rejected feed a
masked dummy in that first column. Lossless whatever the policy: a round's counts depend only on
earlier rounds' verdicts, never on its own.

The n-gram lookup draft (engine/ngram.py: draft="ngram", no model) runs them in _NgramCall: a row's
count is also capped by its lookup's proposal (0 without a match: that row takes a plain step), the
proposals are host NumPy, and only the target has a cache.

A draft that reads the target's features (engine/features.py, EAGLE-1) runs the same steps in
_FeatureCall: the target's forwards also return its features, a round's first draft step reads the true
features the draft owes (those of what the last round accepted), its later steps its own state, and its
cache never keeps its own guesses (it lags the committed sequence by what it owes instead).

Host synchronisation: one read per round of the verified tokens, the accepted counts and a NaN flag
(needed to decide what each row emits and when it stops). Sampling uses the exponential race, which
needs no sync.

One greedy row on a greedy head (the C kernels' forward: runner.ModelRunner.greedy_row) runs plain
decoding (_plain_row) and the lookup's rounds (_NgramCall.run_row) on host ints: the same steps with no
PyTorch operation between the forwards (each costs up to ~40 us there: bench/RESULTS.md, "One row on host
ints"), its cache kept without holes by cropping what it rejects.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..common.values import BadType, check_gamma, check_int, check_lenience
from ..costmodel import AUTO
from ..costmodel.policy import AutoConfig, AutoGamma, FixedGamma, LookupAuto
from . import features, ngram
from .devices import input_device, logit_width
from .params import (SamplingParams, check_cache_memory, check_context, check_engine, check_logits_flag,
                     check_model, embedding_rows, max_positions, prepare_inputs)
from .runner import ModelRunner, cache_kwarg, resolve_impl  # noqa: F401 (cache_kwarg re-exported)
from .sampling import argmax, mask_logits, pad_vocab, sample_tokens, unusable_rows
from .stats import DecodeStats
from .timing import DecodeClock, StepTimer
from .verify import VerifyResult, greedy_accept, sampled_on_cpu, verify, verify_sampled_cpu


@dataclass
class GenerationOutput:
    new_tokens: list          # list[list[int]]: per input row, only the generated ids (EOS kept if hit)
    stats: DecodeStats = field(default_factory=DecodeStats)


@dataclass
class RoundInfo:
    """What `generate(..., on_round=f)` hands f after every round (between rounds, caches settled).

    target, draft: the two ModelRunners (draft None for the n-gram draft; their caches hold exactly
    each live row's committed tokens, the draft's minus d_K where prev_needed; `peek` runs a forward
    without changing them);
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


def _start(models, names, input_ids, attention_mask, params: SamplingParams, gamma: int, impl, cuda_graphs,
           feature_draft: bool = False):
    """Validated inputs and one prefilled ModelRunner per model (the setup both loops share).
    feature_draft: models are (target, a feature draft): the draft reads the target's prefill features
    (prefill_feature_draft), and the sixth value returned is what it still owes (_Owed); else None."""
    device = input_device(models[0])
    ids, mask, lengths = prepare_inputs(input_ids, attention_mask, device, embedding_rows(models))
    for model, name in zip(models, names):
        check_context(model, name, lengths, params.max_new_tokens)
    capacity = capacity_for(ids.shape[1], params.max_new_tokens, gamma)
    check_cache_memory(models, ids.shape[0], capacity, impl, aligned=cuda_graphs)
    runners, owed = [], None
    t0 = time.perf_counter()
    for i, model in enumerate(models):
        runner = ModelRunner(model, ids.shape[0], capacity, impl=impl, cuda_graphs=cuda_graphs)
        if not feature_draft:
            runner.prefill(ids, mask)
        elif i == 0:
            feats = runner.prefill(ids, mask, hidden=True)
        else:
            owed = prefill_feature_draft(runner, ids, mask, feats, features.projector(model))
        runners.append(runner)
    if device.type == "cuda":
        torch.cuda.synchronize(device)   # once per decode: the prefill's share of the wall time
    return ids, mask, lengths, runners, time.perf_counter() - t0, owed


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
    ids, mask, lengths, (tgt,), prefill_s, _ = _start([target], ["target"], input_ids, attention_mask, params, 0,
                                                      impl, cuda_graphs)
    device = ids.device
    gen = _generator(params.seed, device)
    stats = DecodeStats(gamma=0, prefill_calls=1, prefill_s=prefill_s)
    clock = DecodeClock(device)
    rows = _Rows(ids.shape[0], params)
    pending = ids[:, -1:]                                  # [B, 1]
    pos = mask.sum(1, keepdim=True) - 1                    # [B, 1] position of the pending token
    ones = torch.ones_like(pending, dtype=torch.bool)
    greedy_ids = params.greedy and tgt.greedy_ids     # greedy on a greedy head: ids, no logits (forward_greedy)
    vocab = logit_width(target) if vocab_size is None else vocab_size
    if greedy_ids and tgt.dense:   # one row on host ints (ModelRunner.greedy_row); it leaves no row live
        _plain_row(target, tgt, rows, int(pending[0, 0]), int(pos[0, 0]), vocab, stats, clock)
    while rows.live:
        t0 = clock.start("score")
        if greedy_ids:
            nxt, bad = tgt.forward_greedy(pending, pos, ones[:pending.shape[0]], vocab)
            nxt = nxt[:, -1]                                                                    # [B]
            clock.stop("score", t0)
            host = nxt.tolist() + [bad]
        else:
            logits = tgt.forward(pending, pos, ones[:pending.shape[0]])[:, -1]   # [B, V]
            if vocab_size is not None:
                logits = logits[:, :vocab_size]
            masked = mask_logits(logits, params.temperature, params.top_k, params.top_p)
            nxt = sample_tokens(masked, params.temperature, gen)                                  # [B]
            clock.stop("score", t0)
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
    clock.finish(stats, t_all)
    stats.new_tokens = sum(len(o) for o in rows.out)
    return GenerationOutput(new_tokens=rows.out, stats=stats)


def _plain_row(target, tgt: ModelRunner, rows: _Rows, pending: int, pos: int, vocab: int, stats: DecodeStats,
               clock: DecodeClock) -> None:
    """autoregressive_generate's loop for one greedy row on a greedy head, on host ints (ModelRunner.greedy_row):
    the same steps and tokens, without a PyTorch operation between the forwards; until the row finishes."""
    while rows.live:
        t0 = clock.start("score")
        out, bad = tgt.greedy_row([pending], pos, vocab)
        clock.stop("score", t0)
        stats.target_calls += 1
        check_logits_flag(int(bad), {1: ("target", target)}, f"decode step {stats.target_calls}")
        pending, pos = out[0], pos + 1
        if not rows.emit([out]):
            rows.live = []


# ----------------------------------------------------------------------------------------------------
# Speculative decoding.

@dataclass
class _GreedyScores:
    """A greedy verify's target side without logits (runner.forward_greedy): argmax ids [B, K+1] and
    whether any of its logit rows was unusable."""
    ids: torch.Tensor
    bad: bool


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


def _policy_of(gamma, max_gamma, costs, cost_cache, auto):
    """The decoder's draft-count policy from its arguments (gamma and max_gamma: values.check_gamma)."""
    if not hasattr(gamma, "start"):
        gamma = check_gamma(gamma, "gamma")
    if gamma == AUTO:
        config = auto or AutoConfig()
        if max_gamma is not None:
            config = dataclasses.replace(config, max_gamma=max_gamma)
        return AutoGamma(config, costs, cost_cache)
    if (max_gamma, costs, cost_cache, auto) != (None, None, None, None):
        raise ValueError(f"max_gamma, costs, cost_cache and auto are gamma='{AUTO}' settings; gamma is {gamma!r}")
    return gamma if hasattr(gamma, "start") else FixedGamma(gamma)


class SpeculativeDecoder:
    """Batched, lossless speculative decoding of `target` with `draft` (two HF causal LMs sharing a
    tokenizer; or draft="ngram" / "ngram:STORE" / an ngram.NgramDraft: proposals looked up in each row's
    own tokens (then in the store, where one is given), no model; gamma is then the most a round drafts
    a row, "auto" ngram.AUTO_CAP, or more for a row repeating itself: costmodel.policy.LookupAuto, whose
    top is max_gamma, default ngram.LONG_CAP_MAX, priced by `costs` or the cost cache). Greedy output
    equals plain greedy decoding of the target token for token; sampled output is distributed exactly as
    the target's (after the same temperature / top-k / top-p), unless a lossy `lenience` ("lin", "sq",
    "exp" with lenience_eps in (0, 1]) is asked for.

    gamma: the draft-count policy: draft tokens per round (an int: FixedGamma), "auto" (AutoGamma: each
    round's count from the cost model, specdec/costmodel/policy.py), or any policy object
    (`start`, `max_gamma`; the protocol is in specdec/costmodel/policy.py). For "auto": `auto` an
    AutoConfig (prior, strength, decay, max_gamma; `max_gamma` alone overrides its field); costs: batch
    size -> a costs entry (specdec/costmodel/table.py: round times `{"round_s": {"greedy" | "sampling":
    {k: seconds}}}` and/or step costs `{"c", "v"}`; the benchmark hands over its own measurement);
    without them the round times are read from the cost cache (`cost_cache`: a folder, default
    `costmodel.default_cache_dir()`) or measured once per batch size, context bucket and greedy /
    sampled (a few seconds) and stored there.
    vocab_size: only ids below it are emitted (default: the target's logit width, as autoregressive_generate's;
    load_pair's shared vocabulary excludes logit padding); the draft may have fewer or more logits.
    impl: "auto" (the lean forward for Llama-family models, else transformers'), "lean", "numpy" or "hf".
    cuda_graphs: capture the draft step and the verify as CUDA graphs (CUDA and the lean forward).
    verifier: the rejection test, a function with `verify`'s signature and result (default: `verify`,
    backend `backend`); anything else makes losslessness the caller's business (tests inject faults so).
    A round in which no row drafts does not call it (nothing to test: it samples from the target as plain
    decoding does).
    The decoder holds settings only: each generate call keeps its own state, so one decoder may serve
    nested calls (from on_round, or a cost measurement inside a call) and several threads.
    """

    def __init__(self, target, draft, gamma=4, vocab_size: int | None = None, backend: str = "auto",
                 lenience: str | None = None, lenience_eps: float = 1.0, impl: str = "auto",
                 cuda_graphs: bool = False, max_gamma: int | None = None, costs: dict | None = None,
                 cost_cache=None, auto: AutoConfig | None = None, verifier=None):
        check_model(target, "target")
        self.ngram = ngram.as_ngram(draft)          # the n-gram lookup draft's settings; None for a model
        if self.ngram is None:
            check_model(draft, "draft")
        else:
            draft = self.ngram
        if cost_cache is not None and not isinstance(cost_cache, (str, os.PathLike)):
            raise BadType(f"cost_cache must be a folder path or None, got {type(cost_cache).__name__}")
        if self.ngram is not None and not hasattr(gamma, "start") and check_gamma(gamma, "gamma") == AUTO:
            # the match sizes every round; costs (v) size a row that repeats itself (ngram.py); auto is unused
            top = ngram.LONG_CAP_MAX if max_gamma is None else check_int(max_gamma, "max_gamma", 1)
            self.policy = LookupAuto(min(ngram.AUTO_CAP, top), top, ngram.LONG_ALPHA, costs, cost_cache)
        else:
            self.policy = _policy_of(gamma, max_gamma, costs, cost_cache, auto)
        self.verifier = verify if verifier is None else verifier
        self.gamma = (self.policy.gamma if isinstance(self.policy, FixedGamma)
                      else AUTO if isinstance(self.policy, (AutoGamma, LookupAuto)) else gamma)
        lenience, lenience_eps = check_lenience(lenience, lenience_eps)
        check_engine(impl, cuda_graphs, backend)
        self.target, self.draft = target, draft
        self.device = input_device(target)
        ddev = self.device if self.ngram is not None else input_device(draft)
        if ddev != self.device:
            raise ValueError(f"target and draft are on different devices ({self.device} vs {ddev}); "
                             "move the draft to the target's input device")
        # The vocabulary rule, as in autoregressive_generate: ids below vocab_size (default: the target's logit
        # width) are emitted, so plain and speculative decoding agree without passing it (README, Vocabularies).
        t_width = logit_width(target)
        self.vocab_size = t_width if vocab_size is None else check_int(vocab_size, "vocab_size", 1, t_width)
        store = self.ngram.store if self.ngram is not None else None
        if store is not None and store.max_id >= self.vocab_size:
            raise ValueError(f"the n-gram store {store.source or '(in memory)'} holds token id {store.max_id}, beyond "
                             f"the target's {self.vocab_size} ids: it was written with another tokenizer; build "
                             "one from this target's outputs (bench/ngram_store.py)")
        # A draft with fewer logits proposes only the ids it has: its q is -inf (probability 0) beyond them,
        # which verification handles exactly. A target id beyond the draft's embedding (e.g. Qwen2.5-0.5B's
        # 151936 rows under the 7B's 152064 logits) reaches the draft as its last row: only its proposals
        # change, never the output's distribution (q is what the drafts were sampled from either way).
        self.draft_rows = self.vocab_size if self.ngram is not None else embedding_rows([draft])
        if self.ngram is None and features.is_feature_draft(draft):   # EAGLE-style (engine/features.py)
            features.check_pair(target, draft)
        self.backend, self.lenience, self.lenience_eps = backend, lenience, lenience_eps
        self.impl, self.cuda_graphs = impl, cuda_graphs

    @property
    def max_gamma(self) -> int:
        """The widest round the decoder's policy may draft."""
        return self.policy.max_gamma

    @property
    def resolved_impl(self) -> tuple[str, str]:
        """The forward each model runs (target, draft): what impl="auto" picks for them."""
        return (resolve_impl(self.target, self.impl),
                ngram.NAME if self.ngram is not None else resolve_impl(self.draft, self.impl))

    @property
    def max_positions(self) -> int | None:
        """The smaller of the two models' contexts (None when neither states one)."""
        limits = [m for m in (max_positions(self.target), max_positions(self.draft) if self.ngram is None else None)
                  if m]
        return min(limits) if limits else None

    @property
    def verifies_on_ids(self) -> bool:
        """Whether a greedy decode's verify runs on the target's argmax ids (runner.forward_greedy, on a greedy
        head where the target has one) rather than on its logits: the default test, and no feature draft
        (whose verify also needs the target's features)."""
        return (self.verifier is verify and self.backend == "auto"
                and (self.ngram is not None or not features.is_feature_draft(self.draft)))

    def step_timers(self, prompt_ids, batch_size: int, max_tokens: int,
                    greedy: bool = False) -> tuple[StepTimer, StepTimer]:
        """(target, draft) StepTimers on this decoder's path (forward, cache, CUDA graphs), each prefilled
        with prompt_ids [1, P] repeated batch_size times: what costmodel.measure_step_costs times (the
        n-gram draft's "step": its lookups on the prompt, ngram.LookupTimer). greedy: the target's forward
        a greedy decode runs (forward_greedy where verifies_on_ids), else the logits forward sampling runs."""
        target = StepTimer(self.target, prompt_ids, batch_size, max_tokens, self.impl, self.cuda_graphs,
                           greedy_vocab=self.vocab_size if greedy and self.verifies_on_ids else None)
        if self.ngram is not None:
            return target, ngram.LookupTimer(self.ngram, prompt_ids, batch_size)
        return target, StepTimer(self.draft, prompt_ids, batch_size, max_tokens, self.impl, self.cuda_graphs)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens=64, temperature=0.0, top_k=0, top_p=1.0,
                 seed=None, eos_token_id=None, on_round=None, policy=None, on_section=None) -> GenerationOutput:
        """Decode. Every call keeps its state to itself (_Call), so calls may nest or run in threads.

        on_round(RoundInfo): after every round, caches settled (for inspection and tests).
        policy: a draft-count policy for this call in place of the decoder's (e.g. costmodel.CycleGammas,
        which measure_round_costs times rounds with).
        on_section(name, seconds, tokens): after each named step of a round ("draft", "score", "verify",
        "commit", "retire") and each forward inside them ("draft_forward", "target_forward", tokens = the
        tokens it fed per row): host wall time, no sync added (bench/round_phases.py times rounds so)."""
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, seed, eos_token_id)
        if on_round is not None and not callable(on_round):
            raise BadType(f"on_round must be a function of a RoundInfo or None, got {type(on_round).__name__}")
        policy = self.policy if policy is None else policy
        t_all = time.perf_counter()
        feature = self.ngram is None and features.is_feature_draft(self.draft)
        models, names = ([self.target], ["target"]) if self.ngram is not None else \
            ([self.target, self.draft], ["target", "draft"])
        ids, mask, lengths, runners, prefill_s, owed = _start(
            models, names, input_ids, attention_mask, params, policy.max_gamma, self.impl, self.cuda_graphs,
            feature_draft=feature)
        t0 = time.perf_counter()
        counts = policy.start(self, ids, mask, not params.greedy)   # auto's first call may time rounds first
        t_all += time.perf_counter() - t0   # a first measurement of the costs is not decoding time
        stats = DecodeStats(gamma=policy.max_gamma, prefill_calls=len(models), prefill_s=prefill_s)
        clock = DecodeClock(ids.device, on_section)
        if self.ngram is not None:
            call = _NgramCall(self, params, ids, mask, lengths, runners, counts, clock, stats)
        elif feature:
            call = _FeatureCall(self, params, ids, mask, lengths, runners, counts, clock, stats, owed)
        else:
            call = _Call(self, params, ids, mask, lengths, runners, counts, clock, stats)
        call.run(on_round)
        call.clock.finish(stats, t_all)
        stats.new_tokens = sum(len(o) for o in call.rows.out)
        return GenerationOutput(new_tokens=call.rows.out, stats=stats)


class _Call:
    """One generate call: the loop's state (the sampling settings and generator, both runners, the live
    rows on the device and the host, the policy's call state, statistics, the clock) and the round's
    named steps (module docstring). A new one per call: calls share nothing but the decoder's settings."""

    FEATURES = False   # whether the target's verify forward also returns its features

    def __init__(self, dec: SpeculativeDecoder, params: SamplingParams, ids, mask, lengths, runners, counts,
                 clock: DecodeClock, stats: DecodeStats):
        self.dec, self.params, self.counts, self.clock, self.stats = dec, params, counts, clock, stats
        self.gen = _generator(params.seed, ids.device)
        self.runners = runners                     # [target] or [target, draft]
        self.tgt, self.drf = runners[0], (runners[1] if len(runners) > 1 else None)
        self.lengths = lengths
        self.rows = _Rows(ids.shape[0], params)
        pending = ids[:, -1]
        self.live = _Live(pending=pending, pos=mask.sum(1) - 1, prev=pending.clone(),
                          prev_needed=torch.zeros_like(pending, dtype=torch.bool), any_prev_needed=False)
        # greedy with a draft head covering some ids, all of them emittable: proposals from the covered
        # logits alone (propose)
        head = self.drf.head if self.drf is not None else None
        self.narrow = params.greedy and head is not None and int(head.ids[-1]) < dec.vocab_size
        # the target's forwards also return its features (the feature loop reads them)
        self.tfeats = None
        # greedy on a greedy head, with the default test: the target's verify gives argmax ids, no logits
        # (runner.forward_greedy; greedy_accept is the test verify(backend="auto") runs on CPU logits);
        # asked last: the first ask builds the greedy head
        self.greedy_ids = params.greedy and dec.verifies_on_ids and self.tgt.greedy_ids

    def run(self, on_round) -> None:
        rows, live, counts = self.rows, self.live, self.counts
        while rows.live:
            # Per-row draft count: never draft past max_new_tokens (the last token needs no draft).
            n_row = self.plan(counts.choose([r - 1 for r in rows.remaining()]))
            K = max(n_row)
            drafts, q_logits, h = self.timed("draft", self.draft, K)
            p_logits = self.timed("score", self.score, drafts)
            res, host = self.timed("verify", self.verify, p_logits, q_logits, drafts, n_row)
            accepted = [row[-1] for row in host]
            self.stats.observe(n_row, accepted)
            counts.observe(n_row, accepted)
            self.timed("commit", self.commit, drafts, res, K, h, max(accepted))
            keep = self.timed("retire", self.retire, [row[:a + 1] for row, a in zip(host, accepted)], accepted, K)
            counts.select(keep)
            if on_round is not None and rows.live:
                on_round(RoundInfo(self.tgt, self.drf, live.pending, live.pos, live.prev, live.prev_needed,
                                   list(rows.live), rows.out))

    def plan(self, n_row: list) -> list:
        """The round's per-row draft counts from the policy's (the n-gram loop caps them by its matches)."""
        return n_row

    def timed(self, name: str, step, *args):
        t0 = self.clock.start(name)
        out = step(*args)
        self.clock.stop(name, t0)
        return out

    def draft(self, K: int):
        """K draft tokens per row. Returns drafts [B, K], q logits [B, K, V] (None when greedy: the
        greedy test needs no q) and h (1 if this round fed the owed d_K first)."""
        p, V, live = self.params, self.dec.vocab_size, self.live
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
        ones = valid[:, -1:]
        for k in range(K):
            t0 = self.clock.start("draft_forward")
            logits = self.drf.forward(self.draft_ids(ids), pos, valid, logits_to_keep=1, expand=not self.narrow)
            self.clock.stop("draft_forward", t0, ids.shape[1])
            self.stats.draft_calls += 1
            drafts[:, k] = self.propose(logits, q_logits)
            if k + 1 < K:  # d_K itself is fed next round, only where it is accepted
                ids, pos, valid = drafts[:, k:k + 1], live.pos[:, None] + (k + 1), ones
        q = None if q_logits is None else pad_vocab(torch.stack(q_logits, 1), V)      # [B, K, V]
        return drafts, q, h

    def draft_ids(self, ids):
        """ids the draft embeds: a target id beyond its embedding reaches it as its last row (see
        SpeculativeDecoder.__init__)."""
        return ids if self.dec.draft_rows >= self.dec.vocab_size else ids.clamp_max(self.dec.draft_rows - 1)

    def propose(self, logits, q_logits):
        """The next draft token per row [B] from a draft forward's logits [B, S', W] (its last column),
        appending the masked q logits [B, V] to q_logits when sampling. With `narrow` the forward gave
        its head's covered logits only: greedy takes their argmax (ascending ids: the same first maximum
        as over the full-width logits), with no full-width copy."""
        p, V, head = self.params, self.dec.vocab_size, self.drf.head
        if self.narrow and logits.shape[-1] == head.ids.numel():
            return head.ids[argmax(logits[:, -1])]
        if self.narrow:
            logits = head.expand(logits)
        masked = mask_logits(logits[:, -1, :V], p.temperature, p.top_k, p.top_p)
        if q_logits is not None:
            q_logits.append(masked)
        return sample_tokens(masked, p.temperature, self.gen)

    def score(self, drafts):
        """One target forward over [pending, d_1..d_K]: logits [B, K+1, V] on the decoder's device, or
        where greedy_ids the argmax ids alone (_GreedyScores)."""
        K, live = drafts.shape[1], self.live
        ids = torch.cat([live.pending[:, None], drafts], 1)                            # [B, K+1]
        pos = live.pos[:, None] + torch.arange(K + 1, device=ids.device)               # [B, K+1]
        valid = torch.ones_like(ids, dtype=torch.bool)
        t0 = self.clock.start("target_forward")
        if self.greedy_ids:
            out = _GreedyScores(*self.tgt.forward_greedy(ids, pos, valid, self.dec.vocab_size))
        else:
            out = self.tgt.forward(ids, pos, valid, hidden=self.FEATURES)
            if self.FEATURES:
                out, self.tfeats = out                                                 # features [B, K+1, d]
            out = out[:, :, :self.dec.vocab_size].to(self.dec.device)
        self.clock.stop("target_forward", t0, K + 1)
        self.stats.target_calls += 1
        return out

    def verify(self, p_logits, q_logits, drafts, n_row):
        """The rejection test on the target's logits [B, K+1, V] and the draft's q logits [B, K, V]
        (None when greedy). Returns the VerifyResult and the round's one host read: per row its K+1
        emitted-token slots, then its accepted count."""
        p, dec = self.params, self.dec
        B, K = drafts.shape
        if isinstance(p_logits, _GreedyScores):   # the target's argmax ids (greedy_ids)
            check_logits_flag(int(p_logits.bad), {1: ("target", dec.target)}, f"decode round {self.stats.target_calls}")
            if K == 0:
                nxt = p_logits.ids[:, 0]
                return VerifyResult(tokens=nxt[:, None], num_accepted=torch.zeros_like(nxt)), [[t, 0] for t in nxt.tolist()]
            # on host lists: right after the target's forward a PyTorch operation costs up to ~40 us
            # (bench/RESULTS.md, "A round's Python")
            tokens, accepted = greedy_accept(p_logits.ids.tolist(), drafts.tolist(), n_row)
            res = VerifyResult(tokens=torch.tensor(tokens), num_accepted=torch.tensor(accepted))
            return res, [t + [a] for t, a in zip(tokens, accepted)]
        p_masked = mask_logits(p_logits, p.temperature, p.top_k, p.top_p)             # same as q's
        if K == 0:   # no row drafted: nothing to test, the round is a plain step (autoregressive_generate's)
            nxt = sample_tokens(p_masked[:, 0], p.temperature, self.gen)                # [B]
            host = torch.cat([nxt, unusable_rows(p_logits).any().long().view(1)]).tolist()
            check_logits_flag(host[-1], {1: ("target", dec.target)}, f"decode round {self.stats.target_calls}")
            return VerifyResult(tokens=nxt[:, None], num_accepted=torch.zeros_like(nxt)), [[t, 0] for t in host[:-1]]
        greedy = p.greedy
        # greedy never reads q; None: a q the test takes as given (_NgramCall.test)
        q = p_masked[:, :K] if greedy else None if q_logits is None else q_logits.to(p_masked.dtype)
        res = self.test(p_masked, q, drafts, n_row)
        # 1: the target's logits, 2: the draft's (sampled only; a greedy draft's bad row is a rejected draft)
        nan = unusable_rows(p_logits).any().long()
        if not greedy and q_logits is not None:
            nan = nan + 2 * unusable_rows(q_logits).any().long()
        host = torch.cat([res.tokens, res.num_accepted[:, None], nan.view(1, 1).expand(B, 1)], 1).tolist()
        check_logits_flag(host[0][-1], {1: ("target", dec.target), 2: ("draft", dec.draft)},
                          f"decode round {self.stats.target_calls}")
        return res, [row[:-1] for row in host]

    def test(self, p_masked, q, drafts, n_row) -> VerifyResult:
        """The decoder's rejection test on the round's masked target logits [B, K+1, V] and q [B, K, V]."""
        p, dec = self.params, self.dec
        return dec.verifier(p_masked, q, drafts, temperature=p.temperature,
                            num_draft_tokens=torch.tensor(n_row, device=drafts.device), generator=self.gen,
                            backend=dec.backend, lenience=dec.lenience, lenience_eps=dec.lenience_eps,
                            validate=False)

    def commit(self, drafts, res, K: int, h: int, max_acc: int) -> None:
        """Both caches keep exactly the accepted prefix as valid columns; trailing holes are cropped."""
        drf, live, acc = self.drf, self.live, res.num_accepted
        if K > 0:
            drf_tail = torch.arange(K, device=acc.device)[None] <= acc[:, None]   # pending, d_1..d_{K-1} accepted
            if h:
                drf_tail = torch.cat([live.prev_needed[:, None], drf_tail], 1)
            drf.set_tail_validity(drf_tail)
            # Columns that are holes in every row are cropped (host ints: no sync). The draft added h + K
            # (maybe d_K of last round, pending, d_1..d_{K-1}).
            drf.crop(drf.columns - (h + K) + h + min(max_acc, K - 1) + 1)
        live.prev = drafts[:, -1] if K > 0 else res.tokens.gather(1, acc[:, None]).squeeze(1)
        live.prev_needed = acc == K if K > 0 else torch.zeros_like(live.prev_needed)
        live.any_prev_needed = K > 0 and max_acc == K
        self.commit_target(res, K, max_acc)

    def commit_target(self, res, K: int, max_acc: int) -> None:
        """The target's side of commit (every loop's): its cache keeps pending and the accepted drafts as
        valid columns, the K+1 columns' trailing holes in every row are cropped (host ints: no sync), and
        pending / pos move to the recovered or bonus token."""
        tgt, live, acc = self.tgt, self.live, res.num_accepted                      # acc [B]
        if K == 0:   # the forward's one column is valid in every row already, and no hole is left to crop
            live.pending, live.pos = res.tokens[:, 0], live.pos + 1
            return
        tgt.set_tail_validity(torch.arange(K + 1, device=acc.device)[None] <= acc[:, None])
        tgt.crop(tgt.columns - (K + 1) + max_acc + 1)
        live.pending = res.tokens.gather(1, acc[:, None]).squeeze(1)                 # recovered / bonus
        live.pos = live.pos + acc + 1

    def retire(self, emitted, accepted, K: int) -> list:
        """Emit each row's tokens; rows that hit EOS or their length leave the batch; compact if holes
        waste much of the caches. Returns the batch indices of the rows still live."""
        rows, live = self.rows, self.live
        keep = rows.emit(emitted)
        if len(keep) < len(emitted):
            rows.live = [rows.live[b] for b in keep]
            if not keep:
                return keep
            idx = torch.tensor(keep, device=live.pending.device)
            for runner in self.runners:
                runner.select_rows(idx)
            live.select(idx, K > 0 and any(accepted[b] == K for b in keep))
            self.select_rows(idx)
        # Valid columns of the longest row >= its committed tokens minus the pending one (and minus d_K
        # for the draft): a host-side bound, so the exact count is read only when compaction may pay.
        longest = max(self.lengths[r] + len(rows.out[r]) for r in rows.live) - 2
        for runner in self.runners:
            runner.maybe_compact(longest)
        return keep

    def select_rows(self, idx) -> None:
        """Further per-row state to keep for the rows idx (the feature loop's owed columns)."""


# ----------------------------------------------------------------------------------------------------
# Speculative decoding with the n-gram lookup draft (engine/ngram.py): no draft model.

class _NgramCall(_Call):
    """One generate call with the n-gram lookup draft. As _Call, except:
      count   each row drafts min(the policy's count, its lookup's proposal): a row without a match
              drafts nothing (its verify is a plain step);
      draft   the proposals, right-padded to the round's widest with each row's pending token (padding
              is never verified), and when sampling their one-hot q (ngram.one_hot_logits), built only
              where the test needs it: the default verify on CPU logits takes the one-hot q as given
              (verify_sampled_cpu with no draft logits; the same bits);
      commit  the target's side only: there is no draft cache.
    Each row's tokens (prompt, then what it emitted) live in a host array the lookups read."""

    def __init__(self, dec, params, ids, mask, lengths, runners, counts, clock, stats):
        super().__init__(dec, params, ids, mask, lengths, runners, counts, clock, stats)
        B, P = ids.shape
        self.hist = np.zeros((B, P + params.max_new_tokens), dtype=np.int64)   # [B, P + max_new]: per original row
        self.filled = []                                                         # tokens held per original row
        self.prompt_len = []
        for b, (row, keep) in enumerate(zip(ids.cpu().numpy(), mask.cpu().numpy().astype(bool))):
            row = row[keep]
            self.hist[b, :row.size] = row
            self.filled.append(row.size)
            self.prompt_len.append(row.size)
        self.proposals = []
        # the one-hot q is left implicit where the test is the default verify's (see test)
        self.implicit_q = dec.verifier is verify and dec.backend == "auto"

    def run(self, on_round) -> None:
        if self.greedy_ids and len(self.rows.live) == 1 and self.tgt.dense:
            self.run_row(on_round)
        else:
            super().run(on_round)

    def run_row(self, on_round) -> None:
        """run() for one greedy row on a greedy head, on host ints (ModelRunner.greedy_row): the same
        rounds and tokens as run's steps at batch 1 (plan; the target's forward over [pending, d_1..d_K];
        greedy_accept; the rejected columns cropped, which keeps the cache without holes; emit). Why: the
        batch path's PyTorch operations between two forwards cost ~0.5 ms a round on SmolLM2, because each
        runs with its code and data evicted by the forward (bench/RESULTS.md, "A round's Python")."""
        rows, counts, stats, clock, tgt = self.rows, self.counts, self.stats, self.clock, self.tgt
        vocab, left = self.dec.vocab_size, self.params.max_new_tokens - 1
        out = rows.out[rows.live[0]]
        pending, pos = int(self.live.pending[0]), int(self.live.pos[0])
        while True:
            K = self.plan(counts.choose([left - len(out)]))[0]
            drafts = self.proposals[0].tolist()
            t0, t1 = clock.start("score"), clock.start("target_forward")
            ids, bad = tgt.greedy_row([pending] + drafts, pos, vocab)
            clock.stop("target_forward", t1, K + 1)
            clock.stop("score", t0)
            stats.target_calls += 1
            t0 = clock.start("verify")
            check_logits_flag(int(bad), {1: ("target", self.dec.target)}, f"decode round {stats.target_calls}")
            (tokens,), (a,) = greedy_accept([ids], [drafts], [K])
            clock.stop("verify", t0)
            stats.observe([K], [a])
            counts.observe([K], [a])
            t0 = clock.start("commit")
            tgt.crop(tgt.columns - K + a)              # the rejected drafts' columns
            pending, pos = tokens[a], pos + a + 1
            clock.stop("commit", t0)
            t0 = clock.start("retire")
            keep = rows.emit([tokens[:a + 1]])
            clock.stop("retire", t0)
            counts.select(keep)
            if not keep:
                return
            if on_round is not None:
                live = self.live
                live.pending, live.pos = torch.tensor([pending]), torch.tensor([pos])
                on_round(RoundInfo(tgt, None, live.pending, live.pos, live.prev, live.prev_needed, list(rows.live),
                                   rows.out))

    def plan(self, n_row: list) -> list:
        t0 = self.clock.start("draft")
        self.proposals = []
        short = getattr(self.counts, "short_cap", None)   # gamma="auto" (LookupRounds): a row not repeating itself
        for b, r in enumerate(self.rows.live):
            out, have = self.rows.out[r], self.filled[r] - self.prompt_len[r]
            if len(out) > have:   # what the last round emitted
                self.hist[r, self.filled[r]:self.prompt_len[r] + len(out)] = out[have:]
                self.filled[r] = self.prompt_len[r] + len(out)
            self.proposals.append(self.dec.ngram.propose(self.hist[r, :self.filled[r]], n_row[b], short))
        self.clock.stop("draft", t0)
        return [len(d) for d in self.proposals]

    def draft(self, K: int):
        live, p = self.live, self.params
        B = live.pending.shape[0]
        drafts = live.pending[:, None].repeat(1, K)                                   # [B, K] padding
        for b, d in enumerate(self.proposals):
            if d.size:
                drafts[b, :d.size] = torch.from_numpy(d)
        q = None if p.greedy or self.implicit_q else ngram.one_hot_logits(drafts, self.dec.vocab_size)  # [B, K, V]
        return drafts, q, 0

    def test(self, p_masked, q, drafts, n_row) -> VerifyResult:
        if q is None and not self.params.greedy:                     # implicit_q: the one-hot q not built
            p, dec = self.params, self.dec
            if sampled_on_cpu(p_masked, p.temperature):
                return verify_sampled_cpu(p_masked, None, drafts, p.temperature, torch.tensor(n_row), self.gen,
                                          dec.lenience, dec.lenience_eps)
            q = ngram.one_hot_logits(drafts, dec.vocab_size).to(p_masked.dtype)
        return super().test(p_masked, q, drafts, n_row)

    def commit(self, drafts, res, K: int, h: int, max_acc: int) -> None:
        self.commit_target(res, K, max_acc)


# ----------------------------------------------------------------------------------------------------
# Speculative decoding with a draft that reads the target's features (engine/features.py, EAGLE-1).

@dataclass
class _Owed:
    """Columns the feature draft has not read yet, right-aligned per row ([B, W]; valid marks the real
    ones): at position pos its input is the target's feature `feats` [B, W, d] and the token `ids`."""
    ids: torch.Tensor
    pos: torch.Tensor
    valid: torch.Tensor
    feats: torch.Tensor

    def select(self, idx) -> "_Owed":
        return _Owed(*(t.index_select(0, idx) for t in (self.ids, self.pos, self.valid, self.feats)))

    def then(self, other: "_Owed") -> "_Owed":
        """These columns followed by `other`'s (a round that drafted nothing fed none of them)."""
        return _Owed(*(torch.cat([a, b], 1) for a, b in zip((self.ids, self.pos, self.valid, self.feats),
                                                             (other.ids, other.pos, other.valid, other.feats))))


def prefill_feature_draft(runner: ModelRunner, ids, mask, feats, project) -> _Owed:
    """Feed the feature draft the prompt: column j reads (f_j, x_{j+1}) at x_j's position, for every
    prompt token but the last two (ids, mask [B, P] left-padded; feats [B, P-1, d] the target's prefill
    features, None when P = 1; project: features.projector). Returns the one column it still owes,
    (f_{P-2}, x_{P-1}): the first round feeds it and drafts from its output. A row whose prompt is one
    token has no feature yet: it reads zeros at position 0 (only its first proposals are the worse)."""
    B, P = ids.shape
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    if P > 2:
        f = feats[:, :P - 2].float()
        runner.forward(ids[:, 1:P - 1], pos[:, :P - 2], mask[:, :P - 2].bool(), logits_to_keep=1,
                       embeds_add=project(f))
    if feats is None:
        width = runner.model.config.specdec_feature_draft["target_hidden"]
        last = torch.zeros((B, 1, width), dtype=torch.float32, device=ids.device)
    else:   # a pad there (a one-token prompt in a longer batch) reads zeros too
        last = feats[:, P - 2:P - 1].float() * mask[:, P - 2:P - 1, None]
    return _Owed(ids[:, P - 1:], (pos[:, P - 1:] - 1).clamp_min(0),
                 torch.ones((B, 1), dtype=torch.bool, device=ids.device), last)


class _FeatureCall(_Call):
    """One generate call with a feature draft. As _Call, except (engine/features.py):
      draft   the first forward feeds the owed columns (the true features of what the last round
              accepted, and of its recovered or bonus token), each later step the draft's own
              final-normed state and its last token;
      score   the target's verify forward also returns its features f_t .. f_{t+K};
      commit  the draft forgets its chain columns (it never keeps its own guesses) and owes the
              accepted prefix's true features, read at the next round's first step.
    The draft's cache thus holds true-feature columns only, one per committed token but the last."""

    FEATURES = True

    def __init__(self, dec, params, ids, mask, lengths, runners, counts, clock, stats, owed: _Owed):
        super().__init__(dec, params, ids, mask, lengths, runners, counts, clock, stats)
        self.project = features.projector(dec.draft)                                 # f -> f W_f^T
        self.owed = owed

    def draft(self, K: int):
        p, V, live = self.params, self.dec.vocab_size, self.live
        B = live.pending.shape[0]
        drafts = torch.empty((B, K), dtype=torch.long, device=live.pending.device)
        if K == 0:   # the owed columns wait for the next round that drafts
            return drafts, (None if p.greedy else drafts.new_zeros((B, 0, V), dtype=torch.float)), 0
        q_logits = None if p.greedy else []
        o = self.owed
        ids, pos, valid, add = o.ids, o.pos, o.valid, self.project(o.feats)
        ones = torch.ones((B, 1), dtype=torch.bool, device=ids.device)
        for k in range(K):
            t0 = self.clock.start("draft_forward")
            logits, g = self.drf.forward(self.draft_ids(ids), pos, valid, logits_to_keep=1, embeds_add=add,
                                         hidden=True, expand=not self.narrow)
            self.clock.stop("draft_forward", t0, ids.shape[1])
            self.stats.draft_calls += 1
            drafts[:, k] = self.propose(logits, q_logits)
            if k + 1 < K:   # step k+2 reads (g_{k+1}, d_{k+1}) at position t + k
                ids, pos, valid, add = drafts[:, k:k + 1], live.pos[:, None] + k, ones, self.project(g[:, -1:])
        self.owed = None
        q = None if q_logits is None else pad_vocab(torch.stack(q_logits, 1), V)      # [B, K, V]
        return drafts, q, 0

    def commit(self, drafts, res, K: int, h: int, max_acc: int) -> None:
        drf, live = self.drf, self.live
        acc = res.num_accepted                                                       # [B]
        if K > 1:
            drf.crop(drf.columns - (K - 1))                   # the chain's columns: the draft's own guesses
        # Owed next: (f_{t+i}, x_{t+i+1}) at position t+i for i = 0..a, right-aligned in max_acc + 1 columns
        # (x_{t+i+1} is res.tokens[:, i]: an accepted draft, then the recovered or bonus token).
        W = max_acc + 1
        src = torch.arange(W, device=acc.device)[None] - (W - 1 - acc[:, None])       # [B, W]
        valid = src >= 0
        src = src.clamp_min(0)
        fresh = _Owed(res.tokens.gather(1, src), live.pos[:, None] + src, valid,
                      self.tfeats.float().gather(1, src[..., None].expand(-1, -1, self.tfeats.shape[-1])))
        self.owed = fresh if self.owed is None else self.owed.then(fresh)
        self.tfeats = None
        self.commit_target(res, K, max_acc)   # after the owed columns read the round's positions
        live.prev = live.pending

    def select_rows(self, idx) -> None:
        self.owed = self.owed.select(idx)
