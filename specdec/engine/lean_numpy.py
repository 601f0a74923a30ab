"""The lean forward in NumPy, for small float32 models on the CPU (the bundled draft's path).

Why: a small draft's step is per-operation overhead. On the project's CPUs a PyTorch operation costs a
few microseconds of dispatch before any arithmetic, and its fp32 GEMV is 2-3x slower than OpenBLAS at
these sizes, while a NumPy operation costs about a microsecond (bench/RESULTS.md, "Fast decode path").
This is the same math as specdec/engine/lean.py (fused, norm-folded projections, RoPE on q and k at once,
grouped-query attention without copying K/V), on NumPy views of the same weights and of the same KV
cache buffers (zero-copy), so the engine's cache bookkeeping is unchanged.

Scope: float32 models on the CPU, with plain Linear projections, that the lean forward supports
(`supports`). `runner.resolve_impl("auto")` takes it for small models (SMALL_MODEL_PARAMS: weights
that stay in the CPU's cache, where dispatch dominates); a large target streams its weights from
memory either way, and its int8 path is PyTorch's.
OpenBLAS keeps its own thread pool, whose idle threads spin after every call and take the cores from
PyTorch's: `auto` takes this path only when OpenBLAS runs one thread (`blas_single_threaded`; the
`specdec` commands set OPENBLAS_NUM_THREADS=1; a Python program sets it before importing NumPy).

Equivalence: logits equal transformers' forward up to float rounding (tests/test_runner.py); plain and
speculative decoding of a model use the same forward, so greedy output stays exact.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from . import lean
from .headmap import head_ids

# Models up to this many parameters take the NumPy path under impl="auto".
SMALL_MODEL_PARAMS = 4_000_000


def supports(model) -> str | None:
    """None if `model` can run on the NumPy lean forward, else why not."""
    reason = lean.supports(model)
    if reason is not None:
        return reason
    emb = model.get_input_embeddings().weight
    if emb.device.type != "cpu" or emb.dtype != torch.float32:
        return "not a float32 model on the CPU"
    if any(not isinstance(m, torch.nn.Linear) and hasattr(m, "in_features") for m in model.modules()):
        return "quantized projections"
    return None


def is_small(model) -> bool:
    n = sum(p.numel() for p in model.parameters())
    ids = head_ids(model)
    if ids is not None:   # a head covering some ids (headmap.py): a step reads its rows and one embedding row
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        n -= emb.numel() + (head.shape[0] - len(ids)) * head.shape[1]
    return n <= SMALL_MODEL_PARAMS


def blas_single_threaded() -> bool:
    """Whether NumPy's OpenBLAS runs one thread (OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS, read when
    NumPy loads it). With more, its idle threads spin after every call and take the cores from PyTorch's
    (measured: the int8 target's step 2.3x slower beside them), so impl="auto" takes the NumPy path only
    with one; `specdec` commands set it."""
    for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name)
        if value:
            return value.strip() == "1"
    return (os.cpu_count() or 1) == 1


def _softmax_(s):
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


class NumpyLeanForward:
    """`__call__(ids, pos, cache, mask, logits_to_keep)` -> torch logits, as LeanForward's."""

    def __init__(self, fwd: lean.LeanForward):
        self.fwd = fwd
        self._built_for = None

    def _weights(self):
        """NumPy views of the LeanForward's folded weights, rebuilt when it rebuilds them."""
        f = self.fwd
        if self._built_for is not f.layers:
            if any(n is not None for layer in f.layers for n in (layer.norm1, layer.norm2)) or f.head_norm is not None:
                raise ValueError("the NumPy forward needs folded float32 projections")

            def proj(p):
                if p.wt is None:
                    raise ValueError("the NumPy forward needs folded float32 projections")
                return p.wt.numpy(), (None if p.bias is None else p.bias.numpy())
            self._layers = [(proj(layer.qkv[0]), proj(layer.o), proj(layer.gate_up[0]), proj(layer.down))
                            for layer in f.layers]
            self._head = proj(f.head)
            self._embed = f.embed.numpy()
            self._built_for = f.layers
        return self._layers

    def _cache_views(self, cache, B, S):
        """NumPy views of the cache's live K/V buffers (zero-copy; the cache makes them once per batch)."""
        if len(cache.keys) < len(self.fwd.layers):   # first forward: the cache allocates its buffers
            zeros = torch.zeros((B, self.fwd.Hkv, S, self.fwd.D))
            for i in range(len(cache.keys), len(self.fwd.layers)):
                cache.write(i, zeros, zeros)
        return cache.numpy_views()

    def _rms(self, x):
        # np.mean's own steps (a sum reduction, then a divide) without its Python wrapper, ~20 us less per
        # call, five calls per draft step (np.mean divides by an intp, i.e. in float64: bitwise the same
        # where the width is a power of two, within one float32 rounding elsewhere)
        ms = np.add.reduce(x * x, axis=-1, keepdims=True) / x.shape[-1]
        return x * (1.0 / np.sqrt(ms + self.fwd.eps))

    def __call__(self, ids, pos, cache, mask, logits_to_keep: int = 0):
        f = self.fwd
        layers = self._weights()
        B, S = ids.shape
        H, Hkv, D = f.H, f.Hkv, f.D
        G = H // Hkv
        views = self._cache_views(cache, B, S)
        start, stop = cache.length, cache.length + S
        m = mask.numpy()                                                       # [B, 1, S, L]
        if G > 1:
            m = np.tile(m, (1, 1, G, 1))                                       # [B, 1, G*S, L], query j*S+s
        x = self._embed[ids.numpy().reshape(-1)]                               # [N, d], N = B*S
        rope = f._table(cache.capacity, torch.float32).numpy()[pos.numpy().reshape(-1)][:, None, :]
        cos, sin = rope[..., :D], rope[..., D:]                                # [N, 1, D]
        for (layer, (Kb, Vb)) in zip(layers, views):
            (wqkv, bqkv), (wo, _), (wgu, _), (wd, _) = layer
            qkv = self._rms(x) @ wqkv
            if bqkv is not None:
                qkv += bqkv
            qkv = qkv.reshape(-1, H + 2 * Hkv, D)
            a = qkv[:, :H + Hkv]
            qk = a * cos + np.concatenate((a[..., D // 2:], a[..., :D // 2]), -1) * sin   # RoPE (np.roll by D/2)
            Kb[:, :, start:stop] = qk[:, H:].reshape(B, S, Hkv, D).transpose(0, 2, 1, 3)
            Vb[:, :, start:stop] = qkv[:, H + Hkv:].reshape(B, S, Hkv, D).transpose(0, 2, 1, 3)
            K, V = (Kb, Vb) if cache.static else (Kb[:, :, :stop], Vb[:, :, :stop])   # [B, Hkv, L, D]
            # head h = kv * G + j: the G query heads of one KV head are G * S queries of it
            q = qk[:, :H].reshape(B, S, Hkv, G, D).transpose(0, 2, 3, 1, 4).reshape(B, Hkv, G * S, D)
            p = _softmax_((q @ K.transpose(0, 1, 3, 2)) * f.scale + m)          # [B, Hkv, G*S, L]
            o = (p @ V).reshape(B, Hkv, G, S, D).transpose(0, 3, 1, 2, 4).reshape(B * S, H * D)
            x = x + o @ wo
            gu = self._rms(x) @ wgu
            g, u = gu[:, :gu.shape[1] // 2], gu[:, gu.shape[1] // 2:]             # np.split's halves, as views
            x = x + (g * (0.5 + 0.5 * np.tanh(0.5 * g)) * u) @ wd                 # SiLU(g) * u, no overflow
        if logits_to_keep and logits_to_keep < S:
            x = x.reshape(B, S, -1)[:, -logits_to_keep:].reshape(B * logits_to_keep, -1)
        wh, bh = self._head
        logits = self._rms(x) @ wh
        if bh is not None:
            logits += bh
        return torch.from_numpy(logits).view(B, -1, logits.shape[-1])
