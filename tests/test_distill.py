"""DistillSpec trainer and data sources on tiny models built in-process (the teacher cache:
test_teacher_cache.py; output folders, resume and user errors: test_distill_runs.py)."""
import ast
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import bench_script
from distill_helpers import ROOT, assert_same_weights, make_cfg, save_pair
from specdec.distill import DistillConfig, train
from specdec.distill.data import PromptSet, assemble, continuation_logits, left_pad, make_batch, unseen_prompts
from specdec.distill.rollout import Rollout, pick, sample_rows
from specdec.distill.schedule import warmup_cosine
from specdec.distill.skd import skd_generate, skd_replace
from specdec.distill.trainer import learning_rate


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    return save_pair(tmp_path_factory.mktemp("pair"))


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
    from specdec.engine.decoding import autoregressive_generate
    ids = torch.randint(3, 64, (3, 7), generator=torch.Generator().manual_seed(0))
    ids, mask = left_pad([ids[0].tolist(), ids[1, 2:].tolist(), ids[2, 4:].tolist()], 0)
    got = skd_generate(target_model, draft_model, ids, mask, 6, 0.0, 64, 64)
    ref = autoregressive_generate(draft_model, ids, mask, max_new_tokens=6).new_tokens
    assert got.rows() == ref
    # K = 1 at greedy: every token is the target's argmax, i.e. the target's greedy output
    got = skd_generate(target_model, draft_model, ids, mask, 6, 0.0, 1, 64)
    assert got.rows() == autoregressive_generate(target_model, ids, mask, max_new_tokens=6).new_tokens


def test_skd_keeps_the_targets_logits_of_a_forward_over_the_sequence(target_model, draft_model):
    """The kept logits replace the trainer's target forward: they must be what that forward computes,
    position by position, on rows of different prompt lengths (left padding) at temperature 1."""
    ids = torch.randint(3, 64, (3, 9), generator=torch.Generator().manual_seed(2))
    ids, mask = left_pad([ids[0].tolist(), ids[1, 3:].tolist(), ids[2, 6:].tolist()], 0)
    g = torch.Generator().manual_seed(0)
    out = skd_generate(target_model, draft_model, ids, mask, 7, 1.0, 3, 64, g)
    batch = assemble([r[r != 0].tolist() for r in ids], out.rows(), 7, 0, "skd")
    torch.testing.assert_close(out.kept[batch.cont_mask], continuation_logits(target_model, batch, 64),
                               atol=1e-4, rtol=1e-4)


def test_rollout_rows_are_cut_after_the_first_eos():
    r = Rollout(torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8]]), None)
    assert r.rows([2]) == [[5, 2], [5, 6, 7, 8]] and r.rows() == [[5, 2, 7, 2], [5, 6, 7, 8]]


def test_sample_rows_draws_each_rows_distribution():
    """Inverse-CDF sampling, one uniform per row: chi-square against the row's distribution (false-alarm
    rate 1e-3 per row), zero-mass ids never drawn, unnormalised rows accepted."""
    from conftest import chi2_pvalue
    probs = torch.tensor([[0.5, 0.0, 0.25, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0, 3.0], [0.1, 0.2, 0.3, 0.4, 0.0]])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_rows(probs, g) for _ in range(4000)])                    # [n, 3]
    for row in range(3):
        counts = torch.bincount(draws[:, row], minlength=5)
        assert (counts[probs[row] == 0] == 0).all()
        assert chi2_pvalue(counts, probs[row]) > 1e-3, (row, counts)
    assert torch.equal(pick(torch.tensor([[0.1, 3.0, -1.0]]), 0.0), torch.tensor([1]))


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


def test_teacher_source_keeps_the_targets_logits_and_the_trainer_uses_them(pair_dirs):
    """The teacher source samples from the target and keeps its logits: they equal the target's forward
    over the finished sequence, and the loss reads them instead of running the target again."""
    from types import SimpleNamespace
    from specdec.distill.trainer import micro_loss
    from specdec.models import load_model, load_tokenizer
    tok = load_tokenizer(pair_dirs["draft"])
    target, draft = load_model(pair_dirs["target"]), load_model(pair_dirs["draft"])
    V = len(tok)
    ps = PromptSet(tok, 12, 6, jsonl=pair_dirs["data"])
    b = make_batch(ps, source="teacher", batch_size=3, seed=0, step=1, micro=0, temperature=1.0,
                   pad_id=tok.pad_token_id, vocab_size=V, target=target)
    assert b.teacher_logits.shape == (b.num_tokens, V)
    torch.testing.assert_close(b.teacher_logits, continuation_logits(target, b, V), atol=1e-4, rtol=1e-4)
    cfg = DistillConfig(out="x", divergence="fkl")

    def refuse(*a, **k):
        raise AssertionError("the target ran although the batch carries its logits")
    job = SimpleNamespace(cfg=cfg, model=draft, target=refuse, vocab=V)
    kept = micro_loss(job, b, None, normalizer=b.num_tokens)
    b.teacher_logits = None
    job.target = target
    assert float(kept) == pytest.approx(float(micro_loss(job, b, None, normalizer=b.num_tokens)), rel=1e-4)


def _fake_stdlib(root):
    """A stdlib-shaped folder: test/test_*.py modules and modules on both sides of the held-out split."""
    import zlib
    lines = "".join(f"x{i} = {i}  # line {i}\n" for i in range(200))
    (root / "test").mkdir(parents=True)
    for i in range(3):
        (root / "test" / f"test_m{i}.py").write_text(lines)
    (root / "test" / "test_tiny.py").write_text("x = 1\n")
    held = [n for n in (f"mod{i}.py" for i in range(60)) if zlib.crc32(n.encode()) % 10 == 0]
    for name in held[:2] + ["not_held_a.py", "not_held_b.py"]:
        (root / name).write_text(lines)
    return held[:2]


def test_unseen_prompts_are_windows_of_tests_and_held_out_modules(tmp_path):
    held = _fake_stdlib(tmp_path)
    got = unseen_prompts(2, chars=300, root=tmp_path)
    assert [p["category"] for p in got] == ["test", "test", "window", "window"]
    assert {p["id"] for p in got if p["category"] == "window"} == {f"window-{n[:-3]}" for n in held}
    for p in got:  # whole lines, from the middle of the file, at most `chars` long
        assert p["prompt"].endswith("\n") and p["prompt"].startswith("x") and 0 < len(p["prompt"]) <= 300
        assert int(p["prompt"].split(" ")[0][1:]) >= 100
    assert got == unseen_prompts(2, chars=300, root=tmp_path)


def test_evaluation_reports_every_temperature(target_model, draft_model):
    from specdec.distill.evaluate import evaluate
    cfg = DistillConfig(out="x", eval_temperatures=(0.0, 1.0), eval_new_tokens=5, eval_gamma=2)
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    row = evaluate(target_model, draft_model, prompts, cfg, 64, 0, spec=True)
    for key in ("est_acceptance", "mean_accepted_length", "alpha", "eval_divergence"):
        assert row[key] == row[f"{key}_T0"] and f"{key}_T1" in row
    assert row["eval_tokens"] == 10 and not draft_model.training
    assert DistillConfig(out="x", temperature=0.0).eval_temperatures == (0.0,)
    with pytest.raises(ValueError, match="--eval-temperatures"):
        DistillConfig(out="x", eval_temperatures=(float("nan"),))


def test_prompt_only_jsonl_rejects_the_dataset_source(tmp_path, pair_dirs):
    from specdec.models import load_tokenizer
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "def f(x):\n"}) + "\n")
    tok = load_tokenizer(pair_dirs["draft"])
    ps = PromptSet(tok, 12, 6, jsonl=tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match="without \"completion\""):
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


# ---------------------------------------------------------------------------------------------- schedule

def test_one_warmup_cosine_schedule_for_distillation_and_pretraining(monkeypatch):
    assert [warmup_cosine(s, 4, 0.0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(4, 4, 0.0) == 1.0
    assert warmup_cosine(9, 4, 0.5) == pytest.approx(0.55)
    assert warmup_cosine(9, 4, 1.0) == pytest.approx(0.1) and warmup_cosine(9, 4, 7.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 0, 1.0, min_frac=0.0) == pytest.approx(0.0)
    cfg = DistillConfig(out="x", steps=14, warmup_steps=4, lr=1e-3)
    assert learning_rate(cfg, 0) == pytest.approx(2.5e-4)
    assert learning_rate(cfg, 9) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    # bench/train_pair.py's pretraining uses the same function (progress: its step or time budget)
    train_pair = bench_script("train_pair", monkeypatch)
    tc = train_pair.TrainConfig(model="draft", lr=2e-3, warmup_steps=4)
    assert train_pair.lr_at(0.5, 9, tc) == pytest.approx(2e-3 * warmup_cosine(9, 4, 0.5))


# ---------------------------------------------------------------------------------------------- structure

MINE = sorted((ROOT / "specdec" / "distill").glob("*.py")) + [ROOT / "specdec" / "data" / "prompts.py",
                                                             ROOT / "specdec" / "data" / "corpus.py"]


def _module(path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _specdec_imports(path, tree_nodes):
    """Names of the specdec modules imported by these import nodes of `path`."""
    package = list(path.relative_to(ROOT).parent.parts)
    out = []
    for node in tree_nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            names = [".".join(base + ([node.module] if node.module else []))]
            if not node.module:  # from . import x
                names = [".".join(base + [a.name]) for a in node.names]
            out += names
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("specdec"):
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("specdec")]
    return out


def test_no_import_cycles_not_even_function_local():
    """Imports of specdec modules sit at module level (a function-local one would hide a cycle), and the
    module-level ones of these files form no cycle."""
    graph = {}
    for path in MINE:
        tree = ast.parse(path.read_text())
        local = [n for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not _specdec_imports(path, local), f"{path.name} imports a specdec module inside a function"
        graph[_module(path)] = set(_specdec_imports(path, tree.body))

    def visit(node, stack):
        assert node not in stack, "import cycle: " + " -> ".join(stack + [node])
        for nxt in graph.get(node, ()):
            visit(nxt, stack + [node])
    for node in graph:
        visit(node, [])


# ---------------------------------------------------------------------------------------------- training

def test_few_steps_lower_the_divergence_and_output_loads(tmp_path, pair_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    cfg = make_cfg(pair_dirs, tmp_path / "run", data_source="student", divergence="fkl", steps=8, eval_every=8,
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
    train(make_cfg(pair_dirs, out, data_source=source, steps=4, save_every=2, grad_accum=2, batch_size=2))
    full = tmp_path / "full"
    full.mkdir()
    (full / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000002"]
    (out / "model.safetensors").unlink()
    train(make_cfg(pair_dirs, out, data_source=source, steps=4, save_every=2, grad_accum=2, batch_size=2, resume=True))
    assert_same_weights(out, full)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path, pair_dirs):
    train(make_cfg(pair_dirs, tmp_path / "run", steps=2, save_every=1))
    with pytest.raises(ValueError, match="--resume"):
        train(make_cfg(pair_dirs, tmp_path / "run", steps=2, save_every=1))


def _torchrun(argv, timeout=120) -> tuple[int, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "specdec",
           *argv]
    # own session: on a timeout the launcher AND its workers are killed, never left orphaned
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, err


def test_two_process_ddp_matches_one_process_accumulation(tmp_path, pair_dirs):
    """torchrun --nproc_per_node 2 (gloo) trains the same weights as one process accumulating the same
    two micro-batches: the loss is normalised by the global token count and rank 0 writes. A folder
    rank 0 refuses is refused by every rank with the same line (none waits for rank 0 and dies with a
    traceback)."""
    args = ["distill", "--out", str(tmp_path / "ddp"), "--target", pair_dirs["target"], "--draft", pair_dirs["draft"],
            "--data", pair_dirs["data"], "--data-source", "student", "--prompt-tokens", "12", "--new-tokens", "6",
            "--batch-size", "2", "--steps", "2", "--lr", "1e-2", "--warmup-steps", "0", "--eval-every", "0",
            "--spec-eval-every", "0", "--eval-prompts", "2", "--save-every", "0", "--no-progress", "--device", "cpu"]
    rc, err = _torchrun(args)
    assert rc == 0, err[-3000:]
    train(make_cfg(pair_dirs, tmp_path / "one", data_source="student", batch_size=2, steps=2, grad_accum=2))
    assert_same_weights(tmp_path / "ddp", tmp_path / "one", atol=1e-5)
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in rows if r["kind"] == "train"] == [24, 24]
    rc, err = _torchrun(args)
    assert rc != 0 and err.count("already holds a `specdec distill` run") == 2 and "[rank1]: Traceback" not in err
