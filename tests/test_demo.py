"""`specdec demo`: the before/after comparison, every setting checked before the first stage, and the
whole loop end to end on a tiny pair (bench -> distill -> bench through Python calls)."""
import json
from pathlib import Path

import pytest

from conftest import tiny_llama
from specdec import demo
from specdec.cli import main
from specdec.results import BenchRow

TOKENIZER = Path(__file__).resolve().parents[1] / "specdec" / "assets" / "draft"


def _rows(mal0, mal1):
    rows = [BenchRow("ar", None, 0.0, 1, mean_accepted_length=1.0)]
    for T, mal in ((0.0, mal0), (1.0, mal1)):
        rows.append(BenchRow("sd", 4, T, 1, mean_accepted_length=mal, acceptance_rate=(mal - 1) / 4, speedup=mal / 2))
    return rows


def test_demo_compares_before_and_after_results():
    rows = demo.compare(_rows(2.0, 1.5), _rows(2.5, 1.8))
    assert [(r["temperature"], r["gamma"]) for r in rows] == [(0.0, 4), (1.0, 4)]
    assert rows[0]["mal_gain_pct"] == pytest.approx(25.0) and rows[1]["mal_gain_pct"] == pytest.approx(20.0)
    assert "gain %" in demo.format_table(rows)
    q = demo.DemoConfig(out="x", quick=True)
    assert q.steps < demo.DemoConfig(out="x").steps and q.gamma == (2, 4)


@pytest.mark.parametrize("flags, match", [(["--lr", "-1"], "--lr must be > 0"),
                                          (["--batch-size", "0"], "--batch-size must be >= 1"),
                                          (["--train-temperature", "-1"], "--train-temperature must be >= 0"),
                                          (["--gamma", "0"], "--gamma values must be >= 1"),
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
            "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["steps"] == 5 and summary["distill"]["steps"] == 5
    assert [(r["temperature"], r["gamma"]) for r in summary["rows"]] == [(0.0, 2), (0.0, 4), (1.0, 2), (1.0, 4)]
    assert (out / "draft" / "model.safetensors").exists() and (out / "plots" / "training.png").exists()
    for stage in ("before", "after"):
        assert json.loads((out / stage / "results.json").read_text())["meta"]["command"].startswith("specdec bench")
    # the same folder again: refused (nothing overwritten) unless --overwrite
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
