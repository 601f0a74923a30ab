"""The engine with a draft that reads the target's features (specdec/engine/features.py, EAGLE-1):
greedy output equals plain greedy decoding at every batch size and on every forward (float and quantized),
sampling is lossless (chi-square at ALPHA with a negative control), the draft the engine runs proposes
exactly what the trained draft's teacher-forced chain predicts (bench/smollm2_feature_draft.py: the
wiring of features, tokens and positions is what training assumed), and the draft saves and loads as a
folder."""
import copy

import pytest
import torch

from conftest import ALPHA, chi2_pvalue, tiny_llama
from specdec import SpeculativeDecoder, autoregressive_generate, verify
from specdec.engine import features, qkernels
from specdec.engine.qweights import quantize_model
from test_decoding import _exact_two_token_dist


def _feature_draft(target, seed=1, head_ids=None, scale=0.3):
    """A one-layer feature draft shaped like `target`: its last layer, fc = [I, I] plus noise."""
    H = target.config.hidden_size
    last = target.config.num_hidden_layers - 1
    state = target.state_dict()
    layer = {k[len(f"model.layers.{last}."):]: v.clone() for k, v in state.items()
             if k.startswith(f"model.layers.{last}.")}
    g = torch.Generator().manual_seed(seed)
    fe = torch.eye(H) + scale * torch.randn(H, H, generator=g) / H ** 0.5
    ff = torch.eye(H) + scale * torch.randn(H, H, generator=g) / H ** 0.5
    return features.build(target, [layer], fe, ff, state["model.norm.weight"].clone(), head_ids)


def _batch(B=4, P=9, V=64, seed=5):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, P), generator=g)
    mask = torch.ones_like(ids)
    for i in range(B):
        mask[i, : min(3 * i, P - 1)] = 0   # the last row has a one-token prompt
    ids[mask == 0] = 0
    return ids, mask


@pytest.fixture(scope="module")
def pair():
    target = tiny_llama(vocab_size=64, hidden_size=32, num_layers=2, heads=4, kv_heads=2, seed=3)
    return target, _feature_draft(target, head_ids=list(range(0, 64, 2)))


@pytest.mark.parametrize("impl", ["lean", "numpy"])
def test_greedy_equals_plain(pair, impl):
    target, draft = pair
    ids, mask = _batch()
    ar = autoregressive_generate(target, ids, mask, max_new_tokens=20, impl=impl)
    for B in (1, 4):
        for gamma in (1, 2, 4):
            sd = SpeculativeDecoder(target, draft, gamma=gamma, impl=impl).generate(ids[:B], mask[:B],
                                                                                    max_new_tokens=20)
            assert sd.new_tokens == ar.new_tokens[:B], (B, gamma)
            assert sd.stats.new_tokens == sum(map(len, ar.new_tokens[:B]))


@pytest.mark.skipif(qkernels.available() is not None, reason="the C kernels do not build here")
@pytest.mark.parametrize("mode", ["q8_0", "q8_0-q8a"])
def test_greedy_equals_plain_quantized(pair, mode):
    target, draft = (quantize_model(copy.deepcopy(m), mode) for m in pair)   # W_f comes along with the copy
    ids, mask = _batch()
    ar = autoregressive_generate(target, ids, mask, max_new_tokens=20)
    for gamma in (1, 3):
        dec = SpeculativeDecoder(target, draft, gamma=gamma)
        assert dec.resolved_impl == ("numpy", "numpy")
        sd = dec.generate(ids, mask, max_new_tokens=20)
        assert sd.new_tokens == ar.new_tokens, gamma
        assert sd.stats.acceptance_rate > 0   # the quantized draft still reads its features


def test_the_engine_proposes_what_the_trained_chain_predicts(monkeypatch):
    """Every round's drafts equal FeatureDraft.chain's argmax over the committed sequence and the
    target's features (teacher-forced; what bench/smollm2_feature_draft.py trains and scores)."""
    from conftest import bench_script
    mod = bench_script("smollm2_feature_draft", monkeypatch)
    target = tiny_llama(vocab_size=96, hidden_size=32, num_layers=2, heads=4, kv_heads=2, seed=0)
    trained = mod.FeatureDraft(target, 1, list(range(0, 96, 3)))
    with torch.no_grad():
        trained.fc.mul_(0.5).add_(0.2 * torch.randn_like(trained.fc))
    draft = mod.engine_draft(target, trained)
    prompt = torch.tensor([[5, 17, 33, 2 + 40, 61, 7, 88]])
    rounds = []

    def recording(p, q, drafts, **kw):
        rounds.append(drafts[0].tolist())
        return verify(p, q, drafts, **kw)

    gamma = 3
    out = SpeculativeDecoder(target, draft, gamma=gamma, impl="lean", verifier=recording).generate(
        prompt, max_new_tokens=24)
    seq = torch.cat([prompt[0], torch.tensor(out.new_tokens[0])])
    t, checked = prompt.shape[1] - 1, 0   # the position of the round's pending token x_t
    for drafts in rounds:
        # The round at t reads (f_{t-1}, x_t), then (g_1, d_1), (g_2, d_2): chain row t-1 over x_0..x_t,
        # d_1..d_{K-1}, whose step s reads only features at positions <= t-1 (true ones, from the target).
        hyp = torch.cat([seq[:t + 1], torch.tensor(drafts[:-1], dtype=seq.dtype)])
        with torch.no_grad():
            chain = trained.chain(hyp, target.model(input_ids=hyp[None]).last_hidden_state[0], gamma)
        want = [int(trained.head_ids[trained.logits(chain[s][t - 1]).argmax()]) for s in range(len(drafts))]
        assert drafts == want, (t, drafts, want)
        checked += len(drafts)
        accepted = 0
        while accepted < len(drafts) and t + 1 + accepted < len(seq) and int(seq[t + 1 + accepted]) == drafts[accepted]:
            accepted += 1
        t += accepted + 1
    # every round was recorded but the last, which drafts nothing (a plain step: no rejection test to run)
    assert checked >= 3 * 6 and t == len(seq) - 2


def test_sampling_is_lossless():
    """The first two tokens follow the target's exact joint distribution (chi-square at ALPHA), with a
    feature draft whose head covers only some ids (so recovered tokens outside it occur too)."""
    V = 8
    target = tiny_llama(vocab_size=V, hidden_size=16, heads=2, kv_heads=1, seed=21)
    draft = _feature_draft(target, seed=4, head_ids=[0, 2, 3, 5, 6, 7], scale=0.1)
    prompt = torch.tensor([[3, 5, 1, 6]])
    N = 3000
    out = SpeculativeDecoder(target, draft, gamma=2).generate(prompt.expand(N, -1), max_new_tokens=2,
                                                              temperature=1.0, seed=123)
    assert 0.2 < out.stats.acceptance_rate < 0.95
    pairs = torch.tensor([o[0] * V + o[1] for o in out.new_tokens])
    exact = _exact_two_token_dist(target, prompt, V, 1.0, 0, 1.0).flatten()
    assert chi2_pvalue(torch.bincount(pairs, minlength=V * V), exact) > ALPHA
    # Negative control: a verifier that accepts every draft emits the draft's own proposals, which are
    # measurably off at this sample size.
    lossy = SpeculativeDecoder(target, draft, gamma=2, verifier=lambda p, q, d, **kw: verify(
        p, q, d, **{**kw, "lenience": "lin", "lenience_eps": 1e-6})).generate(
        prompt.expand(N, -1), max_new_tokens=2, temperature=1.0, seed=123)
    bad = torch.tensor([o[0] * V + o[1] for o in lossy.new_tokens])
    assert chi2_pvalue(torch.bincount(bad, minlength=V * V), exact) < ALPHA


def test_save_and_load(pair, tmp_path):
    from specdec.models import load_model
    target, draft = pair
    features.save(draft, tmp_path / "d")
    loaded = load_model(tmp_path / "d")
    assert features.is_feature_draft(loaded)
    torch.testing.assert_close(features.proj_of(loaded), features.proj_of(draft))
    ids, mask = _batch(B=2)
    a = SpeculativeDecoder(target, draft, gamma=2).generate(ids, mask, max_new_tokens=12)
    b = SpeculativeDecoder(target, loaded, gamma=2).generate(ids, mask, max_new_tokens=12)
    assert a.new_tokens == b.new_tokens and a.stats.acceptance_rate == b.stats.acceptance_rate
    (tmp_path / "d" / features.PROJ_FILE).unlink()
    with pytest.raises(ValueError, match="feature_proj"):
        load_model(tmp_path / "d")


def test_a_draft_for_another_target_is_refused(pair):
    target, draft = pair
    other = tiny_llama(vocab_size=64, hidden_size=48, num_layers=1, heads=4, kv_heads=2, seed=3)
    with pytest.raises(ValueError, match="another target"):
        SpeculativeDecoder(other, draft)


def test_the_transformers_forward_is_refused(pair):
    target, draft = pair
    with pytest.raises(ValueError, match="lean forwards"):
        SpeculativeDecoder(target, draft, impl="hf").generate(torch.tensor([[3, 4, 5]]), max_new_tokens=4)


@pytest.mark.parametrize("impl", ["lean", "numpy"])
def test_rounds_that_draft_nothing(pair, impl):
    """Rounds of 0 drafts (what gamma="auto" may choose, and the last token of a row) feed the draft
    nothing: the true features it owes pile up and the next drafting round reads them all at once."""
    from specdec.costmodel.measure import CycleGammas
    target, draft = pair
    ids, mask = _batch()
    ar = autoregressive_generate(target, ids, mask, max_new_tokens=23, impl=impl)
    for cycle in ([0, 2, 0, 0, 1, 3], [0, 0, 4]):
        seen = []
        dec = SpeculativeDecoder(target, draft, gamma=4, impl=impl)
        sd = dec.generate(ids, mask, max_new_tokens=23, policy=CycleGammas(cycle),
                          on_round=lambda info: seen.append((info.draft.columns, info.target.columns)))
        assert sd.new_tokens == ar.new_tokens, cycle
        # the draft keeps no column of its own guesses: it never holds more columns than the target
        assert all(d <= t for d, t in seen), seen
        assert sd.stats.accepted_tokens > 0
    plain = SpeculativeDecoder(target, draft, gamma=3, impl=impl).generate(ids, mask, max_new_tokens=1)
    assert plain.new_tokens == [o[:1] for o in ar.new_tokens]


def test_distill_refuses_a_feature_draft(pair, tmp_path):
    """specdec distill trains token-only drafts: a feature draft gets one line, before any work."""
    from specdec.distill.config import DistillConfig
    from specdec.distill.trainer import check_inputs
    target, draft = pair
    target.save_pretrained(tmp_path / "t")
    features.save(draft, tmp_path / "d")
    cfg = DistillConfig(target=str(tmp_path / "t"), draft=str(tmp_path / "d"), out=str(tmp_path / "o"))
    with pytest.raises(ValueError, match="reads the target's features"):
        check_inputs(cfg, None)
