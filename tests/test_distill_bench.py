"""The distillation benchmark scripts' pure parts: bench/distill_matrix.py (cells, curves, gains) and
bench/distill_throughput.py (rates and goals), without training anything."""
import json
import re

import pytest

from conftest import bench_script


def test_matrix_cells_parse_and_reject_bad_ones(monkeypatch):
    m = bench_script("distill_matrix", monkeypatch)
    assert m.parse_cell("fkl:student", 1e-3) == ("fkl", "student", 1e-3)
    assert m.parse_cell("rkl:cache-dataset:3e-3", 1e-3) == ("rkl", "cache-dataset", 3e-3)
    assert m.cell_name("rkl", "cache-dataset", 3e-3) == "rkl-cache-dataset-lr0.003"
    for bad in ("kl:student", "fkl:web", "fkl", "fkl:student:fast", "fkl:student:1:2"):
        with pytest.raises(ValueError, match="--cells"):
            m.parse_cell(bad, 1e-3)
    with pytest.raises(ValueError, match="--cells"):
        m.MatrixConfig(out="x", cells=("fkl:student", "tvd:cache-student"))


def test_matrix_settings_fail_before_any_model_loads(tmp_path, monkeypatch, capsys):
    """A trainer setting the matrix cannot run (--steps 0, a cell's negative lr) is argparse's usage error
    (exit code 2), not a traceback after the models and the first evaluation (it once was)."""
    m = bench_script("distill_matrix", monkeypatch)
    monkeypatch.setattr(m, "before", lambda *a: pytest.fail("reached the models"))
    for argv, match in ((["--steps", "0"], "--steps must be >= 1"),
                        (["--cells", "fkl:skd:-1"], "--lr must be > 0.*fkl:skd:-1")):
        with pytest.raises(SystemExit) as e:
            m.main(["--out", str(tmp_path / "m"), *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and re.search(match, err.splitlines()[-1])
    assert not (tmp_path / "m").exists()


def test_matrix_curve_counts_tokens_and_time_up_to_each_evaluation(tmp_path, monkeypatch):
    m = bench_script("distill_matrix", monkeypatch)
    rows = [{"step": 1, "kind": "train", "tokens": 100, "step_s": 2.0},
            {"step": 2, "kind": "train", "tokens": 90, "step_s": 3.0},
            {"step": 2, "kind": "eval", "mean_accepted_length_T0": 2.5, "mean_accepted_length_T1": 2.0,
             "est_acceptance_T0": 0.6, "est_acceptance_T1": 0.5, "est_acceptance": 0.6},
            {"step": 3, "kind": "train", "tokens": 100, "step_s": 1.0},
            {"step": 3, "kind": "eval", "mean_accepted_length_T0": 3.0, "mean_accepted_length_T1": 2.2,
             "est_acceptance_T0": 0.7, "est_acceptance_T1": 0.55}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = m.curve(tmp_path / "metrics.jsonl")
    assert [(p["step"], p["tokens"], p["train_s"]) for p in c] == [(2, 190, 5.0), (3, 290, 6.0)]
    assert "est_acceptance" not in c[0]                      # only the per-temperature keys
    before = {"mean_accepted_length_T0": 2.0, "mean_accepted_length_T1": 2.0, "est_acceptance_T0": 0.5,
              "est_acceptance_T1": 0.5}
    g = m.gains(before, c[-1])
    assert g["gain_mean_accepted_length_T0"] == pytest.approx(50.0) and g["gain_est_acceptance_T1"] == pytest.approx(10.0)
    rows = m.table_rows(before, [{"cell": "a", "curve": c}])
    assert rows[1]["gain_T1"] == pytest.approx(10.0) and rows[1]["minutes"] == pytest.approx(0.1)


def test_throughput_rates_are_medians_over_rounds_and_goals_by_kind(monkeypatch):
    t = bench_script("distill_throughput", monkeypatch)
    times = {"raw": [(1000, 1.0), (1000, 0.5), (1000, 2.0)], "cache:dataset": [(600, 1.0), (600, 1.0), (600, 2.0)],
             "student": [(150, 1.0), (150, 1.0), (250, 1.0)], "dataset": [(300, 1.0)]}
    rows = {r["job"]: r for r in t.summarise(times)}
    assert rows["raw"]["tokens_per_s"] == 1000 and rows["raw"]["fraction_of_raw"] == 1.0
    assert rows["cache:dataset"]["fraction_of_raw"] == pytest.approx(0.6) and rows["cache:dataset"]["met"] is True
    assert rows["student"]["kind"] == "on_policy" and rows["student"]["met"] is False      # 0.15 < 0.2
    assert rows["dataset"]["goal"] is None and rows["dataset"]["met"] is None
    with pytest.raises(ValueError, match="--sources"):
        t.ThroughputConfig(sources=("cache:student",))
