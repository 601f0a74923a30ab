"""SKD (Xu et al. 2024, arXiv 2410.11325): the draft proposes each token; a proposal outside the target's
top-K is replaced by a sample of the target. Early in training this behaves like supervised KD (many
replacements), later like on-policy sampling (few)."""
from __future__ import annotations

import torch

from .rollout import Rollout, pick, rollout


def skd_replace(proposed: torch.Tensor, target_logits: torch.Tensor, k: int, temperature: float,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SKD's rule: keep the draft's proposal if it is among the target's top-k tokens, else replace it by
    a sample of the target (at the deployment temperature; argmax at 0).

    proposed: [B] int64; target_logits: [B, V]. Returns (tokens [B], replaced [B] bool).
    """
    k = min(int(k), target_logits.shape[-1])
    topk = torch.topk(target_logits, k, dim=-1).indices                                 # [B, k]
    inside = (topk == proposed[:, None]).any(-1)                                         # [B]
    own = pick(target_logits, temperature, generator)                                    # [B]
    return torch.where(inside, proposed, own), ~inside


def skd_generate(target, draft, ids, mask, new_tokens: int, temperature: float, k: int, vocab_size: int,
                 generator=None) -> Rollout:
    """Continuations under SKD. ids, mask: [B, P] left-padded. Both models decode on their own
    ModelRunner (one single-token forward of each per step); the target's logits at every continuation
    position are kept (Rollout.kept: the teacher side of the loss, without a second target forward)."""
    def choose(logits):
        d_logits, t_logits = logits
        return skd_replace(pick(d_logits, temperature, generator), t_logits, k, temperature, generator)[0]

    return rollout([draft, target], ids, mask, new_tokens, vocab_size, choose, keep=1)
