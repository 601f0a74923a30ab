"""The math behind gamma="auto" on pure inputs (specdec/costmodel/predict.py): the choice of the round's
draft count, the running acceptance estimate, the monotone cost fit, the speedup over a mix of counts."""
import random

import pytest

from specdec.costmodel.predict import (best_draft_count, long_count, discounted_counts, expected_tokens_per_step,
                                       linear_round_costs, predicted_speedup, predicted_speedup_mix, robust_line,
                                       round_cost, shrunk_alpha)


def _ratios(c, v=1.0, slope=0.05, top=8):
    """Round costs k c + v(k) in target steps, with v growing `slope` per extra token."""
    return {k: k * c + v + slope * k for k in range(1, top + 1)}


def _brute(alphas, caps, cost, max_gamma):
    rates = {k: sum(expected_tokens_per_step(a, min(k, cap)) for a, cap in zip(alphas, caps)) / cost[k]
             for k in range(1, min(max_gamma, max(caps)) + 1)}
    return max(rates, key=lambda k: (rates[k], -k))


def test_larger_alpha_drafts_more():
    cost = _ratios(0.1)
    ks = [best_draft_count([a / 20], [64], cost, 8) for a in range(1, 20)]
    assert ks == sorted(ks)                       # never fewer drafts for a better draft model
    assert ks[0] == 1 and ks[-1] >= 6             # alpha 0.05: one draft; alpha 0.95: many


def test_cheaper_draft_drafts_more():
    ks = [best_draft_count([0.7], [64], _ratios(c), 8) for c in (0.6, 0.3, 0.15, 0.08, 0.04, 0.01)]
    assert ks == sorted(ks) and ks[0] < ks[-1]


def test_costlier_verify_drafts_less():
    ks = [best_draft_count([0.7], [64], _ratios(0.1, slope=s), 8) for s in (0.0, 0.1, 0.3, 1.0)]
    assert ks == sorted(ks, reverse=True) and ks[0] > ks[-1]


def test_never_past_the_caps_or_max_gamma():
    flat = {k: 1.0 for k in range(1, 9)}          # drafting is free: the more the better
    assert best_draft_count([0.9], [64], flat, 8) == 8
    assert best_draft_count([0.9], [64], flat, 5) == 5
    assert best_draft_count([0.9, 0.9], [3, 2], flat, 8) == 3     # what max_new_tokens leaves
    assert best_draft_count([0.9, 0.9], [0, 0], flat, 8) == 0     # nothing left to draft
    assert best_draft_count([], [], flat, 8) == 0


def test_the_batch_pays_for_its_widest_row():
    """Every row pays for K drafts: a batch of rows that gain little from drafting picks a smaller K than
    a lone good row would; identical rows pick what one row picks."""
    cost = _ratios(0.1)
    one = best_draft_count([0.85], [64], cost, 8)
    assert best_draft_count([0.85] * 6, [64] * 6, cost, 8) == one
    assert best_draft_count([0.85] + [0.2] * 7, [64] * 8, cost, 8) < one
    # rows that may not draft any more (cap 0) still emit a token per round and share its cost
    assert best_draft_count([0.85, 0.5, 0.5], [64, 0, 0], cost, 8) < one


def test_matches_brute_force_on_random_inputs():
    rng = random.Random(0)
    for _ in range(300):
        B = rng.randint(1, 6)
        alphas = [rng.random() for _ in range(B)]
        caps = [rng.randint(0, 10) for _ in range(B)]
        cost = {k: k * rng.uniform(0.01, 0.5) + rng.uniform(0.8, 1.5) for k in range(1, 9)}
        if max(caps) == 0:
            continue
        assert best_draft_count(alphas, caps, cost, 8) == _brute(alphas, caps, cost, 8)


def test_seconds_and_ratios_choose_alike():
    """The unit of the costs does not matter: measured seconds or k c + v in target steps."""
    cost = _ratios(0.12, slope=0.07)
    secs = {k: 0.0093 * v for k, v in cost.items()}
    for a in (0.3, 0.55, 0.7, 0.9):
        assert best_draft_count([a], [64], cost, 8) == best_draft_count([a], [64], secs, 8)


def test_robust_line_ignores_a_burst_of_load():
    exact = {k: 9.0 + 1.5 * k for k in range(1, 9)}
    assert robust_line(exact) == pytest.approx((9.0, 1.5))
    loaded = {**exact, 3: 42.0, 6: 30.0}            # two counts timed while another job ran
    a, b = robust_line(loaded)
    assert a == pytest.approx(9.0, abs=0.5) and b == pytest.approx(1.5, abs=0.2)
    assert robust_line({2: 4.0}) == (0.0, 2.0)


def test_linear_round_costs():
    cost = linear_round_costs({1: 10.0, 2: 11.0, 4: 13.0}, 6)
    assert cost == pytest.approx({1: 10.0, 2: 11.0, 3: 12.0, 4: 13.0, 5: 14.0, 6: 15.0})
    # noise that makes larger counts look cheaper is not a reason to draft more: the slope stays >= 0
    assert linear_round_costs({1: 10.0, 2: 9.0, 3: 8.5}, 4) == pytest.approx({k: 9.0 for k in range(1, 5)})
    # the bench's first measurement at batch 1 under load (ms): a plateau the old per-k table made auto
    # jump across (k = 1 or 7); the line keeps the choice among the neighbours of the true optimum
    loaded = {1: 18.2, 2: 27.8, 3: 42.1, 4: 35.9, 5: 41.0, 6: 32.7, 7: 39.1, 8: 46.8}
    cost = linear_round_costs(loaded, 8)
    assert all(cost[k] < cost[k + 1] for k in range(1, 8))
    ks = {best_draft_count([a], [64], cost, 8) for a in (0.55, 0.6, 0.65, 0.7)}
    assert max(ks) - min(ks) <= 2
    assert all(v > 0 for v in linear_round_costs({1: 1.0, 2: 0.1}, 3).values())


def test_round_cost_interpolates_and_extends():
    cost = {1: 1.0, 2: 1.5, 4: 2.5}
    assert round_cost(cost, 3) == pytest.approx(2.0)
    assert round_cost(cost, 6) == pytest.approx(3.5)      # along the last two points
    assert round_cost({1: 2.0}, 3) == pytest.approx(6.0)   # one point: proportional
    assert round_cost({2: 2.0, 4: 1.0}, 6) == pytest.approx(1.0)   # never decreasing past the end


def test_shrunk_alpha_and_discounted_counts():
    assert shrunk_alpha(0, 0, 0.6, 2.0) == pytest.approx(0.6)         # no data: the prior
    assert shrunk_alpha(30, 10, 0.6, 2.0) == pytest.approx(31.2 / 42)
    counts = discounted_counts([(0.0, 0.0), (4.0, 1.0)], drafted=[3, 2], accepted=[3, 1], decay=0.5)
    assert counts == [(3.0, 0.0), (3.0, 1.5)]      # a full acceptance is no rejection; a short one is one
    # rows that drafted nothing (the last token) learn nothing
    assert discounted_counts([(1.0, 1.0)], [0], [0], 1.0) == [(1.0, 1.0)]


def test_estimate_follows_a_row_that_changes():
    counts, alphas = [(0.0, 0.0)], []
    for rnd in range(60):
        good = rnd < 30
        counts = discounted_counts(counts, [4], [4 if good else 0], 0.9)
        alphas.append(shrunk_alpha(*counts[0], 0.6, 2.0))
    assert alphas[29] > 0.9 and alphas[-1] < 0.25


def test_predicted_speedup_mix():
    v = {1: 1.1, 2: 1.2, 4: 1.4}
    assert predicted_speedup_mix(0.6, [0, 0, 5], 0.1, v) == pytest.approx(predicted_speedup(0.6, 2, 0.1, 1.2))
    mixed = predicted_speedup_mix(0.6, [0, 3, 0, 0, 3], 0.1, v)
    one, four = predicted_speedup(0.6, 1, 0.1, 1.1), predicted_speedup(0.6, 4, 0.1, 1.4)
    assert min(one, four) < mixed < max(one, four)
    assert predicted_speedup_mix(0.6, [], 0.1, v) is None


def test_long_count_reads_the_step_in_v():
    """A lookup row repeating itself drafts the k in short..top with the most expected tokens per verify
    cost: on a kernel that takes 8 rows in one pass of the weights (v(7) 2.04, v(8) 2.61: SmolLM2 on the
    Xeon's AVX-512 gguf-q8a) that is 7; where 5 rows do (v(5) 2.66 against v(4) 1.98) it stays 4."""
    one_pass_8 = {1: 1.17, 2: 1.31, 3: 1.43, 4: 1.54, 6: 1.84, 7: 2.04, 8: 2.61, 10: 2.94, 12: 3.23}
    one_pass_5 = {1: 1.2, 2: 1.42, 3: 1.66, 4: 1.98, 5: 2.66, 6: 2.94, 7: 3.2, 8: 3.51, 12: 5.03}
    assert long_count(one_pass_8, 4, 12, 0.97) == 7
    assert long_count(one_pass_5, 4, 12, 0.97) == 4
    assert long_count(one_pass_8, 4, 12, 0.5) == 4             # a proposal accepted half the time: no longer
    assert long_count({k: 1.0 for k in range(1, 13)}, 4, 12, 0.97) == 12   # free verifies: the top
    assert long_count({k: 1.0 for k in range(1, 13)}, 4, 12, 1.0) == 12
    assert long_count({4: 2.0, 5: 2.0 * 6 / 5}, 4, 5, 1.0) == 4   # a tie goes to the smaller count
    assert long_count(one_pass_8, 4, 4, 0.97) == 4              # top == short
