"""One vocabulary rule for plain and speculative decoding (README, Vocabularies): both emit the ids below
vocab_size, which defaults to the target's logit width in both, so their outputs agree without passing it;
a draft with a smaller vocabulary proposes only the ids it has and the output stays exact (greedy: equal
to plain decoding; sampled: the target's distribution, chi-square at ALPHA with a negative control)."""
import copy

import pytest
import torch

from conftest import ALPHA, chi2_pvalue, tiny_llama
from specdec import SpeculativeDecoder, autoregressive_generate
from test_decoding import _batch, _exact_two_token_dist


def _draft(vocab_size: int):
    return tiny_llama(vocab_size=vocab_size, seed=1, num_layers=1, hidden_size=16, heads=2, kv_heads=1)


@pytest.mark.parametrize("impl", ["auto", "hf"])
@pytest.mark.parametrize("draft_vocab", [48, 80])
@pytest.mark.parametrize("B", [1, 4])
def test_plain_and_speculative_greedy_agree_without_vocab_size(target_model, draft_vocab, B, impl):
    """The target has 64 logits. With a 48-logit draft the decoder used to default to the 48 shared ids
    while plain decoding took all 64: greedy outputs differed as soon as the target preferred an id >= 48."""
    draft = _draft(draft_vocab)
    ids, mask = _batch(B=B, V=min(64, draft_vocab))
    plain = autoregressive_generate(target_model, ids, mask, max_new_tokens=24, impl=impl).new_tokens
    assert any(t >= 48 for row in plain for t in row)       # the ids only the target has are in play
    costs = {B: {"c": 0.1, "v": {k: 1.0 + 0.05 * k for k in range(1, 9)}}}
    for gamma in (1, 3, "auto"):
        dec = SpeculativeDecoder(target_model, draft, gamma=gamma, impl=impl, costs=costs if gamma == "auto" else None)
        assert dec.vocab_size == 64
        assert dec.generate(ids, mask, max_new_tokens=24).new_tokens == plain, gamma
    # and with the shared vocabulary passed to both, neither emits an id outside it
    shared = min(64, draft_vocab)
    a = autoregressive_generate(target_model, ids, mask, max_new_tokens=24, vocab_size=shared, impl=impl)
    s = SpeculativeDecoder(target_model, draft, gamma=3, vocab_size=shared, impl=impl).generate(ids, mask,
                                                                                             max_new_tokens=24)
    assert s.new_tokens == a.new_tokens and max(max(r) for r in a.new_tokens) < shared


def test_vocab_size_above_the_target_is_refused(target_model):
    with pytest.raises(ValueError, match="vocab_size must be >= 1 and <= 64"):
        SpeculativeDecoder(target_model, _draft(80), vocab_size=80)
    with pytest.raises(ValueError, match="vocab_size must be >= 1 and <= 64"):
        autoregressive_generate(target_model, *_batch(B=1), vocab_size=65)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.8, 5, 0.9)])
def test_a_smaller_draft_vocabulary_stays_lossless(temperature, top_k, top_p):
    """The first two tokens follow the target's exact joint distribution when the draft lacks the target's
    last two ids: it never proposes them (q = 0), and after the target emits one the draft is fed its last
    row instead. Negative control: the draft's own distribution is rejected at this sample size."""
    V, W = 8, 6
    target = tiny_llama(vocab_size=V, hidden_size=16, heads=2, kv_heads=1, seed=21)
    draft = copy.deepcopy(target)
    g = torch.Generator().manual_seed(22)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    draft.resize_token_embeddings(W)
    assert draft.get_output_embeddings().weight.shape[0] == W
    prompt = torch.tensor([[3, 5, 1, 4]])
    N = 3000
    out = SpeculativeDecoder(target, draft, gamma=2).generate(prompt.expand(N, -1), max_new_tokens=2,
                                                              temperature=temperature, top_k=top_k, top_p=top_p,
                                                              seed=123)
    assert 0.2 < out.stats.acceptance_rate < 0.95
    pairs = torch.tensor([o[0] * V + o[1] for o in out.new_tokens])
    counts = torch.bincount(pairs, minlength=V * V)
    assert counts.view(V, V)[W:].sum() > 100                 # the draft was fed ids it has no row for
    exact = _exact_two_token_dist(target, prompt, V, temperature, top_k, top_p).flatten()
    assert chi2_pvalue(counts, exact) > ALPHA
    q_pairs = torch.tensor([o[0] * V + o[1] for o in autoregressive_generate(
        draft, prompt.expand(N, -1), max_new_tokens=2, temperature=temperature, top_k=top_k, top_p=top_p,
        seed=5).new_tokens])
    assert chi2_pvalue(torch.bincount(q_pairs, minlength=V * V), exact) < ALPHA
