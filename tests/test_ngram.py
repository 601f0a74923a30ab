"""The n-gram lookup draft (engine/ngram.py): the proposal rule against a brute-force reference, greedy
output equal to plain decoding at every batch size and on every forward, the target's cache between
rounds, lossless sampling (chi-square at ALPHA, with a lossy negative control), and its refusals."""
import numpy as np
import pytest
import torch

from conftest import ALPHA, chi2_pvalue, tiny_llama
from specdec import SpeculativeDecoder, autoregressive_generate
from specdec.costmodel import cache as costcache
from specdec.engine import ngram
from specdec.engine.ngram import NgramDraft, propose
from test_decoding import _batch, _exact_two_token_dist


def _reference(h: list, k: int, max_n: int, min_n: int, short=None) -> list:
    """The rule spelled out: the longest suffix (<= max_n) occurring earlier (ending before the last
    token); its latest such occurrence; the min(n, k) tokens after it (min(n, k, short) with a short cap
    and n < max_n)."""
    L = len(h)
    for n in range(min(max_n, L - 1), min_n - 1, -1):
        ends = [j for j in range(n - 1, L - 1) if h[j - n + 1:j + 1] == h[L - n:]]
        if ends:
            cap = k if short is None or n >= max_n else min(k, short)
            return h[ends[-1] + 1:ends[-1] + 1 + min(n, cap)]
    return []


def test_propose_examples():
    h = np.array([7, 1, 2, 3, 9, 1, 2, 3, 4, 1, 2])
    # suffix [1, 2] occurs ending at 2 and 6; the latest (6) is followed by [3, 4]; n = 2 caps the count
    assert propose(h, 8).tolist() == [3, 4]
    assert propose(h, 1).tolist() == [3]
    assert propose(h, 0).tolist() == []
    assert propose(h, 8, min_ngram=3).tolist() == []                   # the longest match is 2 tokens
    assert propose(np.array([5, 6, 5, 6, 5, 6]), 8).tolist() == [5, 6]  # n = 4: [5, 6] are all that follow
    assert propose(np.array([1, 2, 3]), 4).tolist() == []              # no earlier occurrence
    assert propose(np.array([4]), 4).tolist() == []
    h = np.array([1, 2, 3, 4, 5, 9, 1, 2, 3, 4, 5])                     # n = 5 -> 5 tokens, but only 9.. follows
    assert propose(h, 8).tolist() == [9, 1, 2, 3, 4]
    assert propose(h, 8, max_ngram=2).tolist() == [9, 1]               # max_ngram caps n, so the count


def test_propose_equals_the_reference_on_random_histories():
    rng = np.random.default_rng(0)
    for _ in range(600):
        L, V = int(rng.integers(1, 40)), int(rng.integers(2, 6))
        h = rng.integers(0, V, L)
        k, max_n, min_n = int(rng.integers(0, 9)), int(rng.integers(1, 7)), int(rng.integers(1, 4))
        short = None if rng.random() < 0.5 else int(rng.integers(1, 5))
        if min_n > max_n:
            continue
        assert propose(h, k, max_n, min_n, short).tolist() == _reference(h.tolist(), k, max_n, min_n, short), \
            (h, k, max_n, min_n, short)


def test_a_row_repeating_itself_drafts_past_the_short_cap():
    loop = np.array(list(range(1, 14)) * 3 + [1, 2, 3])              # a period-13 loop, 42 tokens
    assert propose(loop, 12, max_ngram=16, short=4).tolist() == [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 1, 2]  # n = 16
    assert propose(loop, 12, max_ngram=30, short=4).tolist() == [4, 5, 6, 7]  # n = 29 < max_ngram: short
    assert propose(loop, 12, max_ngram=16).tolist() == propose(loop, 12, max_ngram=16, short=4).tolist()
    assert propose(loop[14:], 12, max_ngram=16, short=4).tolist() == [4, 5, 6, 7]  # 28 tokens: n = 15
    h = np.array([1, 2, 3, 4, 5, 9, 1, 2, 3, 4, 5])                     # n = 5 < 16
    assert propose(h, 8, short=3).tolist() == [9, 1, 2]


def _looping_target():
    """A tiny target whose greedy continuations repeat (so lookups match and get accepted)."""
    return tiny_llama(vocab_size=16, hidden_size=16, heads=2, kv_heads=1, seed=3)


@pytest.mark.parametrize("impl", ["lean", "numpy", "hf"])
def test_greedy_equals_plain_every_batch_size(impl):
    target = _looping_target()
    ids, mask = _batch(B=5, P=9, V=16, seed=4)
    ar = autoregressive_generate(target, ids, mask, max_new_tokens=40, impl=impl)
    total = None
    for gamma in (1, 3, 8):
        dec = SpeculativeDecoder(target, "ngram", gamma=gamma, impl=impl)
        for B in (1, 2, 5):
            out = dec.generate(ids[:B], mask[:B], max_new_tokens=40)
            assert out.new_tokens == ar.new_tokens[:B], (gamma, B)
            if B == 5 and gamma == 8:
                total = out.stats
    # the test exercises acceptance: lookups proposed, some accepted, some rejected, rows ragged
    assert total.draft_steps > 10 and 0 < total.accepted_tokens < total.drafted_tokens
    assert len(total.gamma_counts) > 2 and total.target_calls < 5 * 40
    assert total.draft_calls == 0 and total.prefill_calls == 1


def test_eos_and_one_token_prompts():
    target = _looping_target()
    ids, mask = _batch(B=5, P=9, V=16, seed=4)
    mask[4, :8] = 0
    ids[4, :8] = 0                                                      # a one-token prompt (nothing to look up)
    ar = autoregressive_generate(target, ids, mask, max_new_tokens=30)
    eos = ar.new_tokens[2][9]
    ar_eos = autoregressive_generate(target, ids, mask, max_new_tokens=30, eos_token_id=eos)
    sd = SpeculativeDecoder(target, NgramDraft(min_ngram=1), gamma=4).generate(ids, mask, max_new_tokens=30,
                                                                               eos_token_id=eos)
    assert sd.new_tokens == ar_eos.new_tokens


def test_target_cache_holds_exactly_the_committed_tokens():
    """Between rounds the target's cache (holes masked) gives the same next logits as a fresh forward."""
    target = _looping_target()
    ids, mask = _batch(B=4, P=9, V=16, seed=11)
    prompts = [ids[r][mask[r].bool()].tolist() for r in range(ids.shape[0])]
    checked = []

    def on_round(info):
        assert info.draft is None
        one = torch.ones(len(info.live), 1, dtype=torch.bool)
        cached = info.target.peek(info.pending[:, None], info.pos[:, None], one)[:, -1]
        for b, r in enumerate(info.live):
            fresh = target(torch.tensor([prompts[r] + info.outputs[r]])).logits[0, -1]
            torch.testing.assert_close(cached[b], fresh, atol=1e-4, rtol=1e-4)
        checked.append(1)

    SpeculativeDecoder(target, "ngram", gamma=5).generate(ids, mask, max_new_tokens=24, on_round=on_round)
    assert len(checked) >= 4


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.8, 5, 0.9)])
def test_sampling_is_lossless(temperature, top_k, top_p):
    """The first two tokens after a prompt whose suffix [3, 5] occurred before (so the first round
    proposes what followed it) follow the target's exact joint distribution (chi-square at ALPHA); a lossy
    verifier (lenience "lin", eps 0.2: accepts 5x as often) is caught by the same test (negative control)."""
    V = 8
    target = tiny_llama(vocab_size=V, hidden_size=16, heads=2, kv_heads=1, seed=21)
    # [3, 5, x, 6, 3, 5]: the lookup proposes x; x the target's likeliest next token there, so that
    # proposals are accepted often enough (one draft a round: max_new_tokens 2 leaves room for one)
    prompts = torch.tensor([[3, 5, x, 6, 3, 5] for x in range(V)])
    with torch.no_grad():
        likely = torch.softmax(target(prompts).logits[:, -1, :V], -1)[torch.arange(V), torch.arange(V)]
    prompt = prompts[int(likely.argmax())][None]
    assert propose(prompt[0].numpy(), 2).tolist() == [int(likely.argmax()), 6]
    N = 3000
    exact = _exact_two_token_dist(target, prompt, V, temperature, top_k, top_p).flatten()
    for lenience, eps in ((None, 1.0), ("lin", 0.2)):
        dec = SpeculativeDecoder(target, "ngram", gamma=2, lenience=lenience, lenience_eps=eps)
        out = dec.generate(prompt.expand(N, -1), max_new_tokens=2, temperature=temperature, top_k=top_k,
                           top_p=top_p, seed=123)
        pairs = torch.tensor([o[0] * V + o[1] for o in out.new_tokens])
        p = chi2_pvalue(torch.bincount(pairs, minlength=V * V), exact)
        if lenience is None:
            assert 0.02 < out.stats.acceptance_rate < 0.98   # accepted, recovered and bonus tokens all occur
            assert p > ALPHA
        else:
            assert p < ALPHA


def test_implicit_one_hot_q_decodes_as_the_built_one():
    """The decoder leaves the lookup's one-hot q implicit when its test is the default verify on CPU
    logits (_NgramCall.test -> verify_sampled_cpu without draft logits). From the same seed it emits
    exactly what it emits with q built and handed to verify (an injected verifier wrapping verify), at
    batch 3, with proposals accepted and rejected."""
    from specdec.engine.verify import verify
    target = tiny_llama(vocab_size=8, hidden_size=16, heads=2, kv_heads=1, seed=21)
    ids = torch.tensor([[3, 5, 1, 6, 3, 5, 1, 6, 3, 5], [2, 2, 2, 2, 2, 2, 2, 2, 2, 2], [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]])
    seen = []

    def built(*args, **kwargs):
        seen.append(args[1] is not None)
        return verify(*args, **kwargs)

    for temperature, top_k in ((1.0, 0), (0.7, 4)):
        runs = [SpeculativeDecoder(target, "ngram", gamma=3, verifier=v).generate(
            ids, max_new_tokens=24, temperature=temperature, top_k=top_k, seed=5) for v in (None, built)]
        assert runs[0].new_tokens == runs[1].new_tokens
        assert runs[0].stats.accepted_tokens > 0 and runs[0].stats.acceptance_rate < 1
    assert seen and all(seen)


def test_one_hot_logits():
    q = ngram.one_hot_logits(torch.tensor([[2, 0]]), 4)
    assert q.shape == (1, 2, 4)
    assert torch.softmax(q, -1).tolist() == [[[0, 0, 1, 0], [1, 0, 0, 0]]]


def _v(step_at: int, top: int = ngram.LONG_CAP_MAX) -> dict:
    """Step costs whose verify streams the weights once up to step_at drafted tokens, twice beyond."""
    return {"c": 0.01, "v": {k: 1 + 0.15 * k + (1.0 if k > step_at else 0.0) for k in range(1, top + 1)}}


def test_auto_drafts_more_for_a_row_repeating_itself(tmp_path, monkeypatch):
    """gamma="auto": AUTO_CAP a round, except where the row's match reached max_ngram; there the count
    the verify costs pick (7 where 8 rows take one pass of the weights, AUTO_CAP where 5 do), at batch 1
    only; greedy output equals plain decoding's throughout. Without costs they are measured once and
    cached."""
    target = _looping_target()
    ids, mask = _batch(B=3, P=9, V=16, seed=4)
    ar = autoregressive_generate(target, ids, mask, max_new_tokens=80)
    widest = {}
    for name, costs in (("one pass to 7", {1: _v(7)}), ("one pass to 4", {1: _v(4)})):
        dec = SpeculativeDecoder(target, "ngram", gamma="auto", costs=costs)
        assert dec.max_gamma == ngram.LONG_CAP_MAX and dec.gamma == "auto"
        for B in (1, 3):
            out = dec.generate(ids[:B], mask[:B], max_new_tokens=80)
            assert out.new_tokens == ar.new_tokens[:B], (name, B)
            widest[name, B] = max(k for k, n in enumerate(out.stats.gamma_counts) if n)
            if name == "one pass to 7" and B == 1:
                # matches shorter than 16 keep the short cap: fewer drafted tokens than min(n, 7) for all
                gamma7 = SpeculativeDecoder(target, "ngram", gamma=7).generate(ids[:1], mask[:1], max_new_tokens=80)
                assert out.stats.drafted_tokens < gamma7.stats.drafted_tokens
    assert widest["one pass to 7", 1] == 7 and widest["one pass to 4", 1] == ngram.AUTO_CAP
    assert widest["one pass to 7", 3] == ngram.AUTO_CAP                   # batch > 1: every row would pay
    # no costs: measured once (cache.CachedStepCosts), stored, read back by a new decoder
    calls = []
    real = costcache.measure_step_costs
    monkeypatch.setattr(costcache, "measure_step_costs", lambda *a, **k: calls.append(k.get("greedy")) or real(*a, **k))
    for _ in range(2):
        dec = SpeculativeDecoder(target, "ngram", gamma="auto", cost_cache=tmp_path)
        assert dec.generate(ids[:1], mask[:1], max_new_tokens=80).new_tokens == ar.new_tokens[:1]
    assert calls == [True] and len(list(tmp_path.glob("costs-*.json"))) == 1     # on a greedy decode's forward
    # a sampled decode prices its counts on the logits forward: measured and stored apart
    dec.generate(ids[:1], mask[:1], max_new_tokens=8, temperature=1.0, seed=0)
    assert calls == [True, False] and len(list(tmp_path.glob("costs-*.json"))) == 2
    calls.clear()
    # handed-over costs without v at every count it chooses from (a run resumed from v(1..4)): measured
    calls.clear()
    partial = {1: {"c": 0.01, "v": {k: x for k, x in _v(7)["v"].items() if k <= ngram.AUTO_CAP}}}
    dec = SpeculativeDecoder(target, "ngram", gamma="auto", costs=partial, cost_cache=tmp_path / "other")
    assert dec.generate(ids[:1], mask[:1], max_new_tokens=80).new_tokens == ar.new_tokens[:1] and len(calls) == 1
    # max_gamma is the top: 3 caps every round, long or short
    dec = SpeculativeDecoder(target, "ngram", gamma="auto", max_gamma=3, costs={1: _v(7)})
    out = dec.generate(ids[:1], mask[:1], max_new_tokens=80)
    assert out.new_tokens == ar.new_tokens[:1] and len(out.stats.gamma_counts) == 4   # counts 0..3


def test_settings_and_refusals(target_model):
    # auto: the match sizes each round, AUTO_CAP at most, more for a row repeating itself (up to LONG_CAP_MAX)
    assert SpeculativeDecoder(target_model, "ngram", gamma="auto").max_gamma == ngram.LONG_CAP_MAX
    with pytest.raises(ValueError, match="gamma"):
        SpeculativeDecoder(target_model, "ngram", gamma=0)
    with pytest.raises(ValueError, match="min_ngram"):
        NgramDraft(min_ngram=0)
    with pytest.raises(ValueError, match="max_ngram"):
        NgramDraft(min_ngram=3, max_ngram=2)
    dec = SpeculativeDecoder(target_model, NgramDraft(), gamma=4)
    assert dec.resolved_impl[1] == "ngram" and dec.max_gamma == 4


# ----------------------------------------------------------------------------------------------------
# The store (ngram.NgramStore): the target's own outputs elsewhere, asked where the row's tokens give nothing

def _store_reference(seqs: list, h: list, k: int, min_count: int, tau: float, ns=ngram.STORE_NS) -> list:
    """The store's rule spelled out: the longest context (n in ns) that the sequences follow by a token at
    least min_count times; its most frequent next token (ties: the smallest id) and that token's share;
    the chain while the product of the shares stays >= tau."""
    out, p = [], 1.0
    while len(out) < k:
        best = None
        for n in sorted(ns, reverse=True):
            if len(h) < n:
                continue
            follow = [s[i + n] for s in seqs for i in range(len(s) - n) if s[i:i + n] == h[-n:]]
            if len(follow) >= min_count:
                counts = {t: follow.count(t) for t in set(follow)}
                t = min(counts, key=lambda x: (-counts[x], x))
                best = (t, counts[t] / len(follow))
                break
        if best is None or p * best[1] < tau:
            break
        p *= best[1]
        out.append(best[0])
        h = h + [best[0]]
    return out


def test_store_equals_the_reference_on_random_corpora():
    rng = np.random.default_rng(1)
    for trial in range(60):
        V = int(rng.integers(2, 5))
        seqs = [rng.integers(0, V, int(rng.integers(0, 30))).tolist() for _ in range(int(rng.integers(1, 6)))]
        min_count, tau = int(rng.integers(1, 4)), float(rng.choice([0.2, 0.5, 0.9, 1.0]))
        store = ngram.NgramStore(seqs, min_count, tau)
        for _ in range(10):
            h = rng.integers(0, V, int(rng.integers(1, 12))).tolist()
            k = int(rng.integers(0, 6))
            assert store.propose(np.array(h), k).tolist() == _store_reference(seqs, h, k, min_count, tau), \
                (seqs, h, k, min_count, tau)


def test_store_examples_and_file(tmp_path):
    seqs = [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4], [9, 2, 3, 7]]
    store = ngram.NgramStore(seqs, min_count=2, tau=0.5)
    # [1, 2, 3] is followed by 4 twice and 5 once: 4, share 2/3; [2, 3] by 4, 5, 4, 7 (share 1/2) is shorter
    assert store.lookup([0, 1, 2, 3]) == (4, 2 / 3, 3)
    # [1, 2] -> 3 (3 of 3), then [1, 2, 3] -> 4 (2 of 3: the chain's product 2/3 >= tau), then nothing
    assert store.propose(np.array([0, 1, 2]), 4).tolist() == [3, 4]
    assert ngram.NgramStore(seqs, min_count=2, tau=0.7).propose(np.array([0, 1, 2]), 4).tolist() == [3]
    assert store.propose(np.array([5, 2]), 4).tolist() == []           # [2] alone is no context (ns start at 2)
    assert store.propose(np.array([0, 1, 2]), 1).tolist() == [3]
    assert store.propose(np.array([0, 1, 2]), 0).tolist() == []
    # the draft asks the store only where the row's own tokens give nothing
    draft = NgramDraft(store=store)
    assert draft.propose(np.array([1, 2, 6, 1, 2]), 4).tolist() == [6, 1]          # its own [1, 2] match
    assert draft.propose(np.array([6, 1, 2, 3]), 4).tolist() == [4]                 # none: the store's
    assert NgramDraft().propose(np.array([6, 1, 2, 3]), 4).tolist() == []
    path = tmp_path / "s.npz"
    store.save(path)
    loaded = ngram.as_ngram(f"ngram:{path}")
    assert loaded.store.tokens == 16 and str(path) in loaded.describe()
    assert loaded.store.propose(np.array([0, 1, 2, 3]), 4).tolist() == store.propose(np.array([0, 1, 2, 3]), 4).tolist()
    assert (loaded.store.min_count, loaded.store.tau) == (2, 0.5) and ngram.store_path(f"ngram:{path}") == str(path)
    with pytest.raises(ValueError, match="does not exist: pass --draft ngram:FILE"):
        ngram.as_ngram(f"ngram:{tmp_path / 'none.npz'}")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not an n-gram store"):
        ngram.as_ngram(f"ngram:{tmp_path / 'bad.npz'}")
    with pytest.raises(ValueError, match="ids >= 0"):
        ngram.NgramStore([[1, -1]])
    with pytest.raises(ValueError, match="tau"):
        ngram.NgramStore(seqs, tau=0)


def _store_of(target, ids, mask, n=40) -> ngram.NgramStore:
    out = autoregressive_generate(target, ids, mask, max_new_tokens=n)
    return ngram.NgramStore([ids[r][mask[r].bool()][-2:].tolist() + o for r, o in enumerate(out.new_tokens)],
                            min_count=1, tau=0.3)


@pytest.mark.parametrize("impl", ["lean", "hf"])
def test_greedy_equals_plain_with_a_store(impl):
    """A store of the target's own greedy answers to other prompts: its proposals are made, accepted
    and rejected, and the output is plain decoding's at batch 1, 2 and 5."""
    target = tiny_llama(vocab_size=32, hidden_size=16, heads=2, kv_heads=1, seed=5)
    ids, mask = _batch(B=5, P=9, V=32, seed=4)
    store = _store_of(target, *_batch(B=8, P=9, V=32, seed=7))
    ar = autoregressive_generate(target, ids, mask, max_new_tokens=30, impl=impl)
    with_store = SpeculativeDecoder(target, NgramDraft(store=store), gamma=4, impl=impl)
    for B in (1, 2, 5):
        out = with_store.generate(ids[:B], mask[:B], max_new_tokens=30)
        assert out.new_tokens == ar.new_tokens[:B], B
    alone = SpeculativeDecoder(target, "ngram", gamma=4, impl=impl).generate(ids, mask, max_new_tokens=30).stats
    s = out.stats
    assert s.drafted_tokens > alone.drafted_tokens and s.accepted_tokens > alone.accepted_tokens
    assert 0 < s.accepted_tokens < s.drafted_tokens


def test_sampling_with_a_store_is_lossless():
    """Prompts whose own tokens match nothing, so every round's proposal is the store's: the first two
    tokens follow the target's exact joint distribution (chi-square at ALPHA)."""
    V = 8
    target = tiny_llama(vocab_size=V, hidden_size=16, heads=2, kv_heads=1, seed=21)
    prompt = torch.tensor([[1, 4, 6]])
    assert propose(prompt[0].numpy(), 2).tolist() == []
    with torch.no_grad():
        likely = int(target(prompt).logits[0, -1, :V].argmax())
    store = ngram.NgramStore([[4, 6, likely, 2]] * 3, min_count=1, tau=0.5)
    assert store.propose(prompt[0].numpy(), 2).tolist() == [likely, 2]
    N = 3000
    exact = _exact_two_token_dist(target, prompt, V, 1.0, 0, 1.0).flatten()
    for lenience, eps in ((None, 1.0), ("lin", 0.2)):   # the lossy verifier: the negative control
        dec = SpeculativeDecoder(target, NgramDraft(store=store), gamma=2, lenience=lenience, lenience_eps=eps)
        out = dec.generate(prompt.expand(N, -1), max_new_tokens=2, temperature=1.0, seed=5)
        pairs = torch.tensor([o[0] * V + o[1] for o in out.new_tokens])
        p = chi2_pvalue(torch.bincount(pairs, minlength=V * V), exact)
        assert out.stats.drafted_tokens >= N
        if lenience is None:
            assert 0.02 < out.stats.acceptance_rate < 0.98 and p > ALPHA
        else:
            assert p < ALPHA


def test_a_store_of_another_tokenizer_is_refused():
    target = tiny_llama(vocab_size=16, hidden_size=16, heads=2, kv_heads=1, seed=3)
    with pytest.raises(ValueError, match="holds token id 40, beyond the target's 16 ids: it was written with "
                                         "another tokenizer"):
        SpeculativeDecoder(target, NgramDraft(store=ngram.NgramStore([[1, 2, 40]])), gamma=2)
    SpeculativeDecoder(target, NgramDraft(store=ngram.NgramStore([[1, 2, 15]])), gamma=2)


def test_bench_with_a_store_records_it_and_resume_checks_it(tmp_path, capsys):
    """`bench --draft ngram:FILE` on the bundled target: speculative rows equal to plain decoding greedy,
    the store in the run's meta, and a resumed run whose store file changed is refused in one line."""
    import json
    from specdec.cli import main
    from specdec.models import bundled_pair, load_pair
    target, _, tok, vocab = load_pair(bundled_pair()[0], "ngram")
    ids = torch.tensor([tok("def main(args):\n    return", add_special_tokens=False).input_ids])
    answer = autoregressive_generate(target, ids, max_new_tokens=16, vocab_size=vocab).new_tokens[0]
    store = tmp_path / "store.npz"
    ngram.NgramStore([ids[0, -2:].tolist() + answer] * 3, min_count=1).save(store)
    out = tmp_path / "run"
    argv = ["bench", "--draft", f"ngram:{store}", "--prompts", "builtin:code", "--num-prompts", "1", "--gamma", "4",
            "--temperature", "0", "--baselines", "ar", "--repeats", "1", "--max-new-tokens", "12", "--threads", "1",
            "--out", str(out), "--no-plots", "--no-progress"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["draft"] == f"ngram:{store}" and str(store) in res["meta"]["engine"]["draft"]
    sd = [r for r in res["runs"] if r["method"] == "sd" and r["category"] == "all"]
    assert sd and all(r["outputs_match_ar"] is True for r in sd)
    ngram.NgramStore([[1, 2, 3]]).save(store)                       # another store under the same name
    capsys.readouterr()
    assert main([*argv[:-4], "--out", str(out), "--resume", "--no-plots", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--draft: its content changed" in err[0], err
