"""`specdec demo`: the before/after comparison, every setting checked before the first stage, and the
whole loop end to end on a tiny pair (bench -> distill -> bench through Python calls)."""
import json
from pathlib import Path

import pytest

from conftest import tiny_llama
from specdec.cli import demo
from specdec.cli import main
from specdec.benchmark.results import BenchRow

TOKENIZER = Path(__file__).resolve().parents[1] / "specdec" / "assets" / "draft"


def _rows(mal, speed, match=True, cats=None):
    """Bench rows: "ar" and "sd" at gamma 2 and 4 for both temperatures; mal / speed: {(T, gamma): value};
    cats: {category: (mal at gamma 4 and T 0, draft steps)}."""
    rows = [BenchRow("ar", None, 0.0, 1, mean_accepted_length=1.0)]
    for (T, g), m in mal.items():
        rows.append(BenchRow("sd", g, T, 1, mean_accepted_length=m, acceptance_rate=(m - 1) / g, alpha=0.5,
                             speedup=speed[(T, g)], outputs_match_ar=match if T == 0 else None, draft_steps=10))
    for cat, (m, steps) in (cats or {}).items():
        rows.append(BenchRow("sd", 4, 0.0, 1, category=cat, mean_accepted_length=m, draft_steps=steps))
    return rows


def test_demo_compares_before_and_after_results():
    keys = [(0.0, 2), (0.0, 4), (1.0, 2), (1.0, 4)]
    before = _rows(dict(zip(keys, (1.6, 2.0, 1.5, 1.5))), dict(zip(keys, (1.10, 1.00, 0.90, 0.95))))
    after = _rows(dict(zip(keys, (1.8, 2.5, 1.7, 1.8))), dict(zip(keys, (1.05, 1.30, 1.00, 0.90))))
    rows = demo.compare(before, after)
    assert [(r["temperature"], r["gamma"]) for r in rows] == keys
    assert rows[1]["mal_gain_pct"] == pytest.approx(25.0) and rows[3]["mal_gain_pct"] == pytest.approx(20.0)
    assert rows[0]["match_before"] is True and rows[2]["match_after"] is None
    # the best gamma moves from 2 to 4 at greedy; at T 1 it stays at 2
    assert demo.best_gamma(rows, "before") == {0.0: {"gamma": 2, "speedup": 1.10}, 1.0: {"gamma": 4, "speedup": 0.95}}
    assert demo.best_gamma(rows, "after") == {0.0: {"gamma": 4, "speedup": 1.30}, 1.0: {"gamma": 2, "speedup": 1.00}}
    assert "best gamma before: 2 at 1.10x; after: gamma 4 at 1.30x (1.18x the best before)" in demo.format_best(rows)
    g = demo.goals(rows, [])
    assert g["best_speedup_ratio"]["T0"] == pytest.approx(1.30 / 1.10) and g["greedy_equals_plain"] is True
    assert demo.goals(demo.compare(before, _rows(dict(zip(keys, (2,) * 4)), dict(zip(keys, (1,) * 4)), match=False)),
                      [])["greedy_equals_plain"] is False
    for col in ("acc rate", "alpha", "MAL", "gain %", "speedup", "=plain"):
        assert col in demo.format_table(rows)
    q = demo.DemoConfig(out="x", quick=True)
    assert q.steps < demo.DemoConfig(out="x").steps and q.gamma == (2, 4)


def test_mal_is_pooled_over_categories_by_draft_steps():
    """Pooling must weight each category by its draft steps (MAL = 1 + accepted / steps), not average MALs."""
    keys = {(0.0, 4): 2.0}
    before = _rows(keys, {(0.0, 4): 1.0}, cats={"function": (3.0, 10), "comment": (1.5, 30), "test": (2.0, 20)})
    after = _rows(keys, {(0.0, 4): 1.0}, cats={"function": (3.0, 10), "comment": (2.0, 30), "test": (2.0, 20)})
    assert demo.pooled_mal(before, ("function", "comment"), 0.0, 4) == pytest.approx(1 + (20 + 15) / 40)
    groups = {g["group"]: g for g in demo.group_gains(before, after)}
    assert set(groups) == {"function", "comment", "test", "built-in", "unseen"}
    assert groups["built-in"]["mal_after"] == pytest.approx(1 + (20 + 30) / 40)
    assert groups["unseen"]["mal_gain_pct"] == pytest.approx(0.0)
    assert demo.goals([], list(groups.values()))["mal_gain_builtin_T0_pct"] == pytest.approx(
        100 * ((1 + 50 / 40) / (1 + 35 / 40) - 1))


@pytest.mark.parametrize("flags, match", [(["--lr", "-1"], "--lr must be > 0"),
                                          (["--batch-size", "0"], "--batch-size must be >= 1"),
                                          (["--train-temperature", "-1"],
                                           "--train-temperature must be a finite number >= 0"),
                                          (["--gamma", "0"], "--gamma must be >= 1"),
                                          (["--device", "cuda:x"], "is not a device")])
def test_bad_settings_fail_before_anything_runs(tmp_path, capsys, monkeypatch, flags, match):
    """A bad distillation setting used to surface only after the whole "before" benchmark."""
    def refuse(*a, **k):
        raise AssertionError("a stage ran before the settings were checked")

    monkeypatch.setattr(demo, "run_bench", refuse)
    monkeypatch.setattr(demo, "train", refuse)
    out = tmp_path / "d"
    assert main(["demo", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists()


def test_out_that_is_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "run_bench", lambda *a, **k: pytest.fail("ran"))
    a_file = tmp_path / "f"
    a_file.write_text("x")
    for out, match in ((a_file, "is a file"), (a_file / "sub", "cannot write to --out")):
        assert main(["demo", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A tiny target and draft with the bundled tokenizer (the demo runs on the built-in prompts)."""
    from specdec.models import load_tokenizer

    root = tmp_path_factory.mktemp("pair")
    tok = load_tokenizer(TOKENIZER)
    for name, kw in (("target", dict(seed=0, num_layers=2)),
                     ("draft", dict(seed=1, num_layers=1, hidden_size=16, heads=2, kv_heads=1))):
        m = tiny_llama(vocab_size=len(tok), **kw)
        m.config.bos_token_id = m.config.eos_token_id = tok.eos_token_id
        m.config.pad_token_id = tok.pad_token_id
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root / "target", root / "draft"


def test_quick_demo_end_to_end(tiny_pair, tmp_path, capsys):
    """`demo --quick --steps 5` (its int | None flags once came back as strings and crashed)."""
    t, d = tiny_pair
    out = tmp_path / "d"
    argv = ["demo", "--out", str(out), "--quick", "--steps", "5", "--num-prompts", "1", "--max-new-tokens", "6",
            "--threads", "1", "--target", str(t), "--draft", str(d), "--batch-size", "2", "--no-progress",
            "--device", "cpu", "--prompt-tokens", "12", "--new-tokens", "6"]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["steps"] == 5 and summary["distill"]["steps"] == 5
    assert [(r["temperature"], r["gamma"]) for r in summary["rows"]] == [(0.0, 2), (0.0, 4), (1.0, 2), (1.0, 4)]
    # the unseen categories were benchmarked beside the built-in ones, and every greedy row matched
    assert {g["group"] for g in summary["groups"]} >= {"built-in", "unseen", "test", "window"}
    assert summary["goals"]["greedy_equals_plain"] is True and set(summary["best_gamma"]["after"]) == {"0.0", "1.0"}
    # gamma auto ran beside the fixed gammas in both benchmarks: its counts before and after, per temperature
    assert {r["temperature"] for r in summary["auto_gamma"]} == {0.0, 1.0}
    assert all(sum(r["gamma_counts_after"]) > 0 for r in summary["auto_gamma"])
    assert set(summary["goals"]["auto_mean_gamma_change"]) == {"T0", "T1"}
    assert (out / "draft" / "model.safetensors").exists() and (out / "plots" / "training.png").exists()
    for stage in ("before", "after"):
        assert json.loads((out / stage / "results.json").read_text())["meta"]["command"].startswith("specdec bench")
    # the same folder again: refused (nothing overwritten) unless --overwrite
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
