"""Scratch (2026-12-06; not a product script): SmolLM2's whole greedy step on the default gguf path, in one
process: the model's forward then NumPy's argmax and NaN check (before) against runner.forward_greedy (the greedy
head), 1 and 8 tokens after a prompt of P tokens, interleaved, medians of R. Every forward is forgotten again
(the cache cropped), so each sees the same context. `PYTHONPATH=. taskset -c 1 python step_ab_scratch.py P R`."""
import statistics, sys, time, numpy as np, torch
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import argmax, unusable_rows
from specdec.models.pairs import resolve_pair
from specdec.models.load import load_target
P, R = int(sys.argv[1]), int(sys.argv[2])
m = load_target(resolve_pair("smollm2").target, quantize="gguf"); m = m[0] if isinstance(m, tuple) else m
r = ModelRunner(m, 1, P + 64)
ids = torch.randint(100, 40000, (1, P), generator=torch.Generator().manual_seed(0))
r.prefill(ids, torch.ones_like(ids))
V = 49152
def step(S, greedy):
    x = ids[:, -S:]; pos = (P - 1 + torch.arange(S))[None]; valid = torch.ones_like(x, dtype=torch.bool)
    n = r.columns
    t0 = time.perf_counter()
    if greedy:
        tok, bad = r.forward_greedy(x, pos, valid, V)
    else:
        logits = r.forward(x, pos, valid)[..., :V]
        tok, bad = argmax(logits), bool(unusable_rows(logits).any())
    dt = time.perf_counter() - t0
    r.crop(n)
    return dt, tok
times = {(S, g): [] for S in (1, 8) for g in (False, True)}
for i in range(R + 2):
    for key in (list(times) if i % 2 == 0 else list(times)[::-1]):
        dt, tok = step(*key)
        if i >= 2: times[key].append(dt)
for S in (1, 8):
    a, b = (statistics.median(times[(S, g)]) * 1e3 for g in (False, True))
    _, ta = step(S, False); _, tb = step(S, True)
    print(f"P {P}, {S} token(s): forward + argmax {a:.2f} ms, greedy head {b:.2f} ms ({a / b:.3f}x); ids equal: {torch.equal(ta, tb)}")
