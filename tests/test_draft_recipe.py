"""The SmolLM2 draft recipe's scripts (bench/smollm2_draft_*.py) run end to end on a tiny pair at tiny
settings: data, split, head ids, an initial draft, training on the samples, scoring, packing, the
Spec-Bench evaluation (what they report is measured by running them for real)."""
import json

from conftest import bench_script
from distill_helpers import ROOT, make_cfg, save_pair
from specdec.distill import train
from specdec.distill.samples import read_shard
from specdec.models import load_pair, load_tokenizer

CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_the_recipe_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(tmp_path / "cache"))
    dirs = save_pair(tmp_path)
    tok = load_tokenizer(dirs["target"])
    tok.chat_template = CHAT
    tok.save_pretrained(dirs["target"])
    data = bench_script("smollm2_draft_data", monkeypatch)
    assert data.main(["--target", dirs["target"], "--out", str(tmp_path / "data"), "--units", "2", "--batch", "4",
                      "--new-tokens", "5", "--stage1-tokens", "6", "--topk", "4", "--impl", "auto"]) == 0
    # a folder holds one recipe: other settings are refused before anything is written, a longer run resumes
    before = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert data.main(["--target", dirs["target"], "--out", str(tmp_path / "data"), "--units", "2", "--batch", "4",
                      "--new-tokens", "5", "--stage1-tokens", "6", "--topk", "8", "--impl", "auto"]) == 2
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == before
    assert data.main(["--target", dirs["target"], "--out", str(tmp_path / "data"), "--units", "1", "--batch", "4",
                      "--new-tokens", "5", "--stage1-tokens", "6", "--topk", "4", "--impl", "auto"]) == 0
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == before
    # the target as specdec runs it quantized writes the same kind of shard
    assert data.main(["--target", dirs["target"], "--out", str(tmp_path / "data_q8a"), "--units", "1", "--batch",
                      "4", "--new-tokens", "5", "--stage1-tokens", "6", "--topk", "4", "--quantize", "q8_0-q8a"]) == 0
    assert read_shard(tmp_path / "data_q8a" / "unit_00000.pt")["topk_idx"].shape[1] == 4
    shard = read_shard(tmp_path / "data" / "unit_00001.pt")
    assert len(shard["meta"]) == 4 and all(m["user"] for m in shard["meta"])
    assert shard["topk_idx"].shape == (int(shard["cont_off"][-1]), 4)

    recipe = bench_script("smollm2_draft_train", monkeypatch)
    assert recipe.main(["split", "--samples", str(tmp_path / "data"), "--out", str(tmp_path / "split")]) == 0
    assert len(list((tmp_path / "split" / "train").iterdir())) == 2
    head = tmp_path / "head.json"
    assert recipe.main(["head", "--samples", str(tmp_path / "split" / "train"), "--size", "64", "--vocab", "4096",
                        "--out", str(head)]) == 0
    assert 2 in json.loads(head.read_text())["ids"]
    assert recipe.main(["init", "--target", dirs["target"], "--head", str(head), "--shape", "t1",
                        "--out", str(tmp_path / "init")]) == 0
    cfg = make_cfg(dirs, tmp_path / "run", draft=str(tmp_path / "init"), data=None,
                   samples=str(tmp_path / "split" / "train"), data_source="teacher", steps=3, prompt_tokens=16,
                   new_tokens=5, batch_size=2, eval_prompts=1, eval_new_tokens=2)
    train(cfg)

    feas = bench_script("smollm2_draft_feasibility", monkeypatch)
    assert feas.main(["--target", dirs["target"], "--samples", str(tmp_path / "data"), "--out",
                      str(tmp_path / "feas.json"), "--sizes", "16,64", "--head", "64", "--layers", "1",
                      "--batches", "1"]) == 0
    f = json.loads((tmp_path / "feas.json").read_text())
    assert 0 <= f["coverage"]["64"]["argmax"] <= 1 and "first1_head64" in f["candidates"]
    assert feas.main(["--target", dirs["target"], "--samples", str(tmp_path / "data"), "--out",
                      str(tmp_path / "score.json"), "--batches", "1", "--draft", f"run={tmp_path / 'run'}"]) == 0
    assert 0 <= json.loads((tmp_path / "score.json").read_text())["drafts"]["run"]["greedy_agreement"] <= 1

    assert recipe.main(["pack", "--target", dirs["target"], "--draft", str(tmp_path / "run"),
                        "--out", str(tmp_path / "packed")]) == 0
    _, draft, _, _ = load_pair(dirs["target"], tmp_path / "packed")
    assert draft.config.num_hidden_layers == 1

    ev = bench_script("smollm2_draft_eval", monkeypatch)
    out = tmp_path / "eval.json"
    assert ev.main(["--target", dirs["target"], "--draft", f"run={tmp_path / 'run'}", "--questions",
                    str(ROOT / "tests" / "data" / "spec_bench_question.jsonl"), "--out", str(out),
                    "--per-category", "1", "--new-tokens", "4", "--timing", "--timing-tokens", "3",
                    "--impl", "auto"]) == 0
    r = json.loads(out.read_text())
    assert r["acceptance"]["run/T0"]["categories"]["writing"]["greedy_equals_plain"] is True
    assert set(r["acceptance"]) == {"run/T0", "run/T1"} and r["timing"]["c"]["run"] > 0


def test_a_data_folder_from_before_an_option_resumes_at_its_default(tmp_path, monkeypatch):
    data = bench_script("smollm2_draft_data", monkeypatch)
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"target": "t", "batch": 96, "units": 12}))   # written before --quantize
    assert data.settings_problem(settings, {"target": "t", "batch": 96, "units": 60, "quantize": "none"},
                                 {"quantize": "none"}) is None
    problem = data.settings_problem(settings, {"target": "t", "batch": 96, "units": 60, "quantize": "gguf-q8a"},
                                    {"quantize": "none"})
    assert "(--quantize: 'none' -> 'gguf-q8a'): write to another --out" in problem
