"""Fused batched draft verification in Triton: the kernels and their host wrapper `verify_triton`.

Semantics are those of `specdec.verify.verify_reference` (read its docstring for the terms accepted /
recovered / bonus): greedy rows (temperature 0) accept iff x_i == argmax p_i and emit argmax p_j;
sampled rows accept x_i iff u_i * q_i(x_i) < f(p_i(x_i)) and emit one token from norm(max(0, p_j - q_j))
(recovered, falling back to p_j when that residual is empty) or from p_n (bonus).

Design: four Triton launches plus one torch.rand, all on the device, no host sync.
  (1) _partials_kernel, grid (B*(K+1), NC1): each program streams one vocabulary chunk of one position.
      Sampled rows: online max / sum-exp of l/T for the target and (positions i < n) the draft.
      Greedy rows: max / first argmax of the raw target logits only; the draft is never read.
      Positions beyond a row's n (ragged rows) are skipped: their bytes are never read.
      Writes O(B*(K+1)*NC1) floats; never a [B, K+1, V] probability tensor.
  (2) _accept_kernel, grid (B,): combines the chunk partials into log-sum-exps, gathers the two logits
      l_t[x_i], l_d[x_i] per position (p(x) = exp(l/T - lse)), runs the accept tests in order and
      stops at the row's first rejection. Writes num_accepted and the normalisers at position j.
  (3) _residual_mass_kernel, grid (B, NC3): sampled rows only; re-reads the ONE position j per row and
      writes the residual mass (and the p mass, for the empty-residual fallback) of each chunk.
  (4) _emit_kernel, grid (B,): picks a chunk by inverse CDF over the NC3 chunk masses with one uniform,
      then the token inside that chunk by a running cumsum with a second uniform (re-reading one chunk,
      a few KB), and writes tokens [B, K+1] (-1 padded) in place.

Sampling, and why not a per-element exponential race: a race argmax(r / E) needs one random number
per vocabulary entry of position j. Philox costs ~25-100 integer ops per number; at B=256, V=152k
that is ~1-4 G integer ops, 60-230 us on an H200, more than the whole memory-bound pass. Two-level
inverse-CDF sampling is exact in distribution (P(chunk) * P(token | chunk) = r_v / sum r) and needs
two uniforms per row, so the only random numbers are B*(K+2) uniforms drawn from the caller's
torch.Generator (a seeded run repeats exactly; the kernels use no atomics, so they are deterministic).

Predictions, to check with bench/kernel_bench.py on an H200 (not yet measured: no device so far):
  * Kernel 1 reads every needed logit once (B*(K+1)*V target + B*K*V draft elements) at one exp per
    element (the per-tile max is reduced before the exp, not per lane, so ex2 throughput stays below
    the ~8 elements/clk/SM that 4.3 TB/s of bf16 delivers): it should run at 85-90% of copy bandwidth.
  * Kernel 3 re-reads one position per row, B*V*(2 elements): 2/(2K+1) extra traffic (12% at K=8,
    22% at K=4, 67% at K=1) that the "bytes it must read" figure does not count; bonus rows read
    only the target half. Greedy rows skip it entirely (and skip the draft in kernel 1).
  * Kernels 2 and 4 touch O(B*K*NC) bytes plus one chunk per row: a few microseconds each, which
    dominates only for small problems (B=1: launch latency bound, ~20-30 us total).
  * So for B*(K+1)*V >= 64*9*128256 in bf16 sampled, expect ~75-80% of copy bandwidth on the
    must-read bytes at K=8 (less at small K because of the re-read), and 15-40x over the PyTorch
    reference, which writes and re-reads fp32 p and q and samples with a [B, V] exponential tensor.
  * Enough programs in flight: chunk counts are chosen so that each launch has >= 8 programs per SM
    when the problem allows (at B=1 the vocabulary is split across ~V/4096 programs).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from specdec.verify import LENIENCE_KINDS, VerifyResult, check_inputs

if os.environ.get("TRITON_INTERPRET") == "1":
    from ._interpreter import install as _install_interpreter_speedup

    _install_interpreter_speedup()

_LENIENCE_CODE = {None: 0, "lin": 1, "sq": 2, "exp": 3}
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_INT_MAX = tl.constexpr(2147483647)  # a global a @triton.jit function may read


@triton.jit
def _partials_kernel(
    tgt_ptr, drf_ptr,                    # [B, K+1, V], [B, K, V] logits (last dim contiguous)
    temp_ptr, n_ptr,                     # [B] fp32 temperature, [B] int num_draft_tokens (HAS_N)
    pm_t_ptr, ps_t_ptr, pm_d_ptr, ps_d_ptr, pai_ptr,   # [B*(K+1), NC] partials
    K, V, NC, TILES,
    s_tb, s_tk, s_db, s_dk, s_n,
    HAS_N: tl.constexpr, BLOCK: tl.constexpr,
):
    r = tl.program_id(0)
    c = tl.program_id(1)
    b = r // (K + 1)
    i = r % (K + 1)
    if HAS_N:
        n = tl.minimum(tl.maximum(tl.load(n_ptr + b * s_n).to(tl.int32), 0), K)
    else:
        n = K
    if i <= n:  # positions after the bonus position are never needed: skip their bytes
        T = tl.load(temp_ptr + b)
        t_row = tgt_ptr + b.to(tl.int64) * s_tb + i.to(tl.int64) * s_tk
        part = r * NC + c
        arange = tl.arange(0, BLOCK)
        start0 = c * TILES * BLOCK
        if T == 0:
            # Greedy: first argmax of the raw logits (torch.argmax's tie rule); no draft, no exp.
            best_v = tl.full((), float("-inf"), tl.float32)
            best_i = start0
            for t in range(0, TILES):
                offs = start0 + t * BLOCK + arange
                l = tl.load(t_row + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
                tv, ti = tl.max(l, axis=0, return_indices=True, return_indices_tie_break_left=True)
                upd = tv > best_v
                best_i = tl.where(upd, start0 + t * BLOCK + ti, best_i)
                best_v = tl.where(upd, tv, best_v)
            tl.store(pm_t_ptr + part, best_v)
            tl.store(pai_ptr + part, best_i)
        else:
            m = tl.full((), float("-inf"), tl.float32)
            s = tl.full((), 0.0, tl.float32)
            for t in range(0, TILES):
                offs = start0 + t * BLOCK + arange
                l = tl.load(t_row + offs, mask=offs < V, other=float("-inf")).to(tl.float32) / T
                m_new = tl.maximum(m, tl.max(l, axis=0))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(l - m_safe), axis=0)
                m = m_new
            tl.store(pm_t_ptr + part, m)
            tl.store(ps_t_ptr + part, s)
            if i < n:  # q is needed for the accept test and the residual at positions < n only
                d_row = drf_ptr + b.to(tl.int64) * s_db + i.to(tl.int64) * s_dk
                m = tl.full((), float("-inf"), tl.float32)
                s = tl.full((), 0.0, tl.float32)
                for t in range(0, TILES):
                    offs = start0 + t * BLOCK + arange
                    l = tl.load(d_row + offs, mask=offs < V, other=float("-inf")).to(tl.float32) / T
                    m_new = tl.maximum(m, tl.max(l, axis=0))
                    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                    s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(l - m_safe), axis=0)
                    m = m_new
                tl.store(pm_d_ptr + part, m)
                tl.store(ps_d_ptr + part, s)


@triton.jit
def _accept_kernel(
    tgt_ptr, drf_ptr, tok_ptr, temp_ptr, n_ptr, u_ptr,  # logits, [B, K] drafts, [B], [B], [B, K] uniforms
    pm_t_ptr, ps_t_ptr, pm_d_ptr, ps_d_ptr, pai_ptr,    # [B*(K+1), NC] partials from kernel 1
    nacc_ptr, lse_t_ptr, lse_d_ptr, gx_ptr,             # [B] outputs
    K, V, NC, eps,
    s_tb, s_tk, s_db, s_dk, s_xb, s_xk, s_n,
    HAS_N: tl.constexpr, LEN_KIND: tl.constexpr, BLOCK_K1: tl.constexpr, BLOCK_NC: tl.constexpr,
):
    # All K tests at once on a [K+1, NC] tile of partials: 2K gathered logits and no sequential
    # chain of dependent loads; j = the first rejection. Greedy and sampled paths are both computed
    # (a few hundred bytes) and the row's temperature selects one; the unused one may read partials
    # kernel 1 never wrote, which the selection discards.
    b = tl.program_id(0)
    b64 = b.to(tl.int64)
    if HAS_N:
        n = tl.minimum(tl.maximum(tl.load(n_ptr + b * s_n).to(tl.int32), 0), K)
    else:
        n = K
    T = tl.load(temp_ptr + b)
    greedy = T == 0
    T_safe = tl.where(greedy, 1.0, T)
    offs_k = tl.arange(0, BLOCK_K1)                     # positions 0..K
    offs_c = tl.arange(0, BLOCK_NC)                     # chunks
    tested = offs_k < n
    pmask = (offs_k <= n)[:, None] & (offs_c < NC)[None, :]
    part = (b * (K + 1) + offs_k)[:, None] * NC + offs_c[None, :]
    # greedy: the first argmax per position (chunks are in vocabulary order, so the smallest index wins)
    vt = tl.load(pm_t_ptr + part, mask=pmask, other=float("-inf"))
    idx = tl.load(pai_ptr + part, mask=pmask, other=_INT_MAX)
    am = tl.min(tl.where(vt == tl.max(vt, axis=1)[:, None], idx, _INT_MAX), axis=1)      # [K+1]
    # sampled: log-sum-exp per position from the chunk (max, sumexp) pairs
    mx = tl.max(vt, axis=1)
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    st = tl.load(ps_t_ptr + part, mask=pmask, other=0.0)
    lse_t = mx + tl.log(tl.sum(tl.where(pmask, st * tl.exp(vt - mx[:, None]), 0.0), axis=1))  # [K+1]
    dmask = pmask & tested[:, None]
    vd = tl.load(pm_d_ptr + part, mask=dmask, other=float("-inf"))
    sd = tl.load(ps_d_ptr + part, mask=dmask, other=0.0)
    md = tl.max(vd, axis=1)
    md = tl.where(md == float("-inf"), 0.0, md)
    lse_d = md + tl.log(tl.sum(tl.where(dmask, sd * tl.exp(vd - md[:, None]), 0.0), axis=1))  # [K+1]

    x = tl.load(tok_ptr + b64 * s_xb + offs_k * s_xk, mask=tested, other=0).to(tl.int64)
    x = tl.minimum(tl.maximum(x, 0), V - 1)
    lt = tl.load(tgt_ptr + b64 * s_tb + offs_k * s_tk + x, mask=tested, other=0.0).to(tl.float32) / T_safe
    ld = tl.load(drf_ptr + b64 * s_db + offs_k * s_dk + x, mask=tested, other=0.0).to(tl.float32) / T_safe
    p_x = tl.exp(lt - lse_t)
    q_x = tl.exp(ld - lse_d)
    if LEN_KIND == 1:
        p_x = p_x / eps
    elif LEN_KIND == 2:
        p_x = p_x / (eps * eps)
    elif LEN_KIND == 3:
        p_x = tl.exp(eps * tl.log(p_x))
    u = tl.load(u_ptr + b * K + offs_k, mask=tested, other=1.0)
    # u < min(1, f(p)/q)  <=>  u * q < f(p), as in the reference.
    acc = tl.where(greedy, x == am.to(tl.int64), u * q_x < p_x)
    j = tl.min(tl.where(tested & (acc == 0), offs_k, n), axis=0)    # the row's first rejection, or n
    tl.store(nacc_ptr + b, j.to(tl.int64))
    at_j = offs_k == j
    tl.store(gx_ptr + b, tl.max(tl.where(at_j, am, -1), axis=0))
    tl.store(lse_t_ptr + b, tl.max(tl.where(at_j, lse_t, float("-inf")), axis=0))
    tl.store(lse_d_ptr + b, tl.max(tl.where(at_j, lse_d, float("-inf")), axis=0))


@triton.jit
def _residual_mass_kernel(
    tgt_ptr, drf_ptr, temp_ptr, n_ptr, nacc_ptr, lse_t_ptr, lse_d_ptr,
    rmass_ptr, pmass_ptr,                               # [B, NC] chunk masses
    K, V, NC, TILES,
    s_tb, s_tk, s_db, s_dk, s_n,
    HAS_N: tl.constexpr, BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    c = tl.program_id(1)
    T = tl.load(temp_ptr + b)
    if T != 0:  # greedy rows already have their token
        if HAS_N:
            n = tl.minimum(tl.maximum(tl.load(n_ptr + b * s_n).to(tl.int32), 0), K)
        else:
            n = K
        j = tl.load(nacc_ptr + b).to(tl.int32)
        bonus = j >= n
        lse_t = tl.load(lse_t_ptr + b)
        lse_d = tl.load(lse_d_ptr + b)
        b64 = b.to(tl.int64)
        t_row = tgt_ptr + b64 * s_tb + j.to(tl.int64) * s_tk
        d_row = drf_ptr + b64 * s_db + j.to(tl.int64) * s_dk
        arange = tl.arange(0, BLOCK)
        start0 = c * TILES * BLOCK
        rm = tl.full((), 0.0, tl.float32)
        pm = tl.full((), 0.0, tl.float32)
        for t in range(0, TILES):
            # (the same tile code as in _emit_kernel; inlined because the interpreter pays ~3 ms per
            # call of a jitted helper)
            offs = start0 + t * BLOCK + arange
            mask = offs < V
            lt = tl.load(t_row + offs, mask=mask, other=float("-inf")).to(tl.float32) / T
            p = tl.where(mask, tl.exp(lt - lse_t), 0.0)
            if bonus:
                r = p
            else:
                ld = tl.load(d_row + offs, mask=mask, other=float("-inf")).to(tl.float32) / T
                r = tl.maximum(p - tl.where(mask, tl.exp(ld - lse_d), 0.0), 0.0)
            rm += tl.sum(r, axis=0)
            pm += tl.sum(p, axis=0)
        tl.store(rmass_ptr + b * NC + c, rm)
        tl.store(pmass_ptr + b * NC + c, pm)


@triton.jit
def _emit_kernel(
    tgt_ptr, drf_ptr, tok_ptr, temp_ptr, n_ptr, us_ptr, nacc_ptr, lse_t_ptr, lse_d_ptr, gx_ptr,
    rmass_ptr, pmass_ptr, out_ptr,                      # [B, 2] uniforms, [B, NC] masses, [B, K+1] out
    K, V, NC, TILES,
    s_tb, s_tk, s_db, s_dk, s_xb, s_xk, s_n,
    HAS_N: tl.constexpr, BLOCK: tl.constexpr, BLOCK_NC: tl.constexpr, BLOCK_K1: tl.constexpr,
):
    b = tl.program_id(0)
    b64 = b.to(tl.int64)
    T = tl.load(temp_ptr + b)
    j = tl.load(nacc_ptr + b).to(tl.int32)
    extra = tl.load(gx_ptr + b).to(tl.int64)  # greedy rows: argmax p_j from kernel 2
    if T != 0:
        if HAS_N:
            n = tl.minimum(tl.maximum(tl.load(n_ptr + b * s_n).to(tl.int32), 0), K)
        else:
            n = K
        bonus = j >= n
        offs_c = tl.arange(0, BLOCK_NC)
        cmask = offs_c < NC
        rm = tl.load(rmass_ptr + b * NC + offs_c, mask=cmask, other=0.0)
        # An empty residual (p == q up to rounding after a rounding-induced rejection) falls back to p.
        use_p = bonus | (tl.sum(rm, axis=0) <= 0.0)
        w = tl.where(use_p, tl.load(pmass_ptr + b * NC + offs_c, mask=cmask, other=0.0), rm)
        # Level 1: the chunk, by inverse CDF over the chunk masses.
        cw = tl.cumsum(w, axis=0)
        goal = tl.load(us_ptr + 2 * b) * tl.sum(w, axis=0)
        c = tl.min(tl.where(cmask & (cw > goal), offs_c, _INT_MAX), axis=0)
        c_last = tl.max(tl.where(cmask & (w > 0.0), offs_c, -1), axis=0)
        c = tl.where(c == _INT_MAX, c_last, c)  # rounding pushed the goal past the sum
        c = tl.maximum(c, 0)
        w_c = tl.sum(tl.where(offs_c == c, w, 0.0), axis=0)
        # Level 2: the token inside chunk c, by a running cumsum (re-reads one chunk).
        goal = tl.load(us_ptr + 2 * b + 1) * w_c
        lse_t = tl.load(lse_t_ptr + b)
        lse_d = tl.load(lse_d_ptr + b)
        t_row = tgt_ptr + b64 * s_tb + j.to(tl.int64) * s_tk
        d_row = drf_ptr + b64 * s_db + j.to(tl.int64) * s_dk
        arange = tl.arange(0, BLOCK)
        start0 = c * TILES * BLOCK
        run = tl.full((), 0.0, tl.float32)
        found = tl.full((), _INT_MAX, tl.int32)
        last = tl.full((), -1, tl.int32)
        for t in range(0, TILES):
            offs = start0 + t * BLOCK + arange
            mask = offs < V
            lt = tl.load(t_row + offs, mask=mask, other=float("-inf")).to(tl.float32) / T
            r = tl.where(mask, tl.exp(lt - lse_t), 0.0)
            if not use_p:
                ld = tl.load(d_row + offs, mask=mask, other=float("-inf")).to(tl.float32) / T
                r = tl.maximum(r - tl.where(mask, tl.exp(ld - lse_d), 0.0), 0.0)
            cs = run + tl.cumsum(r, axis=0)
            hit = tl.min(tl.where((offs < V) & (cs > goal), offs, _INT_MAX), axis=0)
            found = tl.minimum(found, hit)
            last = tl.maximum(last, tl.max(tl.where(r > 0.0, offs, -1), axis=0))
            run += tl.sum(r, axis=0)
        found = tl.where(found == _INT_MAX, last, found)
        extra = tl.maximum(found, 0).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K1)
    drafts = tl.load(tok_ptr + b64 * s_xb + offs_k * s_xk, mask=offs_k < j, other=-1).to(tl.int64)
    out = tl.where(offs_k < j, drafts, tl.where(offs_k == j, extra, -1))
    tl.store(out_ptr + b64 * (K + 1) + offs_k, out, mask=offs_k < K + 1)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _split(rows: int, V: int, block: int, sms: int, max_tiles: int | None = None) -> tuple[int, int]:
    """(chunks per row, tiles per chunk): >= 8 programs per SM when the problem allows, whole tiles."""
    n_tiles = triton.cdiv(V, block)
    nc = min(n_tiles, max(1, triton.cdiv(8 * sms, rows)))
    if max_tiles is not None:
        nc = max(nc, triton.cdiv(n_tiles, max_tiles))
    tiles = triton.cdiv(n_tiles, nc)
    return triton.cdiv(n_tiles, tiles), tiles


def _check(target_logits, draft_logits, draft_tokens, temperature, num_draft_tokens, lenience, lenience_eps):
    B, K, V = check_inputs(target_logits, draft_logits, draft_tokens, num_draft_tokens, lenience, lenience_eps)
    dev = target_logits.device
    if dev.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("verify_triton needs CUDA tensors, or TRITON_INTERPRET=1 set before importing triton "
                         "to run on the CPU; use verify(..., backend='torch') otherwise")
    for name, t in (("target_logits", target_logits), ("draft_logits", draft_logits)):
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}; cast it with .float()")
        if t.numel() > 0 and t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in the vocabulary dimension (stride(-1) == 1, got "
                             f"{t.stride(-1)}); call .contiguous()")
    if V >= 2**31 - 1:
        raise ValueError(f"vocabulary size {V} does not fit the kernel's int32 indices")
    if not isinstance(temperature, torch.Tensor) or temperature.shape != (B,) or temperature.dtype != torch.float32:
        raise ValueError(f"temperature must be a [B]={B} float32 tensor (verify() builds it from a float)")
    if temperature.device != dev:
        raise ValueError(f"temperature is on {temperature.device} but the logits are on {dev}; move it with .to()")
    if not temperature.is_contiguous():
        raise ValueError("temperature must be contiguous; call .contiguous()")
    if num_draft_tokens is not None and num_draft_tokens.is_floating_point():
        raise ValueError(f"num_draft_tokens must be an integer tensor, got {num_draft_tokens.dtype}")
    if lenience not in _LENIENCE_CODE:
        raise ValueError(f"lenience must be one of {LENIENCE_KINDS} or None, got {lenience!r}")
    return B, K, V


def verify_triton(target_logits: torch.Tensor, draft_logits: torch.Tensor, draft_tokens: torch.Tensor,
                  temperature: torch.Tensor, num_draft_tokens: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, lenience: str | None = None,
                  lenience_eps: float = 1.0, *, block: int | None = None) -> VerifyResult:
    """The fused verification; same contract as `verify_reference` (temperature a [B] fp32 tensor).

    target_logits [B, K+1, V], draft_logits [B, K, V]: fp32 / bf16 / fp16, last dim contiguous (other
    strides are free, so a slice to the shared vocabulary needs no copy). draft_tokens [B, K] int32/int64.
    num_draft_tokens [B] int or None. block: vocabulary tile of kernels 1 and 3 (a power of two;
    the default is 4096 elements for 16-bit logits, 2048 for fp32, i.e. 8 KB per tile).
    Randomness: one torch.rand of B*(K+2) uniforms from `generator`; nothing else is random.
    """
    B, K, V = _check(target_logits, draft_logits, draft_tokens, temperature, num_draft_tokens,
                     lenience, lenience_eps)
    dev = target_logits.device
    tokens = torch.empty((B, K + 1), device=dev, dtype=torch.int64)
    num_accepted = torch.empty((B,), device=dev, dtype=torch.int64)
    if B == 0:
        return VerifyResult(tokens=tokens, num_accepted=num_accepted)
    if block is None:
        block = 4096 if target_logits.element_size() <= 2 else 2048
    block = max(16, min(block, triton.next_power_of_2(V)))
    sms = _num_sms(dev)
    # One draw: [B, K] accept uniforms (the same numbers the reference draws first, for one seed on
    # the CPU generator), then [B, 2] for the two-level sampling.
    u_all = torch.rand((B * (K + 2),), device=dev, generator=generator)
    u, us = (u_all[: B * K] if K > 0 else u_all), u_all[B * K:]

    if K == 0:  # zero-size tensors carry no usable pointer; the kernels never touch the draft at K = 0
        draft_logits = target_logits
        draft_tokens = torch.zeros((B, 1), device=dev, dtype=torch.int64)
    has_n = num_draft_tokens is not None
    if has_n and num_draft_tokens.dtype == torch.bool:
        num_draft_tokens = num_draft_tokens.to(torch.int32)
    n_arg = num_draft_tokens if has_n else temperature  # a dummy pointer when HAS_N is False
    s_n = num_draft_tokens.stride(0) if has_n else 0
    s_tb, s_tk = target_logits.stride(0), target_logits.stride(1)
    s_db, s_dk = draft_logits.stride(0), draft_logits.stride(1)
    s_xb, s_xk = draft_tokens.stride(0), draft_tokens.stride(1)
    lcode = 0 if lenience_eps == 1.0 else _LENIENCE_CODE[lenience]

    # (1) chunk partials over [B*(K+1), NC1]
    rows = B * (K + 1)
    nc1, tiles1 = _split(rows, V, block, sms)
    f32 = dict(device=dev, dtype=torch.float32)
    pm_t = torch.empty((rows, nc1), **f32)
    ps_t = torch.empty((rows, nc1), **f32)
    pm_d = torch.empty((rows, nc1), **f32)
    ps_d = torch.empty((rows, nc1), **f32)
    pai = torch.empty((rows, nc1), device=dev, dtype=torch.int32)
    _partials_kernel[(rows, nc1)](
        target_logits, draft_logits, temperature, n_arg, pm_t, ps_t, pm_d, ps_d, pai,
        K, V, nc1, tiles1, s_tb, s_tk, s_db, s_dk, s_n,
        HAS_N=has_n, BLOCK=block, num_warps=8)

    # (2) accept tests per row
    lse_t = torch.empty((B,), **f32)
    lse_d = torch.empty((B,), **f32)
    gx = torch.empty((B,), device=dev, dtype=torch.int32)
    _accept_kernel[(B,)](
        target_logits, draft_logits, draft_tokens, temperature, n_arg, u, pm_t, ps_t, pm_d, ps_d, pai,
        num_accepted, lse_t, lse_d, gx, K, V, nc1, float(lenience_eps),
        s_tb, s_tk, s_db, s_dk, s_xb, s_xk, s_n,
        HAS_N=has_n, LEN_KIND=lcode, BLOCK_K1=max(2, triton.next_power_of_2(K + 1)),
        BLOCK_NC=max(2, triton.next_power_of_2(nc1)), num_warps=1)

    # (3) residual / bonus mass per chunk of position j, (4) the emitted token and the output rows.
    block3 = max(16, min(1024, triton.next_power_of_2(V)))
    nc3, tiles3 = _split(B, V, block3, sms, max_tiles=8)
    rmass = torch.empty((B, nc3), **f32)
    pmass = torch.empty((B, nc3), **f32)
    _residual_mass_kernel[(B, nc3)](
        target_logits, draft_logits, temperature, n_arg, num_accepted, lse_t, lse_d, rmass, pmass,
        K, V, nc3, tiles3, s_tb, s_tk, s_db, s_dk, s_n,
        HAS_N=has_n, BLOCK=block3, num_warps=4)
    _emit_kernel[(B,)](
        target_logits, draft_logits, draft_tokens, temperature, n_arg, us, num_accepted, lse_t, lse_d, gx,
        rmass, pmass, tokens, K, V, nc3, tiles3, s_tb, s_tk, s_db, s_dk, s_xb, s_xk, s_n,
        HAS_N=has_n, BLOCK=block3, BLOCK_NC=max(16, triton.next_power_of_2(nc3)),
        BLOCK_K1=max(16, triton.next_power_of_2(K + 1)), num_warps=4)
    return VerifyResult(tokens=tokens, num_accepted=num_accepted)
