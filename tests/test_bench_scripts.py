"""The timing scripts under bench/ run end to end on the bundled pair at tiny settings (what they report
is measured by running them for real; here: that they run, write what they say, and clean up)."""
import json

import pytest

from conftest import bench_script


def test_round_phases_times_every_step_and_patches_nothing(tmp_path, monkeypatch, capsys):
    from specdec.engine import decoding, runner
    before = dict(decoding.SpeculativeDecoder.__dict__), dict(decoding._Call.__dict__), runner.ModelRunner.forward
    m = bench_script("round_phases", monkeypatch)
    out = tmp_path / "phases.json"
    assert m.main(["--gamma", "2", "--temperature", "0,1", "--num-prompts", "1", "--max-new-tokens", "6",
                   "--repeats", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["gamma"], r["temperature"]) for r in rows] == [(2, 0.0), (2, 1.0)]   # one row each, over both passes
    for r in rows:
        assert r["rounds"] > 0 and r["round_ms"] > 0
        assert all(r[f"{s}_ms"] > 0 for s in ("draft", "score", "verify", "commit", "retire"))
        assert r["forwards_ms"]["target S=3"] > 0     # gamma 2: every verify forward feeds 3 tokens
    # timed through the decoder's public hook: no method of the decoder or the runner was replaced
    assert dict(decoding.SpeculativeDecoder.__dict__) == before[0] and dict(decoding._Call.__dict__) == before[1]
    assert runner.ModelRunner.forward is before[2]
    with pytest.raises(SystemExit) as e:
        m.main(["--repeats", "0"])
    assert e.value.code == 2


def test_step_costs_reports_every_path_beside_its_floor(tmp_path, monkeypatch):
    m = bench_script("step_costs", monkeypatch)
    out = tmp_path / "steps.json"
    assert m.main(["--device", "cpu", "--threads", "1", "--iters", "1", "--prompt-len", "8", "--gamma", "1",
                   "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["read_bandwidth_GBps"] > 0
    paths = {(r["model"], r["path"], r["precision"]) for r in d["rows"]}
    assert {("target", "lean", "int8"), ("draft", "numpy", "float32"), ("target", "hf-dynamic", "float32")} <= paths
    assert all(r["ms"] > 0 and r["floor_ms"] > 0 for r in d["rows"])


def test_hugepages_ab_times_both_layouts_and_restores_the_arena(tmp_path, monkeypatch):
    from conftest import tiny_llama
    from specdec.engine import qkernels, qweights
    if qkernels.available() is not None:
        pytest.skip("the C kernels do not build here")
    tiny_llama(vocab_size=64, hidden_size=64, num_layers=2, heads=4, kv_heads=2).save_pretrained(tmp_path / "t")
    arena = qweights._huge_arena
    m = bench_script("hugepages_ab", monkeypatch)
    out = tmp_path / "ab.json"
    assert m.main(["--target", str(tmp_path / "t"), "--quantize", "q8_0", "--contexts", "8,20", "--iters", "3",
                   "--out", str(out)]) == 0
    ms = json.loads(out.read_text())["ms"]
    assert set(ms) == {"8", "20"} and all(v > 0 for c in ms.values() for v in c.values())
    assert set(ms["8"]) == {"4k S=1", "4k S=2", "huge S=1", "huge S=2"}
    assert qweights._huge_arena is arena


def test_kv_cache_ab_times_both_caches_beside_their_floor(tmp_path, monkeypatch):
    from conftest import tiny_llama
    from specdec.engine import qkernels
    if qkernels.available() is not None:
        pytest.skip("the C kernels do not build here")
    tiny_llama(vocab_size=64, hidden_size=64, num_layers=2, heads=4, kv_heads=2).save_pretrained(tmp_path / "t")
    m = bench_script("kv_cache_ab", monkeypatch)
    out = tmp_path / "ab.json"
    assert m.main(["--target", str(tmp_path / "t"), "--quantize", "q8_0", "--contexts", "8,20", "--tokens", "1,3",
                   "--iters", "3", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert [(r["context"], r["tokens"]) for r in d["rows"]] == [(8, 1), (8, 3), (20, 1), (20, 3)]
    for r in d["rows"]:
        assert r["float32"]["ms"] > 0 and r["float16"]["ms"] > 0 and r["float32/float16"] > 0
        # the cache's bytes in each floor: 2 layers x K, V x 2 heads x 16 x 4 or 2 bytes a column
        assert r["float32"]["bytes"] - r["float16"]["bytes"] == 2 * 2 * 2 * 16 * 2 * (r["context"] + r["tokens"])


def test_ngram_replay_predicts_the_engines_rounds(tmp_path, monkeypatch):
    """bench/ngram_replay.py on the bundled target: its replay of the engine's rule makes exactly the
    rounds the decoder makes (same target calls over the same prompts), for every min_ngram and cap, with
    and without an n-gram store (one of the target's own answers: its proposals are accepted), and
    gamma="auto"'s rule priced by the same v."""
    import torch
    from specdec import SpeculativeDecoder, autoregressive_generate
    from specdec.data.prompts import load_prompts
    from specdec.engine.ngram import NgramDraft, NgramStore
    from specdec.models import bundled_pair, load_pair
    from specdec.engine import ngram
    m = bench_script("ngram_replay", monkeypatch)
    out, store_file = tmp_path / "replay.json", tmp_path / "store.npz"
    target_dir = str(bundled_pair()[0])
    target, _, tok, vocab = load_pair(target_dir, "ngram")
    prompts, _ = load_prompts("builtin:code", tok, 1, "auto")
    ids = [torch.tensor([tok(p["prompt"], add_special_tokens=False).input_ids]) for p in prompts]
    answers = [autoregressive_generate(target, i, max_new_tokens=16, vocab_size=vocab).new_tokens[0] for i in ids]
    NgramStore([i[0, -2:].tolist() + a for i, a in zip(ids, answers)], min_count=1, tau=0.3).save(store_file)
    assert m.main(["--target", target_dir, "--prompts", "builtin:code", "--num-prompts", "1",
                   "--max-new-tokens", "12,24", "--store", str(store_file), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    replays = {(r["new_tokens"], r["rule"], r["min_ngram"], r["cap"]): r for r in res["replays"]}
    assert len(replays) == 2 * 3 * (3 * len(m.CAPS) + 1)
    assert set(res["costs"]["v"]) == {str(c) for c in set(m.CAPS) | set(m.LONG)}
    store = NgramStore.load(store_file)
    long = {r["cap"] for r in res["replays"] if r["rule"] == "auto"}
    assert len(long) == 1 and ngram.AUTO_CAP <= min(long) <= ngram.LONG_CAP_MAX
    costs = {1: {"c": res["costs"]["c"], "v": {int(k): x for k, x in res["costs"]["v"].items()}}}
    drafted = {}
    for rule, caps in (("match", (2, 8)), ("store", (2, 8)), ("auto", long)):
        for min_ngram in (1, 2, 3):
            for cap in caps:
                draft = NgramDraft(min_ngram=min_ngram, store=store if rule != "match" else None)
                dec = SpeculativeDecoder(target, draft, gamma="auto" if rule == "auto" else cap, vocab_size=vocab,
                                         costs=costs if rule == "auto" else None)
                calls = tokens = 0
                for i in ids:
                    st = dec.generate(i, max_new_tokens=24, eos_token_id=tok.eos_token_id).stats
                    calls, tokens = calls + st.target_calls, tokens + st.new_tokens
                    drafted[rule] = drafted.get(rule, 0) + st.drafted_tokens
                r = replays[(24, rule, min_ngram, cap)]
                assert (r["rounds"], r["tokens_per_round"]) == (calls, tokens / calls), (rule, min_ngram, cap)
    # the lookups proposed something (the comparison is not all plain steps), the store more
    assert 0 < drafted["match"] < drafted["store"]


def test_ngram_store_from_texts(tmp_path, monkeypatch, capsys):
    """bench/ngram_store.py --text: the texts' tokens under the target's tokenizer, loadable as a draft."""
    from specdec.engine import ngram
    from specdec.models import bundled_pair
    from specdec.models.load import load_tokenizer
    m = bench_script("ngram_store", monkeypatch)
    target = str(bundled_pair()[0])
    src, out = tmp_path / "answers.jsonl", tmp_path / "store.npz"
    texts = ["def f(x):\n    return x + 1\n", "import os\nprint(os.getcwd())\n"]
    src.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    assert m.main(["--text", str(src), "--target", target, "--min-count", "1", "--out", str(out)]) == 0
    store = ngram.as_ngram(f"ngram:{out}").store
    tok = load_tokenizer(target)
    assert [s.tolist() for s in store.sequences] == [tok(t, add_special_tokens=False).input_ids for t in texts]
    assert store.min_count == 1 and store.tau == ngram.STORE_TAU
    with pytest.raises(SystemExit, match="--text needs --target"):
        m.main(["--text", str(src), "--out", str(out)])
    src.write_text('{"txt": 1}\n')
    with pytest.raises(SystemExit, match="line 1 is not a JSON object"):
        m.main(["--text", str(src), "--target", target, "--out", str(out)])
    with pytest.raises(SystemExit, match="no sample shards"):
        m.main(["--samples", str(tmp_path), "--out", str(out)])


def test_amx_probe_kernel_equals_its_reference(tmp_path, monkeypatch):
    """bench/amx_probe.py: the AMX design it times gives the bits of its scalar reference at every shape
    and row count, and each row records both kernels' times. Skipped where the compiler or the kernel
    refuses AMX (no AMX-INT8 CPU, no arch_prctl)."""
    m = bench_script("amx_probe", monkeypatch)
    out = tmp_path / "amx.json"
    if m.main(["--rows", "1,5", "--reps", "3", "--out", str(out)]) == 2:
        pytest.skip("no AMX-INT8 here")
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 * (1 + 4)                                   # 4 shapes; 5 rows also per phase left out
    assert all(r["differ_from_reference"] == 0 for r in rows if r["phases"] == "all")
    assert all(r["q8a_us"] > 0 and r["amx_us"] > 0 for r in rows)
