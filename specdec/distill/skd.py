"""SKD (Xu et al. 2024, arXiv 2410.11325): the draft proposes each token; a proposal outside the target's
top-K is replaced by a sample of the target. Early in training this behaves like supervised KD (many
replacements), later like on-policy sampling (few)."""
from __future__ import annotations

import torch

from ..decoding import cache_kwarg
from ..sampling import mask_logits, sample_tokens


def skd_replace(proposed: torch.Tensor, target_logits: torch.Tensor, k: int, temperature: float,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SKD's rule: keep the draft's proposal if it is among the target's top-k tokens, else replace it by
    a sample of the target (at the deployment temperature; argmax at 0).

    proposed: [B] int64; target_logits: [B, V]. Returns (tokens [B], replaced [B] bool).
    """
    k = min(int(k), target_logits.shape[-1])
    topk = torch.topk(target_logits, k, dim=-1).indices                                 # [B, k]
    inside = (topk == proposed[:, None]).any(-1)                                         # [B]
    own = sample_tokens(mask_logits(target_logits, temperature), temperature, generator)  # [B]
    return torch.where(inside, proposed, own), ~inside


@torch.no_grad()
def skd_generate(target, draft, ids, mask, new_tokens: int, temperature: float, k: int, vocab_size: int,
                 generator=None, eos_ids=()) -> list:
    """Continuations under SKD. ids, mask: [B, P] left-padded. Returns per-row id lists (cut after EOS).

    Both models keep a KV cache; each step costs one single-token forward of each model.
    """
    from transformers import DynamicCache

    B = ids.shape[0]
    caches = [DynamicCache(), DynamicCache()]
    models = [target, draft]
    kws = [cache_kwarg(m) for m in models]
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    att = mask.clone()
    logits = [m(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True, logits_to_keep=1,
                **{kw: c}).logits[:, -1, :vocab_size] for m, kw, c in zip(models, kws, caches)]
    nxt_pos = pos[:, -1:] + 1
    out = torch.empty((B, 0), dtype=torch.long, device=ids.device)
    for _ in range(int(new_tokens)):
        t_logits, d_logits = logits
        proposed = sample_tokens(mask_logits(d_logits, temperature), temperature, generator)   # [B]
        tok, _ = skd_replace(proposed, t_logits, k, temperature, generator)
        out = torch.cat([out, tok[:, None]], 1)
        att = torch.cat([att, torch.ones_like(tok[:, None])], 1)
        logits = [m(input_ids=tok[:, None], attention_mask=att, position_ids=nxt_pos, use_cache=True,
                    **{kw: c}).logits[:, -1, :vocab_size] for m, kw, c in zip(models, kws, caches)]
        nxt_pos = nxt_pos + 1
    return [cut_at_eos(row, eos_ids) for row in out.tolist()]


def cut_at_eos(row: list, eos_ids) -> list:
    for i, t in enumerate(row):
        if t in eos_ids:
            return row[:i + 1]
    return row
