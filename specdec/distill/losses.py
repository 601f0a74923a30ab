"""Token-level divergences between the target (teacher, p) and the draft (student, q), DistillSpec style.

Notation as in the speculative-decoding papers: p = target distribution, q = draft distribution, both
softmax(logits / T) at the deployment temperature T (the loss temperature IS the sampling temperature;
TRL PR #5731 shipped them different). T = 0 (greedy deployment) uses T = 1 for the loss.

    FKL          = KL(p || q)  = sum_x p(x) (log p(x) - log q(x))
    RKL          = KL(q || p)  = sum_x q(x) (log q(x) - log p(x))
    JSD(beta)    = beta KL(p || m) + (1 - beta) KL(q || m),   m = beta p + (1 - beta) q
                   (the mixture is taken in probability space; the log of m is a logaddexp, never a
                   mixture of log-probabilities: TRL #2202 / #3043)
    TVD          = 1/2 sum_x |p(x) - q(x)| = 1 - sum_x min(p(x), q(x)) = 1 - acceptance

Reduction. The loss of a batch is sum over the generated tokens of D, divided by `normalizer`, the
GLOBAL count of generated tokens across gradient accumulation and processes (passed in by the trainer,
which all_reduces it). Normalising each micro-batch by its own count (TRL #4105 / #4719) weights tokens
of short micro-batches more.

Memory. Only the masked tokens' logits are passed in ([N, V], not [B, T, V]); the fp32 log-softmax of
both models is built per chunk of `chunk_size` tokens, under activation checkpointing when gradients are
needed, so the fp32 copies of at most one chunk exist at a time (forward and backward).

Offline teacher (top-K + tail): the target's distribution is kept as its K largest log-probs plus one
tail bucket with the rest of the mass; the student's distribution is collapsed onto the same K + 1
buckets (its probabilities on the K ids, and 1 - their sum). The divergence of the two (K+1)-bucket
distributions is a valid divergence (a lower bound of the full one, by the data-processing inequality)
and equals the full loss when K = V. Dropping the tail bucket is not a divergence: both truncated
vectors sum to less than one.
"""
from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from ..common.values import is_greedy

KINDS = ("fkl", "rkl", "jsd", "tvd")


def _check(kind: str, beta: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"divergence must be one of {KINDS}, got {kind!r}")
    if kind == "jsd" and not (0.0 < beta < 1.0):
        raise ValueError(f"jsd needs beta in (0, 1) (beta 0 and 1 make JSD vanish: use fkl / rkl), got {beta}")


def loss_temperature(temperature: float) -> float:
    """The temperature the loss uses for a deployment temperature (greedy deploys at 0; the loss at 1)."""
    return 1.0 if is_greedy(temperature) else float(temperature)


def _plogq(p: torch.Tensor, logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """p * (log p - log q) with 0 * (anything) = 0 (empty buckets, e.g. the tail when K = V).

    The masked-out branch is fed finite values so no NaN appears in either direction (a NaN in the
    unselected branch of a where still poisons the gradient: d(p * d)/dp = d). Scalar fills: no [N, V]
    tensor of zeros is allocated."""
    pos = p > 0
    return p * torch.where(pos, logp - torch.where(pos, logq, 0.0), 0.0)


def divergence_from_logprobs(t_logp: torch.Tensor, s_logp: torch.Tensor, kind: str, beta: float = 0.5) -> torch.Tensor:
    """Per-token divergence between two distributions given as log-probabilities (fp32).

    t_logp, s_logp: [N, V] (or [N, K+1] buckets), each row a normalised log-distribution (-inf allowed
    for empty buckets). Returns [N]. Only the probabilities a divergence reads are exponentiated.
    """
    _check(kind, beta)
    if kind == "fkl":
        return _plogq(t_logp.exp(), t_logp, s_logp).sum(-1)
    q = s_logp.exp()                                                          # [N, V]
    if kind == "rkl":
        return _plogq(q, s_logp, t_logp).sum(-1)
    p = t_logp.exp()                                                          # [N, V]
    if kind == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    # jsd: log m = log(beta p + (1 - beta) q), computed as a logaddexp of the two weighted log-probs.
    log_m = torch.logaddexp(t_logp + math.log(beta), s_logp + math.log1p(-beta))   # [N, V]
    return beta * _plogq(p, t_logp, log_m).sum(-1) + (1.0 - beta) * _plogq(q, s_logp, log_m).sum(-1)


def _full_chunk(t_logits, s_logits, kind, beta, temperature):
    # t_logits, s_logits: [n, V] any float dtype -> [n] fp32. The fp32 copies live only inside this call.
    t_logp = torch.log_softmax(t_logits.float() / temperature, dim=-1)
    s_logp = torch.log_softmax(s_logits.float() / temperature, dim=-1)
    return divergence_from_logprobs(t_logp, s_logp, kind, beta)


def _topk_chunk(topk_idx, topk_logp, tail_logp, s_logits, kind, beta, temperature):
    # topk_idx [n, K] int64; topk_logp [n, K]; tail_logp [n]; s_logits [n, V] -> [n] fp32
    s_all = torch.log_softmax(s_logits.float() / temperature, dim=-1)               # [n, V]
    s_top = s_all.gather(-1, topk_idx)                                               # [n, K]
    # log of the student's mass outside the K ids: logsumexp with the K ids masked out (exact; no
    # 1 - sum cancellation, and -inf when K = V).
    s_tail = s_all.scatter(-1, topk_idx, float("-inf")).logsumexp(-1)                # [n]
    t_b = torch.cat([topk_logp.float(), tail_logp.float()[:, None]], -1)            # [n, K+1]
    s_b = torch.cat([s_top, s_tail[:, None]], -1)                                    # [n, K+1]
    return divergence_from_logprobs(t_b, s_b, kind, beta)


def _chunked(fn, tensors, n, chunk_size, kind, beta, temperature):
    out = []
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    for a in range(0, n, chunk_size):
        part = [t[a:a + chunk_size] for t in tensors]
        if grad:  # recompute the chunk's fp32 softmaxes in backward instead of keeping them all
            out.append(checkpoint(fn, *part, kind, beta, temperature, use_reentrant=False))
        else:
            out.append(fn(*part, kind, beta, temperature))
    return torch.cat(out) if out else tensors[-1].new_zeros(0, dtype=torch.float32)


def _reduce(values: torch.Tensor, reduction: str, normalizer) -> torch.Tensor:
    if reduction == "none":
        return values
    if reduction != "sum":
        raise ValueError(f"reduction must be 'sum' or 'none', got {reduction!r}")
    total = values.sum()
    if normalizer is None:
        return total
    return total / (normalizer if isinstance(normalizer, torch.Tensor) else float(normalizer))


def _select(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[B, T, ...] with mask [B, T] -> [N, ...] (masked positions); [N, ...] without a mask is kept."""
    if mask is None:
        return x.reshape(-1, *x.shape[2:]) if x.dim() >= 3 else x
    return x[mask.bool()]


def divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, kind: str, beta: float = 0.5,
               temperature: float = 1.0, mask: torch.Tensor | None = None, normalizer=None,
               reduction: str = "sum", chunk_size: int = 1024) -> torch.Tensor:
    """DistillSpec divergence D(p || q) between target and draft logits, summed over the generated tokens.

    teacher_logits, student_logits: [B, T, V] with mask [B, T] (1 = a generated token's prediction), or
    already-selected [N, V] with mask None. temperature: the deployment temperature (0 -> 1, see
    `loss_temperature`). normalizer: the global generated-token count (scalar or 0-d tensor); None =
    plain sum. reduction "none" returns the per-token values [N] (unnormalised).
    """
    _check(kind, beta)
    T = loss_temperature(temperature)
    t, s = _select(teacher_logits, mask), _select(student_logits, mask)           # [N, V]
    if t.shape != s.shape:
        raise ValueError(f"teacher logits {tuple(t.shape)} and student logits {tuple(s.shape)} differ; "
                         "slice both to the shared vocabulary first")
    values = _chunked(_full_chunk, [t, s], t.shape[0], chunk_size, kind, beta, T)  # [N]
    return _reduce(values, reduction, normalizer)


def divergence_topk(topk_idx: torch.Tensor, topk_logp: torch.Tensor, tail_logp: torch.Tensor,
                    student_logits: torch.Tensor, kind: str, beta: float = 0.5, temperature: float = 1.0,
                    normalizer=None, reduction: str = "sum", chunk_size: int = 1024) -> torch.Tensor:
    """The divergence against an offline teacher kept as top-K log-probs plus a tail bucket.

    topk_idx: [N, K] int64 token ids; topk_logp: [N, K] the teacher's log p on them (at the deployment
    temperature); tail_logp: [N] log(1 - sum_k p_k) (-inf when K = V); student_logits: [N, V] raw.
    The student is collapsed onto the same K + 1 buckets. Returns the sum / normalizer (or [N]).
    """
    _check(kind, beta)
    T = loss_temperature(temperature)
    if topk_idx.shape != topk_logp.shape or topk_idx.shape[0] != student_logits.shape[0] \
            or tail_logp.shape != topk_idx.shape[:1]:
        raise ValueError(f"shape mismatch: topk_idx {tuple(topk_idx.shape)}, topk_logp {tuple(topk_logp.shape)}, "
                         f"tail_logp {tuple(tail_logp.shape)}, student_logits {tuple(student_logits.shape)}")
    values = _chunked(_topk_chunk, [topk_idx.long(), topk_logp, tail_logp, student_logits],
                      student_logits.shape[0], chunk_size, kind, beta, T)
    return _reduce(values, reduction, normalizer)


@torch.no_grad()
def teacher_topk(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0):
    """Compress teacher logits [N, V] to (topk_idx [N, K] int64, topk_logp [N, K] fp32, tail_logp [N] fp32)
    at the deployment temperature. The tail is computed as a logsumexp over the other ids (exact, and
    -inf when K = V), never as log(1 - sum), which cancels catastrophically when the top-K hold ~all mass."""
    T = loss_temperature(temperature)
    logp = torch.log_softmax(teacher_logits.float() / T, dim=-1)                    # [N, V]
    k = min(int(k), logp.shape[-1])
    top = torch.topk(logp, k, dim=-1)
    tail = logp.scatter(-1, top.indices, float("-inf")).logsumexp(-1)               # [N]
    return top.indices, top.values, tail


def acceptance(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-token estimated acceptance of the draft at the deployment temperature. [N, V] x2 -> [N] fp32.

    temperature > 0: beta = sum_x min(p(x), q(x)) = 1 - TVD(p, q) (Leviathan et al.).
    temperature = 0 (greedy): 1 if argmax q == argmax p else 0 (a greedy draft token is accepted iff it is
    the target's argmax)."""
    if is_greedy(temperature):
        return (teacher_logits.argmax(-1) == student_logits.argmax(-1)).float()
    p = torch.softmax(teacher_logits.float() / temperature, -1)
    q = torch.softmax(student_logits.float() / temperature, -1)
    return torch.minimum(p, q).sum(-1)
