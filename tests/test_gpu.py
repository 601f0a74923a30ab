"""The CUDA path of the engine (skipped without a GPU; bench/gpu_check.sh runs it on one): CUDA graphs
replay the same forward as eager execution, and speculative output with graphs equals plain decoding."""
import pytest
import torch

from conftest import tiny_llama
from specdec import SpeculativeDecoder, autoregressive_generate
from specdec.engine.runner import ModelRunner

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _cuda(model, dtype=torch.bfloat16):
    return model.to("cuda", dtype)


def _batch(B=3, P=9, V=64, seed=5):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, P), generator=g)
    mask = torch.ones_like(ids)
    for i in range(B):
        mask[i, :2 * i] = 0
    return ids.cuda(), mask.cuda()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_graph_replay_equals_eager(dtype):
    model = _cuda(tiny_llama(seed=3, kv_heads=2), dtype)
    ids, mask = _batch()
    eager = ModelRunner(model, 3, 128, static=True)
    graphed = ModelRunner(model, 3, 128, cuda_graphs=True)
    for r in (eager, graphed):
        r.prefill(ids, mask)
    pos = mask.sum(1, keepdim=True) - 1
    tok = ids[:, -1:]
    for step in range(6):   # S = 1 steps, then a 3-token block, replayed several times
        S = 1 if step < 4 else 3
        x = tok.repeat(1, S)
        p = pos + torch.arange(S, device="cuda")
        v = torch.ones_like(x, dtype=torch.bool)
        a, b = eager.forward(x, p, v), graphed.forward(x, p, v)
        torch.testing.assert_close(b, a, atol=0, rtol=0)
        tok, pos = a[:, -1].argmax(-1, keepdim=True), pos + S
    assert graphed.graphs.graphs   # captured, and replayed


def test_speculative_with_graphs_equals_plain_decoding():
    target = _cuda(tiny_llama(seed=0, num_layers=2))
    draft = _cuda(tiny_llama(seed=1, num_layers=1, hidden_size=16, heads=2, kv_heads=1))
    ids, mask = _batch(B=4)
    plain = autoregressive_generate(target, ids, mask, max_new_tokens=24)
    plain_graphs = autoregressive_generate(target, ids, mask, max_new_tokens=24, cuda_graphs=True)
    assert plain_graphs.new_tokens == plain.new_tokens
    for gamma in (1, 4):
        sd = SpeculativeDecoder(target, draft, gamma=gamma, cuda_graphs=True).generate(ids, mask, max_new_tokens=24)
        assert sd.new_tokens == plain.new_tokens, gamma
    one = SpeculativeDecoder(target, draft, gamma=3, cuda_graphs=True).generate(ids[:1], mask[:1], max_new_tokens=24)
    assert one.new_tokens[0] == plain.new_tokens[0]


def test_sampling_with_graphs_repeats_for_a_seed():
    target = _cuda(tiny_llama(seed=0, num_layers=2))
    draft = _cuda(tiny_llama(seed=1, num_layers=1, hidden_size=16, heads=2, kv_heads=1))
    ids, mask = _batch(B=2)
    dec = SpeculativeDecoder(target, draft, gamma=3, cuda_graphs=True)
    a = dec.generate(ids, mask, max_new_tokens=16, temperature=1.0, seed=3).new_tokens
    b = dec.generate(ids, mask, max_new_tokens=16, temperature=1.0, seed=3).new_tokens
    assert a == b


def test_ngram_draft_on_cuda_equals_plain_decoding():
    """The n-gram lookup draft on CUDA (proposals from the host, one-hot q on the device, the Triton
    verification when sampling), with and without graphs: greedy equals plain; sampling runs."""
    target = _cuda(tiny_llama(vocab_size=16, hidden_size=16, heads=2, kv_heads=1, seed=3), torch.float32)
    ids, mask = _batch(B=4, V=16, seed=4)
    plain = autoregressive_generate(target, ids, mask, max_new_tokens=32)
    for graphs in (False, True):
        dec = SpeculativeDecoder(target, "ngram", gamma=4, cuda_graphs=graphs)
        out = dec.generate(ids, mask, max_new_tokens=32)
        assert out.new_tokens == plain.new_tokens, graphs
        assert out.stats.accepted_tokens > 0
        sampled = dec.generate(ids, mask, max_new_tokens=16, temperature=1.0, seed=2)
        assert all(len(t) == 16 for t in sampled.new_tokens)
