"""Values that used to be accepted and then went wrong (issue 19, classes 1, 2, 3, 9, 10): each is refused
with one line naming the setting, before the work it would spoil; none yields an id nobody sampled."""
import copy
import json
import math

import pytest
import torch

from distill_helpers import save_pair
from specdec import SpeculativeDecoder, autoregressive_generate, verify
from specdec.benchmark import bench as bench_mod
from specdec.cli import generate as generate_cli, main
from specdec.common import values
from specdec.distill import CacheConfig, DistillConfig, build_cache
from specdec.distill import cache as cache_mod
from specdec.distill.checkpoint import STATE_FILE
from specdec.engine import params, runner as runner_mod
from specdec.engine.quant import quantize_model
from specdec.engine.runner import ModelRunner
from specdec.models import load as load_mod, load_model


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



# ---------------------------------------------------------------------------------------------- class 2

def test_gamma_has_an_upper_bound(target_model, draft_model, capsys, monkeypatch):
    """generate --gamma 1000000000 was an allocation traceback after 19 s."""
    for kw in ({"gamma": 10 ** 9}, {"gamma": "auto", "max_gamma": 10 ** 9}):
        with pytest.raises(ValueError, match=f"gamma must be >= 1 and <= {values.MAX_GAMMA}"):
            SpeculativeDecoder(target_model, draft_model, **kw)
    monkeypatch.setattr(generate_cli, "load_pair", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(["generate", "--gamma", "1000000000", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--gamma must be >= 1 and <= {values.MAX_GAMMA}" in err, err


def test_bench_refuses_more_rows_than_prompts(tmp_path, capsys, monkeypatch):
    """--batch-size 16 with 4 prompts labelled every row batch 16 though only 4 rows ran."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"def f{i}(x):", "category": "c"}) + "\n" for i in range(4)))
    monkeypatch.setattr(bench_mod, "load_pair", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(["bench", "--prompts", str(prompts), "--num-prompts", "0", "--batch-size", "1,16", "--device", "cpu",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--batch-size 16 is more than the 4 prompts" in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("impl, quantize", [("hf", "none"), ("lean", "none"), ("numpy", "none"), ("lean", "int8")])
def test_cache_estimate_is_what_the_runner_allocates(target_model, impl, quantize):
    model = quantize_model(copy.deepcopy(target_model), quantize)
    ids, mask = _batch(B=3)
    runner = ModelRunner(model, 3, 40, impl=impl)
    runner.prefill(ids, mask)
    allocated = sum(t.nbytes for t in runner.kv.keys + runner.kv.values)
    assert allocated > 0 and params.cache_bytes(model, 3, 40, impl) == allocated


def test_caches_larger_than_memory_are_refused_before_allocating(target_model, draft_model, monkeypatch):
    """bench --batch-size 1000 grew to 16 GB until the OOM killer took it."""
    need = params.cache_bytes(target_model, 2, 100) + params.cache_bytes(draft_model, 2, 100)
    monkeypatch.setattr(params, "available_bytes", lambda device: need // 4)
    monkeypatch.setattr(runner_mod.KVCache, "__init__", lambda *a, **k: pytest.fail("a cache was allocated"))
    ids, mask = _batch()
    with pytest.raises(ValueError, match=r"the KV caches need .* GiB \(2 rows x \d+ columns\) but .* available"):
        autoregressive_generate(target_model, ids, mask, max_new_tokens=30)
    with pytest.raises(ValueError, match="the KV caches need"):
        SpeculativeDecoder(target_model, draft_model, gamma=4).generate(ids, mask, max_new_tokens=30)


def test_bench_refuses_caches_larger_than_memory_before_measuring(tmp_path, pair_dirs, capsys, monkeypatch):
    monkeypatch.setattr(params, "available_bytes", lambda device: 1024)
    monkeypatch.setattr(bench_mod, "measure_step_costs", lambda *a, **k: pytest.fail("measured before the check"))
    out = tmp_path / "o"
    assert main(["bench", "--target", pair_dirs["target"], "--draft", pair_dirs["draft"], "--num-prompts", "1",
                 "--batch-size", "1", "--gamma", "2", "--temperature", "0", "--max-new-tokens", "4", "--device", "cpu",
                 "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the KV caches need" in err, err
    assert not out.exists()   # the folder is left as it was found (it did not exist)


# ---------------------------------------------------------------------------------------------- class 3 (and 9)

def _distill_argv(pair_dirs, out, *extra):
    return ["distill", "--out", str(out), "--target", pair_dirs["target"], "--draft", pair_dirs["draft"],
            "--data", pair_dirs["data"], "--data-source", "dataset", "--prompt-tokens", "12", "--new-tokens", "6",
            "--batch-size", "2", "--eval-every", "0", "--spec-eval-every", "0", "--eval-prompts", "2",
            "--save-every", "0", "--no-progress", "--device", "cpu", *extra]


@pytest.fixture
def no_models(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a model was loaded")
    for where in ("specdec.models.load", "specdec.distill.trainer", "specdec.distill.cache"):
        monkeypatch.setattr(f"{where}.load_model", boom)


@pytest.mark.parametrize("extra, match", [
    # distill trained every step, then failed in the final evaluation with no model and no checkpoint
    (["--eval-new-tokens", "2000"], "--prompt-tokens 12 + --eval-new-tokens 2000 = 2012 exceeds the models' "
                                    "context of 256 positions"),
    # class 9: training sequences past the models' positions
    (["--new-tokens", "300"], "--prompt-tokens 12 + --new-tokens 300 = 312 exceeds the models' context of 256"),
    (["--eval-gamma", "100000"], "--eval-gamma must be >= 1 and <= 64"),
    (["--seed", str(2 ** 64)], "--seed must be >= 0 and <= 9223372036854775807"),
])
def test_distill_checks_values_before_any_model_loads(tmp_path, pair_dirs, no_models, capsys, extra, match):
    out = tmp_path / "run"
    assert main(_distill_argv(pair_dirs, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists()


def test_cache_teacher_checks_the_context_before_any_model_loads(tmp_path, pair_dirs, no_models, capsys):
    out = tmp_path / "cache"
    assert main(["cache-teacher", "--out", str(out), "--target", pair_dirs["target"], "--data", pair_dirs["data"],
                 "--prompt-tokens", "250", "--new-tokens", "7", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--prompt-tokens 250 + --new-tokens 7 = 257 exceeds" in err, err
    assert not out.exists()


@pytest.mark.parametrize("argv, match", [
    (["demo", "--prompt-tokens", "100000"], "--prompt-tokens 100000 + --new-tokens 112"),  # failed after bench 1
    (["demo", "--max-new-tokens", "5000"], "--max-new-tokens 5000 leaves no room"),
    (["demo", "--seed", str(2 ** 64)], "--seed must be >= 0"),
    (["bench", "--seed", str(2 ** 64)], "--seed must be >= 0"),   # failed after loading, naming no flag
    (["bench", "--max-new-tokens", "5000"], "--max-new-tokens 5000 leaves no room"),
    (["generate", "--seed", str(2 ** 64)], "--seed must be >= 0"),
])
def test_commands_check_values_before_any_work(argv, match, tmp_path, capsys, monkeypatch):
    from specdec.cli import demo
    monkeypatch.setattr(demo, "run_bench", lambda *a, **k: pytest.fail("a stage ran"))
    monkeypatch.setattr(bench_mod, "load_pair", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(generate_cli, "load_pair", lambda *a, **k: pytest.fail("a model was loaded"))
    out = ["--out", str(tmp_path / "o")] if argv[0] != "generate" else []
    assert main(argv + out + ["--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def test_a_diverging_loss_stops_the_run_and_keeps_the_good_checkpoints(tmp_path, pair_dirs, capsys):
    """--lr 1e8 went on with `loss: null` every step and then blamed the target."""
    out = tmp_path / "run"
    assert main(_distill_argv(pair_dirs, out, "--lr", "1e8", "--warmup-steps", "0", "--steps", "6",
                              "--save-every", "1", "--keep-checkpoints", "10")) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]   # after transformers' loading bars
    assert last.startswith("specdec distill: error: ") and "learning rate" in last and "(--lr 1e+08)" in last, last
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert all(math.isfinite(r["loss"]) for r in rows)
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    assert 1 <= len(rows) < 6 and len(rows) - 1 <= len(ckpts) <= len(rows)   # stopped at the first bad step
    for ckpt in ckpts:
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
        assert all(bool(t.isfinite().all()) for t in state["model"].values()), ckpt


# ---------------------------------------------------------------------------------------------- class 10

@pytest.mark.parametrize("impl", ["numpy", "hf"])
@pytest.mark.parametrize("bad", [-1, 64, 10 ** 6])
def test_token_ids_outside_the_embedding_are_refused(target_model, draft_model, impl, bad):
    """A negative id wrapped round on the NumPy path (a silent wrong prompt) and was an IndexError elsewhere."""
    ids, mask = _batch()
    ids[1, 4] = bad
    match = rf"input_ids must be token ids in \[0, 64\) .* got {bad} in row 1"
    with pytest.raises(ValueError, match=match):
        autoregressive_generate(target_model, ids, mask, max_new_tokens=2, impl=impl)
    with pytest.raises(ValueError, match=match):
        SpeculativeDecoder(target_model, draft_model, gamma=2, impl=impl).generate(ids, mask, max_new_tokens=2)


@pytest.mark.parametrize("kw, match", [
    ({"top_k": 2.5}, "top_k must be an integer"),
    ({"max_new_tokens": 8.5}, "max_new_tokens must be an integer"),
    ({"seed": "abc"}, "seed must be an integer"),
    ({"eos_token_id": "36"}, "eos_token_id must be an integer"),     # was read as the ids 3 and 6
    ({"eos_token_id": [2, 3.0]}, "eos_token_id must be an integer"),
    ({"temperature": "1"}, "temperature must be a number"),
    ({"top_p": None}, "top_p must be a number"),
    ({"input_ids": "ids"}, "input_ids must be a \\[B, P\\] torch.Tensor"),
    ({"input_ids": "float"}, "input_ids must hold integer token ids"),   # float ids were truncated
    ({"attention_mask": [[1, 1]]}, "attention_mask must be a \\[B, P\\] torch.Tensor"),
])
def test_generate_arguments_are_checked_by_type(target_model, draft_model, kw, match):
    ids, mask = _batch()
    args = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": 2, **kw}
    if kw.get("input_ids") == "float":
        args["input_ids"] = ids.float() + 0.4
    for run in (lambda: autoregressive_generate(target_model, **args),
                lambda: SpeculativeDecoder(target_model, draft_model, gamma=2).generate(**args)):
        with pytest.raises(TypeError, match=match):
            run()


def test_the_value_range_of_a_mask_and_of_the_decoder_arguments(target_model, draft_model):
    ids, mask = _batch()
    with pytest.raises(ValueError, match="attention_mask must hold 0 .* and 1"):
        autoregressive_generate(target_model, ids, mask * 2, max_new_tokens=2)
    for kw, error, match in (({"vocab_size": 2.5}, TypeError, "vocab_size must be an integer"),
                             ({"vocab_size": 0}, ValueError, "vocab_size must be >= 1"),
                             ({"cuda_graphs": "yes"}, TypeError, "cuda_graphs must be True or False"),
                             ({"backend": "cuda"}, ValueError, "backend must be one of"),
                             ({"cost_cache": 3}, TypeError, "cost_cache must be a folder path")):
        with pytest.raises(error, match=match):
            SpeculativeDecoder(target_model, draft_model, gamma=2, **kw)
    with pytest.raises(TypeError, match="target must be a transformers causal LM"):
        SpeculativeDecoder([target_model], draft_model)
    with pytest.raises(TypeError, match="target must be a transformers causal LM"):
        autoregressive_generate("gpt2", ids, mask)
    with pytest.raises(TypeError, match="on_round must be a function"):
        SpeculativeDecoder(target_model, draft_model, gamma=2).generate(ids, mask, max_new_tokens=2, on_round=5)


def test_verify_arguments_are_checked_by_type_and_range():
    p, q = torch.randn(2, 3, 10), torch.randn(2, 2, 10)
    x = q.argmax(-1)
    with pytest.raises(TypeError, match=r"target_logits must be a \[B, K\+1, V\] torch.Tensor, got list"):
        verify(p.tolist(), q, x)
    with pytest.raises(TypeError, match="num_draft_tokens must be an integer tensor"):
        verify(p, q, x, num_draft_tokens=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"num_draft_tokens must lie in \[0, K=2\]"):
        verify(p, q, x, num_draft_tokens=torch.tensor([3, -1]))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        verify(p, q, x, generator=0)
    with pytest.raises(TypeError, match="temperature must be a number"):
        verify(p, q, x, temperature="0")


@pytest.mark.parametrize("kw, error, match", [
    ({"target": 123}, TypeError, "target must be a model folder, a hub id or None"),
    ({"dtype": ["float32"]}, TypeError, "dtype must be a name"),
    ({"quantize": "int4"}, ValueError, "quantize must be one of"),
    ({"draft_quantize": "int4"}, ValueError, "draft_quantize must be one of"),
    ({"device": "tpu"}, ValueError, "device 'tpu'"),
    ({"device_map": 3}, TypeError, "device_map must be a string"),
])
def test_load_pair_checks_its_arguments_before_reading_anything(kw, error, match, monkeypatch):
    monkeypatch.setattr(load_mod, "load_tokenizer", lambda *a, **k: pytest.fail("a tokenizer was loaded"))
    with pytest.raises(error, match=match):
        load_mod.load_pair(**kw)
