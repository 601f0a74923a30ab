"""The Python face of specdec/engine/qkernels.c: quantized matrices, the GEMM, RMSNorm and a whole
forward's layers in one call, on NumPy arrays without copies.

Every wrapper checks shapes, dtypes and strides before it hands pointers to C (a wrong stride there
is silent memory corruption, not an exception). The kernels sum every output element in one fixed
order (qkernels.c says which), so a row's result is bitwise the same alone or among other rows, and
whatever the number of tokens in the forward. `act="q8"` runs the opt-in integer-dot GEMM instead (each
activation row rounded per 32-value block to Q8, block dot products in integers: qkernels.c), on weights
regrouped once at load (pack_q8a). The library is built on first use (native.py);
`available()` says whether it can be, and why not.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from . import native
from .qformats import BLOCK, BLOCK_BYTES, KINDS

ABI_VERSION = 8
HEAD_DIMS = (8, 16, 32, 64, 96, 128, 256)   # attention head sizes layers_forward runs (qkernels.c attend_for)
_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_lib = None


LAYOUTS = ("gguf", "q8a")   # a row's blocks as GGUF stores them, or as the Q8-activation GEMM reads them


@dataclass(frozen=True)
class QMatrix:
    """W [N, K] as quantized blocks: `blocks` [N, K/32 * block bytes] uint8, C-contiguous (row n = the
    K/32 blocks of W's row n). `layout` "gguf": each block whole, in order (the weight-only GEMM's);
    "q8a": the same bytes regrouped 8 blocks at a time (pack_q8a; the Q8-activation GEMM's).
    `bias` [N] float32 or None."""
    kind: str
    blocks: np.ndarray
    K: int
    bias: np.ndarray | None = None
    layout: str = "gguf"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {tuple(KINDS)}, got {self.kind!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        b = self.blocks
        if self.K % BLOCK or b.dtype != np.uint8 or b.ndim != 2 or not b.flags.c_contiguous \
                or b.shape[1] != self.K // BLOCK * BLOCK_BYTES[self.kind]:
            raise ValueError(f"{self.kind} blocks for K={self.K} must be a C-contiguous uint8 array "
                             f"[N, {self.K // BLOCK * BLOCK_BYTES[self.kind]}], got {b.dtype} {b.shape}")
        if self.bias is not None and (self.bias.dtype != np.float32 or self.bias.shape != (b.shape[0],)
                                      or not self.bias.flags.c_contiguous):
            raise ValueError(f"bias must be float32 [{b.shape[0]}]")

    @property
    def N(self) -> int:
        return self.blocks.shape[0]

    @property
    def nbytes(self) -> int:
        return self.blocks.nbytes


class _QMat(ctypes.Structure):
    _fields_ = [("kind", _I), ("N", _I), ("K", _I), ("ldw", _I), ("w", _P), ("bias", _P), ("packed", _I)]


class Layer(ctypes.Structure):
    """One layer's weights and cache buffers, as layers_forward() reads them (qkernels.c)."""
    _fields_ = [("qkv", _QMat), ("o", _QMat), ("gate_up", _QMat), ("down", _QMat),
                ("norm1", _P), ("norm2", _P), ("kbuf", _P), ("vbuf", _P)]


class Step(ctypes.Structure):
    """One forward's sizes and per-call buffers (qkernels.c)."""
    _fields_ = [(n, _I) for n in ("B", "S", "d", "H", "Hkv", "D", "inter", "cap", "start", "L", "act")] + \
               [("eps", ctypes.c_double), ("scale", ctypes.c_double),
                ("rope", _P), ("mask", _P), ("work", _P), ("kv16", _I)]


def qmat_struct(m: QMatrix) -> _QMat:
    return _QMat(KINDS[m.kind], m.N, m.K, m.blocks.strides[0], m.blocks.ctypes.data,
                 None if m.bias is None else m.bias.ctypes.data, int(m.layout == "q8a"))


def library():
    """The loaded kernel library (built on first use); raises native.NativeUnavailable."""
    global _lib
    if _lib is None:
        lib = native.load("qkernels", abi=("qgemm_abi_version", ABI_VERSION))
        gemm_args = [ctypes.c_int, _P, _I, _P, _I, _P, _I, _I, _I, _I, ctypes.c_int]
        for name, args in (("qgemm", gemm_args), ("qgemm_portable", gemm_args),
                           ("qgemm_q8a", gemm_args + [_P]), ("qgemm_q8a_portable", gemm_args + [_P]),
                           ("quantize_rows_q8", [_P, _I, _I, _I, _P, _P, _P]),
                           ("q8a_pack", [ctypes.c_int, _P, _I, _P, _I, _I, _I, ctypes.c_int]),
                           ("rmsnorm_rows", [_P, _I, _P, _F, _P, _I, _I, _I]),
                           ("layers_forward", [ctypes.POINTER(Layer), _I, ctypes.POINTER(Step), _P]),
                           ("f32_to_f16", [_P, _P, _I, ctypes.c_int]),
                           ("exp_floats", [_P, _P, _I, ctypes.c_int]),
                           ("head_argmax", [ctypes.c_int, _P, _I, _P, _I, _P, _I, _P, _P, ctypes.c_double,
                                            _I, _I, _I, _I, _P, _P, _P])):
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, ctypes.c_int
        lib.layer_work_floats.argtypes = [_I] * 8
        lib.layer_work_floats.restype = _I
        lib.qgemm_simd.restype = ctypes.c_int
        lib.qgemm_int_dot.restype = ctypes.c_int
        lib.q8a_scratch_bytes.argtypes, lib.q8a_scratch_bytes.restype = [_I, _I], _I
        _lib = lib
    return _lib


def available() -> str | None:
    """None if the kernels can be used here, else the one-line reason (no compiler, build failed)."""
    try:
        library()
        return None
    except native.NativeUnavailable as e:
        return str(e)


def _rows(x: np.ndarray, K: int, what: str) -> np.ndarray:
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != K or x.strides[1] != 4 or x.strides[0] % 4:
        raise ValueError(f"{what} must be float32 [M, {K}] with unit column stride, got {x.dtype} {x.shape}")
    return x


ACTS = ("f32", "q8")   # activations of a GEMM: float32, or rounded per block to Q8 (integer dot products)


def pack_q8a(w: QMatrix) -> QMatrix:
    """w in the layout the Q8-activation GEMM reads (the same bytes regrouped: qkernels.c q8a_pack). Once,
    at load: the GEMM would otherwise transpose every column's blocks on every call."""
    return w if w.layout == "q8a" else _repack(w, "q8a")


def unpack_q8a(w: QMatrix) -> QMatrix:
    """pack_q8a's inverse: the GGUF blocks back, byte for byte."""
    return w if w.layout == "gguf" else _repack(w, "gguf")


def _repack(w: QMatrix, layout: str) -> QMatrix:
    out = np.empty_like(w.blocks)
    rc = library().q8a_pack(KINDS[w.kind], w.blocks.ctypes.data, w.blocks.strides[0], out.ctypes.data,
                            out.strides[0], w.N, w.K, int(layout == "gguf"))
    if rc != 0:
        raise ValueError("q8a_pack rejected its arguments")
    return QMatrix(w.kind, out, w.K, w.bias, layout)


def matmul(x: np.ndarray, w: QMatrix, out: np.ndarray | None = None, accumulate: bool = False,
           portable: bool = False, act: str = "f32") -> np.ndarray:
    """x [M, K] float32 -> x W^T (+ bias) [M, N] float32; with accumulate, out += x W^T.
    portable: the scalar C path instead of the vector one (tests: both give the same bits).
    act="q8": Q8(x) W^T, the integer-dot GEMM (qkernels.c qgemm_q8a), on w packed (pack_q8a; a "gguf"
    layout is packed here, per call: pack once for anything timed)."""
    if act not in ACTS:
        raise ValueError(f"act must be one of {ACTS}, got {act!r}")
    if act == "q8":
        w = pack_q8a(w)
    elif w.layout != "gguf":
        raise ValueError(f"act='f32' reads the gguf layout, got a {w.layout!r} matrix (unpack_q8a)")
    _rows(x, w.K, "x")
    M = x.shape[0]
    if out is None:
        if accumulate:
            raise ValueError("accumulate needs out")
        out = np.empty((M, w.N), np.float32)
    else:
        _rows(out, w.N, "out")
        if out.shape[0] != M:
            raise ValueError(f"out has {out.shape[0]} rows, x {M}")
    lib = library()
    args = [KINDS[w.kind], x.ctypes.data, x.strides[0] // 4, w.blocks.ctypes.data, w.blocks.strides[0],
            out.ctypes.data, out.strides[0] // 4, M, w.N, w.K, int(accumulate)]
    if act == "q8":
        scratch = np.empty(lib.q8a_scratch_bytes(M, w.K), np.uint8)
        rc = (lib.qgemm_q8a_portable if portable else lib.qgemm_q8a)(*args, scratch.ctypes.data)
    else:
        rc = (lib.qgemm_portable if portable else lib.qgemm)(*args)
    if rc != 0:
        raise ValueError("qgemm rejected its arguments")
    if w.bias is not None:
        out += w.bias
    return out


@dataclass(frozen=True)
class GreedyHead:
    """What head_argmax needs beside the head's own blocks (greedy_head builds it; qweights.greedy_of
    once per model, at its first greedy decode):
    `packed` the head in the q8a layout (its Q8-activation GEMM), `l1` [N, K/32] float32 each block's
    sum of |weights| (q8_0: |d| * sum |q|, exact in float32), `l1max` [K/32] its column maxima, `row_l1`
    the largest row sum."""
    packed: QMatrix
    l1: np.ndarray
    l1max: np.ndarray
    row_l1: float


def greedy_head(w: QMatrix) -> GreedyHead | None:
    """The greedy head of a q8_0 head in the GGUF layout (qkernels.c head_argmax), or None where there is
    none: another block kind (Q4_1's offset m lets the integer head's float terms cancel, which the error
    bound does not cover), or a block scale that is not finite."""
    if w.kind != "q8_0" or w.layout != "gguf" or w.bias is not None:
        return None
    r = w.blocks.reshape(w.N, -1, BLOCK_BYTES["q8_0"])                            # [N, K/32, 34]
    d = np.abs(np.ascontiguousarray(r[..., :2]).view(np.float16)[..., 0].astype(np.float32))
    q = np.abs(np.ascontiguousarray(r[..., 2:]).view(np.int8).astype(np.int32)).sum(-1)   # [N, K/32], <= 4064
    l1 = np.ascontiguousarray(d * q.astype(np.float32))                            # exact: 11 bits x 12 bits
    row_l1 = float(l1.astype(np.float64).sum(-1).max())
    if not np.isfinite(row_l1):
        return None
    return GreedyHead(pack_q8a(w), l1, np.ascontiguousarray(l1.max(0)), row_l1)


def head_argmax(x: np.ndarray, w: QMatrix, g: GreedyHead, n_valid: int | None = None):
    """x [M, K] float32 -> (ids [M] int64, ok [M] bool, checked [M] int64): per row the argmax over the
    first n_valid (default all) of matmul(x, w)'s logits, the first of equal maxima, as NumPy's argmax,
    computed from the Q8-activation head and an exact recheck of the few rows its error bound cannot
    rule out (qkernels.c head_argmax says why that is exact). ok False: a row to compute in full (a
    non-finite activation); checked: the rows recomputed exactly. GreedyHeadCall, once."""
    ids, ok, checked, _ = GreedyHeadCall(w, g)(x, w.N if n_valid is None else n_valid)
    return ids.copy(), ok.astype(bool), checked.copy()


class GreedyHeadCall:
    """head_argmax for repeated calls on one head (a greedy decode step): `call(x, n_valid)` -> (ids [M],
    ok [M] int32, checked [M], xn [M, K]), views of buffers that the next call with M rows overwrites.
    With `norm` (float32 [K]), x is RMS-normed first (rmsnorm's kernel) and xn holds the normed rows
    (what a row to compute in full needs); without it xn is x.
    Why a class: the buffers and the C calls' pointer arguments are made once per row count M. Each
    NumPy allocation and `.ctypes` lookup costs microseconds, several times that right after a forward
    has streamed the weights through the caches: on SmolLM2 the Python between the norm, the integer head
    and the scan took ~0.12 ms a step through the three wrappers, ~0.01 ms here (bench/RESULTS.md, "A
    round's Python")."""

    def __init__(self, w: QMatrix, g: GreedyHead, norm: np.ndarray | None = None, eps: float = 0.0):
        if g.packed.layout != "q8a" or g.packed.N != w.N or g.packed.K != w.K:
            raise ValueError("the greedy head does not belong to this head")
        if norm is not None and (norm.dtype != np.float32 or norm.shape != (w.K,) or not norm.flags.c_contiguous):
            raise ValueError(f"norm must be float32 [{w.K}]")
        self.w, self.g, self.norm, self.eps = w, g, norm, float(eps)
        self._z = np.empty((0, w.N), np.float32)     # the integer head's logits, rows shared by every M
        self._calls: dict = {}                        # M -> (buffers, qgemm_q8a args, head_argmax args)

    def _for(self, M: int):
        w, g, lib = self.w, self.g, library()
        if self._z.shape[0] < M:
            self._z = np.empty((max(M, 2 * self._z.shape[0]), w.N), np.float32)
            self._calls.clear()                       # their args point at the old z
        z = self._z
        xn = np.empty((M, w.K), np.float32) if self.norm is not None else None
        ids, ok, checked = np.empty(M, np.int64), np.empty(M, np.int32), np.empty(M, np.int64)
        scratch = np.empty(lib.q8a_scratch_bytes(M, w.K), np.uint8)
        xp = None if xn is None else xn.ctypes.data
        gemm = [KINDS[w.kind], xp, w.K, g.packed.blocks.ctypes.data, g.packed.blocks.strides[0], z.ctypes.data,
                w.N, M, w.N, w.K, 0, scratch.ctypes.data]
        scan = [KINDS[w.kind], xp, w.K, z.ctypes.data, w.N, w.blocks.ctypes.data, w.blocks.strides[0],
                g.l1.ctypes.data, g.l1max.ctypes.data, g.row_l1, M, w.N, None, w.K, ids.ctypes.data,
                ok.ctypes.data, checked.ctypes.data]
        self._calls[M] = entry = ((xn, ids, ok, checked, scratch), gemm, scan)
        return entry

    def __call__(self, x: np.ndarray, n_valid: int):
        M, K = _rows(x, self.w.K, "x").shape
        if not 1 <= n_valid <= self.w.N:
            raise ValueError(f"n_valid must lie in [1, {self.w.N}], got {n_valid}")
        entry = self._calls.get(M) or self._for(M)
        (xn, ids, ok, checked, _), gemm, scan = entry
        lib = library()
        if xn is None:   # x itself, at its own row stride
            xn = x
            gemm[1] = scan[1] = x.ctypes.data
            gemm[2] = scan[2] = x.strides[0] // 4
        else:
            lib.rmsnorm_rows(x.ctypes.data, x.strides[0] // 4, self.norm.ctypes.data, self.eps, gemm[1], K, M, K)
        scan[12] = n_valid
        if lib.qgemm_q8a(*gemm) != 0 or lib.head_argmax(*scan) != 0:
            raise ValueError("head_argmax rejected its arguments")
        return ids, ok, checked, xn


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [M, K] float32 -> (q [M, K] int8, d [M, K/32] float32, s [M, K/32] float32): the Q8 activations
    qgemm_q8a computes with (d = max|x| / 127 per row block, q = nearbyint(x / d), s = d * sum q)."""
    M, K = _rows(x, x.shape[-1], "x").shape
    if K % BLOCK:
        raise ValueError(f"x's width {K} is not a multiple of {BLOCK}")
    q = np.empty((M, K), np.int8)
    d, s = np.empty((M, K // BLOCK), np.float32), np.empty((M, K // BLOCK), np.float32)
    library().quantize_rows_q8(x.ctypes.data, x.strides[0] // 4, M, K, q.ctypes.data, d.ctypes.data, s.ctypes.data)
    return q, d, s


def rmsnorm(x: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
    """x [M, d] float32 -> x / rms(x) * weight, row by row in a fixed order."""
    M, d = _rows(x, x.shape[-1], "x").shape
    if weight is not None and (weight.dtype != np.float32 or weight.shape != (d,) or not weight.flags.c_contiguous):
        raise ValueError(f"weight must be float32 [{d}]")
    out = np.empty((M, d), np.float32)
    library().rmsnorm_rows(x.ctypes.data, x.strides[0] // 4, None if weight is None else weight.ctypes.data,
                           eps, out.ctypes.data, d, M, d)
    return out


def exp_softmax(x: np.ndarray, portable: bool = False) -> np.ndarray:
    """exp(x) as the attention's softmax computes it (qkernels.c exp_fixed; 16 lanes at a time where the
    build has AVX-512); portable: the scalar code. For the tests: both must give the same bits."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    library().exp_floats(x.ctypes.data, out.ctypes.data, x.size, int(portable))
    return out


def to_float16(x: np.ndarray, portable: bool = False) -> np.ndarray:
    """float32 -> float16 as the float16 KV cache writes it (qkernels.c float_to_half / F16C: round to
    nearest even); portable: the scalar conversion. For the tests: NumPy's astype(float16) is the reference."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, np.float16)
    library().f32_to_f16(x.ctypes.data, out.ctypes.data, x.size, int(portable))
    return out
