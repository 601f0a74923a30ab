"""Continuations sampled while training (the student, teacher and skd sources) and by the teacher
cache, on the shared cached-decode helper (specdec.engine.runner.ModelRunner: the in-place KV cache and the
lean forward where the model supports it).

A rollout feeds a batch of left-padded prompts and picks `new_tokens` tokens for every row, every step
(no row leaves early: the caller cuts each row after its first EOS, which is rare inside the corpus'
windows, and a fixed batch needs no per-row bookkeeping). The models that run and the rule that picks a
token from their logits are the caller's:
  student   the draft runs and samples
  teacher   the target runs and samples; its logits are kept
  skd       both run: the draft proposes, the target replaces proposals outside its top-K (skd.py);
            the target's logits are kept
Kept logits are the target's distribution at every continuation position, from the rollout's own
cached forwards: a source that keeps them needs no second target forward over the sequence for its loss.

Sampling draws one uniform per row and searches the cumulative distribution (`sample_rows`) instead of
the decode loop's exponential race (specdec.engine.sampling), which draws B x V exponentials per step: on a
CPU at distillation's batch sizes that rivals the draft's own forward (bench/RESULTS.md, "Figures moved
from the code"), and the race's virtue, no host sync on a GPU, is not needed here (the rollout never
reads a token on the host).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..common.values import is_greedy
from ..engine.runner import ModelRunner


def sample_rows(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One categorical sample per row by inverse CDF: the first id whose cumulative mass exceeds
    u * total, u ~ U[0, 1). probs: [B, V] >= 0 (need not be normalised; zero-mass ids are never chosen).
    Returns [B] int64. The cumulative sum is in float64, so the rounding of 4096 fp32 additions cannot
    shift mass between ids."""
    cdf = probs.double().cumsum(-1)                                                       # [B, V]
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=torch.float64)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)                            # [B, 1]
    return idx.clamp_max_(probs.shape[-1] - 1).squeeze(1)


def pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The token of each row at the deployment temperature: argmax at 0, else a sample of
    softmax(logits / temperature). logits: [B, V] -> [B] int64."""
    if is_greedy(temperature):
        return logits.argmax(-1)
    return sample_rows(torch.softmax(logits.float() / temperature, -1), generator)


@dataclass
class Rollout:
    tokens: torch.Tensor            # [B, C] int64: every step of every row
    kept: torch.Tensor | None       # [B, C, V'] the kept model's logits predicting each token (or None)

    def rows(self, eos_ids=()) -> list:
        """Per-row id lists, each cut after its first EOS (kept)."""
        eos = set(eos_ids)
        out = []
        for row in self.tokens.tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            out.append(row[:cut])
        return out


@torch.no_grad()
def rollout(models: list, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int, vocab_size: int, choose,
            keep: int | None = None) -> Rollout:
    """Pick new_tokens tokens per row. ids, mask: [B, P] left-padded, on the models' device.
    choose(logits) -> [B] int64 gets one [B, V'] logits tensor per model (in `models` order), predicting
    the next token; keep: the index of the model whose logits are returned. Each step costs one
    single-token cached forward of every model."""
    B, C, V = ids.shape[0], int(new_tokens), int(vocab_size)
    runners = [ModelRunner(m, B, ids.shape[1] + C + 1) for m in models]
    for r in runners:
        r.prefill(ids, mask)
    pending = ids[:, -1:]                                                                 # [B, 1]
    pos = mask.sum(1, keepdim=True) - 1                                                   # [B, 1]
    valid = torch.ones((B, 1), dtype=torch.bool, device=ids.device)
    tokens = torch.empty((B, C), dtype=torch.long, device=ids.device)
    kept = None
    for c in range(C):
        logits = [r.forward(pending, pos, valid, logits_to_keep=1)[:, -1, :V] for r in runners]   # [B, V'] each
        if keep is not None:
            if kept is None:
                kept = logits[keep].new_empty((B, C, logits[keep].shape[-1]))
            kept[:, c] = logits[keep]
        tok = choose(logits)                                                              # [B]
        tokens[:, c] = tok
        pending, pos = tok[:, None], pos + 1
    return Rollout(tokens, kept)
