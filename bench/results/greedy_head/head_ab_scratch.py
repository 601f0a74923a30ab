"""Scratch (2026-12-06; not a product script): SmolLM2's head on the default gguf path, the float head plus
NumPy's argmax against the greedy head (qkernels.head_argmax), over the same final hidden states, in one process.
`PYTHONPATH=. taskset -c 1 python head_ab_scratch.py question.jsonl` (the converted GGUF under SPECDEC_CACHE_DIR):
12 Spec-Bench prompts' greedy answers (96 tokens each) give the states; per position the argmax must be equal."""
import json, sys, time, numpy as np, torch
from specdec.engine import qkernels, qweights
from specdec.engine.decoding import autoregressive_generate
from specdec.engine.runner import ModelRunner
from specdec.models.pairs import resolve_pair
from specdec.models.load import load_target, load_tokenizer
p = resolve_pair("smollm2")
m = load_target(p.target, quantize="gguf"); m = m[0] if isinstance(m, tuple) else m
tok = load_tokenizer(p.target)
qs = [json.loads(l)['turns'][0] for l in open(sys.argv[1])][5::40][:12]
Xs = []
for q in qs:
    ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_tensors='pt')
    ids = ids if isinstance(ids, torch.Tensor) else ids['input_ids']
    out = autoregressive_generate(m, ids, max_new_tokens=96).new_tokens[0]
    full = torch.cat([ids[0], torch.tensor(out)])[None]
    _, f = ModelRunner(m, 1, full.shape[1] + 8).forward(full, torch.arange(full.shape[1])[None],
                                                        torch.ones_like(full, dtype=torch.bool), hidden=True)
    Xs.append(f[0, ids.shape[1] - 1:].numpy())
X = np.ascontiguousarray(np.concatenate(Xs))
qw = qweights.current_weights(m)
h, g = qw.head, qkernels.greedy_head(qw.head)
ids, ok, checked = qkernels.head_argmax(X, h, g)
assert ok.all() and np.array_equal(ids, qkernels.matmul(X, h).argmax(-1))
print(f"{X.shape[0]} positions: argmax equal at every one; rows rechecked exactly median {np.median(checked):.0f}, "
      f"p90 {np.percentile(checked, 90):.0f}, max {checked.max()} of {h.N}")
def t(f, n=31):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return np.median(ts) * 1e3
for M in (1, 2, 5, 8):
    x = np.ascontiguousarray(X[200:200 + M]); z = np.empty((M, h.N), np.float32)
    a = t(lambda: qkernels.matmul(x, h).argmax(-1)); b = t(lambda: qkernels.head_argmax(x, h, g, z=z))
    c = t(lambda: qkernels.matmul(x, g.packed, out=z, act="q8"))
    print(f"{M} rows: float head + argmax {a:.2f} ms, greedy head {b:.2f} ms ({a / b:.2f}x; its Q8 GEMM alone {c:.2f} ms)")
