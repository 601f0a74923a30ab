"""The pure summary stage of `specdec bench`, on hand-made timed passes (no model, no clock): rows per
category, speedups and greedy checks that do not depend on row order, predictions from the costs, error
rows, and reading results files back."""
import json
import random

import pytest

from specdec.costmodel.predict import predicted_speedup
from specdec.engine.stats import DecodeStats
from specdec.benchmark.results import (BenchRow, Measured, Setting, TimedPass, auto_report, auto_shift, read_results,
                                      repeated_share, summarise, with_speedups)

CATS = ["a", "a", "b", "b"]          # 4 prompts, two categories
COSTS = {1: {"c": 0.1, "v": {2: 1.5}}, 2: {"c": 0.2, "v": {2: 1.2}}}


def _stats(drafted, accepted):
    st = DecodeStats(gamma=max(drafted))
    st.observe(drafted, accepted)
    return st


def _measured(method, gamma, bs, walls_per_repeat, outputs, temp=0.0, stats=None, calls=3):
    batches = [list(range(i, min(i + bs, 4))) for i in range(0, 4, bs)]
    passes = [TimedPass(walls=list(w), stats=[stats] * len(batches) if stats else [None] * len(batches),
                        calls=[calls] * len(batches), outputs=[list(o) for o in outputs]) for w in walls_per_repeat]
    return Measured(Setting(method, gamma, temp, bs), batches, passes)


OUT = [[5, 6], [7], [8, 9, 10], [11]]   # 7 tokens over 4 prompts


def _sweep():
    """ar and sd (gamma 2) at batch size 1: sd twice as fast on category a, as fast on b."""
    ar = _measured("ar", None, 1, [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], OUT)
    sd = _measured("sd", 2, 1, [[0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0]], OUT, stats=_stats([2], [1]))
    return [ar, sd]


def _by_key(rows):
    return {(r.method, r.gamma, r.temperature, r.batch_size, r.category): r for r in rows}


def test_rows_per_category_and_speedups():
    rows = _by_key(summarise(_sweep(), CATS, COSTS))
    assert set(rows) == {(m, g, 0.0, 1, c) for m, g in (("ar", None), ("sd", 2)) for c in ("all", "a", "b")}
    ar_all, sd_a, sd_b = rows[("ar", None, 0.0, 1, "all")], rows[("sd", 2, 0.0, 1, "a")], rows[("sd", 2, 0.0, 1, "b")]
    assert ar_all.tokens_per_s == pytest.approx(7 / 4.0) and ar_all.speedup is None
    assert ar_all.num_prompts == 4 and ar_all.new_tokens == 7 and ar_all.target_calls == 12
    assert sd_a.tokens_per_s == pytest.approx(3 / 1.0) and sd_a.speedup == pytest.approx(3.0 / 1.5)
    assert sd_b.speedup == pytest.approx(1.0)
    assert rows[("sd", 2, 0.0, 1, "all")].speedup == pytest.approx((7 / 3.0) / (7 / 4.0))
    assert sd_a.repeats["tokens_per_s"]["n"] == 2 and sd_a.repeats["new_tokens"] == [3, 3]


def test_row_order_does_not_matter():
    """Speedups and greedy checks are looked up after every row exists: sd before ar gives the same rows."""
    forward = _by_key(summarise(_sweep(), CATS, COSTS))
    for seed in range(3):
        shuffled = _sweep()
        random.Random(seed).shuffle(shuffled)
        assert _by_key(summarise(shuffled, CATS, COSTS)) == forward
    backward = summarise(_sweep()[::-1], CATS, COSTS)
    assert all(r.speedup is not None for r in backward if r.method == "sd")
    assert _by_key(with_speedups(backward[::-1])) == forward


def test_acceptance_and_predictions_from_stats_and_costs():
    rows = _by_key(summarise(_sweep(), CATS, COSTS))
    sd = rows[("sd", 2, 0.0, 1, "all")]
    # 8 batches pooled (4 per repeat x 2), each drafted 2 and accepted 1
    assert sd.draft_steps == 8 and sd.acceptance_rate == pytest.approx(0.5) and sd.alpha == pytest.approx(0.5)
    assert sd.mean_accepted_length == pytest.approx(2.0) and sd.per_position_acceptance == [1.0, 0.0]
    assert (sd.draft_cost_ratio, sd.verify_cost_ratio) == (0.1, 1.5)
    assert sd.predicted_speedup == pytest.approx(predicted_speedup(0.5, 2, 0.1, 1.5))
    assert sd.predicted_speedup_tau == pytest.approx(2.0 / (2 * 0.1 + 1.5))
    assert rows[("ar", None, 0.0, 1, "all")].mean_accepted_length == 1.0
    # no costs for a batch size: no prediction, the rest unchanged
    no_costs = _by_key(summarise(_sweep(), CATS, {}))[("sd", 2, 0.0, 1, "all")]
    assert no_costs.predicted_speedup is None and no_costs.tokens_per_s == sd.tokens_per_s


def test_greedy_equality_is_checked_per_prompt_and_repeat():
    ar, sd = _sweep()
    assert all(r.outputs_match_ar for r in summarise([ar, sd], CATS, COSTS) if r.method == "sd")
    sd.passes[1].outputs[2] = [8, 9, 99]          # prompt 2 (category b) differs in the second repeat
    rows = _by_key(summarise([sd, ar], CATS, COSTS))
    assert rows[("sd", 2, 0.0, 1, "a")].outputs_match_ar is True
    assert rows[("sd", 2, 0.0, 1, "b")].outputs_match_ar is False
    assert rows[("sd", 2, 0.0, 1, "all")].outputs_match_ar is False
    assert rows[("ar", None, 0.0, 1, "all")].outputs_match_ar is None
    sampled = [_measured("ar", None, 1, [[1.0] * 4], OUT, temp=1.0), _measured("sd", 2, 1, [[1.0] * 4], OUT, temp=1.0)]
    assert all(r.outputs_match_ar is None for r in summarise(sampled, CATS, COSTS))


def test_mixed_batches_get_only_the_all_row_and_hf_rows():
    mixed = [_measured("ar", None, 4, [[2.0]], OUT), _measured("sd", 2, 4, [[1.0]], OUT, stats=_stats([2], [2]))]
    rows = summarise(mixed, CATS, COSTS)
    assert {r.category for r in rows} == {"all"}
    hf = summarise([_measured("hf_assisted", 2, 1, [[1.0] * 4], OUT, calls=2)], CATS, COSTS)
    hf_all = _by_key(hf)[("hf_assisted", 2, 0.0, 1, "all")]
    assert hf_all.mean_accepted_length == pytest.approx(7 / 8) and hf_all.speedup is None  # no ar row: no speedup
    assert hf_all.acceptance_rate is None and hf_all.predicted_speedup is None


def test_error_rows_are_bench_rows():
    failed = Measured(Setting("hf_assisted_default", None, 0.0, 1), [[0], [1], [2], [3]], error="TypeError: nope")
    rows = summarise(_sweep() + [failed], CATS, COSTS)
    err = [r for r in rows if r.error]
    assert err == [BenchRow("hf_assisted_default", None, 0.0, 1, "all", num_prompts=4, error="TypeError: nope")]
    assert err[0].tokens_per_s is None and err[0].speedup is None


def test_read_results_round_trip_and_errors(tmp_path):
    rows = summarise(_sweep(), CATS, COSTS)
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta": {"device": "cpu"}, "runs": [r.to_dict() for r in rows]}))
    meta, back = read_results(path)
    assert meta == {"device": "cpu"} and back == rows
    # an older or newer file: unknown keys ignored, missing optional ones None
    path.write_text(json.dumps({"runs": [{"method": "ar", "temperature": 0, "batch_size": 1, "future": 1}]}))
    assert read_results(path)[1] == [BenchRow("ar", None, 0, 1)]
    for runs, match in (({"a": 1}, "'runs' is a dict, not a list"), ("x", "'runs' is a str"),
                        ([1], "row 0 is a int"), ([{"method": "ar"}], "row 0 has no 'temperature'")):
        path.write_text(json.dumps({"meta": {}, "runs": runs}))
        with pytest.raises(ValueError, match=match):
            read_results(path)


def _auto_sweep():
    """ar, sd gamma 2 and gamma auto (rounds of 1 and 3 drafts) at batch size 1, and HF's heuristic."""
    auto_stats = DecodeStats(gamma=8)
    auto_stats.observe([1], [1])
    auto_stats.observe([3], [1])
    auto = _measured("sd", "auto", 1, [[0.4, 0.4, 1.0, 1.0], [0.4, 0.4, 1.0, 1.0]], OUT, stats=auto_stats)
    hf = _measured("hf_assisted_heuristic", None, 1, [[0.8] * 4, [0.8] * 4], OUT)
    return _sweep() + [auto, hf]


def test_auto_rows_carry_the_chosen_counts_and_a_mixed_prediction():
    costs = {1: {"c": 0.1, "v": {1: 1.2, 2: 1.5, 3: 1.6}}}
    row = _by_key(summarise(_auto_sweep(), CATS, costs))[("sd", "auto", 0.0, 1, "all")]
    assert row.gamma_counts == [0, 8, 0, 8]          # 8 batches pooled, each a 1-draft and a 3-draft round
    assert row.mean_gamma == pytest.approx(2.0)
    assert row.verify_cost_ratio is None and row.draft_cost_ratio == 0.1
    alpha = row.alpha                                   # 2 accepted, 1 rejection per batch
    assert alpha == pytest.approx(2 / 3)
    tau = lambda k: (1 - alpha ** (k + 1)) / (1 - alpha)  # noqa: E731
    assert row.predicted_speedup == pytest.approx((tau(1) + tau(3)) / (0.1 + 1.2 + 0.3 + 1.6))
    assert row.outputs_match_ar is True


def test_auto_report_and_shift():
    rows = summarise(_auto_sweep(), CATS, COSTS)
    report = {r["category"]: r for r in auto_report(rows)}
    assert set(report) == {"all", "a", "b"}
    a = report["a"]   # auto 3 tokens / 0.8 s; gamma 2 3 tokens / 1.0 s; HF heuristic 3 tokens / 1.6 s
    assert a["best_fixed_gamma"] == 2 and a["auto_vs_best_fixed"] == pytest.approx(1.0 / 0.8)
    assert a["best_hf"] == "hf_assisted_heuristic" and a["auto_vs_best_hf"] == pytest.approx(1.6 / 0.8)
    assert auto_report(summarise(_sweep(), CATS, COSTS)) == []          # no auto row, no report
    before = summarise(_auto_sweep(), CATS, COSTS)
    st = DecodeStats(gamma=8)
    st.observe([4], [4])
    after = summarise(_sweep() + [_measured("sd", "auto", 1, [[0.4] * 4], OUT, stats=st)], CATS, COSTS)
    (shift,) = auto_shift(before, after)
    assert (shift["temperature"], shift["batch_size"]) == (0.0, 1)
    assert shift["mean_gamma_before"] == pytest.approx(2.0) and shift["mean_gamma_after"] == pytest.approx(4.0)
    assert shift["gamma_change"] == pytest.approx(2.0) and shift["gamma_counts_after"] == [0, 0, 0, 0, 4]
    assert shift["alpha_after"] == 1.0


def test_repeated_share_counts_verbatim_self_repeats():
    """A token counts where the span ending at it occurred earlier in the same output (another output's
    spans do not count), as a share of every token; rows carry it per category."""
    assert repeated_share([]) is None and repeated_share([[]]) is None
    loop = [1, 2, 3] * 4                                     # 12 tokens; spans of 3 repeat from token 6 on
    assert repeated_share([loop], span=3) == pytest.approx(7 / 12)
    assert repeated_share([[1, 2, 3, 4, 5, 6]], span=3) == 0.0
    assert repeated_share([[1, 2, 3], [1, 2, 3]], span=3) == 0.0            # across outputs: not a repeat
    assert repeated_share([loop, [9] * 4], span=3) == pytest.approx((7 + 1) / 16)
    assert repeated_share([list(range(40)) * 2]) == pytest.approx(9 / 80)   # default span 32: ends 72..80
    rows = _by_key(summarise(_sweep(), CATS, COSTS))
    assert rows[("ar", None, 0.0, 1, "all")].repeated_share == 0.0
