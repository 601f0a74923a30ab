"""The speedup model of speculative decoding (Leviathan et al. 2023) and the math gamma="auto" chooses by.

Pure functions on numbers: no torch, no clock, no I/O (measure.py times, cache.py stores, policy.py
keeps the running state and calls these). Terms:
  alpha          per-token acceptance (engine/stats.py `per_token_acceptance`), the input of tau
  tau            expected tokens per round: (1 - alpha^(gamma+1)) / (1 - alpha)
  c              one draft step / one target step
  v(k)           one target forward over k+1 tokens / one target step (v(0) = 1, a plain step)
  round cost     what a round drafting k costs: k c + v(k) in target steps, or measured seconds
"""
from __future__ import annotations

import statistics
from typing import Mapping, Sequence


def expected_tokens_per_step(alpha: float, gamma: int) -> float:
    """tau = (1 - alpha^(gamma+1)) / (1 - alpha): expected tokens per step with i.i.d. acceptance alpha."""
    if alpha >= 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def predicted_speedup(alpha: float, gamma: int, c: float, v: float = 1.0, tau: float | None = None) -> float:
    """tau / (gamma * c + v). c = draft step cost / target step cost; v = target verify over gamma+1
    tokens / one target step (the paper assumes v = 1; measure it). tau defaults to the i.i.d. formula;
    pass the measured mean acceptance length to use the observed one instead."""
    tau = expected_tokens_per_step(alpha, gamma) if tau is None else tau
    return tau / (gamma * c + v)


def verify_cost(v: Mapping, k: int) -> float:
    """v(k), the target forward over k+1 tokens / one target step, from a table measured at some k:
    exact where measured, linear between measured points, extended along the last two (or flat from a
    single point) outside them; v(0) = 1 (a plain step). v: {k: ratio} with at least one entry."""
    if k == 0:
        return 1.0
    if k in v:
        return float(v[k])
    ks = sorted(int(g) for g in v)
    pts = [(0, 1.0)] + [(g, float(v[g])) for g in ks]
    for (k0, v0), (k1, v1) in zip(pts, pts[1:]):
        if k0 < k < k1:
            return v0 + (v1 - v0) * (k - k0) / (k1 - k0)
    (k0, v0), (k1, v1) = pts[-2], pts[-1]
    return max(v1, v1 + (v1 - v0) * (k - k1) / (k1 - k0))


def robust_line(points: Mapping) -> tuple[float, float]:
    """(intercept, slope) of the Theil-Sen line through {x: y}: the median of the pairwise slopes, then
    the median of y - slope x. Up to ~29% of the points may be wild (a burst of load on a shared machine
    while one count was timed) without moving the line much; a least-squares fit would follow them."""
    xs = sorted(points)
    if len(xs) == 1:
        return 0.0, float(points[xs[0]]) / xs[0]
    slope = statistics.median([(points[b] - points[a]) / (b - a) for i, a in enumerate(xs) for b in xs[i + 1:]])
    return statistics.median([points[x] - slope * x for x in xs]), slope


def linear_round_costs(points: Mapping, max_gamma: int) -> dict:
    """{k: cost of a round drafting k} for k in 1..max_gamma from measured {k: cost} at any k >= 1, as the
    robust line a + b k (b >= 0): a round is the verify and the fixed work, plus one draft step per k
    (the verify's growth with k folds into b), so each k's measurement informs every other's."""
    a, b = robust_line(points)
    if b < 0:        # larger counts looking cheaper is noise: flat through the median
        a, b = statistics.median(points.values()), 0.0
    if a + b <= 0:   # the line crosses zero before k = 1: keep it positive, through the smallest cost
        a = min(points.values()) - b * min(points)
    return {k: a + b * k for k in range(1, max_gamma + 1)}


def round_cost(cost: Mapping, k: int) -> float:
    """cost[k] where measured, else linear between the measured k around it, else extended along the
    last two measured points (never decreasing). cost: {k: cost of a round drafting k}, k >= 1."""
    if k in cost:
        return float(cost[k])
    ks = sorted(cost)
    for k0, k1 in zip(ks, ks[1:]):
        if k0 < k < k1:
            return cost[k0] + (cost[k1] - cost[k0]) * (k - k0) / (k1 - k0)
    if k < ks[0]:
        return float(cost[ks[0]])
    if len(ks) == 1:
        return float(cost[ks[0]]) * k / ks[0]
    k0, k1 = ks[-2], ks[-1]
    return cost[k1] + max(0.0, (cost[k1] - cost[k0]) / (k1 - k0)) * (k - k1)


def best_draft_count(alphas: Sequence[float], caps: Sequence[int], cost: Mapping, max_gamma: int) -> int:
    """The round's draft count K in 1..max_gamma maximising expected tokens per unit of cost,

        sum_r tau(alpha_r, min(K, cap_r)) / cost(K)        (Leviathan et al. 2023: tau / (K c + v))

    over the batch's rows: alphas [B] each row's per-token acceptance, caps [B] the most drafts a row
    may make (what max_new_tokens leaves, minus the token verification always adds), cost {k: cost of
    a round drafting k} in any unit (k c + v(k) in target steps, or measured seconds; see round_cost).
    Every row pays for K draft steps and a (K+1)-token verify whatever its own count, so the batch's
    count is chosen jointly and each row drafts min(K, cap_r). Ties go to the smaller K; 0 when no row
    may draft."""
    top = min(int(max_gamma), max(caps, default=0))
    best_k, best = 0, -1.0
    for k in range(1, top + 1):
        rate = sum(expected_tokens_per_step(a, min(k, cap)) for a, cap in zip(alphas, caps)) / round_cost(cost, k)
        if rate > best * (1 + 1e-9):
            best_k, best = k, rate
    return best_k


def long_count(v: Mapping, short: int, top: int, alpha: float) -> int:
    """The n-gram lookup's count for a row repeating itself (engine/ngram.py): k in short..top maximising
    tau(alpha, k) / v(k), a round's expected tokens at per-token acceptance alpha over its verify's cost
    (v: {k: target forward over k+1 tokens / one step}, measured at some k; verify_cost between them);
    ties go to the smaller k. A step in v (a verify wide enough to stream the weights twice) is what it
    reads, so v is used as measured, not through a fitted line."""
    best_k, best = short, -1.0
    for k in range(short, top + 1):
        rate = expected_tokens_per_step(alpha, k) / verify_cost(v, k)
        if rate > best * (1 + 1e-9):
            best_k, best = k, rate
    return best_k


def shrunk_alpha(accepted: float, rejected: float, prior: float, strength: float) -> float:
    """Posterior mean of alpha under a Beta prior of mean `prior` worth `strength` observations:
    (accepted + strength prior) / (accepted + rejected + strength). accepted / rejected are counts of
    accepted drafts and of rejections (the per_token_acceptance likelihood), possibly discounted."""
    return (accepted + strength * prior) / (accepted + rejected + strength)


def discounted_counts(counts: Sequence[tuple], drafted: Sequence[int], accepted: Sequence[int],
                      decay: float) -> list[tuple]:
    """Per-row (accepted, rejected) after one round: old counts times `decay` (so the estimate follows
    a row whose text changes character; 1/(1-decay) rounds is its memory) plus this round's accepted
    drafts and its rejection (1 where the row drafted and did not accept every draft)."""
    return [(a0 * decay + a, r0 * decay + (1.0 if 0 < n and a < n else 0.0))
            for (a0, r0), n, a in zip(counts, drafted, accepted)]


def predicted_speedup_mix(alpha: float, gamma_counts: Sequence[int], c: float, v: Mapping) -> float | None:
    """The speedup model over a mix of draft counts: sum_k n_k tau(alpha, k) / sum_k n_k (k c + v(k)),
    gamma_counts[k] = n_k row-rounds that drafted k tokens (a schedule that varies k, e.g. gamma auto)."""
    tokens = sum(n * expected_tokens_per_step(alpha, k) for k, n in enumerate(gamma_counts))
    cost = sum(n * (k * c + verify_cost(v, k)) for k, n in enumerate(gamma_counts))
    return tokens / cost if cost > 0 else None
