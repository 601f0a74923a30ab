"""Scratch (2026-12-06; not a product script): SmolLM2's greedy head (gguf) at M rows, its blocks evicted from the
caches first (128 MB summed), medians of 9: the whole call (rmsnorm, qgemm_q8a over the head, head_argmax's scan),
then the two C calls apart. `PYTHONPATH=<tree> taskset -c 1 python head_split_scratch.py` (bench/RESULTS.md,
"The greedy ratio on the Zen 4 VM against its floors"; head_split.txt)"""
import time, statistics, ctypes, numpy as np, torch
from specdec.models.pairs import resolve_pair
from specdec.engine import qkernels, qweights
from specdec.engine.runner import ModelRunner
import specdec.models.load as L
pair = resolve_pair("smollm2")
m = L.load_target(pair.target, quantize="gguf"); m = m[0] if isinstance(m, tuple) else m
r = ModelRunner(m, 1, 64)
ids = torch.randint(100, 2000, (1, 9))
r.forward_greedy(ids, torch.arange(9)[None], torch.ones((1, 9), dtype=torch.bool), 49152)
lean = r._lean
call = lean._greedy_call
lib = qkernels.library()
rng = np.random.default_rng(0)
big = [np.random.default_rng(i).standard_normal((1 << 22,)).astype(np.float32) for i in range(8)]  # 128 MB to evict
for M in (1, 2, 3, 4, 5, 6, 8):
    x = rng.standard_normal((M, 576)).astype(np.float32)
    call(x, 49152)
    gemm, scan = [], []
    for rep in range(9):
        for b in big: b.sum()                       # the head's blocks out of the caches, as after the layers
        t0 = time.perf_counter(); call(x, 49152); tot = time.perf_counter() - t0
        gemm.append(tot)
    print(f"M={M}: head call {1e3*statistics.median(gemm):.2f} ms", flush=True)
print("split")
for M in (1, 4, 5, 8):
    x = rng.standard_normal((M, 576)).astype(np.float32)
    call(x, 49152)
    (xn, ids_, ok, checked, _), gemm, scan = call._calls[M]
    scan[12] = 49152
    tg, ts = [], []
    for rep in range(9):
        for b in big: b.sum()
        t0 = time.perf_counter(); lib.qgemm_q8a(*gemm); t1 = time.perf_counter(); lib.head_argmax(*scan); t2 = time.perf_counter()
        tg.append(t1 - t0); ts.append(t2 - t1)
    print(f"M={M}: qgemm_q8a {1e3*statistics.median(tg):.2f} ms  head_argmax scan {1e3*statistics.median(ts):.3f} ms", flush=True)
