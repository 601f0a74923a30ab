"""The decode loops: greedy equality with plain decoding (every batch size), ragged batches, KV-cache
state after rejections, lossless sampling at the generate level, and input validation."""
import copy

import pytest
import torch

from conftest import ALPHA, chi2_pvalue, tiny_llama
from specdec import SpeculativeDecoder, autoregressive_generate, verify
from specdec.engine.stats import DecodeStats
from specdec.engine.sampling import mask_logits, probs_from_logits


def _noisy_copy(model, scale, seed=0):
    """A draft that agrees with the target part of the time: the target's weights plus noise."""
    d = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return d


@pytest.fixture(scope="module")
def partial_draft(target_model):
    return _noisy_copy(target_model, 0.03)


def _batch(B=5, P=9, V=64, seed=5):
    """Left-padded prompts of different lengths (row i has P - 2*i real tokens, at least 1)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, P), generator=g)
    mask = torch.ones_like(ids)
    for i in range(B):
        mask[i, : min(2 * i, P - 1)] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("impl", ["lean", "numpy", "hf"])
def test_greedy_equals_plain_and_hf(target_model, draft_model, partial_draft, impl):
    ids, mask = _batch()
    ar = autoregressive_generate(target_model, ids, mask, max_new_tokens=24, impl=impl)
    hf = target_model.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=0)
    assert [h[ids.shape[1]:].tolist() for h in hf] == ar.new_tokens
    for draft, gamma in ((partial_draft, 1), (partial_draft, 4), (draft_model, 3), (target_model, 5)):
        sd = SpeculativeDecoder(target_model, draft, gamma=gamma, impl=impl).generate(ids, mask, max_new_tokens=24)
        assert sd.new_tokens == ar.new_tokens, (gamma, draft is target_model)
        assert sd.stats.new_tokens == sum(map(len, ar.new_tokens))


def test_acceptance_extremes(target_model, draft_model):
    ids, mask = _batch(B=2)
    same = SpeculativeDecoder(target_model, target_model, gamma=4).generate(ids, mask, max_new_tokens=21)
    assert same.stats.acceptance_rate == 1.0
    assert same.stats.per_position_acceptance == [1.0] * 4
    assert same.stats.mean_accepted_length == 5.0
    assert same.stats.target_calls == 5  # 4 rounds of 5 tokens, then the 21st token alone
    unrelated = SpeculativeDecoder(target_model, draft_model, gamma=4).generate(ids, mask, max_new_tokens=21)
    assert unrelated.stats.acceptance_rate < 0.1


def test_ragged_rows_equal_their_batch1_runs(target_model, partial_draft):
    ids, mask = _batch(B=6, seed=7)
    dec = SpeculativeDecoder(target_model, partial_draft, gamma=3)
    batched = dec.generate(ids, mask, max_new_tokens=30)
    assert 0.1 < batched.stats.acceptance_rate < 0.9  # genuinely ragged acceptance
    for r in range(ids.shape[0]):
        row = ids[r : r + 1, mask[r].argmax():]
        assert dec.generate(row, max_new_tokens=30).new_tokens[0] == batched.new_tokens[r]


def test_eos_and_lengths(target_model, partial_draft):
    ids, mask = _batch(B=4)
    ar = autoregressive_generate(target_model, ids, mask, max_new_tokens=25)
    eos = ar.new_tokens[1][6]  # a token row 1 emits at position 6
    ar_eos = autoregressive_generate(target_model, ids, mask, max_new_tokens=25, eos_token_id=eos)
    sd_eos = SpeculativeDecoder(target_model, partial_draft, gamma=4).generate(ids, mask, max_new_tokens=25,
                                                                            eos_token_id=eos)
    assert sd_eos.new_tokens == ar_eos.new_tokens
    assert len(sd_eos.new_tokens[1]) <= 7 and sd_eos.new_tokens[1][-1] == eos
    for out in sd_eos.new_tokens:
        assert len(out) <= 25 and (eos not in out[:-1])


@pytest.mark.parametrize("impl", ["lean", "numpy", "hf"])
def test_caches_hold_exactly_the_accepted_prefix(target_model, partial_draft, impl):
    """Between rounds, both caches (holes masked) give the same next logits as a fresh forward over the
    committed sequence, for every live row."""
    ids, mask = _batch(B=4, seed=11)
    dec = SpeculativeDecoder(target_model, partial_draft, gamma=3, impl=impl)
    prompts = [ids[r][mask[r].bool()].tolist() for r in range(ids.shape[0])]
    checked = []

    def on_round(info):
        # The draft may still owe d_K (a 2-token round) where a row accepted everything.
        d_ids = torch.stack([info.prev, info.pending], 1)
        d_pos = torch.stack([info.pos - 1, info.pos], 1)
        d_valid = torch.stack([info.prev_needed, torch.ones_like(info.prev_needed)], 1)
        one = torch.ones(len(info.live), 1, dtype=torch.bool)
        before = (info.target.columns, info.draft.columns)
        for cached, model in ((info.target.peek(info.pending[:, None], info.pos[:, None], one)[:, -1], target_model),
                              (info.draft.peek(d_ids, d_pos, d_valid)[:, -1], partial_draft)):
            for b, r in enumerate(info.live):
                fresh = model(torch.tensor([prompts[r] + info.outputs[r]])).logits[0, -1]
                torch.testing.assert_close(cached[b], fresh, atol=1e-4, rtol=1e-4)
        assert (info.target.columns, info.draft.columns) == before   # a peek leaves the caches as they were
        checked.append(info.target.columns)

    out = dec.generate(ids, mask, max_new_tokens=20, on_round=on_round)
    assert len(checked) >= 5
    assert out.new_tokens == autoregressive_generate(target_model, ids, mask, max_new_tokens=20, impl=impl).new_tokens


def test_holes_are_compacted(target_model, partial_draft, monkeypatch):
    """Ragged runs compact the cache once holes pile up; output still equals plain decoding."""
    from specdec.engine import kvcache
    monkeypatch.setattr(kvcache, "COMPACT_SLACK", 4)
    calls = []
    orig = kvcache.KVCache.compact
    monkeypatch.setattr(kvcache.KVCache, "compact", lambda self: (calls.append(1), orig(self)))
    ids, mask = _batch(B=3, seed=3)
    dec = SpeculativeDecoder(target_model, partial_draft, gamma=6)
    widths = []

    def on_round(info):
        kv = info.target.kv
        widths.append((kv.length, int(kv.valid[:kv.batch, :kv.length].sum(1).max())))

    sd = dec.generate(ids, mask, max_new_tokens=40, on_round=on_round)
    ar = autoregressive_generate(target_model, ids, mask, max_new_tokens=40)
    assert sd.new_tokens == ar.new_tokens
    assert calls
    # After each round the waste is bounded by the slack, a quarter of the cache, or one round's holes.
    assert all(c - v <= max(4, c // 4) + 6 for c, v in widths)


def test_padded_logit_width(target_model):
    """Models whose logit widths differ (vocab padding): with the shared vocabulary passed (load_pair's),
    only the shared ids are compared or emitted. (The default is the target's width, for both decoders
    alike: tests/test_input_checks.py.)"""
    wide = tiny_llama(vocab_size=72, seed=0)  # same init as target_model for the first 64 rows? no: just wider
    with torch.no_grad():
        wide.lm_head.weight[64:] = 5.0  # the padded ids would win every argmax if they were allowed
    ids, mask = _batch(B=2)
    dec = SpeculativeDecoder(wide, target_model, gamma=3, vocab_size=64)
    assert dec.vocab_size == 64
    sd = dec.generate(ids, mask, max_new_tokens=12)
    ar = autoregressive_generate(wide, ids, mask, max_new_tokens=12, vocab_size=64)
    assert sd.new_tokens == ar.new_tokens
    assert max(max(o) for o in sd.new_tokens) < 64


def _exact_two_token_dist(model, prompt, V, temperature, top_k, top_p):
    """Exact P(t1, t2 | prompt) of the target after the same temperature / top-k / top-p: [V, V]."""
    with torch.no_grad():
        l1 = model(prompt).logits[0, -1, :V]
        p1 = probs_from_logits(mask_logits(l1, temperature, top_k, top_p), temperature)
        seqs = torch.cat([prompt.expand(V, -1), torch.arange(V)[:, None]], 1)
        l2 = model(seqs).logits[:, -1, :V]
        p2 = probs_from_logits(mask_logits(l2, temperature, top_k, top_p), temperature)
    return p1[:, None] * p2


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.8, 5, 0.9)])
def test_generate_is_lossless(temperature, top_k, top_p):
    """The first two generated tokens follow the target's exact joint distribution (chi-square at ALPHA),
    with a draft that agrees often enough that accepted, recovered and bonus tokens all occur."""
    V = 8
    target = tiny_llama(vocab_size=V, hidden_size=16, heads=2, kv_heads=1, seed=21)
    draft = _noisy_copy(target, 0.1, seed=22)
    prompt = torch.tensor([[3, 5, 1, 6]])
    N = 3000
    dec = SpeculativeDecoder(target, draft, gamma=2)
    out = dec.generate(prompt.expand(N, -1), max_new_tokens=2, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=123)
    s = out.stats
    assert 0.2 < s.acceptance_rate < 0.95
    pairs = torch.tensor([o[0] * V + o[1] for o in out.new_tokens])
    exact = _exact_two_token_dist(target, prompt, V, temperature, top_k, top_p).flatten()
    assert chi2_pvalue(torch.bincount(pairs, minlength=V * V), exact) > ALPHA
    # Negative control: the draft's own distribution is measurably different at this sample size.
    q_pairs = torch.tensor([o[0] * V + o[1] for o in autoregressive_generate(
        draft, prompt.expand(N, -1), max_new_tokens=2, temperature=temperature, top_k=top_k, top_p=top_p,
        seed=5).new_tokens])
    assert chi2_pvalue(torch.bincount(q_pairs, minlength=V * V), exact) < ALPHA


def test_seeded_sampling_repeats(target_model, partial_draft):
    ids, mask = _batch(B=3)
    dec = SpeculativeDecoder(target_model, partial_draft, gamma=3)
    a = dec.generate(ids, mask, max_new_tokens=15, temperature=1.0, seed=9)
    b = dec.generate(ids, mask, max_new_tokens=15, temperature=1.0, seed=9)
    assert a.new_tokens == b.new_tokens


def test_stats_conventions(target_model, partial_draft):
    ids, mask = _batch(B=3)
    s = SpeculativeDecoder(target_model, partial_draft, gamma=3).generate(ids, mask, max_new_tokens=20).stats
    assert s.accepted_tokens == sum(s.accepted_per_position)
    assert s.acceptance_rate == pytest.approx(s.accepted_tokens / s.drafted_tokens)
    assert s.mean_accepted_length == pytest.approx(1 + s.accepted_tokens / s.draft_steps)
    assert all(a >= b for a, b in zip(s.per_position_acceptance, s.per_position_acceptance[1:]))
    assert s.total_s >= s.draft_s + s.target_s + s.verify_s - 1e-6
    d = s.to_dict()
    for k in ("acceptance_rate", "mean_accepted_length", "per_position_acceptance", "target_calls", "draft_calls",
              "drafted_tokens", "accepted_tokens", "draft_steps", "draft_s", "target_s", "verify_s", "other_s"):
        assert k in d


def test_bad_inputs(target_model, draft_model):
    ids, mask = _batch(B=2)
    with pytest.raises(ValueError, match="gamma"):
        SpeculativeDecoder(target_model, draft_model, gamma=0)
    dec = SpeculativeDecoder(target_model, draft_model, gamma=2)
    with pytest.raises(ValueError, match="temperature"):
        dec.generate(ids, mask, temperature=-0.5)
    with pytest.raises(ValueError, match="top_p"):
        dec.generate(ids, mask, top_p=0.0)
    with pytest.raises(ValueError, match="top_p"):
        autoregressive_generate(target_model, ids, mask, top_p=1.5)
    with pytest.raises(ValueError, match="empty prompt"):
        dec.generate(torch.zeros((1, 0), dtype=torch.long))
    with pytest.raises(ValueError, match="empty prompt"):
        dec.generate(ids, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="context"):
        dec.generate(ids, mask, max_new_tokens=300)
    with pytest.raises(ValueError, match="left-padded"):
        dec.generate(ids, mask.flip(1))
    with pytest.raises(ValueError, match="different devices"):
        SpeculativeDecoder(target_model, copy.deepcopy(draft_model).to("meta"), gamma=2)


def test_steps_cut_short_by_the_length_limit_are_not_rejections(target_model):
    """An identical draft accepts everything; the last step drafts only what max_new_tokens leaves
    room for (2 of 4). Such a step must not count as rejecting its undrafted positions."""
    ids, mask = _batch(B=2)
    s = SpeculativeDecoder(target_model, target_model, gamma=4).generate(ids, mask, max_new_tokens=23).stats
    assert s.drafted_per_position == [10, 10, 8, 8]   # 5 steps per row, the last one drafted 2
    assert s.acceptance_rate == 1.0
    assert s.per_position_acceptance == [1.0] * 4
    assert s.alpha == 1.0


def test_nan_temperature_and_nan_models_are_errors(target_model, draft_model):
    """NaN temperature once meant T = 1 silently; a model emitting NaN logits once produced token 0."""
    ids, mask = _batch(B=2)
    dec = SpeculativeDecoder(target_model, draft_model, gamma=2)
    for t in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be a finite number"):
            dec.generate(ids, mask, temperature=t)
        with pytest.raises(ValueError, match="temperature must be a finite number"):
            autoregressive_generate(target_model, ids, mask, temperature=t)
    broken = copy.deepcopy(target_model)
    with torch.no_grad():
        broken.model.norm.weight.fill_(float("nan"))
    for temperature in (0.0, 1.0):
        with pytest.raises(ValueError, match="target.*NaN logits"):
            SpeculativeDecoder(broken, draft_model, gamma=2).generate(ids, mask, temperature=temperature)
        with pytest.raises(ValueError, match="target produced NaN logits"):
            autoregressive_generate(broken, ids, mask, temperature=temperature)


# ---------------------------------------------------------------------------------------------- gamma auto

def _round_costs(per_draft, top=8):
    """A handed-over cost table: seconds of a round drafting k = 1 + per_draft k, at batch size 1."""
    return {1: {"round_s": {"greedy": {k: 1.0 + per_draft * k for k in range(1, top + 1)},
                            "sampling": {k: 1.0 + per_draft * k for k in range(1, top + 1)}}}}


AUTO_COSTS = _round_costs(0.25)   # alpha 0.5 -> 1 draft, 0.65 -> 2, 0.8 -> 3: the counts vary with the rows


@pytest.mark.parametrize("impl", ["lean", "hf"])
def test_auto_greedy_equals_plain(target_model, partial_draft, impl):
    ids, mask = _batch(B=5, seed=7)
    ar = autoregressive_generate(target_model, ids, mask, max_new_tokens=30, impl=impl)
    dec = SpeculativeDecoder(target_model, partial_draft, gamma="auto", costs=AUTO_COSTS, impl=impl)
    batched = dec.generate(ids, mask, max_new_tokens=30)
    assert batched.new_tokens == ar.new_tokens
    chosen = {k for k, n in enumerate(batched.stats.gamma_counts) if n and k > 0}
    assert len(chosen) >= 2, batched.stats.gamma_counts        # the schedule really varied
    for r in (0, 3):   # batch size 1
        row = ids[r: r + 1, mask[r].argmax():]
        one = dec.generate(row, max_new_tokens=30)
        assert one.new_tokens[0] == ar.new_tokens[r]


def test_auto_never_drafts_past_max_new_tokens(target_model):
    """An identical draft and free drafting: auto drafts max_gamma, then only what the length leaves."""
    ids, mask = _batch(B=2)
    flat = {1: {"round_s": {"greedy": {k: 1.0 for k in range(1, 9)}}}}
    s = SpeculativeDecoder(target_model, target_model, gamma="auto", costs=flat).generate(
        ids, mask, max_new_tokens=23).stats
    assert s.gamma_counts == [0, 0, 0, 0, 2, 0, 0, 0, 4]   # per row: 9 + 9 tokens, then 4 drafts + 1 = 23
    s = SpeculativeDecoder(target_model, target_model, gamma="auto", costs=flat, max_gamma=3).generate(
        ids, mask, max_new_tokens=10).stats
    assert s.gamma_counts == [0, 2, 0, 4]                  # 4 + 4 tokens, then 1 draft + 1 = 10


def test_auto_count_never_depends_on_the_current_round(target_model, partial_draft):
    """Round t's target logits are corrupted (every row rejects its first draft): the counts of rounds
    0..t are exactly those of the clean run, because a round's count is fixed before its target runs;
    only later rounds, which learn from round t's verdict, may differ."""
    ids, mask = _batch(B=5, seed=7)

    def spy(corrupt_round):
        """A decoder whose rejection test records each round's counts and, at round corrupt_round, first
        makes the target reject every row's first draft (through the public verifier seam)."""
        counts = []

        def verifier(p_logits, q_logits, drafts, **kw):
            if len(counts) == corrupt_round and drafts.shape[1] > 0:
                p_logits[torch.arange(drafts.shape[0]), 0, drafts[:, 0]] = -1e4
            counts.append(kw["num_draft_tokens"].tolist())
            return verify(p_logits, q_logits, drafts, **kw)

        dec = SpeculativeDecoder(target_model, partial_draft, gamma="auto", costs=AUTO_COSTS, verifier=verifier)
        dec.counts = counts
        return dec

    clean = spy(None)
    clean.generate(ids, mask, max_new_tokens=30)
    later_changed = False
    for t in (0, 2, 4, 6):
        corrupted = spy(t)
        corrupted.generate(ids, mask, max_new_tokens=30)
        assert corrupted.counts[: t + 1] == clean.counts[: t + 1], t
        later_changed |= corrupted.counts[t + 1:] != clean.counts[t + 1:]
    assert later_changed   # the corruption did reach the estimate: the check above is not vacuous


def _peeking_verify(p_logits, q_logits, drafts, temperature, num_draft_tokens, generator, **kw):
    """Lossy on purpose: a row's count is cut to its accepted prefix after the target's verdict, so its
    next token is sampled from p where the residual norm(max(0, p - q)) belongs."""
    res = verify(p_logits, q_logits, drafts, temperature=temperature, num_draft_tokens=num_draft_tokens,
                 generator=generator, **kw)
    probs = probs_from_logits(p_logits, temperature)          # p_logits: masked as the draft's were
    for b, (a, n) in enumerate(zip(res.num_accepted.tolist(), num_draft_tokens.tolist())):
        if a < n:
            res.tokens[b, a] = int(torch.multinomial(probs[b, a], 1, generator=generator))
    return res


def _exact_three_token_dist(model, prompt, V, temperature):
    """Exact P(t1, t2, t3 | prompt) of the target at `temperature`: [V, V, V]."""
    with torch.no_grad():
        p12 = _exact_two_token_dist(model, prompt, V, temperature, 0, 1.0)                  # [V, V]
        pairs = torch.cartesian_prod(torch.arange(V), torch.arange(V))                       # [V*V, 2]
        seqs = torch.cat([prompt.expand(V * V, -1), pairs], 1)
        l3 = model(seqs).logits[:, -1, :V]
        p3 = probs_from_logits(mask_logits(l3, temperature, 0, 1.0), temperature).view(V, V, V)
    return p12[:, :, None] * p3


def test_auto_generate_is_lossless():
    """The first three tokens follow the target's exact joint distribution (chi-square at ALPHA) under
    gamma auto, whose counts vary between rounds and rows with the verdicts of earlier rounds (batches
    of 40 rows: each decode's estimates differ; 8 new tokens, so the third token often comes from a round
    whose count was chosen from earlier verdicts). Negative control: a schedule that decides a row's count
    after its verdict (_peeking_verify) fails the same test at the same sample size."""
    V, N, B = 8, 4000, 40
    target = tiny_llama(vocab_size=V, hidden_size=16, heads=2, kv_heads=1, seed=21)
    draft = _noisy_copy(target, 0.1, seed=22)
    prompt = torch.tensor([[3, 5, 1, 6]])
    exact = _exact_three_token_dist(target, prompt, V, 1.0).flatten()

    def sample(verifier=None):
        dec = SpeculativeDecoder(target, draft, gamma="auto", costs=_round_costs(0.15), verifier=verifier)
        seqs, stats = [], []
        for i in range(N // B):
            out = dec.generate(prompt.expand(B, -1), max_new_tokens=8, temperature=1.0, seed=1000 + i)
            seqs += [o[0] * V * V + o[1] * V + o[2] for o in out.new_tokens]
            stats.append(out.stats)
        return torch.bincount(torch.tensor(seqs), minlength=V ** 3), DecodeStats.merged(stats)

    counts, st = sample()
    assert sum(n > 100 for n in st.gamma_counts[1:]) >= 3, st.gamma_counts   # the counts varied
    assert 0.2 < st.acceptance_rate < 0.95
    assert chi2_pvalue(counts, exact) > ALPHA
    peeked, _ = sample(_peeking_verify)
    assert chi2_pvalue(peeked, exact) < ALPHA


def test_auto_bad_inputs(target_model, draft_model):
    for gamma in ("fast", 0, 2.5, True):
        with pytest.raises(ValueError, match="gamma"):
            SpeculativeDecoder(target_model, draft_model, gamma=gamma)
    with pytest.raises(ValueError, match="max_gamma"):
        SpeculativeDecoder(target_model, draft_model, gamma="auto", max_gamma=0)
    for bad in ({}, {1: {"c": 0.1}}, {1: {"round_s": {"greedy": {1: -1.0}}}}, {1: {"round_s": {"greedy": {1: 0.0}}}},
                {1: {"c": 0.0, "v": {1: 1.0}}}, {0: {"c": 0.1, "v": {1: 1.0}}},
                {1: {"c": float("nan"), "v": {1: 1.0}}}, [1, 2]):
        with pytest.raises(ValueError, match="costs must map a batch size"):
            SpeculativeDecoder(target_model, draft_model, gamma="auto", costs=bad)


def test_the_draft_count_policy_is_an_object(target_model, partial_draft):
    """gamma takes a policy object (FixedGamma(3) decodes as gamma=3), and generate(policy=...) runs one
    call under another policy (the timing cycle) without changing the decoder's."""
    from specdec.costmodel import CycleGammas, FixedGamma
    ids, mask = _batch(B=3, seed=7)
    plain = autoregressive_generate(target_model, ids, mask, max_new_tokens=20).new_tokens
    three = SpeculativeDecoder(target_model, partial_draft, gamma=3).generate(ids, mask, max_new_tokens=20)
    dec = SpeculativeDecoder(target_model, partial_draft, gamma=FixedGamma(3))
    assert dec.max_gamma == 3
    assert dec.generate(ids, mask, max_new_tokens=20).new_tokens == three.new_tokens == plain
    cycle = CycleGammas([1, 5])
    out = dec.generate(ids, mask, max_new_tokens=20, policy=cycle)
    assert out.new_tokens == plain
    assert [k for k, _ in cycle.log[:4]] == [1, 5, 1, 5]
    assert {k for k, n in enumerate(out.stats.gamma_counts) if n} <= {0, 1, 2, 3, 4, 5}
    assert out.stats.gamma_counts[5] > 0 and out.stats.gamma_counts[1] > 0
    assert len(dec.generate(ids, mask, max_new_tokens=20).stats.gamma_counts) == 4   # the decoder's own again
    with pytest.raises(ValueError, match="gamma='auto' settings"):
        SpeculativeDecoder(target_model, partial_draft, gamma=3, costs=AUTO_COSTS)


def test_auto_constants_are_a_config_passed_in(target_model, partial_draft):
    """AutoConfig's fields steer the choice (a prior worth a million verdicts outweighs what the decode
    sees): a pessimistic prior drafts one token a round, a confident one max_gamma; bad values are
    refused by name."""
    from specdec.costmodel import AutoConfig
    ids, mask = _batch(B=1)
    low = SpeculativeDecoder(target_model, partial_draft, gamma="auto", costs=AUTO_COSTS,
                             auto=AutoConfig(prior=0.05, strength=1e6)).generate(ids, mask, max_new_tokens=12)
    high = SpeculativeDecoder(target_model, partial_draft, gamma="auto", costs=AUTO_COSTS,
                              auto=AutoConfig(prior=0.999, strength=1e6, max_gamma=6)).generate(ids, mask,
                                                                                                max_new_tokens=12)
    assert low.stats.gamma_counts[1] == sum(low.stats.gamma_counts[1:])       # always one draft
    assert high.stats.gamma_counts[6] >= 1 and len(high.stats.gamma_counts) == 7   # max_gamma drafts, no more
    for bad, match in ((dict(prior=1.5), "prior"), (dict(strength=0), "strength"), (dict(decay=-0.1), "decay"),
                       (dict(max_gamma=0), "max_gamma")):
        with pytest.raises(ValueError, match=match):
            AutoConfig(**bad)


# ---------------------------------------------------------------------------------------------- reentrancy

def _two_jobs():
    """Two calls that differ in every per-call setting (prompts, batch, temperature, top-k, seed)."""
    ids_a, mask_a = _batch(B=3, seed=7)
    ids_b, mask_b = _batch(B=2, P=6, seed=9)
    return {"a": dict(input_ids=ids_a, attention_mask=mask_a, max_new_tokens=20, temperature=1.0, top_k=5, seed=1),
            "b": dict(input_ids=ids_b, attention_mask=mask_b, max_new_tokens=16, temperature=0.7, seed=2)}


def test_a_call_nested_in_another_decodes_as_alone(target_model, partial_draft):
    """A second generate run from inside the first one's on_round (the decoder once kept the sampling
    settings and the generator on itself: the outer call went on with the inner call's) leaves both
    outputs as they are when the calls run one after the other."""
    dec = SpeculativeDecoder(target_model, partial_draft, gamma="auto", costs=AUTO_COSTS)
    jobs = _two_jobs()
    alone = {name: dec.generate(**kw).new_tokens for name, kw in jobs.items()}
    inner, rounds = {}, []

    def on_round(info):
        rounds.append(len(rounds))
        if len(rounds) == 2:
            inner["b"] = dec.generate(**jobs["b"]).new_tokens

    outer = dec.generate(**jobs["a"], on_round=on_round).new_tokens
    assert len(rounds) > 2                      # the outer call went on after the inner one
    assert outer == alone["a"] and inner["b"] == alone["b"]


def test_one_decoder_serves_two_threads_round_by_round(target_model, partial_draft):
    """Two threads share one decoder and take turns round by round: each gets what it gets alone."""
    import threading
    dec = SpeculativeDecoder(target_model, partial_draft, gamma="auto", costs=AUTO_COSTS)
    jobs = _two_jobs()
    alone = {name: dec.generate(**kw).new_tokens for name, kw in jobs.items()}
    turn = {"a": threading.Semaphore(0), "b": threading.Semaphore(0)}
    other = {"a": "b", "b": "a"}
    done, order, results, errors = set(), [], {}, []

    def hand_over(name):   # after each of my rounds the other thread runs one of its own
        order.append(name)
        if other[name] not in done:
            turn[other[name]].release()
            turn[name].acquire()

    def work(name):
        turn[name].acquire()
        try:
            results[name] = dec.generate(**jobs[name], on_round=lambda info: hand_over(name)).new_tokens
        except Exception as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)
        finally:
            done.add(name)
            turn[other[name]].release()

    threads = [threading.Thread(target=work, args=(n,)) for n in jobs]
    for t in threads:
        t.start()
    turn["a"].release()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert "abab" in "".join(order)             # the rounds really alternated
    assert results == alone
