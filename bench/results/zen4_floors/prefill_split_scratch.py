"""Scratch (2026-12-06; not a product script): a 184-token prompt (random ids; Spec-Bench's first turns average
~183 tokens in SmolLM2's chat template) through SmolLM2's gguf forward on the C kernels, one logit row kept,
median of 7 fresh caches; compare with gemm_rows_scratch.py 184 (the layers' GEMMs alone).
`SPECDEC_CACHE_DIR=... taskset -c 1 python prefill_split_scratch.py`"""
import time, torch, numpy as np, statistics
from specdec.engine.runner import ModelRunner
from specdec.models.pairs import resolve_pair
import specdec.models.load as L
pair = resolve_pair("smollm2")
m = L.load_target(pair.target, quantize="gguf"); m = m[0] if isinstance(m, tuple) else m
S = 184
ids = torch.randint(100, 20000, (1, S))
ts = []
for rep in range(7):
    r = ModelRunner(m, 1, S + 8)
    t = time.perf_counter()
    r.forward(ids, torch.arange(S)[None], torch.ones((1, S), dtype=torch.bool), logits_to_keep=1)
    ts.append(time.perf_counter() - t)
print("prefill %d tokens: median %.1f ms (%.3f ms a token)" % (S, 1e3 * statistics.median(ts), 1e3 * statistics.median(ts) / S))
