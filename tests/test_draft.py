"""A draft built from its target (specdec/models/draft.py): a head covering some ids (engine/headmap.py),
packing and materialising, and training it on stored target samples (distill/samples.py, subset.py)."""
import json
import math

import pytest
import torch

from conftest import ALPHA, chi2_pvalue, tiny_llama
from distill_helpers import make_cfg, save_pair, weights
from specdec.distill import train
from specdec.distill.data import TeacherTopK, assemble
from specdec.distill.samples import SampleSource, generate, read_shard, write_shard
from specdec.distill.subset import HeadFrame, one_hot_teacher
from specdec.engine.decoding import SpeculativeDecoder, autoregressive_generate
from specdec.engine.headmap import CONFIG_KEY, HeadMap
from specdec.engine.runner import ModelRunner
from specdec.models import load_model
from specdec.models.draft import EMBED_KEY, DraftShape, build, materialize, pack


def _with_head(model, ids):
    """The model with a head covering `ids` only (its other rows zeroed, as a built draft's are)."""
    setattr(model.config, CONFIG_KEY, list(ids))
    with torch.no_grad():
        keep = torch.zeros(model.lm_head.weight.shape[0], dtype=torch.bool)
        keep[list(ids)] = True
        model.lm_head.weight[~keep] = 0.0
    return model


def test_headmap_expand_and_checks():
    hm = HeadMap([1, 3, 4], vocab=6)
    out = hm.expand(torch.tensor([[10.0, 30.0, 40.0]]))
    assert out.tolist() == [[-math.inf, 10.0, -math.inf, 30.0, 40.0, -math.inf]]
    full = hm.expand(torch.arange(6.0)[None])
    assert full.tolist() == [[-math.inf, 1.0, -math.inf, 3.0, 4.0, -math.inf]]
    for bad in ([3, 1], [1, 1], [0, 6], []):
        with pytest.raises(ValueError, match="specdec_head_ids"):
            HeadMap(bad, vocab=6)
    with pytest.raises(ValueError, match="width 4"):
        hm.expand(torch.zeros(1, 4))


@pytest.mark.parametrize("impl", ["hf", "lean", "numpy"])
def test_runner_gives_minus_inf_outside_the_head(impl):
    """Every forward of a head-restricted draft: the covered ids' logits as the full model computes
    them, -inf elsewhere (the lean forwards compute only the covered rows)."""
    ids = [0, 2, 3, 7, 11, 30, 63]
    m = _with_head(tiny_llama(seed=3, num_layers=1, hidden_size=16, heads=2, kv_heads=1), ids)
    x = torch.tensor([[5, 9, 2, 7]])
    with torch.no_grad():
        ref = m(x).logits[0, -1]
    r = ModelRunner(m, 1, 16, impl=impl)
    r.prefill(x, torch.ones_like(x))
    out = r.forward(x[:, -1:], torch.tensor([[3]]), torch.ones((1, 1), dtype=torch.bool))[0, -1]
    assert out.shape == (64,)
    outside = torch.ones(64, dtype=torch.bool)
    outside[ids] = False
    assert bool(torch.isneginf(out[outside]).all())
    torch.testing.assert_close(out[ids], ref[ids], atol=1e-5, rtol=1e-5)


def test_greedy_with_a_head_restricted_draft_equals_plain(target_model):
    draft = _with_head(tiny_llama(seed=1, num_layers=1, hidden_size=16, heads=2, kv_heads=1), range(0, 64, 2))
    ids = torch.tensor([[4, 9, 12, 5, 6], [0, 0, 3, 8, 1], [0, 7, 7, 2, 9]])
    mask = (torch.arange(5)[None] >= torch.tensor([[0], [2], [1]])).long()
    sd = SpeculativeDecoder(target_model, draft, gamma=3).generate(ids, mask, max_new_tokens=24)
    ar = autoregressive_generate(target_model, ids, mask, max_new_tokens=24)
    assert sd.new_tokens == ar.new_tokens
    assert sd.stats.drafted_tokens > 0


def test_sampling_with_a_head_restricted_draft_is_lossless():
    """The target has mass on ids the draft's head lacks: the output still follows the target exactly
    (chi-square at ALPHA), and the draft alone never emits those ids (the negative control)."""
    V = 8
    target = tiny_llama(vocab_size=V, hidden_size=16, heads=2, kv_heads=1, seed=21)
    draft = tiny_llama(vocab_size=V, hidden_size=16, heads=2, kv_heads=1, seed=21)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(0.1 * torch.randn_like(p))
    _with_head(draft, [0, 1, 3, 4, 6])
    prompt = torch.tensor([[3, 5, 1, 6]])
    N = 3000
    out = SpeculativeDecoder(target, draft, gamma=2).generate(prompt.expand(N, -1), max_new_tokens=2,
                                                              temperature=1.0, seed=11)
    assert 0.2 < out.stats.acceptance_rate < 0.95
    with torch.no_grad():
        p1 = torch.softmax(target(prompt).logits[0, -1], -1)
        seqs = torch.cat([prompt.expand(V, -1), torch.arange(V)[:, None]], 1)
        p2 = torch.softmax(target(seqs).logits[:, -1], -1)
    exact = (p1[:, None] * p2).flatten()
    pairs = torch.tensor([o[0] * V + o[1] for o in out.new_tokens])
    assert chi2_pvalue(torch.bincount(pairs, minlength=V * V), exact) > ALPHA
    own = autoregressive_generate(draft, prompt.expand(N, -1), max_new_tokens=2, temperature=1.0, seed=5).new_tokens
    assert all(t in (0, 1, 3, 4, 6) for row in own for t in row)
    q_pairs = torch.tensor([o[0] * V + o[1] for o in own])
    assert chi2_pvalue(torch.bincount(q_pairs, minlength=V * V), exact) < ALPHA


@pytest.mark.parametrize("hidden,layers", [(None, [1]), (16, [])])
def test_build_pack_materialize_round_trip(tmp_path, hidden, layers):
    """A draft from target layers (the target's width) or fresh and narrower (a projected embedding):
    packed without its embedding, materialised from the target, it computes what it did (fp16 rounding)."""
    target = tiny_llama(seed=0, num_layers=2, hidden_size=32)
    target.save_pretrained(tmp_path / "target")
    ids = list(range(3, 60, 3))
    draft = build(target, DraftShape(head_ids=ids, hidden=hidden, target_layers=layers, layers=1))
    assert getattr(draft.config, EMBED_KEY)["projected"] == (hidden is not None)
    if layers:
        torch.testing.assert_close(draft.model.layers[0].mlp.down_proj.weight, target.model.layers[1].mlp.down_proj.weight)
    pack(draft, target.get_input_embeddings().weight, tmp_path / "packed")
    assert not any("embed_tokens" in k for k in weights_packed(tmp_path / "packed"))
    folder = materialize(tmp_path / "packed", tmp_path / "target", tmp_path / "draft")
    loaded = load_model(folder)
    x = torch.tensor([[5, 9, 2, 7, 40]])
    with torch.no_grad():
        a, b = draft(x).logits[0, :, ids], loaded(x).logits[0, :, ids]
    torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
    assert getattr(loaded.config, CONFIG_KEY) == ids


def weights_packed(folder):
    from safetensors.torch import load_file
    return load_file(str(folder / "draft.safetensors"))


def test_restricted_teacher_renormalises_over_the_head():
    m = _with_head(tiny_llama(seed=3, num_layers=1, hidden_size=16, heads=2, kv_heads=1), [1, 2, 5])
    frame = HeadFrame(m)
    p = torch.tensor([[0.5, 0.2, 0.1]])          # ids 5 (covered), 7 (not), 2 (covered); tail 0.2
    t = TeacherTopK(torch.tensor([[5, 7, 2]]), p.log(), torch.tensor([0.2]).log())
    r, keep = frame.restrict(t)
    assert keep.tolist() == [True]
    assert r.idx.tolist() == [[2, 3, 1]]         # K = 3 is the dummy bucket of uncovered ids
    torch.testing.assert_close(r.logp.exp(), torch.tensor([[0.5 / 0.8, 0.0, 0.1 / 0.8]]))
    torch.testing.assert_close(r.tail.exp(), torch.tensor([0.2 / 0.8]))


def test_hard_labels_are_the_cross_entropy_over_the_head():
    ids = [1, 2, 5, 9]
    m = _with_head(tiny_llama(seed=3, num_layers=1, hidden_size=16, heads=2, kv_heads=1), ids)
    frame = HeadFrame(m)
    batch = assemble([[4, 6, 8], [3, 3]], [[5, 2, 7], [9]], 3, 0, "samples")   # 7 is outside the head
    s = frame.student_logits(m, batch)                                       # [4, 4]
    cfg = make_cfg({"target": "t", "draft": "d", "data": None}, "o", divergence="fkl")
    loss = frame.loss(s, one_hot_teacher(batch), None, cfg, normalizer=1.0)
    logq = torch.log_softmax(s, -1)
    expected = -(logq[0, 2] + logq[1, 1] + logq[3, 3])                       # tokens 5, 2, 9; 7 drops out
    torch.testing.assert_close(loss, expected)


@pytest.fixture(scope="module")
def sample_pair(tmp_path_factory):
    """A tiny pair (bundled tokenizer), a head-restricted draft built from the target, and two sample
    shards generated by the target."""
    root = tmp_path_factory.mktemp("samples")
    dirs = save_pair(root)
    target = load_model(dirs["target"])
    ids = list(range(0, 4096, 3)) + [2]
    ids = sorted(set(ids))
    draft = build(target, DraftShape(head_ids=ids, target_layers=[0]))
    draft.config.bos_token_id = draft.config.eos_token_id = target.config.eos_token_id
    draft.config.pad_token_id = target.config.pad_token_id
    draft.save_pretrained(root / "subdraft")
    from specdec.models import load_tokenizer
    load_tokenizer(dirs["target"]).save_pretrained(root / "subdraft")
    (root / "shards").mkdir()
    g = torch.Generator().manual_seed(0)
    for unit in range(2):
        prompts = [torch.randint(3, 4096, (int(n),), generator=g).tolist() for n in (5, 9, 7, 4)]
        gen = generate(target, prompts, 6, [0.0, 1.0, 0.0, 1.0], seed=unit, stop_ids=[2], topk=8)
        write_shard(root / "shards" / f"unit_{unit:05d}.pt", prompts, gen, [{"unit": unit}] * 4)
    return {**dirs, "subdraft": str(root / "subdraft"), "shards": str(root / "shards")}


def test_generate_keeps_the_teachers_top_k(sample_pair):
    d = read_shard(f"{sample_pair['shards']}/unit_00000.pt")
    n = int(d["cont_off"][-1])
    assert d["topk_idx"].shape == (n, 8) and d["tail_logp"].shape == (n,)
    # the greedy rows emitted the teacher's argmax at every step
    for r in (0, 2):
        a, b = int(d["cont_off"][r]), int(d["cont_off"][r + 1])
        assert d["cont_ids"][a:b].tolist() == d["topk_idx"][a:b, 0].tolist()
    total = torch.logsumexp(torch.cat([d["topk_logp"].float(), d["tail_logp"][:, None]], -1), -1)
    torch.testing.assert_close(total, torch.zeros(n), atol=2e-3, rtol=0)


def test_sample_source_is_a_pure_function_of_the_step(sample_pair):
    kw = dict(batch_size=3, micros_per_step=2, prompt_tokens=6, new_tokens=6, seed=0, pad_id=0)
    a, b = SampleSource(sample_pair["shards"], **kw), SampleSource(sample_pair["shards"], **kw)
    b.entry(5, 1)                                # a different history of reads
    x, tx = a.entry(3, 1)
    y, ty = b.entry(3, 1)
    assert torch.equal(x.input_ids, y.input_ids) and torch.equal(tx.idx, ty.idx)
    assert tx.idx.shape[0] == x.num_tokens
    # one epoch visits every row once
    seen = [tuple(a._row_at(k)) for k in range(len(a.rows))]
    assert sorted(seen) == sorted(a.rows)


@pytest.mark.parametrize("hard", [False, True])
def test_training_a_head_restricted_draft_on_samples(tmp_path, sample_pair, hard):
    """FKL on the stored teacher (or cross-entropy with --hard-labels) lowers the loss; the embedding
    (the target's) and the head's uncovered rows are left as they were."""
    cfg = make_cfg(sample_pair, tmp_path / "run", draft=sample_pair["subdraft"], data=None, samples=sample_pair["shards"],
                   data_source="teacher", hard_labels=hard, steps=12, lr=3e-3, prompt_tokens=8, new_tokens=6,
                   batch_size=4, eval_prompts=1, eval_new_tokens=4)
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r.get("kind") == "train"]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    before, after = weights(sample_pair["subdraft"]), weights(tmp_path / "run")
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    ids = getattr(load_model(tmp_path / "run").config, CONFIG_KEY)
    outside = torch.ones(after["lm_head.weight"].shape[0], dtype=torch.bool)
    outside[ids] = False
    assert bool((after["lm_head.weight"][outside] == 0).all())
    assert not torch.equal(before["lm_head.weight"][ids], after["lm_head.weight"][ids])


def test_samples_option_checks():
    with pytest.raises(ValueError, match="--data-source teacher"):
        make_cfg({"target": "t", "draft": "d", "data": None}, "o", samples="s", data_source="student")
    with pytest.raises(ValueError, match="--divergence fkl"):
        make_cfg({"target": "t", "draft": "d", "data": None}, "o", hard_labels=True, divergence="rkl")


def test_a_head_restricted_draft_counts_only_the_weights_a_step_reads():
    from specdec.engine import lean_numpy
    big = tiny_llama(vocab_size=40_000, hidden_size=64, num_layers=1)   # 2 x 2.56M embedding + head
    assert not lean_numpy.is_small(big)
    assert lean_numpy.is_small(_with_head(big, range(0, 40_000, 10)))


def test_load_pair_completes_a_packed_draft_from_its_target(tmp_path, monkeypatch):
    from specdec.models import load_pair
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(tmp_path / "cache"))
    dirs = save_pair(tmp_path)
    target = load_model(dirs["target"])
    draft = build(target, DraftShape(head_ids=list(range(0, 4096, 2)), hidden=16, layers=1, heads=2, kv_heads=1,
                                     intermediate=32))
    pack(draft, target.get_input_embeddings().weight, tmp_path / "packed")
    _, d1, _, vocab = load_pair(dirs["target"], tmp_path / "packed")
    made = list((tmp_path / "cache" / "drafts").iterdir())
    assert len(made) == 1 and vocab == 4096
    _, d2, _, _ = load_pair(dirs["target"], tmp_path / "packed")         # the second load reuses the folder
    assert list((tmp_path / "cache" / "drafts").iterdir()) == made
    x = torch.tensor([[5, 9, 2, 7, 40]])
    with torch.no_grad():
        torch.testing.assert_close(d1(x).logits, d2(x).logits)
        torch.testing.assert_close(d1(x).logits[..., ::2], draft(x).logits[..., ::2], atol=2e-2, rtol=2e-2)
