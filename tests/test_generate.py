"""`specdec generate` on a tiny saved pair: JSON output, status lines and --no-progress, --threads, and
bad input as one line before any model loads."""
import json

import pytest

from specdec.cli import generate
from specdec.cli import main
from test_benchmark import pair  # noqa: F401 - the tiny saved pair fixture


def _argv(pair, *extra):
    t, d = pair
    return ["generate", "--target", str(t), "--draft", str(d), "--prompt", "a b, c d", "--prompt", "one two",
            "--max-new-tokens", "5", "--device", "cpu", *extra]


def test_json_output_without_progress(pair, capsys, monkeypatch):  # noqa: F811
    import torch

    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    assert main(_argv(pair, "--json", "--no-progress", "--threads", "1", "--gamma", "2")) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["gamma"] == 2 and summary["outputs_match_ar"] is True and summary["new_tokens"] > 0
    assert captured.err == "" and threads == [1]


def test_gamma_auto_and_int8(pair, capsys, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(tmp_path))
    assert main(_argv(pair, "--json", "--no-progress", "--gamma", "auto", "--quantize", "int8")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["gamma"] == "auto" and summary["quantize"] == "int8" and summary["outputs_match_ar"] is True
    assert summary["mean_gamma"] >= 1


def test_status_lines_and_prompts_with_commas(pair, capsys):  # noqa: F811
    assert main(_argv(pair)) == 0
    captured = capsys.readouterr()
    assert "[generate] loading the models" in captured.err and "speculative decoding" in captured.err
    assert "a b, c d<<<" in captured.out and "one two<<<" in captured.out  # the comma stays inside one prompt


@pytest.mark.parametrize("flags, match", [(["--device", "cuda"], "no CUDA device is visible"),
                                          (["--device", "gpu0"], "is not a device"),
                                          (["--temperature", "nan"], "--temperature must be a finite number"),
                                          (["--top-p", "0"], "--top-p must be in (0, 1]"),
                                          (["--threads", "0"], "--threads must be >= 1")])
def test_bad_input_fails_before_loading(pair, capsys, monkeypatch, flags, match):  # noqa: F811
    import torch

    if "cuda" in flags and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(generate, "load_pair", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(_argv(pair, *flags)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def test_api_rejects_nan_temperature():
    with pytest.raises(ValueError, match="finite"):
        generate.GenerateConfig(temperature=float("nan"))
