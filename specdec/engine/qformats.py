"""GGUF / llama.cpp block formats in NumPy: what the quantized kernels' weights are (the reference).

A weight matrix W [N, K] is stored row by row, each row as K/32 blocks of 32 consecutive weights:
  q4_1 (20 bytes): fp16 d, fp16 m, 16 bytes; byte j holds q_j (low nibble) and q_{j+16} (high nibble);
                   w = d * q + m, q in 0..15.       (4 + 1 bits per weight: 0.625 bytes)
  q8_0 (34 bytes): fp16 d, 32 int8; w = d * q.      (8.5 bits per weight: 1.0625 bytes)
`dequantize` computes w in float32 exactly as gguf's NumPy dequantizer (and so transformers' GGUF
loader) does: d * q is exact in float32, so w is one rounding of d * q + m. `quantize_q8_0` and
`quantize_q4_1` follow ggml's reference quantizers (ggml-quants.c), so blocks written here read back
in llama.cpp as the same weights. `reference_matmul` is the dequantize-then-matmul the kernels are
tested and benchmarked against.
"""
from __future__ import annotations

import numpy as np

BLOCK = 32
BLOCK_BYTES = {"q4_1": 20, "q8_0": 34}
KINDS = {"q4_1": 0, "q8_0": 1}          # the C kernels' kind codes (qkernels.c KIND_*)


def _blocks(blocks: np.ndarray, kind: str, K: int) -> np.ndarray:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
    if K % BLOCK or blocks.dtype != np.uint8 or blocks.shape[-1] != K // BLOCK * BLOCK_BYTES[kind]:
        raise ValueError(f"{kind} blocks for K={K} must be uint8 [..., {K // BLOCK * BLOCK_BYTES[kind]}], "
                         f"got {blocks.dtype} {blocks.shape}")
    return blocks.reshape(-1, K // BLOCK, BLOCK_BYTES[kind])              # [N, K/32, bytes]


def _half(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)    # [..., 1]


def dequantize(blocks: np.ndarray, kind: str, K: int) -> np.ndarray:
    """[N, K/32 * bytes] uint8 -> W [N, K] float32."""
    r = _blocks(blocks, kind, K)
    if kind == "q4_1":
        qs = r[..., 4:]
        q = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.float32)  # [N, K/32, 32]
        w = _half(r[..., 0:2]) * q + _half(r[..., 2:4])
    else:
        w = np.ascontiguousarray(r[..., 2:]).view(np.int8).astype(np.float32) * _half(r[..., 0:2])
    return w.reshape(-1, K)


def _roundf(x: np.ndarray) -> np.ndarray:
    """C's roundf (halves away from zero), as ggml rounds."""
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


def _weight_blocks(w: np.ndarray) -> np.ndarray:
    if w.ndim != 2 or w.shape[1] % BLOCK:
        raise ValueError(f"a quantized matrix needs [N, K] with K a multiple of {BLOCK}, got {w.shape}")
    return w.reshape(w.shape[0], -1, BLOCK)                                  # [N, K/32, 32]


def quantize_q8_0(w: np.ndarray) -> np.ndarray:
    """W [N, K] (K a multiple of 32) -> q8_0 blocks [N, K/32 * 34] uint8 (ggml's quantize_row_q8_0)."""
    w = np.asarray(w, dtype=np.float32)
    N, K = w.shape
    x = _weight_blocks(w)
    d = np.abs(x).max(-1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = _roundf(x * inv).astype(np.int8)
    out = np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=-1)
    return np.ascontiguousarray(out.reshape(N, -1))


def quantize_q4_1(w: np.ndarray) -> np.ndarray:
    """W [N, K] -> q4_1 blocks [N, K/32 * 20] uint8 (ggml's quantize_row_q4_1)."""
    w = np.asarray(w, dtype=np.float32)
    N, K = w.shape
    x = _weight_blocks(w)
    lo, hi = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    d = (hi - lo) / np.float32(15)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = np.minimum(np.trunc((x - lo) * inv + np.float32(0.5)), 15).astype(np.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)
    out = np.concatenate([d.astype(np.float16).view(np.uint8), lo.astype(np.float16).view(np.uint8), packed], -1)
    return np.ascontiguousarray(out.reshape(N, -1))


QUANTIZERS = {"q8_0": quantize_q8_0, "q4_1": quantize_q4_1}


def reference_matmul(x: np.ndarray, blocks: np.ndarray, kind: str, K: int, bias=None) -> np.ndarray:
    """x [M, K] @ dequantize(blocks)^T (+ bias) in float64: [M, N]. Memory: N * K * 8 bytes."""
    y = np.asarray(x, np.float64) @ dequantize(blocks, kind, K).astype(np.float64).T
    return y if bias is None else y + np.asarray(bias, np.float64)
