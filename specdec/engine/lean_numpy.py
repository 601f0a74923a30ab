"""The lean forward in NumPy, for small float32 models on the CPU (the bundled draft's path), and for
models with quantized weights (quantize="gguf" / "q8_0": `QuantLeanForward`, on the C kernels of
specdec/engine/qkernels.c; the fastest exact path for a memory-bound target on the CPU).

Why: a small draft's step is per-operation overhead. On the project's CPUs a PyTorch operation pays
more dispatch before any arithmetic than a NumPy one, and its fp32 GEMV is slower than OpenBLAS at these
sizes (measured: bench/RESULTS.md, "Fast decode path" and its "Figures moved from the code").
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
import sys

import numpy as np
import torch

from . import lean, qkernels, qweights
from .headmap import head_ids
from .qweights import QuantWeights

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


def quantized(model) -> bool:
    """Whether `model` carries quantized weights (quantize="gguf" / "q8_0"): impl="auto" runs it here."""
    return qweights.weights_of(model) is not None


_told: set[str] = set()


def forward_of(model, fwd: lean.LeanForward, previous=None):
    """The forward impl="numpy" runs for `model`: QuantLeanForward where it carries quantized weights
    and the C kernels build here, else NumpyLeanForward (float32 weights; for a quantized model they
    are the same model, dequantized, so only speed differs: one line on stderr says so). `previous`
    is reused while it still fits."""
    qw = qweights.current_weights(model)
    reason = None if qw is None else qkernels.available()
    if reason is None and qw is not None and fwd.D not in qkernels.HEAD_DIMS:
        reason = f"the C layers run head sizes {qkernels.HEAD_DIMS}, not {fwd.D}"
    if qw is not None and reason is None:
        if isinstance(previous, QuantLeanForward) and previous.fwd is fwd and previous.qw is qw:
            return previous
        return QuantLeanForward(fwd, qw)
    if reason is not None and reason not in _told:
        _told.add(reason)
        act = " and float32 activations" if qw.act == "q8" else ""
        print(f"specdec: quantize={qw.mode!r} runs on its float32 weights{act} (slower): {reason}", file=sys.stderr)
    if isinstance(previous, NumpyLeanForward) and previous.fwd is fwd:
        return previous
    return NumpyLeanForward(fwd)


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
    (the int8 target's step slows down beside them: bench/RESULTS.md, "Figures moved from the code"), so
    impl="auto" takes the NumPy path only with one; `specdec` commands set it."""
    for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name)
        if value:
            return value.strip() == "1"
    return (os.cpu_count() or 1) == 1


def cache_views(fwd: lean.LeanForward, cache, B: int, S: int) -> list:
    """NumPy views of the cache's live K/V buffers (zero-copy; the cache makes them once per batch)."""
    if len(cache.keys) < len(fwd.layers):   # first forward: the cache allocates its buffers
        zeros = torch.zeros((B, fwd.Hkv, S, fwd.D), dtype=cache.dtype)
        for i in range(len(cache.keys), len(fwd.layers)):
            cache.write(i, zeros, zeros)
    return cache.numpy_views()


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


    def _rms(self, x):
        # np.mean's own steps (a sum reduction, then a divide) without its Python wrapper (its cost, five
        # calls per draft step: bench/RESULTS.md, "Figures moved from the code"). np.mean divides by an
        # intp, i.e. in float64: bitwise the same where the width is a power of two, within one float32
        # rounding elsewhere
        ms = np.add.reduce(x * x, axis=-1, keepdims=True) / x.shape[-1]
        return x * (1.0 / np.sqrt(ms + self.fwd.eps))

    def __call__(self, ids, pos, cache, mask, logits_to_keep: int = 0, embeds_add=None, hidden: bool = False):
        """As LeanForward's (embeds_add, hidden included)."""
        f = self.fwd
        layers = self._weights()
        B, S = ids.shape
        H, Hkv, D = f.H, f.Hkv, f.D
        G = H // Hkv
        views = cache_views(self.fwd, cache, B, S)
        start, stop = cache.length, cache.length + S
        m = mask.numpy()                                                       # [B, 1, S, L]
        if G > 1:
            m = np.tile(m, (1, 1, G, 1))                                       # [B, 1, G*S, L], query j*S+s
        x = self._embed[ids.numpy().reshape(-1)]                               # [N, d], N = B*S
        if embeds_add is not None:
            x += embeds_add.numpy().reshape(x.shape)
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
        feats = torch.from_numpy(self._rms(x) * f.norm.numpy()).view(B, S, -1) if hidden else None
        if logits_to_keep and logits_to_keep < S:
            x = x.reshape(B, S, -1)[:, -logits_to_keep:].reshape(B * logits_to_keep, -1)
        wh, bh = self._head
        logits = self._rms(x) @ wh
        if bh is not None:
            logits += bh
        logits = torch.from_numpy(logits).view(B, -1, logits.shape[-1])
        return (logits, feats) if hidden else logits


class QuantLeanForward:
    """The lean forward of a model with quantized weights (qweights.py: quantize="gguf" / "q8_0"):
    every layer in one C call (qkernels.c: RMSNorm, the quantized projections, RoPE, the cache write,
    attention, SiLU gating), then the final norm and the quantized head. NumPy only gathers the
    embeddings and RoPE rows and hands over views of the cache's buffers (zero-copy).

    Exactness: every reduction in the C layer runs in one fixed order, and attention sums its columns
    left to right (a hidden column adds exactly 0), so a row's logits are bitwise the same alone or in
    a ragged batch, scored 1 or k tokens at a time, with holes anywhere in its cache: greedy speculative
    decoding reproduces plain decoding exactly, whatever the batch (tests/test_qkernels.py)."""

    def __init__(self, fwd: lean.LeanForward, weights: QuantWeights):
        self._lib = qkernels.library()
        self.fwd, self.qw = fwd, qweights.in_kernel_layout(weights)
        self._embed = fwd.embed.numpy()
        mats = [[qkernels.qmat_struct(m) for m in (ly.qkv, ly.o, ly.gate_up, ly.down)] for ly in self.qw.layers]
        self._mats = mats
        self._layers = None          # the ctypes Layer array, per cache buffers
        self._views_for = None
        self._work = np.empty(0, np.float32)
        self._rope = (None, None)                  # (the forward's RoPE table, its NumPy view)
        self._step = qkernels.Step()
        self._greedy_call = None                  # qkernels.GreedyHeadCall, made by the first `greedy`
        self._mask = np.empty(0, np.float32)      # greedy_row's causal mask (_causal), reused
        self._tri: dict = {}                       # S -> its [S, S] causal block
        self.greedy_rows = 0                       # positions through `greedy` (the tests read it)

    def __deepcopy__(self, memo):
        return None   # holds raw pointers into this model's arrays: a copied model builds its own

    def _layer_array(self, views):
        """Layer structs with this cache's buffers (rebuilt, and the buffers checked, when the cache's live
        views change)."""
        if self._views_for is not views:
            K0 = views[0][0]
            if K0.dtype not in (np.float32, np.float16) \
                    or not all(k.flags.c_contiguous and v.flags.c_contiguous for k, v in views):
                raise ValueError("the quantized forward needs a float32 or float16, contiguous KV cache")
            arr = (qkernels.Layer * len(self.qw.layers))()
            for i, (ly, mats, (K, V)) in enumerate(zip(self.qw.layers, self._mats, views)):
                arr[i] = qkernels.Layer(*mats, ly.norm1.ctypes.data, ly.norm2.ctypes.data, K.ctypes.data, V.ctypes.data)
            self._layers, self._views_for, self._views = arr, views, views
        return self._layers

    def _work_buffer(self, B: int, S: int, L: int) -> int:
        f, ly = self.fwd, self.qw.layers[0]
        need = self._lib.layer_work_floats(B * S, S, ly.norm1.shape[0], f.H, f.Hkv, f.D, ly.down.K, L)
        if self._work.size < need:
            self._work = np.empty(max(need, 2 * self._work.size), np.float32)
        return self._work.ctypes.data

    def _layers_out(self, ids, pos, cache, mask, embeds_add=None) -> np.ndarray:
        """Every layer over the new tokens: the residual stream x [B*S, d] after the last layer."""
        B, S = ids.shape
        views = cache_views(self.fwd, cache, B, S)
        x = self._embed[ids.numpy().reshape(-1)]                                   # [N, d] (a copy)
        if embeds_add is not None:
            x += embeds_add.numpy().reshape(x.shape)
        rope = self._rope_table(cache)[pos.numpy().reshape(-1)]                    # [N, 2D] (a copy)
        m = np.ascontiguousarray(mask.numpy(), dtype=np.float32)                   # [B, 1, S, L]
        return self._run_layers(x, rope, m, B, S, cache, views)

    def _rope_table(self, cache) -> np.ndarray:
        """The RoPE table [positions, 2D] as NumPy (the forward's, kept while it is the same tensor)."""
        table = self.fwd._table(cache.capacity, torch.float32)
        if self._rope[0] is not table:
            self._rope = (table, table.numpy())
        return self._rope[1]

    def _run_layers(self, x, rope, m, B: int, S: int, cache, views) -> np.ndarray:
        """The C call of every layer: x [B*S, d] in place, rope [B*S, 2D] the tokens' rows, m [B, 1, S, L]
        float32 the additive mask, views the cache's (cache_views)."""
        f = self.fwd
        layers = self._layer_array(views)
        K0 = views[0][0]
        st = self._step
        st.B, st.S, st.d, st.H, st.Hkv, st.D = B, S, x.shape[1], f.H, f.Hkv, f.D
        st.inter, st.cap, st.start, st.L = self.qw.layers[0].down.K, K0.shape[2], cache.length, m.shape[-1]
        st.eps, st.scale, st.act, st.kv16 = f.eps, f.scale, int(self.qw.act == "q8"), int(K0.dtype == np.float16)
        st.rope, st.mask, st.work = rope.ctypes.data, m.ctypes.data, self._work_buffer(B, S, m.shape[-1])
        if self._lib.layers_forward(layers, len(self.qw.layers), st, x.ctypes.data) != 0:
            raise ValueError("the quantized layers rejected this forward's shapes")
        return x

    def __call__(self, ids, pos, cache, mask, logits_to_keep: int = 0, embeds_add=None, hidden: bool = False):
        """As LeanForward's (embeds_add, hidden included)."""
        f = self.fwd
        B, S = ids.shape
        x = self._layers_out(ids, pos, cache, mask, embeds_add)
        feats = None
        if hidden:   # the norm is row-wise: normed once for every row, the kept rows' logits from those
            x = qkernels.rmsnorm(x, self.qw.head_norm, f.eps)
            feats = torch.from_numpy(x).view(B, S, -1)
        if logits_to_keep and logits_to_keep < S:
            x = np.ascontiguousarray(x.reshape(B, S, -1)[:, -logits_to_keep:].reshape(B * logits_to_keep, -1))
        if not hidden:
            x = qkernels.rmsnorm(x, self.qw.head_norm, f.eps)
        logits = qkernels.matmul(x, self.qw.head, act=self.qw.act)
        logits = torch.from_numpy(logits).view(B, -1, logits.shape[-1])
        return (logits, feats) if hidden else logits

    @property
    def greedy_head(self) -> bool:
        """Whether `greedy` runs on the greedy head (qkernels.head_argmax): weight-only modes, a q8_0 head.
        The first ask builds it (qweights.greedy_of)."""
        return qweights.greedy_of(self.qw) is not None

    def greedy(self, ids, pos, cache, mask, vocab: int):
        """The forward of __call__ for greedy decoding: (argmax [B, S] int64 over each position's
        logits[:vocab], whether any of those rows is unusable), what sampling.argmax and unusable_rows
        give on __call__'s logits, bit for bit, from the greedy head instead of V float logits.
        A position whose activations are not finite gets its float logits computed in full."""
        B, S = ids.shape
        tok, bad = self._argmax_rows(self._layers_out(ids, pos, cache, mask), vocab)
        return torch.from_numpy(tok).view(B, S), bad

    def greedy_row(self, ids: list, pos: int, cache, vocab: int) -> tuple[list, bool]:
        """greedy for one row whose cache has no holes (KVCache.dense; the cache's begin_dense has marked
        the new columns), on host ints: ids [S] at positions pos, pos+1, ... -> (argmax ids [S], a list;
        whether any row is unusable). The same C calls on the same inputs as greedy's, so the same bits;
        the mask (causal: every earlier column is valid) and the RoPE rows (a slice) are made without
        PyTorch. Why: right after a forward has streamed the weights through the caches, each PyTorch
        or NumPy operation of a decode step costs up to ~40 us (bench/RESULTS.md, "A round's Python")."""
        S, start = len(ids), cache.length
        if pos < 0 or S < 1:
            raise ValueError(f"greedy_row needs 1 or more tokens at a position >= 0, got {S} at {pos}")
        views = cache_views(self.fwd, cache, 1, S)
        x = self._embed[ids]                                                       # [S, d] (a copy)
        rope = self._rope_table(cache)[pos:pos + S]                                # [S, 2D] (a view)
        if rope.shape[0] != S:
            raise ValueError(f"positions {pos}..{pos + S - 1} lie beyond the RoPE table ({cache.capacity} columns)")
        tok, bad = self._argmax_rows(self._run_layers(x, rope, self._causal(S, start), 1, S, cache, views), vocab)
        return tok.tolist(), bad

    def _causal(self, S: int, start: int) -> np.ndarray:
        """The additive mask [1, 1, S, start + S] float32 of S new tokens after `start` valid columns: 0 where
        column c <= start + s, float32 min (KVCache.begin's hidden value) after; one buffer, reused."""
        L = start + S
        if self._mask.size < S * L:
            self._mask = np.empty(2 * S * L, np.float32)
        tri = self._tri.get(S)
        if tri is None:   # [S, S]: the new columns' causal block
            tri = self._tri[S] = np.where(np.tri(S, dtype=bool), np.float32(0), np.finfo(np.float32).min)
        m = self._mask[:S * L].reshape(S, L)
        m[:, :start] = 0.0
        m[:, start:] = tri
        return m.reshape(1, 1, S, L)

    def _argmax_rows(self, x, vocab: int) -> tuple[np.ndarray, bool]:
        """The greedy head on the last layer's x [M, d]: (argmax ids [M] int64 over logits[:vocab], a copy;
        whether any of those rows is unusable)."""
        if self._greedy_call is None:
            self._greedy_call = qkernels.GreedyHeadCall(self.qw.head, qweights.greedy_of(self.qw), self.qw.head_norm,
                                                        self.fwd.eps)
        tok, ok, _, xn = self._greedy_call(x, vocab)
        tok = tok.copy()                                 # the call's buffers are reused
        self.greedy_rows += x.shape[0]
        bad = False
        if not ok.all():
            rows = np.flatnonzero(ok == 0)
            logits = qkernels.matmul(np.ascontiguousarray(xn[rows]), self.qw.head)[:, :vocab]
            tok[rows] = logits.argmax(-1)
            bad = not np.isfinite(logits.max(-1)).all()
        return tok, bad
