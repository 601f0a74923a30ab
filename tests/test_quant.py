"""Row-independent int8: a row's output must not depend on the other rows or on how many tokens share
its forward (else the target is not a fixed distribution), and decoding a quantized target stays exact
(greedy) and lossless (sampling)."""
import copy

import pytest
import torch

from conftest import ALPHA, assert_rows_independent, chi2_pvalue, tiny_llama
from specdec import SpeculativeDecoder, autoregressive_generate
from specdec.engine.quant import RowwiseInt8Linear, float_layers, quantization_of, quantize_model
from test_decoding import _batch, _exact_two_token_dist, _noisy_copy


def test_rows_are_bitwise_independent_of_the_batch():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 40, bias=True)
    q = RowwiseInt8Linear(lin)
    x = torch.randn(17, 48) * torch.logspace(-2, 2, 17)[:, None]   # rows of very different scales
    full = q(x)
    for m in range(1, 18):
        assert torch.equal(q(x[:m]), full[:m]), m
    for i in range(17):
        assert torch.equal(q(x[i:i + 1])[0], full[i]), i
    assert torch.equal(q(x.view(17, 1, 48))[:, 0], full)            # any leading shape
    ref = lin(x)
    rel = ((full - ref).norm(dim=1) / ref.norm(dim=1)).max()
    assert rel < 0.05, rel


def test_fbgemm_dynamic_quantization_is_not_row_independent():
    """Negative control: the per-tensor activation scale of torch's own dynamic quantization moves a
    row's output when a larger row shares the call (the trap this module avoids)."""
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(48, 40))
    dq = torch.ao.quantization.quantize_dynamic(lin, {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(2, 48)
    x[1] *= 30
    assert not torch.equal(dq(x[:1]), dq(x)[:1])


@pytest.fixture(scope="module")
def int8_pair():
    target = quantize_model(tiny_llama(seed=0, num_layers=2))
    draft = _noisy_copy(tiny_llama(seed=0, num_layers=2), 0.03)
    return target, quantize_model(draft)


@pytest.mark.parametrize("impl", ["lean", "hf"])
def test_greedy_speculative_equals_plain_on_the_quantized_target(int8_pair, impl):
    target, draft = int8_pair
    assert quantization_of(target) == "int8"
    ids, mask = _batch(B=5)
    ar = autoregressive_generate(target, ids, mask, max_new_tokens=20, impl=impl)
    for gamma in (1, 3, 5):
        sd = SpeculativeDecoder(target, draft, gamma=gamma, impl=impl).generate(ids, mask, max_new_tokens=20)
        assert sd.new_tokens == ar.new_tokens, gamma
        assert 0.1 < sd.stats.acceptance_rate < 1.0
    for r in range(ids.shape[0]):   # each ragged row equals its own batch-1 run
        row = ids[r:r + 1, mask[r].argmax():]
        one = SpeculativeDecoder(target, draft, gamma=3, impl=impl).generate(row, max_new_tokens=20)
        assert one.new_tokens[0] == ar.new_tokens[r]


def test_a_quantized_rows_logits_do_not_depend_on_padding_or_holes():
    """The int8 target's logits for a row are bitwise the same alone, left-padded in a ragged batch, and
    scored S tokens at a time, on the lean path (its attention runs on a float64 cache: in float32 the
    sums over padded / holed columns round differently, and int8 activation rounding turns that into
    different levels; the bundled int8 target's greedy output changed with its batch at batch 8)."""
    model = quantize_model(tiny_llama(seed=3, hidden_size=64, heads=4, kv_heads=2, num_layers=2))
    assert_rows_independent(model, "lean", torch.float64)


def test_quantized_lean_and_transformers_forwards_agree(int8_pair):
    target, _ = int8_pair
    ids, mask = _batch(B=3)
    a = autoregressive_generate(target, ids, mask, max_new_tokens=16, impl="lean").new_tokens
    b = autoregressive_generate(target, ids, mask, max_new_tokens=16, impl="hf").new_tokens
    assert a == b


def test_sampling_from_the_quantized_target_is_lossless():
    V = 8
    target = quantize_model(tiny_llama(vocab_size=V, hidden_size=16, heads=2, kv_heads=1, seed=21))
    draft = quantize_model(_noisy_copy(tiny_llama(vocab_size=V, hidden_size=16, heads=2, kv_heads=1, seed=21), 0.1, seed=22))
    prompt = torch.tensor([[3, 5, 1, 6]])
    N = 3000
    out = SpeculativeDecoder(target, draft, gamma=2).generate(prompt.expand(N, -1), max_new_tokens=2,
                                                              temperature=1.0, seed=7)
    assert 0.2 < out.stats.acceptance_rate < 0.95
    pairs = torch.tensor([o[0] * V + o[1] for o in out.new_tokens])
    exact = _exact_two_token_dist(target, prompt, V, 1.0, 0, 1.0).flatten()
    assert chi2_pvalue(torch.bincount(pairs, minlength=V * V), exact) > ALPHA
    # Negative control: the draft's own distribution is measurably different at this sample size.
    q_pairs = torch.tensor([o[0] * V + o[1] for o in autoregressive_generate(
        draft, prompt.expand(N, -1), max_new_tokens=2, temperature=1.0, seed=5).new_tokens])
    assert chi2_pvalue(torch.bincount(q_pairs, minlength=V * V), exact) < ALPHA


def test_quantize_errors_and_copies():
    m = tiny_llama(seed=1)
    with pytest.raises(ValueError, match="quantize must be one of"):
        quantize_model(m, "int4")
    q = quantize_model(copy.deepcopy(m))
    q2 = copy.deepcopy(q)
    x = torch.tensor([[3, 4, 5]])
    assert torch.equal(q(x).logits, q2(x).logits)
    assert quantization_of(m) == "none"


@pytest.mark.parametrize("kind", ["conv1d", "falcon", "falcon_nobias"])
def test_every_projection_type_is_row_independent(kind):
    """GPT-2's Conv1D (a transposed linear) and Falcon's FalconLinear are quantized too, with the same
    bitwise row independence as nn.Linear."""
    from transformers.models.falcon.modeling_falcon import FalconLinear
    from transformers.pytorch_utils import Conv1D
    torch.manual_seed(0)
    mod = {"conv1d": lambda: Conv1D(40, 48), "falcon": lambda: FalconLinear(48, 40),
           "falcon_nobias": lambda: FalconLinear(48, 40, bias=False)}[kind]()
    with torch.no_grad():
        for p in mod.parameters():
            p.normal_(0.0, 0.3)
    q = RowwiseInt8Linear(mod)
    x = torch.randn(17, 48) * torch.logspace(-2, 2, 17)[:, None]
    full = q(x)
    for i in range(17):
        assert torch.equal(q(x[i:i + 1])[0], full[i]), i
    assert torch.equal(q(x[:5]), full[:5])
    ref = mod(x)
    assert ((full - ref).norm(dim=1) / ref.norm(dim=1)).max() < 0.05


@pytest.mark.parametrize("model_type", ["gpt2", "falcon"])
def test_int8_quantizes_every_projection_of_gpt2_and_falcon(model_type):
    """Once only nn.Linear by exact type was quantized: 1 of 9 projections here (the LM head)."""
    from test_families import build, ragged
    model = build(model_type)
    draft = _noisy_copy(model, 0.05)
    target, draft = quantize_model(model), quantize_model(draft)
    assert sum(isinstance(m, RowwiseInt8Linear) for m in target.modules()) == 9
    assert float_layers(target) == [] and target.config.specdec_float_layers == []
    ids, mask = ragged()
    ar = autoregressive_generate(target, ids, mask, max_new_tokens=12)
    sd = SpeculativeDecoder(target, draft, gamma=3).generate(ids, mask, max_new_tokens=12)
    assert sd.new_tokens == ar.new_tokens and 0 < sd.stats.acceptance_rate < 1
    one = SpeculativeDecoder(target, draft, gamma=3).generate(ids[2:, 4:], max_new_tokens=12)
    assert one.new_tokens[0] == ar.new_tokens[2]


def test_weights_left_float_are_named_in_one_warning_line():
    """A mixture of experts' fused expert tensors and router are not projections quantize_model knows."""
    from test_families import build
    model = build("mixtral", num_local_experts=4)
    with pytest.warns(UserWarning, match=r"^int8: 4 weight matrices stay float \(MixtralExperts, MixtralTopKRouter,"
                                          r" e\.g\. model\.layers\.0\.mlp\.gate\)[^\n]*$"):
        quantize_model(model)
    assert model.config.specdec_float_layers == [f"model.layers.{i}.mlp.{m}" for i in (0, 1) for m in ("gate", "experts")]
