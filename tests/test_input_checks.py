"""Values that used to be accepted and then went wrong (issue 19, classes 1, 2, 3, 9, 10): each is refused
with one line naming the setting, before the work it would spoil; none yields an id nobody sampled."""
import copy

import pytest
import torch

from distill_helpers import save_pair
from specdec import SpeculativeDecoder, autoregressive_generate, verify
from specdec.cli import main
from specdec.distill import CacheConfig, DistillConfig, build_cache
from specdec.distill import cache as cache_mod
from specdec.models import load_model


def _batch(B=2, P=6, V=64, seed=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, P), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    return ids, mask


def _all_minus_inf(model):
    """A copy of `model` whose every logit is -inf (through transformers' forward: use impl='hf')."""
    broken = copy.deepcopy(model)
    broken.lm_head.register_forward_hook(lambda mod, inp, out: torch.full_like(out, float("-inf")))
    return broken


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    return save_pair(tmp_path_factory.mktemp("pair"))


# ---------------------------------------------------------------------------------------------- class 1

@pytest.mark.parametrize("temperature", [1e-40, 1e-5])
def test_tiny_temperatures_are_refused_everywhere(target_model, draft_model, temperature):
    """T = 1e-40 overflowed logits / T to inf, softmax made the row NaN and token 0 came out, exit 0."""
    ids, mask = _batch()
    with pytest.raises(ValueError, match="use 0 for greedy"):
        autoregressive_generate(target_model, ids, mask, max_new_tokens=3, temperature=temperature)
    with pytest.raises(ValueError, match="use 0 for greedy"):
        SpeculativeDecoder(target_model, draft_model, gamma=2).generate(ids, mask, max_new_tokens=3,
                                                                          temperature=temperature)
    p, q, x = torch.randn(2, 3, 64), torch.randn(2, 2, 64), torch.randint(0, 64, (2, 2))
    for t in (temperature, torch.tensor([1.0, temperature])):
        with pytest.raises(ValueError, match="use 0 for greedy"):
            verify(p, q, x, temperature=t)
    for cls, kw in ((DistillConfig, {"out": "x", "temperature": temperature}),
                    (DistillConfig, {"out": "x", "eval_temperatures": (0.0, temperature)}),
                    (CacheConfig, {"out": "x", "temperature": temperature})):
        with pytest.raises(ValueError, match="use 0 for greedy"):
            cls(**kw)


@pytest.mark.parametrize("argv", [["generate"], ["bench", "--out", "OUT"], ["cache-teacher", "--out", "OUT"],
                                  ["distill", "--out", "OUT"]])
def test_tiny_temperature_is_one_line_before_any_model_loads(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("specdec.models.load.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert main(argv + ["--temperature", "1e-40", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--temperature 1e-40 is below" in err and "use 0 for greedy" in err, err


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_row_of_all_minus_inf_logits_is_an_error_naming_the_model(target_model, draft_model, temperature):
    """It used to emit token 0 (argmax of a row of -inf, or of the NaN softmax makes of it)."""
    ids, mask = _batch()
    broken = _all_minus_inf(target_model)
    kw = dict(max_new_tokens=3, temperature=temperature, seed=0)
    with pytest.raises(ValueError, match=r"the target produced NaN logits, \+inf or a row of all -inf "
                                         r"\(LlamaForCausalLM, decode step 1\)"):
        autoregressive_generate(broken, ids, mask, impl="hf", **kw)
    with pytest.raises(ValueError, match="the target produced .* a row of all -inf"):
        SpeculativeDecoder(broken, draft_model, gamma=2, impl="hf").generate(ids, mask, **kw)
    if temperature > 0:   # a greedy draft's unusable row is only a rejected draft; a sampled one has no q
        with pytest.raises(ValueError, match="the draft produced .* a row of all -inf"):
            SpeculativeDecoder(target_model, _all_minus_inf(draft_model), gamma=2, impl="hf").generate(ids, mask, **kw)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_verify_refuses_a_position_of_all_minus_inf(backend):
    p, q = torch.randn(2, 3, 10), torch.randn(2, 2, 10)
    x = q.argmax(-1)
    p[1, 2] = float("-inf")                       # row 1's bonus position: nothing can be emitted from it
    for t in (0.0, 1.0):
        with pytest.raises(ValueError, match="target_logits contain NaN or \\+inf, or a position whose logits are "
                                             "all -inf \\(row 1\\)"):
            verify(p, q, x, temperature=t, backend=backend)
    q[0, 1] = float("-inf")
    p[1, 2] = 0.0
    with pytest.raises(ValueError, match="draft_logits contain .* \\(row 0\\)"):
        verify(p, q, x, temperature=1.0, backend=backend)
    # a position a row does not use may be anything: row 0 verifies one draft only
    verify(p, q, x, temperature=1.0, num_draft_tokens=torch.tensor([1, 2]), backend=backend)


def test_teacher_cache_refuses_unusable_target_logits(tmp_path, pair_dirs, monkeypatch):
    """cache-teacher wrote NaN log-probabilities from such a target, exit 0."""
    monkeypatch.setattr(cache_mod, "load_model", lambda *a, **k: _all_minus_inf(load_model(*a, **k)))
    cfg = CacheConfig(out=str(tmp_path / "c"), target=pair_dirs["target"], data=pair_dirs["data"], prompt_tokens=12,
                      new_tokens=6, batch_size=2, steps=1, topk=4, device="cpu")
    with pytest.raises(ValueError, match="the target produced .* all -inf .*cache step 0"):
        build_cache(cfg)
    assert not list((tmp_path / "c").glob("step_*.pt"))

