"""Figures from results.json: every plot written and non-empty, two files overlaid, missing data skipped."""
import json
from pathlib import Path

import pytest

from specdec.benchmark import plots
from specdec.cli import main


def fake_results(scale=1.0, temps=(0.0, 1.0), batch_sizes=(1, 8), gammas=(1, 2, 4), categories=("a", "b"), auto=False):
    """A results.json as specdec bench writes it (only the fields the plots read)."""
    runs = []
    for t in temps:
        for bs in batch_sizes:
            for cat in ("all",) + tuple(categories):
                runs.append({"method": "ar", "gamma": None, "temperature": t, "batch_size": bs, "category": cat,
                             "tokens_per_s": 100.0 * bs ** 0.8, "speedup": None, "mean_accepted_length": 1.0})
                for g in gammas:
                    alpha = 0.7 * scale - 0.1 * t
                    runs.append({"method": "sd", "gamma": g, "temperature": t, "batch_size": bs, "category": cat,
                                 "tokens_per_s": 100.0 * bs ** 0.7 * (1 + alpha * g / 4), "speedup": 1 + alpha * g / 4,
                                 "predicted_speedup": 1.1 + alpha * g / 4, "acceptance_rate": alpha,
                                 "mean_accepted_length": 1 + alpha * g,
                                 "per_position_acceptance": [alpha ** (k + 1) for k in range(g)]})
                    if bs == 1:
                        runs.append({"method": "hf_assisted", "gamma": g, "temperature": t, "batch_size": 1,
                                     "category": cat, "tokens_per_s": 90.0, "speedup": 0.9})
                if auto:
                    runs.append({"method": "sd", "gamma": "auto", "temperature": t, "batch_size": bs, "category": cat,
                                 "tokens_per_s": 150.0 * bs ** 0.7, "speedup": 1.5, "predicted_speedup": 1.6,
                                 "acceptance_rate": 0.5, "alpha": 0.7, "mean_accepted_length": 2.4, "mean_gamma": 2.6,
                                 "gamma_counts": [0, 2, 5, 9, 1], "per_position_acceptance": [0.7, 0.5, 0.35, 0.2]})
                    if bs == 1:
                        runs.append({"method": "hf_assisted_heuristic", "gamma": None, "temperature": t,
                                     "batch_size": 1, "category": cat, "tokens_per_s": 95.0, "speedup": 0.95})
    runs.append({"method": "hf_assisted_default", "gamma": None, "temperature": 0.0, "batch_size": 1,
                 "category": "all", "tokens_per_s": None, "error": "TypeError: nope"})
    meta = {"target": "/m/target", "draft": "/m/draft", "device": "cpu", "device_name": "Test CPU", "dtype": "float32"}
    return {"meta": meta, "runs": runs}


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_all_figures_written_and_non_empty(tmp_path):
    res = _write(tmp_path / "run1" / "results.json", fake_results())
    written = plots.plot_files([res], tmp_path / "figs")
    assert sorted(p.stem for p in written) == sorted(plots.FIGURES)
    for p in written:
        assert p.stat().st_size > 5000
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overlay_of_two_files_through_cli(tmp_path, capsys):
    a = _write(tmp_path / "before" / "results.json", fake_results(scale=0.8))
    b = _write(tmp_path / "after" / "results.json", fake_results(scale=1.2))
    assert plots.default_names([a, b]) == ["before", "after"]
    out = tmp_path / "cmp"
    assert main(["plot", str(a), str(b.parent), "--out", str(out)]) == 0
    assert {p.stem for p in out.glob("*.png")} == set(plots.FIGURES)
    single = tmp_path / "single"
    plots.plot_files([a], single)
    # the overlay draws twice the series, so it is a different (larger) picture
    assert (out / "acceptance.png").stat().st_size > (single / "acceptance.png").stat().st_size


def test_auto_is_drawn(tmp_path, monkeypatch):
    """gamma auto is a star at its mean count in the acceptance and speedup figures, a line in the
    per-position figure, a bar per category and a line against batch size; HF's heuristic schedule a
    horizontal line in the speedup figure."""
    import matplotlib.axes

    labels = {}
    real_plot, real_bar, real_hline = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.bar, matplotlib.axes.Axes.axhline

    def spy(real):
        def wrapped(self, *a, **k):
            labels.setdefault(self.figure, []).append(str(k.get("label")))
            return real(self, *a, **k)
        return wrapped

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy(real_plot))
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy(real_bar))
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", spy(real_hline))
    res = _write(tmp_path / "r" / "results.json", fake_results(auto=True))
    written = plots.plot_files([res], tmp_path / "o")
    assert sorted(p.stem for p in written) == sorted(plots.FIGURES)
    per_figure = list(labels.values())   # in FIGURES order
    drawn = dict(zip(plots.FIGURES, per_figure))
    assert any("auto (at its mean gamma 2.60)" in x for x in drawn["acceptance"])
    assert any("specdec auto T=0" in x for x in drawn["speedup"])
    assert any("HF heuristic schedule" in x for x in drawn["speedup"])
    for name in ("per_position", "category", "batch"):
        assert any("auto" in x for x in drawn[name]), name


def test_absent_data_is_skipped(tmp_path):
    # one batch size, one category, no sd rows at all: only what has data is drawn
    data = fake_results(batch_sizes=(1,), categories=())
    res = _write(tmp_path / "r" / "results.json", data)
    written = {p.stem for p in plots.plot_files([res], tmp_path / "o")}
    assert "batch" not in written and "category" not in written and "speedup" in written
    only_ar = {"meta": {}, "runs": [r for r in data["runs"] if r["method"] == "ar"]}
    res2 = _write(tmp_path / "r2" / "results.json", only_ar)
    assert plots.plot_files([res2], tmp_path / "o2") == []


def test_plot_errors(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["plot", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_committed_results_still_plot(tmp_path, capsys):
    """The results files committed under bench/results (written before BenchRow) still plot."""
    root = Path(__file__).resolve().parents[1] / "bench" / "results"
    assert main(["plot", str(root / "cpu_bundled" / "results.json"), "--out", str(tmp_path / "a")]) == 0
    assert {p.stem for p in (tmp_path / "a").glob("*.png")} == set(plots.FIGURES)
    assert main(["plot", str(root / "demo" / "before"), str(root / "demo" / "after"), "--out", str(tmp_path / "b"),
                 "--names", "before,after"]) == 0
    assert (tmp_path / "b" / "acceptance.png").exists()


@pytest.mark.parametrize("runs, match", [({"ar": 1}, "'runs' is a dict, not a list"), ("x", "'runs' is a str"),
                                         ([["ar", 1]], "row 0 is a list")])
def test_results_of_the_wrong_shape_are_one_line(tmp_path, capsys, runs, match):
    bad = _write(tmp_path / "r" / "results.json", {"meta": {}, "runs": runs})
    assert main(["plot", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err and "Traceback" not in err, err


def test_out_that_cannot_be_a_folder_is_one_line(tmp_path, capsys):
    res = _write(tmp_path / "r" / "results.json", fake_results())
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, match in ((a_file, "is a file, not a folder"), (a_file / "sub", "cannot create --out")):
        assert main(["plot", str(res), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err
    assert a_file.read_text() == "x"


def test_unwritable_out_is_one_line(tmp_path, capsys, monkeypatch):
    """A read-only disk (as root, chmod cannot make one): the figure write fails with EROFS."""
    import errno

    import matplotlib.figure

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", read_only)
    res = _write(tmp_path / "r" / "results.json", fake_results())
    assert main(["plot", str(res), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Read-only file system" in err, err
