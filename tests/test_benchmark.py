"""`specdec bench` end to end on a tiny saved pair: results.json schema, greedy equality, crash safety,
HF failures recorded, and user errors as one line with exit code 2."""
import json
from pathlib import Path

import pytest

from conftest import tiny_llama
from specdec import benchmark
from specdec.cli import main
from test_prompts import tiny_tokenizer

DATA = Path(__file__).parent / "data"

RUN_KEYS = {"method", "gamma", "temperature", "batch_size", "category", "num_prompts", "new_tokens", "wall_s",
            "tokens_per_s", "speedup", "target_calls", "acceptance_rate", "mean_accepted_length",
            "per_position_acceptance", "draft_cost_ratio", "verify_cost_ratio", "predicted_speedup",
            "outputs_match_ar", "repeats"}
META_KEYS = {"target", "draft", "device", "dtype", "versions", "commit", "command", "prompts_source", "date", "costs"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Tiny target and draft saved with the same tokenizer, so the loaders run as for real models."""
    root = tmp_path_factory.mktemp("pair")
    tok = tiny_tokenizer()
    for name, model in (("target", tiny_llama(seed=0, num_layers=2)),
                        ("draft", tiny_llama(seed=1, num_layers=1, hidden_size=16, heads=2, kv_heads=1))):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root / "target", root / "draft"


def bench(pair, out, *extra):
    t, d = pair
    return main(["bench", "--target", str(t), "--draft", str(d), "--prompts", str(DATA / "prompts.jsonl"),
                 "--max-new-tokens", "8", "--warmup", "1", "--repeats", "2", "--out", str(out), "--no-plots",
                 "--no-progress", *extra])


@pytest.fixture(scope="module")
def results(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = bench(pair, out, "--gamma", "1,3", "--temperature", "0,1", "--batch-size", "1,2", "--baselines", "ar,hf")
    assert rc == 0
    return json.loads((out / "results.json").read_text())


def test_results_schema(results):
    meta, runs = results["meta"], results["runs"]
    assert META_KEYS <= set(meta)
    assert {"torch", "transformers", "python", "specdec"} <= set(meta["versions"])
    assert set(meta["costs"]) == {"1", "2"}
    for r in runs:
        assert RUN_KEYS <= set(r), RUN_KEYS - set(r)
        assert r["method"] in benchmark.METHODS
        assert "error" not in r, r["error"]
        assert r["tokens_per_s"] > 0 and r["wall_s"] > 0 and r["new_tokens"] > 0
        assert r["repeats"]["tokens_per_s"]["n"] == 2
        assert r["repeats"]["tokens_per_s"]["min"] <= r["tokens_per_s"] <= r["repeats"]["tokens_per_s"]["max"]
        if r["method"] != "ar":
            assert r["speedup"] == pytest.approx(
                r["tokens_per_s"] / next(a["tokens_per_s"] for a in runs if a["method"] == "ar" and
                                         all(a[k] == r[k] for k in ("temperature", "batch_size", "category"))))
        if r["method"] == "sd":
            assert 0 <= r["acceptance_rate"] <= r["alpha"] <= 1
            assert len(r["per_position_acceptance"]) == r["gamma"]
            # vLLM conventions: MAL = 1 + accepted / steps, acceptance rate = accepted / drafted
            assert r["mean_accepted_length"] >= 1 + r["acceptance_rate"] - 1e-9
            assert r["predicted_speedup"] > 0 and r["draft_cost_ratio"] > 0 and r["verify_cost_ratio"] > 0
    keys = {(r["method"], r["gamma"], r["temperature"], r["batch_size"]) for r in runs}
    # HF assisted only at batch size 1, with and without our gamma
    assert ("hf_assisted", 3, 1.0, 1) in keys and ("hf_assisted_default", None, 0.0, 1) in keys
    assert not any(m.startswith("hf") and bs == 2 for m, _, _, bs in keys)
    # batch 1: a row per category and "all"; batch 2 mixes letters/numbers, so only the pure ones
    cats1 = {r["category"] for r in runs if r["method"] == "sd" and r["batch_size"] == 1}
    assert cats1 == {"all", "letters", "numbers", "default"}
    cats2 = {r["category"] for r in runs if r["method"] == "sd" and r["batch_size"] == 2}
    assert cats2 == {"all", "letters"}
    all1 = next(r for r in runs if r["method"] == "ar" and r["batch_size"] == 1 and r["category"] == "all")
    assert all1["num_prompts"] == 4


def test_greedy_outputs_match_ar(results):
    greedy = [r for r in results["runs"] if r["temperature"] == 0 and r["method"] != "ar"]
    assert greedy and all(r["outputs_match_ar"] is True for r in greedy)
    assert all(r["outputs_match_ar"] is None for r in results["runs"] if r["temperature"] > 0)


def test_crash_midway_keeps_rows(pair, tmp_path, monkeypatch):
    """The sweep dies in its second group (temperature 1): the greedy group's rows are on disk."""
    real = benchmark._Run._run_batch

    def flaky(self, method, gamma, temp, *a):
        if temp > 0 and method == "sd":
            raise RuntimeError("boom")
        return real(self, method, gamma, temp, *a)

    monkeypatch.setattr(benchmark._Run, "_run_batch", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        bench(pair, tmp_path, "--gamma", "1,2", "--temperature", "0,1", "--batch-size", "1", "--baselines", "ar")
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert {(r["method"], r["gamma"], r["temperature"]) for r in runs} == {("ar", None, 0.0), ("sd", 1, 0.0), ("sd", 2, 0.0)}
    assert not list(tmp_path.glob(".*.tmp"))


def test_hf_failure_is_recorded_not_fatal(pair, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise TypeError("assistant_model not supported here")

    monkeypatch.setattr(benchmark, "hf_assisted_generate", broken)
    assert bench(pair, tmp_path, "--gamma", "2", "--temperature", "0", "--batch-size", "1", "--repeats", "1") == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    hf = [r for r in runs if r["method"].startswith("hf")]
    assert len(hf) == 2 and all("assistant_model not supported" in r["error"] for r in hf)
    assert any(r["method"] == "sd" and r["speedup"] for r in runs)


def _one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert match in err, err


@pytest.mark.parametrize("flags, match", [
    (["--gamma", "0"], "--gamma values must be >= 1"),
    (["--gamma", "two"], "--gamma must be a comma-separated list"),
    (["--temperature", "0,-1"], "--temperature values must be >= 0"),
    (["--prompts", "/no/such/prompts.jsonl"], "does not exist"),
    (["--target", "/no/such/model"], "does not exist"),
    (["--baselines", "ar,vllm"], "unknown baseline"),
])
def test_flag_errors(pair, tmp_path, capsys, flags, match):
    t, d = pair
    _one_line_error(capsys, ["bench", "--target", str(t), "--draft", str(d), "--out", str(tmp_path), "--no-progress",
                             *flags], match)


def test_prompt_file_errors(pair, tmp_path, capsys):
    t, d = pair
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a b"}\n{"prompt": "a b"}\n{"prompt": oops}\n')
    base = ["bench", "--target", str(t), "--draft", str(d), "--out", str(tmp_path), "--no-progress"]
    _one_line_error(capsys, base + ["--prompts", str(empty)], "is empty")
    _one_line_error(capsys, base + ["--prompts", str(bad)], "line 3")


def test_mismatched_tokenizers(pair, tmp_path, capsys):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    t, _ = pair
    other = tmp_path / "other_draft"
    tiny_llama(seed=2, num_layers=1, hidden_size=16, heads=2, kv_heads=1).save_pretrained(other)
    vocab = {f"x{i}": i for i in range(64)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="x3")), pad_token="x0",
                            eos_token="x2").save_pretrained(other)
    _one_line_error(capsys, ["bench", "--target", str(t), "--draft", str(other), "--out", str(tmp_path),
                             "--no-progress"], "tokenizers differ")


def test_pure_helpers():
    assert benchmark.make_batches(5, 2) == [[0, 1], [2, 3], [4]]
    assert benchmark.pure_batches([[0, 1], [2, 3], [4]], ["a", "a", "b", "b", "c"]) == {"a": [0], "b": [1], "c": [2]}
    assert benchmark.pure_batches([[0, 1], [2, 3], [4]], ["a", "a", "a", "b", "b"]) == {}  # both split by a mixed batch
    s = benchmark.spread([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    cfg = benchmark.BenchConfig(gamma="1, 2", temperature="0", batch_size=(4,), baselines="")
    assert cfg.gamma == (1, 2) and cfg.temperature == (0.0,) and cfg.baselines == ()


@pytest.mark.parametrize("alpha, gamma", [(0.0, 3), (0.3, 1), (0.5, 4), (0.9, 8), (1.0, 2)])
def test_per_token_acceptance_recovers_iid_alpha(alpha, gamma):
    """With i.i.d. acceptance a, per step: E[accepted] = sum_k a^k and P(all accepted) = a^gamma; the
    estimator on these expected counts returns a exactly, while accepted / drafted does not."""
    steps = 1000.0
    accepted = steps * sum(alpha ** k for k in range(1, gamma + 1))
    full = steps * alpha ** gamma
    assert benchmark.per_token_acceptance(accepted, steps, full) == pytest.approx(alpha)
    if 0 < alpha < 1 and gamma > 1:
        assert accepted / (steps * gamma) < alpha


def test_device_map_reaches_load_pair(pair, tmp_path, monkeypatch):
    """--device-map goes to load_pair (transformers/accelerate place the layers); on this CPU-only test
    machine the real load runs without it."""
    import specdec.models as models

    real, seen = models.load_pair, []

    def spy(target, draft, dtype, device, device_map=None):
        seen.append(device_map)
        return real(target, draft, dtype, device, None)

    monkeypatch.setattr(models, "load_pair", spy)
    assert bench(pair, tmp_path, "--device-map", "auto", "--gamma", "1", "--temperature", "0", "--batch-size", "1",
                 "--baselines", "ar", "--repeats", "1") == 0
    assert seen == ["auto"]
    meta = json.loads((tmp_path / "results.json").read_text())["meta"]
    assert meta["device_map"] == "auto" and meta["device"] == "cpu"
