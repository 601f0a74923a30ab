"""Scratch (2026-12-06; not a product script): qkernels.c's qgemm (q4_1 blocks, float32 activations: the default
gguf path) on SmolLM2-135M's four projection shapes at M rows (12 random copies of each, cycled, so the weights
stream from memory as in a forward), medians of 7; the 30 layers' sum, per row, and the share of the FMA floor
(M N K multiply-adds at 58 G a second: 16 lanes a cycle at 3.7 GHz, this Zen 4 core's measured vfmadd rate).
`taskset -c 1 python gemm_rows_scratch.py [M,M,...]` (bench/RESULTS.md, "T = 1: how far ...", the greedy floors)"""
import sys, time, numpy as np
from specdec.engine import qkernels, qformats
rng = np.random.default_rng(0)
shapes = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}
mats = {}
for k, (N, K) in shapes.items():
    # enough copies to overflow L3 (like a decode step streaming the weights)
    cp = []
    for i in range(12):
        cp.append(qkernels.QMatrix("q4_1", qformats.quantize_q4_1(rng.standard_normal((N, K)).astype(np.float32)), K))
    mats[k] = cp
Ms = [int(a) for a in sys.argv[1].split(",")] if len(sys.argv) > 1 else [1, 2, 4, 8, 9, 12, 16, 17, 24, 32, 64, 128, 184]
FLOOR = 58e9
for M in Ms:
    tot, fl = 0.0, 0.0
    parts = []
    for k, cp in mats.items():
        N, K = shapes[k]
        x = rng.standard_normal((M, K)).astype(np.float32)
        out = np.empty((M, N), np.float32)
        ts = []
        for rep in range(7):
            t = time.perf_counter()
            for w in cp:
                qkernels.matmul(x, w, out)
            ts.append((time.perf_counter() - t) / len(cp))
        t = sorted(ts)[3]
        f = M * N * K / FLOOR
        tot += t; fl += f
        parts.append(f"{k} {t*1e3:.3f}ms ({f/t:.2f})")
    # per layer (4 matrices) x 30 layers
    print(f"M={M:4d} layers {30*tot*1e3:7.2f} ms  per row {30*tot*1e3/M:6.3f} ms  floor share {fl/tot:.2f}   " + "  ".join(parts), flush=True)
