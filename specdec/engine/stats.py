"""Statistics of a decode: DecodeStats, observed round by round, and the acceptance conventions.

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

from dataclasses import asdict, dataclass, field, fields


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
