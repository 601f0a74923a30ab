"""Scratch (2026-12-06; not a product script): one small operation timed right after streaming 160 MB
(a decode step's weights and cache pass through every cache level the same way) against the same operation
repeated at once; medians of 30. `taskset -c 1 python cold_scratch.py` (bench/RESULTS.md, "A round's Python")."""
import time, numpy as np, torch, statistics
big = np.ones(160 << 20 >> 3)  # 160 MB float64
def flush(): big.sum()
x = [5, 7, 9, 11]; d = [5, 7, 8, 11]
t = torch.arange(8); tn = t.numpy(); a8 = np.arange(8)
def py():
    a = 0
    while a < 4 and x[a] == d[a]: a += 1
    return x[:a] + [d[a]] + [-1] * (4 - a), a
def one_torch(): return t[:, None] if False else t + 1
def one_np(): return a8 + 1
def np_where(): return np.where(a8 > 3, 0.0, 1.0)
def torch_tensor(): return torch.tensor([1, 2, 3])
def tolist(): return t.tolist()
for f in (py, one_torch, one_np, np_where, torch_tensor, tolist):
    cold, warm = [], []
    for i in range(30):
        flush()
        t0 = time.perf_counter(); f(); t1 = time.perf_counter(); f(); t2 = time.perf_counter()
        cold.append(t1 - t0); warm.append(t2 - t1)
    print(f"{f.__name__:14s} cold {1e6 * statistics.median(cold):6.1f} us  warm {1e6 * statistics.median(warm):6.1f} us")
