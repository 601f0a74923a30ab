"""Timing on the decoders' own path: the decode loop's clock (its named sections, summed into DecodeStats)
and one model's step at a fixed context (StepTimer: what step costs are made of)."""
from __future__ import annotations

import time

import torch

from ..costmodel.measure import interleaved_medians as job_medians, sync
from .devices import input_device
from .runner import ModelRunner
from .stats import DecodeStats

# The loop's sections kept in DecodeStats; other sections (commit, retire, the forwards) only reach
# an on_section hook, and cost nothing without one.
STAT_FIELDS = {"draft": "draft_s", "score": "target_s", "verify": "verify_s"}


class DecodeClock:
    """Wall time of the decode loop's named sections: `t0 = clock.start(name)` ... `clock.stop(name, t0)`.
    STAT_FIELDS sections are summed into DecodeStats (`finish`); on CUDA through events read once at the
    end, so timing adds no sync. on_section(name, seconds, tokens), when given, hears every section as
    it ends (host time: on CUDA the launch time, no sync is added); tokens: what a forward fed per row."""

    def __init__(self, device, on_section=None):
        self.cuda = torch.device(device).type == "cuda"
        self.on_section = on_section
        self.totals: dict = {}
        self.events: list = []

    def start(self, name: str):
        kept = name in STAT_FIELDS
        if not kept and self.on_section is None:
            return None
        event = None
        if kept and self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        return event, time.perf_counter()

    def stop(self, name: str, t0, tokens: int | None = None) -> None:
        if t0 is None:
            return
        event, host = t0
        seconds = time.perf_counter() - host
        if self.on_section is not None:
            self.on_section(name, seconds, tokens)
        field = STAT_FIELDS.get(name)
        if field is None:
            return
        if event is None:
            self.totals[field] = self.totals.get(field, 0.0) + seconds
        else:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.events.append((field, event, end))

    def finish(self, stats: DecodeStats, t_all: float) -> None:
        """Write the sections' totals into stats, and total_s since t_all (perf_counter)."""
        if self.events:
            torch.cuda.synchronize()
            for field, a, b in self.events:
                self.totals[field] = self.totals.get(field, 0.0) + a.elapsed_time(b) / 1000.0
            self.events = []
        for field, secs in self.totals.items():
            setattr(stats, field, secs)
        stats.total_s = time.perf_counter() - t_all


class StepTimer:
    """One model prefilled with a prompt; `step(S)` times one forward over S new tokens, then forgets
    them (the cache is cropped back, so every step sees the same context length). greedy_vocab: time the
    forward a greedy decode runs, ModelRunner.forward_greedy over logits[:greedy_vocab] (on a greedy head
    the argmax ids without the float logits: lean_numpy.QuantLeanForward.greedy; asking builds that head)."""

    def __init__(self, model, prompt_ids, batch_size: int, max_tokens: int, impl: str = "auto",
                 cuda_graphs: bool = False, greedy_vocab: int | None = None):
        dev = input_device(model)
        ids = prompt_ids.to(dev).repeat(batch_size, 1)                            # [B, P]
        self.runner = ModelRunner(model, batch_size, ids.shape[1] + max_tokens + 8, impl=impl,
                                  cuda_graphs=cuda_graphs)
        self.runner.prefill(ids, torch.ones_like(ids))
        self.pos0 = ids.shape[1] - 1
        self.ids = ids
        self.device = dev
        self.greedy_vocab = greedy_vocab

    def step(self, S: int) -> float:
        B = self.ids.shape[0]
        ids = self.ids[:, -1:].repeat(1, S)
        pos = self.pos0 + torch.arange(S, device=self.device).repeat(B, 1)
        valid = torch.ones((B, S), dtype=torch.bool, device=self.device)
        runner, length = self.runner, self.runner.columns
        with torch.no_grad():
            sync(self.device)
            t0 = time.perf_counter()
            if self.greedy_vocab is None:
                runner.peek(ids, pos, valid)
            else:
                runner.forward_greedy(ids, pos, valid, self.greedy_vocab)
                runner.crop(length)
            sync(self.device)
        return time.perf_counter() - t0


def interleaved_medians(timers: dict, tokens, iters: int, warmup: int = 2) -> dict:
    """{(name, S): median seconds} of `timers` (name -> StepTimer) stepped in turn, S in `tokens` each, `iters`
    rounds, the first `warmup` of them dropped: costmodel.measure.interleaved_medians over those steps (every
    model sees the same machine load, in alternating order, and none keeps its weights in the last-level
    cache between its own steps; the A/B scripts in bench/)."""
    jobs = {(n, S): (lambda t, S: lambda: t.step(S))(t, S) for n, t in timers.items() for S in tokens}
    return job_medians(jobs, iters - warmup, warmup)
