"""Draft-count policies: how many tokens each round of a speculative decode drafts.

The decode loop asks its policy once per generate call for that call's state (`start`), then per round:
  choose(caps) -> counts       before drafting: each live row's count, at most caps[r] (what
                               max_new_tokens leaves the row)
  observe(drafted, accepted)   after the verdict: per row, drafts made and accepted (host ints)
  select(keep)                 the batch indices of the rows still live
`max_gamma` is the widest round a policy may ask for (the caches keep room for it). A round's counts may
depend on earlier rounds' verdicts only, never on its own: that keeps the decode lossless whatever the
policy. Policies: FixedGamma (gamma every round), AutoGamma (gamma="auto", below), LookupAuto
(gamma="auto" for the n-gram lookup draft: its match sizes each row's count) and measure.CycleGammas
(every count in turn, for timing rounds).

gamma="auto": before each round, K = argmax_k sum_r tau(alpha_r, min(k, cap_r)) / cost(k)
(predict.best_draft_count) over k in 1..max_gamma, from each live row's running acceptance estimate
alpha_r (a Beta posterior whose prior is the batch's pooled estimate, itself shrunk towards
AutoConfig.prior; observations discounted by AutoConfig.decay per round) and the cost of a round
drafting k at this batch size: the seconds of the decoder's own rounds (handed over, or read from the
cost cache, or measured once and cached: cache.CachedRoundCosts), or k c + v(k) from step costs,
either way through a robust straight line in k (predict.linear_round_costs: one noisy k cannot make
auto skip to another). Every row pays for K draft steps and a (K+1)-token verify, so K is chosen for
the batch and each row drafts min(K, cap_r).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..common.values import check_gamma
from .cache import CachedRoundCosts, CachedStepCosts
from .predict import best_draft_count, discounted_counts, linear_round_costs, long_count, shrunk_alpha
from .table import costs_at, read_table, round_costs


class FixedGamma:
    """gamma drafts every round (fewer where max_new_tokens leaves fewer). Stateless: its own call state."""

    def __init__(self, gamma: int):
        self.gamma = self.max_gamma = check_gamma(gamma, "gamma", auto=False)

    def start(self, decoder, input_ids, attention_mask, sampling: bool) -> "FixedGamma":
        return self

    def choose(self, caps: list) -> list:
        return [min(self.gamma, cap) for cap in caps]

    def observe(self, drafted: list, accepted: list) -> None:
        pass

    def select(self, keep: list) -> None:
        pass


@dataclass(frozen=True)
class AutoConfig:
    """gamma="auto"'s estimator (how these were chosen: bench/RESULTS.md, "gamma auto", and
    bench/auto_replay.py, which replays decodes under other values)."""
    prior: float = 0.6       # alpha before the first verdict of a decode (a typical draft)
    strength: float = 8.0    # verdicts a prior is worth: `prior` against the pooled ones, the pool against a row's
    decay: float = 0.9       # per-round discount of old verdicts: an estimate remembers ~1/(1-decay) rounds
    max_gamma: int = 8       # the largest count auto considers (and the caches' room for drafts)

    def __post_init__(self):
        if not (isinstance(self.prior, (int, float)) and 0.0 <= self.prior <= 1.0):
            raise ValueError(f"prior (alpha before any verdict) must be in [0, 1], got {self.prior!r}")
        if not (isinstance(self.strength, (int, float)) and math.isfinite(self.strength) and self.strength > 0):
            raise ValueError(f"strength (verdicts a prior is worth) must be a finite number > 0, got {self.strength!r}")
        if not (isinstance(self.decay, (int, float)) and 0.0 <= self.decay <= 1.0):
            raise ValueError(f"decay (per-round discount of old verdicts) must be in [0, 1], got {self.decay!r}")
        check_gamma(self.max_gamma, "max_gamma", auto=False, text=False)


_COSTS_HINT = ("costs must map a batch size to a costs entry ({}): measure_step_costs's {{'c': float > 0, 'v': "
               "{{gamma: float > 0}}}} and/or round times {{'round_s': {{'greedy' or 'sampling': {{gamma: seconds "
               "> 0}}}}}}")


def _read_costs(costs):
    if costs is None:
        return None
    try:
        table = read_table(costs)
        if not table:
            raise ValueError("no batch size")
    except ValueError as e:
        raise ValueError(_COSTS_HINT.format(e)) from None
    return table


class AutoGamma:
    """gamma="auto" (module docstring). costs: batch size -> a costs entry (table.py; e.g. what
    `specdec bench` measured); without them, round costs come from `cache` (a folder; default
    cache.default_cache_dir()) or are measured once per batch size, context bucket and greedy /
    sampled. One AutoGamma may serve any number of calls at once: each call's estimate is its own."""

    def __init__(self, config: AutoConfig | None = None, costs: dict | None = None, cache=None):
        self.config = config or AutoConfig()
        self.max_gamma = self.config.max_gamma
        self.costs = _read_costs(costs)
        self.source = None if self.costs is not None else CachedRoundCosts(cache)

    def start(self, decoder, input_ids, attention_mask, sampling: bool) -> "AutoRounds":
        costs = self.costs
        if costs is None:
            costs = self.source(decoder, input_ids, attention_mask, sampling, range(1, self.max_gamma + 1))
        return AutoRounds(input_ids.shape[0], costs, sampling, self.config)


class AutoRounds:
    """One call's state under gamma="auto": the live rows' acceptance estimates and each round's counts
    from them. Fed only the verdicts of finished rounds (observe), so a round's counts never depend on
    its own."""

    def __init__(self, batch: int, costs: dict, sampling: bool, config: AutoConfig):
        self.rows = [(0.0, 0.0)] * batch     # [B] discounted (accepted, rejections) per live row
        self.pooled = (0.0, 0.0)             # the same over every row of this decode
        # batch size -> {k: cost of a round drafting k}, the robust line through what was measured
        self.cost = {b: linear_round_costs(round_costs(entry, sampling), config.max_gamma)
                     for b, entry in costs.items()}
        self.config = config

    def alphas(self) -> list:
        c = self.config
        prior = shrunk_alpha(*self.pooled, c.prior, c.strength)
        return [shrunk_alpha(a, r, prior, c.strength) for a, r in self.rows]

    def choose(self, caps: list) -> list:
        k = best_draft_count(self.alphas(), caps, costs_at(self.cost, len(caps)), self.config.max_gamma)
        return [min(k, cap) for cap in caps]

    def observe(self, drafted: list, accepted: list) -> None:
        decay = self.config.decay
        self.rows = discounted_counts(self.rows, drafted, accepted, decay)
        rounds = discounted_counts([(0.0, 0.0)] * len(drafted), drafted, accepted, 0.0)
        self.pooled = (self.pooled[0] * decay + sum(a for a, _ in rounds),
                       self.pooled[1] * decay + sum(r for _, r in rounds))

    def select(self, keep: list) -> None:
        self.rows = [self.rows[b] for b in keep]


class LookupAuto:
    """gamma="auto" for the n-gram lookup (engine/ngram.py, "A row that repeats itself"): a row drafts
    what its match gives, at most `short`, or at most the long count where its match reached the
    lookup's max_ngram: the k in short..top that predict.long_count picks at per-token acceptance
    `alpha` from the target's verify costs v at batch size 1 (the handed-over costs' entry when it holds v
    at every k it chooses from, as it was measured; else the cost cache's, else measured once on the call's
    prompt and stored, on the forward the call runs, greedy or sampled: cache.CachedStepCosts).
    At batch > 1 the long count is `short`: a round verifies its widest row's count in every row, so one
    row's loop would make every row pay for it. Counts depend on the costs and on committed tokens only,
    so the decode stays lossless."""

    def __init__(self, short: int, top: int, alpha: float, costs: dict | None = None, cache=None):
        self.short, self.alpha = short, alpha
        self.max_gamma = top
        self.costs = _read_costs(costs)
        self.source = CachedStepCosts(cache)

    def long(self, decoder, input_ids, greedy: bool = False) -> int:
        """The long count for a call whose prompts are input_ids [B, P] (greedy: a greedy decode's)."""
        if input_ids.shape[0] > 1 or self.max_gamma <= self.short:
            return self.short
        ks = range(self.short, self.max_gamma + 1)
        entry = costs_at(self.costs, 1) if self.costs is not None else None
        if entry is None or not set(ks) <= set(entry.get("v", ())):
            # v extended past where it was measured would miss the step that the count is about (e.g. the
            # costs of a run resumed from before this rule, measured up to 4): measure the counts it chooses from
            entry = self.source(decoder, input_ids, ks, greedy=greedy)
        return long_count(entry["v"], self.short, self.max_gamma, self.alpha)

    def start(self, decoder, input_ids, attention_mask, sampling: bool) -> "LookupRounds":
        return LookupRounds(self.short, self.long(decoder, input_ids, greedy=not sampling))


class LookupRounds(FixedGamma):
    """One call's counts under LookupAuto: `gamma` (the long count) a row, which the loop caps by its
    match, and `short_cap` for a row whose match is shorter than max_ngram (read by the n-gram loop)."""

    def __init__(self, short: int, long: int):
        super().__init__(long)
        self.short_cap = short
