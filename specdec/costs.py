"""Step costs of a model pair, the inputs of the speedup model tau / (gamma c + v):
  c = one draft step / one target step,  v(gamma) = one target forward over gamma+1 tokens / one step,
each the median over repeats of a cached forward after a prompt-length prefill, on the same path the
decoders run (ModelRunner: the lean or transformers forward, the in-place cache, CUDA graphs).
The steps are interleaved round-robin (one of each per round) so that a load change on a shared
machine hits numerator and denominator alike.
"""
from __future__ import annotations

import statistics
import time

import torch

from .runner import ModelRunner
from .util import input_device


def sync(device) -> None:
    """Wait for queued kernels before reading the clock; every GPU when a model is sharded."""
    if torch.device(device).type == "cuda":
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


class StepTimer:
    """One model prefilled with a prompt; `step(S)` times one forward over S new tokens, then forgets
    them (the cache is cropped back, so every step sees the same context length)."""

    def __init__(self, model, prompt_ids, batch_size: int, max_tokens: int, impl: str = "auto",
                 cuda_graphs: bool = False):
        dev = input_device(model)
        ids = prompt_ids.to(dev).repeat(batch_size, 1)                            # [B, P]
        self.runner = ModelRunner(model, batch_size, ids.shape[1] + max_tokens + 8, impl=impl,
                                  cuda_graphs=cuda_graphs)
        self.runner.prefill(ids, torch.ones_like(ids))
        self.pos0 = ids.shape[1] - 1
        self.ids = ids
        self.device = dev

    def step(self, S: int) -> float:
        B = self.ids.shape[0]
        ids = self.ids[:, -1:].repeat(1, S)
        pos = self.pos0 + torch.arange(S, device=self.device).repeat(B, 1)
        valid = torch.ones((B, S), dtype=torch.bool, device=self.device)
        with torch.no_grad():
            sync(self.device)
            t0 = time.perf_counter()
            self.runner.peek(ids, pos, valid)
            sync(self.device)
        return time.perf_counter() - t0


def interleaved_medians(jobs: dict, iters: int, warmup: int = 2) -> dict:
    """jobs: name -> zero-argument callable returning seconds. Runs warmup + iters rounds, each
    calling every job once (in alternating order); returns name -> median seconds."""
    times = {name: [] for name in jobs}
    names = list(jobs)
    for i in range(warmup + iters):
        for name in (names if i % 2 == 0 else names[::-1]):
            dt = jobs[name]()
            if i >= warmup:
                times[name].append(dt)
    return {name: statistics.median(v) for name, v in times.items()}


def measure_costs(target, draft, prompt_ids, gammas, batch_size: int, iters: int = 15, impl: str = "auto",
                  cuda_graphs: bool = False) -> dict:
    """Median seconds of the target step (S=1), the draft step (S=1) and the target verify
    (S=gamma+1 for each gamma) after a prompt-length prefill; with c and v(gamma)."""
    gammas = [int(g) for g in gammas]
    top = max(gammas) + 1
    t = StepTimer(target, prompt_ids, batch_size, top, impl, cuda_graphs)
    d = StepTimer(draft, prompt_ids, batch_size, 2, impl, cuda_graphs)
    jobs = {"t1": lambda: t.step(1), "d1": lambda: d.step(1)}
    for g in gammas:
        jobs[g] = (lambda S: (lambda: t.step(S)))(g + 1)
    med = interleaved_medians(jobs, iters)
    t1, d1 = med["t1"], med["d1"]
    return {"batch_size": batch_size, "target_step_s": t1, "draft_step_s": d1,
            "target_verify_s": {g: med[g] for g in gammas}, "c": d1 / t1,
            "v": {g: med[g] / t1 for g in gammas}}
