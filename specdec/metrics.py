"""Acceptance statistics (vLLM's conventions) and the speedup model of Leviathan et al. (2023).

Conventions, so numbers compare across systems:
  acceptance rate          = accepted draft tokens / drafted tokens
  mean acceptance length   = 1 + accepted / draft steps (counts the recovered/bonus token; plain decoding = 1.0)
  per-position acceptance  = steps whose k-th draft was accepted / draft steps
  alpha (per-token)        = accepted / (accepted + rejections): Leviathan et al.'s alpha, the input of tau
A "draft step" is one row's draft-then-verify round; a batch step over B rows is B draft steps. A step
that drafted fewer than gamma tokens (the last ones before max_new_tokens) counts only the positions it
drafted: per-position rates divide by the steps that drafted that position, and a step whose every draft
was accepted is not a rejection however short it was.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, fields
from typing import Mapping, Sequence

AUTO = "auto"   # gamma="auto": each round's draft count is best_draft_count's choice


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


def per_token_acceptance(accepted: int, steps: int, full_steps: int) -> float:
    """Leviathan et al.'s alpha: P(a draft is accepted | every earlier draft of its step was), the
    maximum-likelihood estimate under i.i.d. acceptance = accepted / (accepted + rejections), where a
    rejection ends every step that did not accept all the drafts it made (steps - full_steps).

    Not the vLLM acceptance rate (accepted / drafted): drafts after a rejection are never tested but
    count as drafted, so accepted / drafted = (tau - 1) / gamma, well below alpha at gamma > 1; feeding
    it to tau = (1 - alpha^(gamma+1)) / (1 - alpha) would underpredict the speedup."""
    rejections = steps - full_steps
    return accepted / (accepted + rejections) if accepted + rejections > 0 else 0.0


@dataclass
class DecodeStats:
    """Statistics of one speculative (or plain) decode, observed round by round (`observe`)."""
    gamma: int = 0
    draft_steps: int = 0          # row-rounds that verified at least one draft
    full_steps: int = 0           # ... of which every draft was accepted
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    drafted_per_position: list = field(default_factory=list)   # [gamma]: steps that drafted position k
    accepted_per_position: list = field(default_factory=list)  # [gamma]: steps that accepted position k
    gamma_counts: list = field(default_factory=list)   # [k]: row-rounds that drafted exactly k tokens
    new_tokens: int = 0           # tokens returned to the caller (after EOS / length truncation)
    target_calls: int = 0         # target forwards after the prompt (prefill not counted)
    draft_calls: int = 0          # draft forwards after the prompt
    prefill_calls: int = 0
    prefill_s: float = 0.0        # the prompt's forwards (both models'), inside total_s
    draft_s: float = 0.0
    target_s: float = 0.0
    verify_s: float = 0.0
    total_s: float = 0.0

    def observe(self, drafted, accepted) -> None:
        """One round: drafted[b] tokens proposed and accepted[b] kept, per row (host ints)."""
        width = max(drafted, default=0)
        if len(self.drafted_per_position) < width:
            grow = width - len(self.drafted_per_position)
            self.drafted_per_position += [0] * grow
            self.accepted_per_position += [0] * grow
        for n, a in zip(drafted, accepted):
            if len(self.gamma_counts) <= n:
                self.gamma_counts += [0] * (n + 1 - len(self.gamma_counts))
            self.gamma_counts[n] += 1
            if n <= 0:
                continue
            self.draft_steps += 1
            self.full_steps += a == n
            self.drafted_tokens += n
            self.accepted_tokens += a
            for k in range(n):
                self.drafted_per_position[k] += 1
            for k in range(a):
                self.accepted_per_position[k] += 1

    @classmethod
    def merged(cls, stats) -> "DecodeStats":
        """The pooled statistics of several decodes (counts and seconds add up)."""
        stats = [s for s in stats if s is not None]
        out = cls(gamma=max((s.gamma for s in stats), default=0))
        for s in stats:
            for f in fields(cls):
                a, b = getattr(out, f.name), getattr(s, f.name)
                if f.name == "gamma":
                    continue
                if isinstance(a, list):
                    a = a + [0] * (len(b) - len(a))
                    setattr(out, f.name, [x + y for x, y in zip(a, b + [0] * (len(a) - len(b)))])
                else:
                    setattr(out, f.name, a + b)
        return out

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def alpha(self) -> float:
        return per_token_acceptance(self.accepted_tokens, self.draft_steps, self.full_steps)

    @property
    def mean_accepted_length(self) -> float:
        return 1.0 + self.accepted_tokens / self.draft_steps if self.draft_steps else 1.0

    @property
    def mean_gamma(self) -> float:
        """Drafts per draft step (the average draft count of a schedule that varies it)."""
        return self.drafted_tokens / self.draft_steps if self.draft_steps else 0.0

    @property
    def per_position_acceptance(self) -> list:
        return [a / d if d else 0.0 for a, d in zip(self.accepted_per_position, self.drafted_per_position)]

    @property
    def other_s(self) -> float:
        return max(0.0, self.total_s - self.prefill_s - self.draft_s - self.target_s - self.verify_s)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(acceptance_rate=self.acceptance_rate, alpha=self.alpha, mean_accepted_length=self.mean_accepted_length,
                 mean_gamma=self.mean_gamma,
                 per_position_acceptance=self.per_position_acceptance, other_s=self.other_s,
                 tokens_per_s=self.tokens_per_s)
        return d
