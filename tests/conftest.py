"""Shared test setup: tiny models built in-process, and Triton's interpreter on machines without CUDA."""
import os

# NumPy's OpenBLAS reads its thread count when NumPy loads (torch imports it): one thread, as the
# `specdec` commands run it (specdec/engine/lean_numpy.py), so small models take the NumPy forward here too.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

# Triton reads TRITON_INTERPRET when a kernel is defined, so this must run before any kernel module
# is imported. With no GPU, `backend="triton"` then runs the kernels on CPU tensors (slowly).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from specdec.engine.runner import ModelRunner  # noqa: E402  (after TRITON_INTERPRET is set)

# Tiny models: one thread avoids OpenMP spin-waits that dominate at these sizes (and on shared CPUs).
torch.set_num_threads(1)


def tiny_llama(vocab_size: int = 64, hidden_size: int = 32, num_layers: int = 2, seed: int = 0,
               max_position_embeddings: int = 256, heads: int = 4, kv_heads: int = 2):
    """A random LlamaForCausalLM small enough to run hundreds of forwards a second on a CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_position_embeddings, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    # Larger-than-default weights give peaked, seed-dependent distributions (default init is near-uniform).
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="session")
def target_model():
    return tiny_llama(seed=0, num_layers=2)


@pytest.fixture(scope="session")
def draft_model():
    return tiny_llama(seed=1, num_layers=1, hidden_size=16, heads=2, kv_heads=1)


def assert_rows_independent(model, impl: str, cache_dtype) -> None:
    """A target is a fixed distribution: a row's logits are bitwise the same alone, left-padded in a
    ragged batch, after holes in its cache (columns no query sees, as a rejected draft leaves them), and
    scored 1, 2 or 4 tokens per forward (4 rows of 37, 11, 60 and 5 prompt tokens, then 4 more tokens
    each; 3 holes in the batch, S - 1 alone), on `impl` with a KV cache of `cache_dtype`."""
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 64, (n,), generator=g) for n in (37, 11, 60, 5)]
    tail = torch.randint(3, 64, (4, 3), generator=g)                 # 3 more tokens for every row

    def run(batch_rows, idx, S, holes):
        P = max(len(r) for r in batch_rows)
        ids = torch.zeros((len(batch_rows), P), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, r in enumerate(batch_rows):
            ids[b, P - len(r):], mask[b, P - len(r):] = r, 1
        runner = ModelRunner(model, len(batch_rows), P + 8 + holes, impl=impl)
        assert runner.kv.dtype == cache_dtype
        runner.prefill(ids, mask)
        for _ in range(holes):   # a junk token in a column marked invalid: a hole every later query skips
            B = len(batch_rows)
            runner.forward(torch.full((B, 1), 7), (mask.sum(1) - 1)[:, None], torch.zeros((B, 1), dtype=torch.bool))
        pos = (mask.sum(1) - 1)[:, None] + torch.arange(4)[None]
        new = torch.cat([ids[:, -1:], tail[idx]], 1)                 # [B, 4]: pending + 3
        valid = torch.ones((len(batch_rows), S), dtype=torch.bool)
        return torch.cat([runner.forward(new[:, i:i + S], pos[:, i:i + S], valid) for i in range(0, 4, S)], 1)

    together = run(rows, list(range(4)), 4, 3)                       # [B, 4, V]
    for b in range(4):
        for S in (1, 2, 4):
            assert torch.equal(run([rows[b]], [b], S, S - 1)[0], together[b]), (b, S)


def chi2_pvalue(counts, probs, min_expected: float = 5.0) -> float:
    """Pearson chi-square goodness-of-fit p-value of observed `counts` against `probs` (1-D).

    Cells expected below `min_expected` are pooled into one cell (the usual validity rule). An outcome
    with probability 0 that was observed returns 0. Uses torch.special.gammaincc (no scipy).
    """
    counts = torch.as_tensor(counts, dtype=torch.float64).flatten()
    probs = torch.as_tensor(probs, dtype=torch.float64).flatten()
    probs = probs / probs.sum()
    if bool(((probs == 0) & (counts > 0)).any()):
        return 0.0
    n = counts.sum()
    expected = probs * n
    small = expected < min_expected
    obs = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    exp = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    dof = obs.numel() - 1
    if dof < 1:
        return 1.0
    stat = ((obs - exp) ** 2 / exp).sum()
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat / 2.0))


def binom_pvalue(successes: int, n: int, prob: float) -> float:
    """Two-sided normal-approximation p-value that `successes` out of `n` come from Binomial(n, prob)."""
    import math
    mean, var = n * prob, n * prob * (1 - prob)
    if var == 0:
        return 1.0 if successes == mean else 0.0
    z = abs(successes - mean) / math.sqrt(var)
    return math.erfc(z / math.sqrt(2))


# Every statistical test in this suite rejects at ALPHA: a false alarm 1 time in 1000 per test for a
# random seed. Seeds are fixed, so CI is deterministic; each such test also has a negative control
# showing that a real defect is caught at the same threshold.
ALPHA = 1e-3


def bench_script(name: str, monkeypatch):
    """bench/<name>.py loaded as module `name` (registered in sys.modules for the test: its dataclasses
    look their module up)."""
    import importlib.util
    import sys
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)
    spec.loader.exec_module(mod)
    return mod
