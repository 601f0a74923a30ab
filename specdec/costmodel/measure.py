"""What decoding costs, measured two ways on the decoder's own path (the cost model never imports the engine:
each measurement drives a decoder it is handed).

Step costs, the inputs of the speedup model tau / (gamma c + v) (`measure_step_costs`):
  c = one draft step / one target step,  v(gamma) = one target forward over gamma+1 tokens / one step,
each the median over repeats of a cached forward after a prompt-length prefill (the decoder's
`step_timers`: its forward, its in-place cache, its CUDA graphs). The steps are interleaved round-robin
(one of each per round) so that a load change on a shared machine hits numerator and denominator alike.

Round costs, what gamma="auto" chooses by (`measure_round_costs`): seconds per whole decode round that
drafts k tokens, timed between the decoder's own rounds (draft, verify, sampling, commit and
bookkeeping included, which isolated forwards leave out; bench/RESULTS.md, "Fast decode path", has the
split), greedy and sampled apart (sampling costs more per draft).

The decoder handed over needs: `generate(ids, mask, max_new_tokens=, temperature=, seed=, on_round=,
policy=)`, `device`, `max_gamma`, `max_positions` (the smaller context of its two models, or None) and
`step_timers(prompt_ids, batch_size, max_tokens, greedy=)` -> (target, draft) objects whose `step(S)` returns
the seconds of one forward over S new tokens (greedy: the target's forward as a greedy decode runs it).
"""
from __future__ import annotations

import statistics
import time

import torch

ROUND_TOKENS = 64   # new tokens per decode when round costs are measured (~3 cycles through k = 1..8)
DRAFT_BURST = 4     # draft steps timed back to back (a round of gamma 4)


def sync(device) -> None:
    """Wait for queued kernels before reading the clock; every GPU when a model is sharded."""
    if torch.device(device).type == "cuda":
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


def interleaved_times(jobs: dict, iters: int, warmup: int = 2) -> dict:
    """jobs: name -> zero-argument callable returning seconds. Runs warmup + iters rounds, each
    calling every job once (in alternating order, so drift on a shared machine hits every job alike);
    returns name -> the iters timed seconds."""
    times = {name: [] for name in jobs}
    names = list(jobs)
    for i in range(warmup + iters):
        for name in (names if i % 2 == 0 else names[::-1]):
            dt = jobs[name]()
            if i >= warmup:
                times[name].append(dt)
    return times


def interleaved_medians(jobs: dict, iters: int, warmup: int = 2) -> dict:
    """interleaved_times, reduced to name -> median seconds."""
    return {name: statistics.median(v) for name, v in interleaved_times(jobs, iters, warmup).items()}


def lower_quartile(xs: list) -> float:
    """Load from other jobs only ever adds time: the lower quartile is the steadier estimate."""
    return statistics.quantiles(xs, n=4, method="inclusive")[0] if len(xs) > 1 else xs[0]


def measure_step_costs(decoder, prompt_ids, gammas, batch_size: int, iters: int = 15, greedy: bool = False) -> dict:
    """Median seconds of the target step (S=1), the draft step (S=1) and the target verify
    (S=gamma+1 for each gamma) after a prompt-length prefill (prompt_ids [1, P]); with c and v(gamma).
    greedy: the target's forwards as a greedy decode runs them (decoder.step_timers: on a greedy head, no
    float logits; v(4) 2.01 against 2.21 on SmolLM2's gguf path, bench/RESULTS.md, "One row on host ints"),
    else as sampling runs them; recorded as the entry's "greedy"."""
    gammas = [int(g) for g in gammas]
    t, d = decoder.step_timers(prompt_ids, batch_size, max(gammas) + 1, greedy=greedy)
    # A round's draft steps run back to back after a verify that streamed the target's weights: the
    # first finds the draft's weights out of the cache, the next find them in it. The draft step is the
    # mean over such a burst (DRAFT_BURST steps), not one step between target forwards (always cold).
    jobs = {"t1": lambda: t.step(1), "d1": lambda: sum(d.step(1) for _ in range(DRAFT_BURST)) / DRAFT_BURST}
    for g in gammas:
        jobs[g] = (lambda S: (lambda: t.step(S)))(g + 1)
    med = interleaved_medians(jobs, iters)
    t1, d1 = med["t1"], med["d1"]
    return {"batch_size": batch_size, "greedy": bool(greedy), "target_step_s": t1, "draft_step_s": d1,
            "target_verify_s": {g: med[g] for g in gammas}, "c": d1 / t1,
            "v": {g: med[g] / t1 for g in gammas}}


class CycleGammas:
    """The draft-count policy of a timing decode: round i drafts gammas[(i + offset) % len(gammas)] (every
    count in turn, so a load change on a shared machine hits each count alike). One object per decode:
    `log` holds each round's (count, cut short by what max_new_tokens left)."""

    def __init__(self, gammas, offset: int = 0):
        self.gammas, self.offset, self.log = [int(g) for g in gammas], offset, []
        self.max_gamma = max(self.gammas)

    def start(self, decoder, input_ids, attention_mask, sampling: bool) -> "CycleGammas":
        return self

    def choose(self, caps: list) -> list:
        k = self.gammas[(len(self.log) + self.offset) % len(self.gammas)]
        self.log.append((k, min(caps) < k))
        return [min(k, cap) for cap in caps]

    def observe(self, drafted: list, accepted: list) -> None:
        pass

    def select(self, keep: list) -> None:
        pass


def measure_round_costs(decoder, input_ids, attention_mask=None, sampling: bool = False, gammas=None,
                        repeats: int = 3, new_tokens: int | None = None) -> dict:
    """k -> seconds of one round drafting k tokens (k in gammas, default 1..decoder.max_gamma) on the
    decoder's models and settings, greedy or sampled at temperature 1: `repeats` decodes of new_tokens
    (default ROUND_TOKENS, less where the context ends first) whose rounds cycle through the counts
    (each decode starting one count further), each round timed between the on_round calls around it;
    per k the lower quartile of its rounds. Rounds that max_new_tokens cut short are left out."""
    gammas = list(gammas or range(1, decoder.max_gamma + 1))
    if min(gammas) < 1:
        raise ValueError(f"gammas must be >= 1, got {gammas}")
    if new_tokens is None:   # ROUND_TOKENS, or what the models' context leaves after the prompts
        limit = decoder.max_positions or (1 << 30)
        new_tokens = max(1, min(ROUND_TOKENS, limit - input_ids.shape[-1]))
    kw = dict(max_new_tokens=new_tokens, temperature=1.0 if sampling else 0.0)
    samples = {k: [] for k in gammas}
    decoder.generate(input_ids, attention_mask, seed=0, policy=CycleGammas(gammas), **kw)   # warm-up
    for r in range(repeats):
        cycle, stamps = CycleGammas(gammas, offset=r), []

        def stamp(_info):
            sync(decoder.device)
            stamps.append(time.perf_counter())

        decoder.generate(input_ids, attention_mask, seed=r, on_round=stamp, policy=cycle, **kw)
        for i in range(1, len(stamps)):   # round i ran between the calls after rounds i-1 and i
            k, cut = cycle.log[i]
            if not cut:
                samples[k].append(stamps[i] - stamps[i - 1])
    return {k: lower_quartile(v) for k, v in samples.items() if v}
