"""The cached forward every loop runs on: the in-place KV cache with holes (mask, crop, row selection,
compaction), the lean forward against transformers' forward, the static (CUDA-graph) cache layout, and
models outside the lean family through transformers' Cache API."""
import pytest
import torch

from conftest import tiny_llama
from specdec import SpeculativeDecoder, autoregressive_generate
from specdec.engine import lean
from specdec.engine.kvcache import KVCache
from specdec.engine.runner import ModelRunner


def _prompt(B=3, P=7, V=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, P), generator=g)
    mask = torch.ones_like(ids)
    for i in range(B):
        mask[i, :i] = 0
    return ids, mask


def _fresh_last_logits(model, ids, mask):
    """Logits of each row's last token from a cache-free forward over its real tokens."""
    return torch.stack([model(ids[r:r + 1, mask[r].bool()]).logits[0, -1] for r in range(ids.shape[0])])


def test_mask_is_validity_and_causality():
    kv = KVCache(batch=2, capacity=16, dtype=torch.float32, device="cpu")
    kv.begin(torch.tensor([[True, False, True], [True, True, True]]))
    kv.end()
    m = kv.begin(torch.ones(2, 2, dtype=torch.bool))   # 2 new tokens after 3 columns (one a hole in row 0)
    visible = (m == 0)[:, 0]                           # [B, S, L]
    assert visible.shape == (2, 2, 5)
    assert visible[0].tolist() == [[True, False, True, True, False], [True, False, True, True, True]]
    assert visible[1].tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert m.min() > float("-inf")                     # finite: a fully hidden query gives no NaN


@pytest.mark.parametrize("impl", ["lean", "numpy", "hf"])
@pytest.mark.parametrize("static", [False, True])
def test_cached_steps_equal_a_fresh_forward(impl, static):
    """Prefill, decode steps, a rejected block (holes), a crop, row selection and compaction: after
    each, the next logits equal a cache-free forward over the row's real tokens."""
    model = tiny_llama(seed=3, kv_heads=2)             # 4 query heads over 2 KV heads (GQA)
    ids, mask = _prompt()
    r = ModelRunner(model, batch=3, capacity=64, impl=impl, static=static)
    r.prefill(ids, mask)
    seqs = [ids[b, mask[b].bool()].tolist()[:-1] for b in range(3)]   # committed, without the pending token
    pos = mask.sum(1) - 1
    pending = ids[:, -1]

    def check(rows):
        got = r.peek(pending[:, None], pos[:, None], torch.ones(len(rows), 1, dtype=torch.bool))[:, -1]
        for i, b in enumerate(rows):
            want = model(torch.tensor([seqs[b] + [int(pending[i])]])).logits[0, -1]
            torch.testing.assert_close(got[i], want, atol=1e-4, rtol=1e-4)

    check([0, 1, 2])
    # A 3-token block; row 1 keeps only the first token, the others keep all.
    block = torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 13]])
    r.forward(torch.cat([pending[:, None], block[:, :2]], 1), pos[:, None] + torch.arange(3), torch.ones(3, 3, dtype=torch.bool))
    keep = torch.tensor([[True, True, True], [True, False, False], [True, True, True]])
    r.set_tail_validity(keep)
    for b in range(3):
        seqs[b] += [int(pending[b])] + ([int(block[b, 0]), int(block[b, 1])] if b != 1 else [])
    n_new = keep.sum(1)
    pos = pos + n_new
    pending = torch.tensor([21, 22, 23])
    check([0, 1, 2])
    r.kv.compact()                                     # row 1's two holes go; order kept
    check([0, 1, 2])
    r.select_rows(torch.tensor([0, 2]))                # row 1 finishes
    pos, pending = pos[[0, 2]], pending[[0, 2]]
    check([0, 2])


@pytest.mark.parametrize("impl", ["lean", "numpy"])
def test_lean_forwards_match_transformers(impl):
    for model in (tiny_llama(seed=4, kv_heads=2), tiny_llama(seed=5, kv_heads=4)):
        assert lean.supports(model) is None
        ids, mask = _prompt(B=2, P=9)
        r = ModelRunner(model, batch=2, capacity=32, impl=impl)
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        got = r.forward(ids, pos, mask.bool())
        want = model(ids, attention_mask=mask, position_ids=pos).logits
        real = mask.bool()
        torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)


def test_unfolded_layout_matches_transformers():
    """The layout CUDA runs (separate projections, norm weights applied to the input, no fused copies),
    checked here on the CPU, for plain and int8 projections."""
    from specdec.engine.kvcache import KVCache
    from specdec.engine.lean import LeanForward
    from specdec.engine.quant import quantize_model
    for model in (tiny_llama(seed=7, kv_heads=2), quantize_model(tiny_llama(seed=8))):
        ids, mask = _prompt(B=2, P=9)
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        kv = KVCache(2, 32, torch.float32, "cpu")
        got = LeanForward(model, fold=False)(ids, pos, kv, kv.begin(mask.bool()))
        want = model(ids, attention_mask=mask, position_ids=pos).logits
        torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=1e-4, rtol=1e-4)


def test_auto_picks_numpy_for_small_float_models_only():
    from specdec.engine.quant import quantize_model
    from specdec.engine.runner import resolve_impl
    small = tiny_llama(seed=1)
    assert resolve_impl(small) == "numpy"
    assert resolve_impl(quantize_model(tiny_llama(seed=1))) == "lean"      # int8 runs on PyTorch
    assert resolve_impl(tiny_llama(seed=1).to(torch.bfloat16)) == "lean"   # NumPy has no bfloat16
    with pytest.raises(ValueError, match="impl='numpy' does not support"):
        ModelRunner(quantize_model(tiny_llama(seed=1)), 1, 8, impl="numpy")


def test_qwen2_with_qkv_bias_runs_lean_and_gpt2_runs_through_transformers():
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=128)).eval()
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=128)).eval()
    with torch.no_grad():
        for m in (qwen, gpt2):
            for p in m.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.3)
    assert lean.supports(qwen) is None and lean.supports(gpt2) is not None
    ids, mask = _prompt(B=3, P=8)
    for model, impl in ((qwen, "lean"), (gpt2, "hf")):
        ar = autoregressive_generate(model, ids, mask, max_new_tokens=12)
        hf = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
        assert [h[ids.shape[1]:].tolist() for h in hf] == ar.new_tokens, impl
        draft = tiny_llama(seed=9)
        sd = SpeculativeDecoder(model, draft, gamma=3).generate(ids, mask, max_new_tokens=12)
        assert sd.new_tokens == ar.new_tokens, impl


def test_lean_forward_follows_weight_updates():
    """A draft being trained is decoded with its current weights (fused copies are rebuilt)."""
    model = tiny_llama(seed=6)
    ids, mask = _prompt(B=1, P=5)
    before = autoregressive_generate(model, ids, mask, max_new_tokens=6, impl="numpy").new_tokens
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)
    after = autoregressive_generate(model, ids, mask, max_new_tokens=6, impl="numpy").new_tokens
    assert after == autoregressive_generate(model, ids, mask, max_new_tokens=6, impl="lean").new_tokens
    assert after == autoregressive_generate(model, ids, mask, max_new_tokens=6, impl="hf").new_tokens
    assert after != before
