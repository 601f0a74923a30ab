"""DistillSpec trainer, data sources and teacher cache on tiny models built in-process."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_llama
from specdec.distill.data import PromptSet, left_pad, make_batch, skd_generate, skd_replace
from specdec.distill.trainer import DistillConfig, train

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "specdec" / "assets" / "draft"


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    """A tiny target and draft saved with the bundled tokenizer (4096 ids), plus a JSONL data file."""
    from specdec.models import load_tokenizer
    root = tmp_path_factory.mktemp("pair")
    tok = load_tokenizer(TOKENIZER)
    V = len(tok)
    dirs = {}
    for name, kw in (("target", dict(seed=0, num_layers=2, hidden_size=32)),
                     ("draft", dict(seed=1, num_layers=1, hidden_size=16, heads=2, kv_heads=1))):
        m = tiny_llama(vocab_size=V, **kw)
        m.config.bos_token_id = m.config.eos_token_id = tok.eos_token_id
        m.config.pad_token_id = tok.pad_token_id
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        dirs[name] = str(root / name)
    src = (ROOT / "specdec" / "decoding.py").read_text().splitlines()
    lines = [json.dumps({"prompt": "\n".join(src[i:i + 6]), "completion": "\n".join(src[i + 6:i + 12])})
             for i in range(0, 240, 12)]
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    dirs["data"] = str(root / "data.jsonl")
    return dirs


def _cfg(pair_dirs, out, **kw):
    base = dict(out=str(out), target=pair_dirs["target"], draft=pair_dirs["draft"], data=pair_dirs["data"],
                data_source="dataset", prompt_tokens=12, new_tokens=6, batch_size=4, steps=4, lr=1e-2,
                warmup_steps=0, eval_every=0, spec_eval_every=0, eval_prompts=4, save_every=0, progress=False)
    base.update(kw)
    return DistillConfig(**base)


def _weights(path):
    from safetensors.torch import load_file
    return load_file(str(Path(path) / "model.safetensors"))


def _assert_same_weights(a, b, atol=0.0):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0 if atol == 0 else 1e-4, msg=k)


# ---------------------------------------------------------------------------------------------- SKD

def test_skd_keeps_topk_proposals_and_replaces_the_rest():
    torch.manual_seed(0)
    V, K = 20, 5
    logits = torch.randn(200, V)
    proposed = torch.randint(0, V, (200,))
    topk = logits.topk(K, -1).indices
    inside = (topk == proposed[:, None]).any(-1)
    assert 0 < int(inside.sum()) < 200
    # greedy: a replaced token is the target's argmax
    tok, replaced = skd_replace(proposed, logits, K, temperature=0.0)
    assert torch.equal(replaced, ~inside)
    assert torch.equal(tok[inside], proposed[inside])
    assert torch.equal(tok[~inside], logits.argmax(-1)[~inside])
    # sampling: a replaced token is a sample of the target (here: a one-hot-ish target must give its mode)
    peaked = logits.clone()
    peaked[torch.arange(200), 3] = 100.0
    g = torch.Generator().manual_seed(1)
    tok, replaced = skd_replace(proposed, peaked, K, temperature=1.0, generator=g)
    assert (tok[replaced] == 3).all()
    assert torch.equal(tok[~replaced], proposed[~replaced])
    # K = V never replaces anything: SKD with K = V is pure on-policy sampling
    tok, replaced = skd_replace(proposed, logits, V, temperature=1.0, generator=g)
    assert not replaced.any() and torch.equal(tok, proposed)


def test_skd_generate_with_k_equal_v_is_the_drafts_greedy_output(target_model, draft_model):
    from specdec.decoding import autoregressive_generate
    ids = torch.randint(3, 64, (3, 7), generator=torch.Generator().manual_seed(0))
    ids, mask = left_pad([ids[0].tolist(), ids[1, 2:].tolist(), ids[2, 4:].tolist()], 0)
    got = skd_generate(target_model, draft_model, ids, mask, 6, 0.0, 64, 64)
    ref = autoregressive_generate(draft_model, ids, mask, max_new_tokens=6).new_tokens
    assert got == ref
    # K = 1 at greedy: every token is the target's argmax, i.e. the target's greedy output
    got = skd_generate(target_model, draft_model, ids, mask, 6, 0.0, 1, 64)
    assert got == autoregressive_generate(target_model, ids, mask, max_new_tokens=6).new_tokens


# ---------------------------------------------------------------------------------------------- data

def test_batches_are_deterministic_and_masked(pair_dirs):
    from specdec.models import load_model, load_tokenizer
    tok = load_tokenizer(pair_dirs["draft"])
    draft = load_model(pair_dirs["draft"])
    ps = PromptSet(tok, 12, 6, jsonl=pair_dirs["data"])
    kw = dict(batch_size=3, seed=0, temperature=1.0, pad_id=tok.pad_token_id, eos_ids=[], vocab_size=len(tok),
              draft=draft)
    a = make_batch(ps, source="student", step=5, micro=1, **kw)
    b = make_batch(ps, source="student", step=5, micro=1, **kw)
    c = make_batch(ps, source="student", step=6, micro=1, **kw)
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)
    assert a.cont_mask.shape == (3, 6) and a.num_tokens == 18
    d = make_batch(ps, source="dataset", step=5, micro=1, **kw)
    assert d.source == "dataset" and d.input_ids.shape[1] == a.input_ids.shape[1]
    # mix: the fraction of student batches follows lmbda
    srcs = [make_batch(ps, source="mix", lmbda=0.25, step=s, micro=0, **kw).source for s in range(40)]
    assert 3 <= srcs.count("student") <= 18 and set(srcs) == {"student", "dataset"}


def test_prompt_only_jsonl_rejects_the_dataset_source(tmp_path, pair_dirs):
    from specdec.models import load_tokenizer
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "def f(x):\n"}) + "\n")
    tok = load_tokenizer(pair_dirs["draft"])
    ps = PromptSet(tok, 12, 6, jsonl=tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match="needs completions"):
        make_batch(ps, source="dataset", batch_size=2, seed=0, step=0, micro=0, temperature=1.0, pad_id=1,
                   vocab_size=len(tok))


def test_config_validates_early(tmp_path):
    with pytest.raises(ValueError, match="beta"):
        DistillConfig(out=str(tmp_path), divergence="jsd", beta=0.0)
    with pytest.raises(ValueError, match="data-source"):
        DistillConfig(out=str(tmp_path), data_source="web")
    with pytest.raises(ValueError, match="teacher-cache"):
        DistillConfig(out=str(tmp_path), data_source="student", teacher_cache=str(tmp_path))
    with pytest.raises(ValueError, match="--out"):
        DistillConfig(out=None)


# ---------------------------------------------------------------------------------------------- training

def test_few_steps_lower_the_divergence_and_output_loads(tmp_path, pair_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    cfg = _cfg(pair_dirs, tmp_path / "run", data_source="student", divergence="fkl", steps=8, eval_every=8,
               spec_eval_every=8, temperature=1.0)
    final = train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 8]
    assert evals[-1]["eval_divergence"] < evals[0]["eval_divergence"]
    assert "mean_accepted_length" in final and final["mean_accepted_length"] >= 1.0
    assert len([r for r in rows if r["kind"] == "train"]) == 8
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    tok = AutoTokenizer.from_pretrained(tmp_path / "run")
    assert len(tok) == m.config.vocab_size
    ref = AutoModelForCausalLM.from_pretrained(pair_dirs["draft"])
    assert not torch.equal(m.model.embed_tokens.weight, ref.model.embed_tokens.weight)


@pytest.mark.parametrize("source", ["student", "skd"])
def test_resume_ends_with_the_same_weights(tmp_path, pair_dirs, source):
    """A run resumed from its step-2 checkpoint (what a kill after step 2 leaves) ends where the
    uninterrupted run ends, bit for bit: data and samples are functions of (seed, step)."""
    out = tmp_path / "run"
    train(_cfg(pair_dirs, out, data_source=source, steps=4, save_every=2, grad_accum=2, batch_size=2))
    full = tmp_path / "full"
    full.mkdir()
    (full / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    assert (out / "checkpoints" / "latest").read_text() == "step_000002"
    (out / "model.safetensors").unlink()
    train(_cfg(pair_dirs, out, data_source=source, steps=4, save_every=2, grad_accum=2, batch_size=2, resume=True))
    _assert_same_weights(out, full)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path, pair_dirs):
    train(_cfg(pair_dirs, tmp_path / "run", steps=2, save_every=1))
    with pytest.raises(ValueError, match="--resume"):
        train(_cfg(pair_dirs, tmp_path / "run", steps=2, save_every=1))


def test_teacher_cache_round_trip(tmp_path, pair_dirs):
    """Training from a cache with K = V gives the weights of training against the live target."""
    from specdec.distill.cache import CacheConfig, TeacherCache, build_cache
    common = dict(data=pair_dirs["data"], prompt_tokens=12, new_tokens=6, batch_size=4, temperature=1.0, seed=0)
    cdir = build_cache(CacheConfig(out=str(tmp_path / "cache"), target=pair_dirs["target"], topk=4096, steps=3,
                                   micro_batches=1, device="cpu", **common))
    e = TeacherCache(cdir).entry(1, 0)
    assert e["topk_idx"].shape == (e["batch"].num_tokens, 4096)
    train(_cfg(pair_dirs, tmp_path / "live", steps=3))
    train(_cfg(pair_dirs, tmp_path / "cached", steps=3, teacher_cache=str(cdir)))
    _assert_same_weights(tmp_path / "live", tmp_path / "cached", atol=1e-5)
    # a small K (with its tail bucket) trains too, and a mismatched run is refused
    cdir2 = build_cache(CacheConfig(out=str(tmp_path / "cache8"), target=pair_dirs["target"], topk=8, steps=2,
                                    micro_batches=1, device="cpu", **common))
    train(_cfg(pair_dirs, tmp_path / "k8", steps=2, teacher_cache=str(cdir2)))
    with pytest.raises(ValueError, match="does not match"):
        train(_cfg(pair_dirs, tmp_path / "bad", steps=2, new_tokens=7, teacher_cache=str(cdir2)))


def test_two_process_ddp_matches_one_process_accumulation(tmp_path, pair_dirs):
    """torchrun --nproc_per_node 2 (gloo) trains the same weights as one process accumulating the same
    two micro-batches: the loss is normalised by the global token count and rank 0 writes."""
    args = ["--target", pair_dirs["target"], "--draft", pair_dirs["draft"], "--data", pair_dirs["data"],
            "--data-source", "student", "--prompt-tokens", "12", "--new-tokens", "6", "--batch-size", "2",
            "--steps", "2", "--lr", "1e-2", "--warmup-steps", "0", "--eval-every", "0", "--spec-eval-every", "0",
            "--eval-prompts", "2", "--save-every", "0", "--no-progress", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "specdec", "distill", "--out", str(tmp_path / "ddp"), *args]
    # own session: on a timeout the launcher AND its workers are killed, never left orphaned
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-3000:]
    train(_cfg(pair_dirs, tmp_path / "one", data_source="student", batch_size=2, steps=2, grad_accum=2))
    _assert_same_weights(tmp_path / "ddp", tmp_path / "one", atol=1e-5)
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in rows if r["kind"] == "train"] == [24, 24]
