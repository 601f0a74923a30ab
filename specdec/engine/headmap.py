"""A draft whose output head covers only some token ids: its other logits are -inf.

Why: a small draft's step is dominated by its output head when the vocabulary is large (SmolLM2's
49152 x 576 head is 28M parameters, more than several of the target's layers). A target emits few of
its ids in practice, so a draft whose head keeps only those rows costs a fraction of the step, and the
rejection test stays lossless: an id the draft never proposes has q = 0, so min(1, p / q) is never
evaluated there and the residual max(0, p - q) keeps the target's whole mass on it (greedy: such an id
is simply never proposed, and the target's own token is emitted at the first mismatch).

Representation: the draft is an ordinary Hugging Face model whose config carries the sorted covered
ids under CONFIG_KEY (saved and loaded with the config, so no loader needs to know about it) and whose
head has the full width, its rows outside the ids unused. The lean forwards compute only the covered
rows (lean.LeanForward slices them once); `HeadMap.expand` turns any forward's logits, K covered ones or
the full width, into full-width logits with -inf outside the ids, once per step in ModelRunner.
"""
from __future__ import annotations

import torch

CONFIG_KEY = "specdec_head_ids"


def head_ids(model) -> list | None:
    """The sorted ids a model's head covers (None: all of them)."""
    ids = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    return None if ids is None else list(ids)


def check_ids(ids, vocab: int) -> torch.Tensor:
    """ids as a LongTensor, after checking they are sorted, unique and inside [0, vocab)."""
    t = torch.as_tensor(list(ids), dtype=torch.long)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"{CONFIG_KEY} must be a non-empty list of token ids")
    if bool((t[1:] <= t[:-1]).any()) or int(t[0]) < 0 or int(t[-1]) >= vocab:
        raise ValueError(f"{CONFIG_KEY} must be sorted unique ids in [0, {vocab}); rebuild the draft")
    return t


class HeadMap:
    """Maps a head-restricted model's logits to the full vocabulary (-inf outside the covered ids)."""

    def __init__(self, ids, vocab: int, device="cpu"):
        self.vocab = int(vocab)
        self.ids = check_ids(ids, self.vocab).to(device)                     # [K]
        self.outside = torch.ones(self.vocab, dtype=torch.bool, device=device)
        self.outside[self.ids] = False                                       # [V]

    @classmethod
    def of(cls, model, vocab: int, device="cpu") -> "HeadMap | None":
        ids = head_ids(model)
        return None if ids is None else cls(ids, vocab, device)

    def expand(self, logits: torch.Tensor) -> torch.Tensor:
        """[..., K] (the covered ids, in order) or [..., V] -> [..., V] with -inf outside the ids."""
        width = logits.shape[-1]
        if width == self.vocab:
            return logits.masked_fill(self.outside, float("-inf"))
        if width != self.ids.numel():
            raise ValueError(f"logits of width {width}: expected the head's {self.ids.numel()} covered ids "
                             f"or the full {self.vocab}")
        out = logits.new_full((*logits.shape[:-1], self.vocab), float("-inf"))
        out[..., self.ids] = logits
        return out
