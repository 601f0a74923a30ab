"""`specdec bench` end to end on a tiny saved pair: results.json schema, greedy equality, crash safety,
HF failures recorded, the output-folder policy, and user errors as one line with exit code 2."""
import dataclasses
import json
from pathlib import Path

import pytest

from conftest import tiny_llama
from specdec.benchmark import bench as benchmark, results as results_mod
from specdec.cli import main
from specdec.engine import qweights
from specdec.engine.stats import per_token_acceptance
from specdec.benchmark.results import BenchRow
from test_prompts import tiny_tokenizer

DATA = Path(__file__).parent / "data"

# The keys every results.json has carried (the committed files under bench/results use them): BenchRow
# must keep them, and every written row has exactly BenchRow's fields.
LEGACY_KEYS = {"method", "gamma", "temperature", "batch_size", "category", "num_prompts", "new_tokens", "wall_s",
               "tokens_per_s", "speedup", "target_calls", "acceptance_rate", "mean_accepted_length",
               "per_position_acceptance", "draft_cost_ratio", "verify_cost_ratio", "predicted_speedup",
               "outputs_match_ar", "repeats", "alpha", "draft_steps", "predicted_speedup_tau"}
RUN_KEYS = {f.name for f in dataclasses.fields(BenchRow)}
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
    out, cache = tmp_path_factory.mktemp("bench"), tmp_path_factory.mktemp("cost_cache")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("SPECDEC_CACHE_DIR", str(cache))
        rc = bench(pair, out, "--gamma", "1,3,auto", "--temperature", "0,1", "--batch-size", "1,2", "--baselines",
                   "ar,hf")
    assert rc == 0
    assert not any(cache.rglob("*.json"))   # auto read the costs measured in the run, not the cache
    return json.loads((out / "results.json").read_text())


def test_results_schema(results):
    assert LEGACY_KEYS <= RUN_KEYS
    meta, runs = results["meta"], results["runs"]
    assert META_KEYS <= set(meta)
    assert {"torch", "transformers", "python", "specdec"} <= set(meta["versions"])
    assert set(meta["costs"]) == {"1", "2"}
    for c in meta["costs"].values():   # auto's round times: every count it may choose, greedy and sampled
        assert set(c["round_s"]) == {"greedy", "sampling"}
        assert all(set(t) == {str(k) for k in range(1, 9)} for t in c["round_s"].values())
        assert set(c["v"]) == {str(k) for k in range(1, 9)}
        assert c["greedy"] is False                         # the sweep samples: timed on the logits forward
    # the target has a greedy head: its greedy rows are priced by step costs timed on the greedy path
    assert meta["engine"]["greedy_head"] and set(meta["costs_greedy"]) == {"1", "2"}
    assert all(c["greedy"] is True and "round_s" not in c for c in meta["costs_greedy"].values())
    for r in runs:
        if r["method"] == "sd" and isinstance(r["gamma"], int):
            table = meta["costs_greedy" if r["temperature"] == 0 else "costs"][str(r["batch_size"])]
            assert (r["draft_cost_ratio"], r["verify_cost_ratio"]) == (table["c"], table["v"][str(r["gamma"])])
    for r in runs:
        assert set(r) == RUN_KEYS, RUN_KEYS ^ set(r)
        assert r["method"] in results_mod.METHODS
        assert r["error"] is None, r["error"]
        assert r["tokens_per_s"] > 0 and r["wall_s"] > 0 and r["new_tokens"] > 0
        assert r["repeats"]["tokens_per_s"]["n"] == 2
        assert r["repeats"]["tokens_per_s"]["min"] <= r["tokens_per_s"] <= r["repeats"]["tokens_per_s"]["max"]
        if r["method"] != "ar":
            assert r["speedup"] == pytest.approx(
                r["tokens_per_s"] / next(a["tokens_per_s"] for a in runs if a["method"] == "ar" and
                                         all(a[k] == r[k] for k in ("temperature", "batch_size", "category"))))
        if r["method"] in ("ar", "sd"):   # the prompts' prefill is timed apart: decode-only rates are higher
            assert r["decode_tokens_per_s"] > r["tokens_per_s"]
        else:
            assert r["decode_tokens_per_s"] is None and r["decode_speedup"] is None
        if r["method"] == "sd":
            assert r["decode_speedup"] > 0
            assert 0 <= r["acceptance_rate"] <= r["alpha"] <= 1
            # vLLM conventions: MAL = 1 + accepted / steps, acceptance rate = accepted / drafted
            assert r["mean_accepted_length"] >= 1 + r["acceptance_rate"] - 1e-9
            assert r["predicted_speedup"] > 0 and r["draft_cost_ratio"] > 0
            # the chosen counts: a histogram over every row-round of every repeat
            counts = r["gamma_counts"]
            assert sum(n * k for k, n in enumerate(counts)) / sum(counts[1:]) == pytest.approx(r["mean_gamma"])
            if r["gamma"] == "auto":
                assert len(r["per_position_acceptance"]) == len(counts) - 1 <= 9
                assert r["verify_cost_ratio"] is None
            else:
                assert len(r["per_position_acceptance"]) == r["gamma"] == len(counts) - 1
                assert r["verify_cost_ratio"] > 0
    keys = {(r["method"], r["gamma"], r["temperature"], r["batch_size"]) for r in runs}
    # HF assisted only at batch size 1, with and without our gamma
    assert ("hf_assisted", 3, 1.0, 1) in keys and ("hf_assisted_default", None, 0.0, 1) in keys
    assert ("hf_assisted_heuristic", None, 1.0, 1) in keys and ("sd", "auto", 0.0, 2) in keys
    assert not any(m == "hf_assisted" and g == "auto" for m, g, _, _ in keys)   # HF has no auto
    assert not any(m.startswith("hf_assisted") and bs == 2 for m, _, _, bs in keys)
    # transformers' plain generate beside specdec's plain loop, at every batch size
    assert {("hf_generate", None, t, bs) for t in (0.0, 1.0) for bs in (1, 2)} <= keys
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
    real = benchmark.run_batch

    def flaky(inputs, cfg, s, *a):
        if s.temperature > 0 and s.method == "sd":
            raise RuntimeError("boom")
        return real(inputs, cfg, s, *a)

    monkeypatch.setattr(benchmark, "run_batch", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        bench(pair, tmp_path, "--gamma", "1,2", "--temperature", "0,1", "--batch-size", "1", "--baselines", "ar")
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert {(r["method"], r["gamma"], r["temperature"]) for r in runs} == {("ar", None, 0.0), ("sd", 1, 0.0), ("sd", 2, 0.0)}
    assert not list(tmp_path.glob(".*.tmp"))


def test_hf_failure_is_recorded_not_fatal(pair, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise TypeError("assistant_model not supported here")

    monkeypatch.setattr(benchmark.baselines, "hf_assisted_generate", broken)
    assert bench(pair, tmp_path, "--gamma", "2", "--temperature", "0", "--batch-size", "1", "--repeats", "1") == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    hf = [r for r in runs if r["method"].startswith("hf_assisted")]
    assert len(hf) == 3 and all("assistant_model not supported" in r["error"] for r in hf)
    assert next(r for r in runs if r["method"] == "hf_generate")["error"] is None   # plain generate still ran
    assert any(r["method"] == "sd" and r["speedup"] for r in runs)


def _one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert match in err, err


@pytest.mark.parametrize("flags, match", [
    (["--gamma", "0"], "--gamma must be >= 1"),
    (["--gamma", "two"], "--gamma must be an integer"),
    (["--gamma", "1,fast"], "--gamma must be an integer or auto"),
    (["--gamma", "2,auto,2"], "--gamma lists a value twice"),
    (["--temperature", "0,-1"], "--temperature must be a finite number >= 0"),
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
    _one_line_error(capsys, ["bench", "--target", str(t), "--draft", str(other), "--out", str(tmp_path / "out"),
                             "--no-progress"], "tokenizers differ")
    assert not (tmp_path / "out").exists()  # a run that measured nothing leaves the folder as it found it


def test_pure_helpers():
    assert results_mod.make_batches(5, 2) == [[0, 1], [2, 3], [4]]
    assert results_mod.pure_batches([[0, 1], [2, 3], [4]], ["a", "a", "b", "b", "c"]) == {"a": [0], "b": [1], "c": [2]}
    assert results_mod.pure_batches([[0, 1], [2, 3], [4]], ["a", "a", "a", "b", "b"]) == {}  # both split by a mixed batch
    s = results_mod.spread([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    cfg = benchmark.BenchConfig(gamma="1, 2", temperature="0", batch_size=(4,), baselines="")
    assert cfg.gamma == (1, 2) and cfg.temperature == (0.0,) and cfg.baselines == ()
    cfg = benchmark.BenchConfig(gamma="2,Auto", temperature="0")
    assert cfg.gamma == (2, "auto") and cfg.fixed_gammas == (2,) and cfg.cost_gammas == list(range(1, 9))
    assert benchmark.BenchConfig(gamma=(3, 5)).cost_gammas == [3, 5]


@pytest.mark.parametrize("alpha, gamma", [(0.0, 3), (0.3, 1), (0.5, 4), (0.9, 8), (1.0, 2)])
def test_per_token_acceptance_recovers_iid_alpha(alpha, gamma):
    """With i.i.d. acceptance a, per step: E[accepted] = sum_k a^k and P(all accepted) = a^gamma; the
    estimator on these expected counts returns a exactly, while accepted / drafted does not."""
    steps = 1000.0
    accepted = steps * sum(alpha ** k for k in range(1, gamma + 1))
    full = steps * alpha ** gamma
    assert per_token_acceptance(accepted, steps, full) == pytest.approx(alpha)
    if 0 < alpha < 1 and gamma > 1:
        assert accepted / (steps * gamma) < alpha


def test_device_map_reaches_load_pair(pair, tmp_path, monkeypatch):
    """--device-map goes to load_pair (transformers/accelerate place the layers); on this CPU-only test
    machine the real load runs without it."""
    real, seen = benchmark.load_pair, []

    def spy(target, draft, dtype, device, device_map=None, **kw):
        seen.append(device_map)
        return real(target, draft, dtype, device, None, **kw)

    monkeypatch.setattr(benchmark, "load_pair", spy)
    assert bench(pair, tmp_path, "--device-map", "auto", "--gamma", "1", "--temperature", "0", "--batch-size", "1",
                 "--baselines", "ar", "--repeats", "1") == 0
    assert seen == ["auto"]
    meta = json.loads((tmp_path / "results.json").read_text())["meta"]
    assert meta["device_map"] == "auto" and meta["device"] == "cpu"


# ---------------------------------------------------------------------------------------------- output folder

def _no_model_loads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(benchmark, "load_pair", refuse)


def _runs(out):
    return json.loads((out / "results.json").read_text())["runs"]


SMALL = ("--gamma", "1", "--temperature", "0,1", "--batch-size", "1", "--baselines", "ar", "--repeats", "1")


def test_existing_run_is_refused_then_overwritten(pair, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert bench(pair, out, *SMALL) == 0
    before = _runs(out)
    (out / "speedup.png").write_bytes(b"old figure")
    # a second run into the same folder: refused before anything loads, nothing lost
    with monkeypatch.context() as m:
        _no_model_loads(m)
        _one_line_error(capsys, ["bench", "--out", str(out), "--no-progress"], "pass --overwrite to replace it or "
                        "--resume to continue it")
    assert _runs(out) == before and (out / "speedup.png").exists()
    # --overwrite replaces the run: no old figure beside the new results
    assert bench(pair, out, *SMALL, "--gamma", "2", "--overwrite") == 0
    assert {r["gamma"] for r in _runs(out)} == {None, 2} and not (out / "speedup.png").exists()


def _killed_after_the_greedy_group(pair, out, monkeypatch) -> list:
    """A bench run into `out` that dies at its first sampled speculative batch, as a killed run would
    (results.json then holds the greedy group). Returns the temperatures of every batch run_batch is
    asked for, from now on (resumed runs included)."""
    real, calls = benchmark.run_batch, []

    def flaky(inputs, cfg, s, *a):
        calls.append(s.temperature)
        if s.temperature > 0 and s.method == "sd" and not cfg.resume:
            raise RuntimeError("killed")
        return real(inputs, cfg, s, *a)

    monkeypatch.setattr(benchmark, "run_batch", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        bench(pair, out, *SMALL)
    return calls


def test_resume_measures_only_the_missing_groups(pair, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    calls = _killed_after_the_greedy_group(pair, out, monkeypatch)
    greedy = _runs(out)
    saved_costs = {k: json.loads((out / "results.json").read_text())["meta"][k] for k in ("costs", "costs_greedy")}
    (out / "acceptance.png").write_bytes(b"figure of the unfinished run")
    # a changed setting is named, and nothing runs
    _one_line_error(capsys, ["bench", "--out", str(out), "--resume", "--no-progress", *SMALL[:-2], "--repeats", "2",
                             "--target", str(pair[0]), "--draft", str(pair[1]), "--prompts", str(DATA / "prompts.jsonl"),
                             "--max-new-tokens", "8"], "--repeats: 1 -> 2")
    calls.clear()
    assert bench(pair, out, *SMALL, "--resume", "--threads", "1") == 0   # threads may change
    assert set(calls) == {1.0}                                          # the greedy group was not re-run
    runs = _runs(out)
    assert [r for r in runs if r["temperature"] == 0] == greedy          # kept as measured
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert {k: meta[k] for k in saved_costs} == saved_costs and saved_costs["costs_greedy"]   # read back, not re-timed
    assert {(r["method"], r["temperature"]) for r in runs} == {(m, t) for m in ("ar", "sd") for t in (0.0, 1.0)}
    assert all(r["speedup"] for r in runs if r["method"] == "sd")
    assert not (out / "acceptance.png").exists()
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert len(meta["resumed"]) == 1 and set(meta["costs"]) == {"1"}


def test_resume_measures_damaged_costs_again(pair, tmp_path, monkeypatch):
    """Step costs of zero in the results.json being resumed (an edited or damaged file) once reached the
    predictions of the new rows: a ZeroDivisionError after the group ran. They are measured again."""
    out = tmp_path / "run"
    _killed_after_the_greedy_group(pair, out, monkeypatch)
    path = out / "results.json"
    data = json.loads(path.read_text())
    for name in ("costs", "costs_greedy"):
        data["meta"][name]["1"].update(c=0.0, v={k: 0.0 for k in data["meta"][name]["1"]["v"]})
    path.write_text(json.dumps(data))
    assert bench(pair, out, *SMALL, "--resume") == 0
    for name in ("costs", "costs_greedy"):
        costs = json.loads(path.read_text())["meta"][name]["1"]
        assert costs["c"] > 0 and all(v > 0 for v in costs["v"].values()), name
    assert all(r["predicted_speedup"] for r in _runs(out) if r["method"] == "sd" and r["temperature"] == 1.0)
    # costs timed on the other forward (here: a greedy decode's, in a sweep with sampled rows) are measured again
    data = json.loads(path.read_text())
    data["meta"]["costs"]["1"].update(greedy=True, c=123.0)
    path.write_text(json.dumps(data))
    assert bench(pair, out, *SMALL, "--resume") == 0
    costs = json.loads(path.read_text())["meta"]["costs"]["1"]
    assert costs["greedy"] is False and costs["c"] != 123.0


@pytest.mark.parametrize("flags, match", [
    (["--device", "cuda"], "no CUDA device is visible"),
    (["--device", "tpu"], "'tpu' is not a device"),
    (["--device", "cuda:x"], "is not a device"),
    (["--dtype", "float8"], "unknown dtype"),
    (["--temperature", "inf"], "--temperature must be a finite number"),
    (["--temperature", "0,nan"], "--temperature must be a finite number"),
    (["--overwrite", "--resume"], "exclude each other"),
])
def test_bad_device_and_values_fail_before_loading(pair, tmp_path, capsys, monkeypatch, flags, match):
    import torch

    if "cuda" in flags and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _no_model_loads(monkeypatch)
    _one_line_error(capsys, ["bench", "--out", str(tmp_path / "out"), "--no-progress", *flags], match)
    assert not (tmp_path / "out").exists()


def test_out_that_cannot_be_written_fails_before_loading(tmp_path, capsys, monkeypatch):
    import errno

    from specdec.common import outdir

    _no_model_loads(monkeypatch)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    _one_line_error(capsys, ["bench", "--out", str(a_file), "--no-progress"], "is a file, not a folder")
    _one_line_error(capsys, ["bench", "--out", str(a_file / "sub"), "--no-progress"], "cannot write to --out")
    assert a_file.read_text() == "x"

    def read_only(*a, **k):  # as root, chmod cannot make a read-only folder: fail the way EROFS does
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(outdir, "write_json_atomic", read_only)
    _one_line_error(capsys, ["bench", "--out", str(tmp_path / "ro"), "--no-progress"], "Read-only file system")


def test_disk_error_during_the_run_is_one_line(pair, tmp_path, capsys, monkeypatch):
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(benchmark, "write_results", full)
    t, d = pair
    _one_line_error(capsys, ["bench", "--target", str(t), "--draft", str(d), "--out", str(tmp_path / "o"),
                             "--no-progress", "--max-new-tokens", "2", *SMALL], "No space left on device")


def test_results_json_is_standard_json(tmp_path):
    """No NaN / Infinity tokens: a non-finite value is written as null."""
    rows = [BenchRow("sd", 2, 0.0, 1, tokens_per_s=float("inf"), speedup=float("nan"))]
    benchmark.write_results(tmp_path / "results.json", {"x": float("-inf")}, rows)

    def reject(token):
        raise AssertionError(f"non-standard JSON token {token}")

    data = json.loads((tmp_path / "results.json").read_text(), parse_constant=reject)
    assert data["meta"]["x"] is None and data["runs"][0]["tokens_per_s"] is None


def test_temperature_must_be_finite_in_the_api():
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match="--temperature must be a finite number"):
            benchmark.BenchConfig(temperature=(0.0, bad))


# ---------------------------------------------------------------------------------------------- sweep and progress

def test_default_sweep_is_smaller_and_full_is_the_whole_grid():
    small, full = benchmark.BenchConfig(), benchmark.BenchConfig(sweep="full")
    assert (full.gamma, full.temperature, full.batch_size, full.baselines) == ((1, 2, 4, 8, "auto"), (0.0, 1.0),
                                                                                (1, 8), ("ar", "hf", "llamacpp"))
    assert (small.gamma, small.batch_size, small.repeats, full.repeats) == ((2, 4, "auto"), (1,), 2, 3)
    n = {name: sum(len(g) for g in benchmark.plan(c).values()) for name, c in (("small", small), ("full", full))}
    # per temperature: batch 1 = ar + 5 sd + HF generate + 4 HF constant + HF default + HF heuristic,
    # batch 8 = ar + 5 sd + HF generate; no llama.cpp row (the bundled target is no GGUF file)
    assert n["small"] < n["full"] == 2 * (13 + 7)
    # an axis given explicitly wins over the preset
    assert benchmark.BenchConfig(sweep="full", gamma=(3,)).gamma == (3,)
    hf = [s for g in benchmark.plan(full).values() for s in g if s.method.startswith("hf_assisted")]
    assert hf and {s.batch_size for s in hf} == {1}


def test_progress_shows_before_the_models_load(pair, tmp_path, capsys, monkeypatch):
    seen = []

    def spy(*a, **k):
        seen.append(capsys.readouterr().err)
        raise ValueError("stop here")

    monkeypatch.setattr(benchmark, "load_pair", spy)
    assert main(["bench", "--out", str(tmp_path / "o"), *SMALL]) == 2
    assert seen and "loading the models" in seen[0]


# ---------------------------------------------------------------------------------------------- engine

@pytest.mark.parametrize("quantize,impl", [("int8", "auto"), ("none", "hf"), ("auto", "lean"), ("auto", "auto")])
def test_engine_choices_are_recorded_and_stay_exact(pair, tmp_path, quantize, impl):
    """--quantize / --impl reach both the speculative decoders and plain decoding (the same models and
    forward), results.json records what ran, and greedy outputs still equal plain decoding. The default,
    auto / auto: q8_0 on the C kernels for the target (hidden 32), int8 for the draft (hidden 16 is no
    multiple of the 32-wide blocks)."""
    assert bench(pair, tmp_path, "--quantize", quantize, "--impl", impl, "--gamma", "2", "--temperature", "0",
                 "--batch-size", "1,3", "--baselines", "ar", "--repeats", "1") == 0
    data = json.loads((tmp_path / "results.json").read_text())
    engine = data["meta"]["engine"]
    want = {("int8", "auto"): ("int8", "int8"), ("none", "hf"): ("none", "none"), ("auto", "lean"): ("int8", "none"),
            ("auto", "auto"): ("q8_0", "int8")}[quantize, impl]
    assert (engine["quantize"]["target"], engine["quantize"]["draft"]) == want
    impls = {"hf": ("hf", "hf"), "auto": ("numpy", "lean") if quantize == "auto" else ("lean", "lean")}
    assert tuple(engine["resolved_impl"].values()) == impls.get(impl, ("lean", "lean"))
    assert engine["cuda_graphs"] is False
    assert engine["greedy_head"] is ((quantize, impl) == ("auto", "auto"))   # q8_0 on the C kernels: its q8_0 head
    assert all(r["outputs_match_ar"] for r in data["runs"] if r["method"] == "sd")
    assert all(c["greedy"] is True for c in data["meta"]["costs"].values())   # a greedy sweep's step costs


def test_a_sampling_sweep_builds_no_greedy_head(pair, tmp_path, monkeypatch):
    """The greedy head (a second copy of the target's head) is built only where a sweep has greedy rows."""
    built = []
    real = qweights.greedy_of
    monkeypatch.setattr(qweights, "greedy_of", lambda qw: (built.append(qw), real(qw))[1])
    assert bench(pair, tmp_path, "--gamma", "2", "--temperature", "1", "--baselines", "ar", "--repeats", "1") == 0
    meta = json.loads((tmp_path / "results.json").read_text())["meta"]
    assert meta["engine"]["greedy_head"] is False and meta["costs"]["1"]["greedy"] is False
    assert not built


def test_auto_prices_greedy_rows_by_the_greedy_paths_costs(pair, tmp_path, monkeypatch):
    """In a sweep that samples too, gamma auto's greedy rows run on a decoder handed the costs timed on the
    greedy path (meta.costs_greedy, with the round times of meta.costs), its sampled rows on one handed
    meta.costs."""
    handed, decoders, used = [], [], {}
    real_auto, real_group = benchmark._auto_decoder, benchmark.run_group

    def auto(cfg, inputs, costs):
        handed.append(costs)
        decoders.append(real_auto(cfg, inputs, costs))
        return decoders[-1]

    def group(inputs, cfg, settings, progress):
        used[settings[0].temperature] = decoders.index(inputs.decoders["auto"])
        return real_group(inputs, cfg, settings, progress)
    monkeypatch.setattr(benchmark, "_auto_decoder", auto)
    monkeypatch.setattr(benchmark, "run_group", group)
    assert bench(pair, tmp_path, "--gamma", "auto", "--temperature", "0,1", "--baselines", "", "--repeats", "1") == 0
    meta = json.loads((tmp_path / "results.json").read_text())["meta"]
    assert [c[1]["greedy"] for c in handed] == [False, True]
    assert handed[1][1]["round_s"] == handed[0][1]["round_s"] and handed[1][1]["c"] == meta["costs_greedy"]["1"]["c"]
    assert used == {0.0: 1, 1.0: 0}


def test_truncated_weights_are_one_line(pair, tmp_path):
    """A truncated model.safetensors once ended in the safetensors reader's traceback."""
    import shutil
    import subprocess
    import sys
    broken = tmp_path / "broken"
    shutil.copytree(pair[1], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    r = subprocess.run([sys.executable, "-m", "specdec", "bench", "--target", str(pair[0]), "--draft", str(broken),
                        "--out", str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().count("\n") == 0 and "truncated or corrupt" in r.stderr


def test_format_auto_shift():
    """What the demo prints to show that auto drafts more once the draft is distilled."""
    def auto_row(alpha, mean, counts, speedup, temp=0.0):
        return BenchRow("sd", "auto", temp, 1, alpha=alpha, mean_gamma=mean, gamma_counts=counts, speedup=speedup,
                        tokens_per_s=100.0)

    before = [auto_row(0.55, 1.8, [1, 20, 10], 1.10), auto_row(0.5, 1.5, [1, 10, 5], 1.0, temp=1.0)]
    after = [auto_row(0.75, 3.4, [1, 0, 5, 10, 5], 1.40), auto_row(0.7, 2.9, [1, 2, 8, 6], 1.3, temp=1.0)]
    text = benchmark.format_auto_shift(before, after)
    lines = text.splitlines()
    assert "auto k before" in lines[0] and "auto k after" in lines[0]
    assert "+1.60" in lines[2] and "+1.40" in lines[3]
    assert "before {0:1, 1:20, 2:10}  after {0:1, 2:5, 3:10, 4:5}" in text
    assert benchmark.format_auto_shift([], after) == ""


def test_ignore_eos_decodes_every_token(pair, tmp_path, monkeypatch):
    """--ignore-eos: every method decodes max_new_tokens for every prompt. The control makes every id an
    end-of-sequence token, so without the flag each answer stops after its first token; with it none does,
    and the run records the setting (its config, which --resume checks)."""
    monkeypatch.setattr(benchmark.BenchInputs, "eos", property(lambda self: list(range(self.vocab))))
    common = ("--gamma", "2", "--temperature", "0,1", "--baselines", "ar", "--repeats", "1")
    for flag, per_prompt in (((), 1), (("--ignore-eos",), 8)):
        out = tmp_path / ("on" if flag else "off")
        assert bench(pair, out, *common, *flag) == 0
        data = json.loads((out / "results.json").read_text())
        assert data["meta"]["config"]["ignore_eos"] is bool(flag)
        rows = [r for r in data["runs"] if r["category"] == "all"]
        assert {r["method"] for r in rows} == {"ar", "sd"} and len(rows) == 4
        assert all(r["new_tokens"] == per_prompt * r["num_prompts"] for r in rows)
