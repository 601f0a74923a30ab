"""Timing on the decoders' own path: one model's step at a fixed context (what step costs are made of)."""
from __future__ import annotations

import time

import torch

from ..costmodel.measure import sync
from .devices import input_device
from .runner import ModelRunner


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
