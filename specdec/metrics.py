"""Acceptance statistics (vLLM's conventions) and the speedup model of Leviathan et al. (2023).

Conventions, so numbers compare across systems:
  acceptance rate          = accepted draft tokens / drafted tokens
  mean acceptance length   = 1 + accepted / draft steps (counts the recovered/bonus token; plain decoding = 1.0)
  per-position acceptance  = steps whose k-th draft was accepted / draft steps
A "draft step" is one row's draft-then-verify round; a batch step over B rows is B draft steps.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


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


@dataclass
class DecodeStats:
    """Per-call statistics of a speculative (or plain) decode."""
    gamma: int = 0
    draft_steps: int = 0          # row-rounds that verified at least one draft
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_position: list = field(default_factory=list)  # [gamma] counts
    new_tokens: int = 0           # tokens returned to the caller (after EOS / length truncation)
    target_calls: int = 0         # target forwards after the prompt (prefill not counted)
    draft_calls: int = 0          # draft forwards after the prompt
    prefill_calls: int = 0
    draft_s: float = 0.0
    target_s: float = 0.0
    verify_s: float = 0.0
    total_s: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        return 1.0 + self.accepted_tokens / self.draft_steps if self.draft_steps else 1.0

    @property
    def per_position_acceptance(self) -> list:
        return [a / self.draft_steps if self.draft_steps else 0.0 for a in self.accepted_per_position]

    @property
    def other_s(self) -> float:
        return max(0.0, self.total_s - self.draft_s - self.target_s - self.verify_s)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(acceptance_rate=self.acceptance_rate, mean_accepted_length=self.mean_accepted_length,
                 per_position_acceptance=self.per_position_acceptance, other_s=self.other_s,
                 tokens_per_s=self.tokens_per_s)
        return d
