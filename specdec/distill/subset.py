"""Training a draft whose head covers only some ids (engine/headmap.py): the loss in the head's frame.

The draft's distribution q lives on its K covered ids (q = 0 elsewhere). The best such q for acceptance
is the target's p restricted to those ids and renormalised (sum_x min(p, q) <= p(covered ids), with
equality there), so the divergences here compare q with that restricted p, all in the K-id frame:
  * live teacher logits [N, V]: their K covered columns (log_softmax renormalises them);
  * a top-K teacher (cache, samples): the top entries outside the head are dropped (they go to a
    dummy bucket, column K, where both sides have no mass) and the rest, with the tail bucket, is
    renormalised. The tail is taken as inside the head: a small bias, the tail's share outside it;
  * hard labels (one-hot on the emitted token): a token outside the head has no restricted
    distribution and drops out of the loss (it is never proposable anyway).
The student's K logits come from the draft's hidden states and a K-row copy of its head (`rows`, the
parameter that trains): a full-width head would cost 49152 x d per token in forward and backward.
After every optimizer step `sync` writes the rows back into the model's full-width head, which
sampling, evaluation and export read. One process only (the hidden states bypass a DDP wrapper).
"""
from __future__ import annotations

import torch

from ..engine.headmap import check_ids, head_ids
from .data import Batch, TeacherTopK
from .losses import divergence, divergence_topk


def has_subset_head(model) -> bool:
    return head_ids(model) is not None


def one_hot_teacher(batch: Batch) -> TeacherTopK:
    """The hard-label teacher: all mass on each continuation token actually emitted (FKL to it is the
    cross-entropy of supervised training)."""
    labels = batch.input_ids[:, -batch.new_tokens:][batch.cont_mask]                 # [N]
    n = labels.shape[0]
    return TeacherTopK(labels[:, None], torch.zeros((n, 1)), torch.full((n,), float("-inf")))


class HeadFrame:
    def __init__(self, draft):
        W = draft.get_output_embeddings().weight
        self.ids = check_ids(head_ids(draft), W.shape[0]).to(W.device)               # [K]
        K = self.ids.numel()
        self.inverse = torch.full((W.shape[0],), K, dtype=torch.long, device=W.device)   # [V]: K = not covered
        self.inverse[self.ids] = torch.arange(K, device=W.device)
        self.rows = torch.nn.Parameter(W.detach()[self.ids].clone())                  # [K, d]
        W.requires_grad_(False)

    @torch.no_grad()
    def sync(self, draft) -> None:
        draft.get_output_embeddings().weight.index_copy_(0, self.ids, self.rows.detach())

    def student_logits(self, draft, batch: Batch) -> torch.Tensor:
        """[N, K] logits of the real continuation tokens on the covered ids."""
        C = batch.new_tokens
        h = draft.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids(), use_cache=False).last_hidden_state
        return h[:, -(C + 1):-1][batch.cont_mask] @ self.rows.T

    def restrict(self, t: TeacherTopK) -> tuple[TeacherTopK, torch.Tensor]:
        """A top-K teacher in the head's frame (indices into K + 1 columns, renormalised), and which
        tokens keep a distribution there ([N] bool)."""
        idx = self.inverse[t.idx]                                                     # [N, k]
        logp = t.logp.float().masked_fill(idx == self.ids.numel(), float("-inf"))
        tail = t.tail.float()
        z = torch.logsumexp(torch.cat([logp, tail[:, None]], -1), -1)                 # [N]
        keep = torch.isfinite(z)
        z = torch.where(keep, z, 0.0)
        # a dropped token gets a harmless stand-in (all mass in the tail): finite values, no NaN gradients
        return TeacherTopK(idx, logp - z[:, None], torch.where(keep, tail - z, 0.0)), keep

    def loss(self, s: torch.Tensor, teacher: TeacherTopK | None, t_logits: torch.Tensor | None, cfg,
             normalizer) -> torch.Tensor:
        """sum over tokens of D(restricted p || q) / normalizer. s: [N, K] student logits; the teacher is
        a top-K one (`teacher`) or full logits [N, V] (`t_logits`)."""
        if teacher is None:
            return divergence(t_logits[:, self.ids], s, cfg.divergence, cfg.beta, cfg.temperature,
                              normalizer=normalizer, chunk_size=cfg.chunk_size)
        t, keep = self.restrict(teacher)
        padded = torch.cat([s, s.new_full((s.shape[0], 1), float("-inf"))], -1)        # [N, K + 1]
        values = divergence_topk(t.idx, t.logp, t.tail, padded, cfg.divergence, cfg.beta, cfg.temperature,
                                 reduction="none", chunk_size=cfg.chunk_size)         # [N]
        total = values[keep].sum()
        return total / (normalizer if isinstance(normalizer, torch.Tensor) else float(normalizer))
