"""Fused batched draft verification in Triton: the kernels and their host wrapper `verify_triton`.

Semantics are those of `specdec.engine.verify.verify_reference` (read its docstring for the terms accepted /
recovered / bonus): greedy rows (temperature 0) accept iff x_i == argmax p_i and emit argmax p_j;
sampled rows accept x_i iff u_i * q_i(x_i) < f(p_i(x_i)) and emit one token from norm(max(0, p_j - q_j))
(recovered, falling back to p_j when that residual is empty) or from p_n (bonus).

Design: four Triton launches plus one torch.rand, all on the device, no host sync.
  (1) _partials_kernel, grid (B*(K+1)/R1 * NC1,): each program streams one vocabulary chunk (<= 4 tiles
      of 4096 16-bit / 2048 fp32 elements) of one position (R1 = 1; R1 > 1 packs several short rows
      into one tile when V is smaller than a tile).
      Sampled rows: online max / sum-exp of l/T for the target and (positions i < n) the draft.
      Greedy rows: max / first argmax of the raw target logits only; the draft is never read.
      Positions beyond a row's n (ragged rows) are skipped: their bytes are never read.
      Writes O(B*(K+1)*NC1) floats; never a [B, K+1, V] probability tensor.
  (2) _accept_kernel, grid (B/R2,): combines the chunk partials into log-sum-exps, gathers the two
      logits l_t[x_i], l_d[x_i] per position (p(x) = exp(l/T - lse)), runs all K accept tests at once
      and takes the row's first rejection j. Writes num_accepted and the normalisers at position j.
  (3) _residual_mass_kernel, grid (B/R3 * NC3,): sampled rows only; re-reads the ONE position j per row
      and writes the residual mass (and the p mass, for the empty-residual fallback) of each chunk
      (<= 2 tiles of the same 8 KB size).
  (4) _emit_kernel, grid (B/R4,): picks a chunk by inverse CDF over the NC3 chunk masses with one
      uniform, then the token inside that chunk by a running cumsum with a second uniform (re-reading
      one chunk, <= 2 tiles), and writes tokens [B, K+1] (-1 padded).
  Rows per program R2..R4 grow only while a program's tile stays ~1024 elements: one program per row
  at real vocabularies, many rows per program for tiny ones (which is also what keeps Triton's CPU
  interpreter, whose cost is per program and per operation, at ~1 ms per 1000 rows).

Sampling, and why not a per-element exponential race: a race argmax(r / E) needs one random number
per vocabulary entry of position j. Philox costs ~25-100 integer ops per number; at B=256, V=152k
that is ~1-4 G integer ops, 60-230 us on an H200, more than the whole memory-bound pass. Two-level
inverse-CDF sampling is exact in distribution (P(chunk) * P(token | chunk) = r_v / sum r) and needs
two uniforms per row, so the only random numbers are B*(K+2) uniforms drawn from the caller's
torch.Generator (a seeded run repeats exactly; the kernels use no atomics, so they are deterministic).

Expected speed (what bench/kernel_bench.py measures, and the arithmetic behind it): bench/RESULTS.md,
"Verification kernel".

Known limits: a vocabulary that is not a multiple of 16 (50257, 4097) leaves rows unaligned, so loads
are scalar instead of 16-byte vectors (correct, slower; pad the vocabulary). NaN logits are not
ordered like torch.argmax orders them. verify_triton trusts temperature >= 0 (verify() checks it, at
the cost of a host sync). Triton 3.6's interpreter with NumPy 2.4 fails on `range(runtime int)`; the
CPU tests need a newer Triton (3.9 here); compiled kernels are checked against 3.6 and 3.9.
"""
from __future__ import annotations

import contextlib
import os
import torch
import triton
import triton.language as tl

from ..common.values import check_lenience


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
    ROWS, K, V, NC, TILES,
    s_tb, s_tk, s_db, s_dk, s_n,
    HAS_N: tl.constexpr, R: tl.constexpr, BLOCK: tl.constexpr,
):
    # R rows (b, i) x one chunk of TILES * BLOCK vocabulary entries. R = 1 for real vocabularies
    # (one row, the vocabulary split across programs); R > 1 only when V is smaller than a tile.
    # 1-D grid, chunks fastest: a row's chunks are read back to back (sequential DRAM pages), and
    # the last rows read (the highest b) are still in L2 when kernel 3 re-reads them first.
    pid = tl.program_id(0)
    c = pid % NC
    r = (pid // NC) * R + tl.arange(0, R)                              # [R] row = b * (K+1) + i
    rvalid = r < ROWS
    b = r // (K + 1)
    i = r % (K + 1)
    if HAS_N:
        n = tl.load(n_ptr + b * s_n, mask=rvalid, other=0).to(tl.int32)
        n = tl.minimum(tl.maximum(n, 0), K)
    else:
        n = tl.zeros([R], tl.int32) + K
    need = rvalid & (i <= n)       # positions after a row's bonus position are never read
    T = tl.load(temp_ptr + b, mask=rvalid, other=1.0)
    greedy = need & (T == 0)
    sampled = need & (T != 0)
    inv_T = 1.0 / tl.where(sampled, T, 1.0)  # a multiply per element; every kernel scales alike
    t_off = b.to(tl.int64) * s_tb + i.to(tl.int64) * s_tk
    part = r * NC + c
    arange = tl.arange(0, BLOCK)
    start0 = c * TILES * BLOCK
    if tl.max(greedy.to(tl.int32), axis=0) > 0:
        # Greedy: first argmax of the raw logits (torch.argmax's tie rule); no draft, no exp.
        best_v = tl.full([R], float("-inf"), tl.float32)
        best_i = tl.zeros([R], tl.int32) + start0
        for t in range(0, TILES):
            offs = start0 + t * BLOCK + arange
            m2 = greedy[:, None] & (offs < V)[None, :]
            l = tl.load(tgt_ptr + t_off[:, None] + offs[None, :], mask=m2, other=float("-inf")).to(tl.float32)
            tv, ti = tl.max(l, axis=1, return_indices=True, return_indices_tie_break_left=True)
            upd = tv > best_v
            best_i = tl.where(upd, start0 + t * BLOCK + ti, best_i)
            best_v = tl.where(upd, tv, best_v)
        tl.store(pm_t_ptr + part, best_v, mask=greedy)
        tl.store(pai_ptr + part, best_i, mask=greedy)
    if tl.max(sampled.to(tl.int32), axis=0) > 0:
        # Sampled: online (max, sum exp) of l / T for the target and, at positions i < n (where the
        # accept test and the residual need q), the draft, in one loop so that both tiles' loads are
        # in flight together. The tile max is reduced before the exp: one exp per element.
        drows = sampled & (i < n)
        d_off = b.to(tl.int64) * s_db + i.to(tl.int64) * s_dk
        m = tl.full([R], float("-inf"), tl.float32)
        s = tl.zeros([R], tl.float32)
        md = tl.full([R], float("-inf"), tl.float32)
        sd = tl.zeros([R], tl.float32)
        for t in range(0, TILES):
            offs = start0 + t * BLOCK + arange
            m2 = sampled[:, None] & (offs < V)[None, :]
            d2 = drows[:, None] & (offs < V)[None, :]
            l = tl.load(tgt_ptr + t_off[:, None] + offs[None, :], mask=m2, other=float("-inf"))
            ld = tl.load(drf_ptr + d_off[:, None] + offs[None, :], mask=d2, other=float("-inf"))
            l = l.to(tl.float32) * inv_T[:, None]
            ld = ld.to(tl.float32) * inv_T[:, None]
            m_new = tl.maximum(m, tl.max(l, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(l - m_safe[:, None]), axis=1)
            m = m_new
            md_new = tl.maximum(md, tl.max(ld, axis=1))
            md_safe = tl.where(md_new == float("-inf"), 0.0, md_new)
            sd = sd * tl.exp(md - md_safe) + tl.sum(tl.exp(ld - md_safe[:, None]), axis=1)
            md = md_new
        tl.store(pm_t_ptr + part, m, mask=sampled)
        tl.store(ps_t_ptr + part, s, mask=sampled)
        tl.store(pm_d_ptr + part, md, mask=drows)
        tl.store(ps_d_ptr + part, sd, mask=drows)


@triton.jit
def _accept_kernel(
    tgt_ptr, drf_ptr, tok_ptr, temp_ptr, n_ptr, u_ptr,  # logits, [B, K] drafts, [B], [B], [B, K] uniforms
    pm_t_ptr, ps_t_ptr, pm_d_ptr, ps_d_ptr, pai_ptr,    # [B*(K+1), NC] partials from kernel 1
    nacc_ptr, lse_t_ptr, lse_d_ptr, gx_ptr,             # [B] outputs
    B, K, V, NC, eps,
    s_tb, s_tk, s_db, s_dk, s_xb, s_xk, s_n,
    HAS_N: tl.constexpr, LEN_KIND: tl.constexpr, R: tl.constexpr,
    BLOCK_K1: tl.constexpr, BLOCK_NC: tl.constexpr,
):
    # R rows, all K tests at once on [R, K+1, NC] tiles of partials: 2K gathered logits per row and no
    # sequential chain of dependent loads; j = the first rejection. Greedy and sampled quantities are
    # both computed (a few hundred bytes) and each row's temperature selects one; the unused one may
    # read partials kernel 1 never wrote, which the selection discards.
    b = tl.program_id(0) * R + tl.arange(0, R)                         # [R]
    bvalid = b < B
    b64 = b.to(tl.int64)
    if HAS_N:
        n = tl.load(n_ptr + b * s_n, mask=bvalid, other=0).to(tl.int32)
        n = tl.minimum(tl.maximum(n, 0), K)
    else:
        n = tl.zeros([R], tl.int32) + K
    T = tl.load(temp_ptr + b, mask=bvalid, other=1.0)
    greedy = T == 0
    inv_T = 1.0 / tl.where(greedy, 1.0, T)
    ok = tl.arange(0, BLOCK_K1)                                        # positions 0..K
    oc = tl.arange(0, BLOCK_NC)                                        # chunks
    tested = bvalid[:, None] & (ok[None, :] < n[:, None])              # [R, K+1]
    pmask = (bvalid[:, None] & (ok[None, :] <= n[:, None]))[:, :, None] & (oc < NC)[None, None, :]
    part = ((b * (K + 1))[:, None] + ok[None, :])[:, :, None] * NC + oc[None, None, :]   # [R, K+1, NC]
    # greedy: the first argmax per position (chunks are in vocabulary order: the smallest index wins)
    vt = tl.load(pm_t_ptr + part, mask=pmask, other=float("-inf"))
    idx = tl.load(pai_ptr + part, mask=pmask, other=_INT_MAX)
    mx = tl.max(vt, axis=2)                                            # [R, K+1]
    am = tl.min(tl.where(vt == mx[:, :, None], idx, _INT_MAX), axis=2)
    # sampled: log-sum-exp per position from the chunk (max, sum exp) pairs
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    st = tl.load(ps_t_ptr + part, mask=pmask, other=0.0)
    lse_t = mx + tl.log(tl.sum(tl.where(pmask, st * tl.exp(vt - mx[:, :, None]), 0.0), axis=2))
    dmask = pmask & tested[:, :, None]
    vd = tl.load(pm_d_ptr + part, mask=dmask, other=float("-inf"))
    sd = tl.load(ps_d_ptr + part, mask=dmask, other=0.0)
    md = tl.max(vd, axis=2)
    md = tl.where(md == float("-inf"), 0.0, md)
    lse_d = md + tl.log(tl.sum(tl.where(dmask, sd * tl.exp(vd - md[:, :, None]), 0.0), axis=2))

    x = tl.load(tok_ptr + b64[:, None] * s_xb + ok[None, :] * s_xk, mask=tested, other=0).to(tl.int64)
    x = tl.minimum(tl.maximum(x, 0), V - 1)
    lt = tl.load(tgt_ptr + b64[:, None] * s_tb + ok[None, :] * s_tk + x, mask=tested, other=0.0)
    ld = tl.load(drf_ptr + b64[:, None] * s_db + ok[None, :] * s_dk + x, mask=tested, other=0.0)
    p_x = tl.exp(lt.to(tl.float32) * inv_T[:, None] - lse_t)
    q_x = tl.exp(ld.to(tl.float32) * inv_T[:, None] - lse_d)
    if LEN_KIND == 1:
        p_x = p_x / eps
    elif LEN_KIND == 2:
        p_x = p_x / (eps * eps)
    elif LEN_KIND == 3:
        p_x = tl.exp(eps * tl.log(p_x))
    u = tl.load(u_ptr + b[:, None] * K + ok[None, :], mask=tested, other=1.0)
    # u < min(1, f(p)/q)  <=>  u * q < f(p), as in the reference.
    acc = tl.where(greedy[:, None], x == am.to(tl.int64), u * q_x < p_x)
    j = tl.min(tl.where(tested & (acc == 0), ok[None, :], n[:, None]), axis=1)  # first rejection, or n
    tl.store(nacc_ptr + b, j.to(tl.int64), mask=bvalid)
    at_j = ok[None, :] == j[:, None]
    tl.store(gx_ptr + b, tl.max(tl.where(at_j, am, -1), axis=1), mask=bvalid)
    tl.store(lse_t_ptr + b, tl.max(tl.where(at_j, lse_t, float("-inf")), axis=1), mask=bvalid)
    tl.store(lse_d_ptr + b, tl.max(tl.where(at_j, lse_d, float("-inf")), axis=1), mask=bvalid)


@triton.jit
def _residual_mass_kernel(
    tgt_ptr, drf_ptr, temp_ptr, n_ptr, nacc_ptr, lse_t_ptr, lse_d_ptr,
    rmass_ptr, pmass_ptr,                               # [B, NC] chunk masses
    B, K, V, NC, TILES,
    s_tb, s_tk, s_db, s_dk, s_n,
    HAS_N: tl.constexpr, R: tl.constexpr, BLOCK: tl.constexpr,
):
    # Rows in reverse order: kernel 1 read the highest b last, so their position-j tiles may still
    # be in L2.
    pid = tl.program_id(0)
    c = pid % NC
    b = (tl.num_programs(0) // NC - 1 - pid // NC) * R + tl.arange(0, R)  # [R]
    bvalid = b < B
    T = tl.load(temp_ptr + b, mask=bvalid, other=0.0)
    sampled = bvalid & (T != 0)                                        # greedy rows have their token
    if tl.max(sampled.to(tl.int32), axis=0) > 0:
        inv_T = 1.0 / tl.where(sampled, T, 1.0)
        if HAS_N:
            n = tl.load(n_ptr + b * s_n, mask=bvalid, other=0).to(tl.int32)
            n = tl.minimum(tl.maximum(n, 0), K)
        else:
            n = tl.zeros([R], tl.int32) + K
        j = tl.load(nacc_ptr + b, mask=bvalid, other=0).to(tl.int32)
        residual = sampled & (j < n)                                   # else a bonus: r = p
        lse_t = tl.load(lse_t_ptr + b, mask=sampled, other=0.0)
        lse_d = tl.load(lse_d_ptr + b, mask=residual, other=0.0)
        b64 = b.to(tl.int64)
        t_off = b64 * s_tb + j.to(tl.int64) * s_tk
        d_off = b64 * s_db + j.to(tl.int64) * s_dk
        arange = tl.arange(0, BLOCK)
        start0 = c * TILES * BLOCK
        rm = tl.zeros([R], tl.float32)
        pm = tl.zeros([R], tl.float32)
        for t in range(0, TILES):
            # (the same tile code as in _emit_kernel; inlined because the interpreter pays for every
            # call of a jitted helper)
            offs = start0 + t * BLOCK + arange
            m2 = sampled[:, None] & (offs < V)[None, :]
            lt = tl.load(tgt_ptr + t_off[:, None] + offs[None, :], mask=m2, other=float("-inf"))
            p = tl.where(m2, tl.exp(lt.to(tl.float32) * inv_T[:, None] - lse_t[:, None]), 0.0)
            d2 = m2 & residual[:, None]
            ld = tl.load(drf_ptr + d_off[:, None] + offs[None, :], mask=d2, other=float("-inf"))
            q = tl.where(d2, tl.exp(ld.to(tl.float32) * inv_T[:, None] - lse_d[:, None]), 0.0)
            r = tl.where(residual[:, None], tl.maximum(p - q, 0.0), p)
            rm += tl.sum(r, axis=1)
            pm += tl.sum(p, axis=1)
        tl.store(rmass_ptr + b * NC + c, rm, mask=sampled)
        tl.store(pmass_ptr + b * NC + c, pm, mask=sampled)


@triton.jit
def _emit_kernel(
    tgt_ptr, drf_ptr, tok_ptr, temp_ptr, n_ptr, us_ptr, nacc_ptr, lse_t_ptr, lse_d_ptr, gx_ptr,
    rmass_ptr, pmass_ptr, out_ptr,                      # [B, 2] uniforms, [B, NC] masses, [B, K+1] out
    B, K, V, NC, TILES,
    s_tb, s_tk, s_db, s_dk, s_xb, s_xk, s_n,
    HAS_N: tl.constexpr, R: tl.constexpr, BLOCK: tl.constexpr, BLOCK_NC: tl.constexpr,
    BLOCK_K1: tl.constexpr,
):
    b = tl.program_id(0) * R + tl.arange(0, R)                         # [R]
    bvalid = b < B
    b64 = b.to(tl.int64)
    T = tl.load(temp_ptr + b, mask=bvalid, other=0.0)
    sampled = bvalid & (T != 0)
    j = tl.load(nacc_ptr + b, mask=bvalid, other=0).to(tl.int32)
    extra = tl.load(gx_ptr + b, mask=bvalid, other=0).to(tl.int64)   # greedy rows: argmax p_j (kernel 2)
    if tl.max(sampled.to(tl.int32), axis=0) > 0:
        inv_T = 1.0 / tl.where(sampled, T, 1.0)
        if HAS_N:
            n = tl.load(n_ptr + b * s_n, mask=bvalid, other=0).to(tl.int32)
            n = tl.minimum(tl.maximum(n, 0), K)
        else:
            n = tl.zeros([R], tl.int32) + K
        oc = tl.arange(0, BLOCK_NC)
        cm = sampled[:, None] & (oc < NC)[None, :]
        rm = tl.load(rmass_ptr + b[:, None] * NC + oc[None, :], mask=cm, other=0.0)     # [R, NC]
        # A bonus samples p; so does an empty residual (p == q up to rounding after a rejection).
        use_p = (j >= n) | (tl.sum(rm, axis=1) <= 0.0)
        pmass = tl.load(pmass_ptr + b[:, None] * NC + oc[None, :], mask=cm, other=0.0)
        w = tl.where(use_p[:, None], pmass, rm)
        # Level 1: the chunk, by inverse CDF over the chunk masses. The prefix sum is a masked sum over
        # [R, NC, NC] rather than tl.cumsum: Triton 3.6 fails to compile a scan over an axis this short
        # (NC = 2 with 8 warps asserts in ScanOpToLLVM, seen on an H200); NC is at most a few dozen.
        cw = tl.sum(tl.where(oc[None, None, :] <= oc[None, :, None], w[:, None, :], 0.0), axis=2)
        goal = tl.load(us_ptr + 2 * b, mask=sampled, other=0.0) * tl.sum(w, axis=1)
        c = tl.min(tl.where(cm & (cw > goal[:, None]), oc[None, :], _INT_MAX), axis=1)
        c_last = tl.max(tl.where(cm & (w > 0.0), oc[None, :], -1), axis=1)
        c = tl.maximum(tl.where(c == _INT_MAX, c_last, c), 0)  # rounding may push the goal past the sum
        w_c = tl.sum(tl.where(oc[None, :] == c[:, None], w, 0.0), axis=1)
        # Level 2: the token inside chunk c, by a running cumsum (re-reads one chunk per row).
        goal = tl.load(us_ptr + 2 * b + 1, mask=sampled, other=0.0) * w_c
        lse_t = tl.load(lse_t_ptr + b, mask=sampled, other=0.0)
        residual = sampled & (use_p == 0)
        lse_d = tl.load(lse_d_ptr + b, mask=residual, other=0.0)
        t_off = b64 * s_tb + j.to(tl.int64) * s_tk
        d_off = b64 * s_db + j.to(tl.int64) * s_dk
        arange = tl.arange(0, BLOCK)
        start0 = c * TILES * BLOCK                                     # [R]
        run = tl.zeros([R], tl.float32)
        found = tl.full([R], _INT_MAX, tl.int32)
        last = tl.full([R], -1, tl.int32)
        for t in range(0, TILES):
            offs = start0[:, None] + t * BLOCK + arange[None, :]       # [R, BLOCK]
            m2 = sampled[:, None] & (offs < V)
            lt = tl.load(tgt_ptr + t_off[:, None] + offs, mask=m2, other=float("-inf"))
            r = tl.where(m2, tl.exp(lt.to(tl.float32) * inv_T[:, None] - lse_t[:, None]), 0.0)
            d2 = m2 & residual[:, None]
            ld = tl.load(drf_ptr + d_off[:, None] + offs, mask=d2, other=float("-inf"))
            q = tl.where(d2, tl.exp(ld.to(tl.float32) * inv_T[:, None] - lse_d[:, None]), 0.0)
            r = tl.where(residual[:, None], tl.maximum(r - q, 0.0), r)
            cs = run[:, None] + tl.cumsum(r, axis=1)
            found = tl.minimum(found, tl.min(tl.where(m2 & (cs > goal[:, None]), offs, _INT_MAX), axis=1))
            last = tl.maximum(last, tl.max(tl.where(r > 0.0, offs, -1), axis=1))
            run += tl.sum(r, axis=1)
        found = tl.where(found == _INT_MAX, last, found)
        extra = tl.where(sampled, tl.maximum(found, 0).to(tl.int64), extra)
    ok = tl.arange(0, BLOCK_K1)
    keep = bvalid[:, None] & (ok[None, :] < j[:, None])
    drafts = tl.load(tok_ptr + b64[:, None] * s_xb + ok[None, :] * s_xk, mask=keep, other=-1).to(tl.int64)
    out = tl.where(keep, drafts, tl.where(ok[None, :] == j[:, None], extra[:, None], -1))
    tl.store(out_ptr + b64[:, None] * (K + 1) + ok[None, :], out, mask=bvalid[:, None] & (ok[None, :] < K + 1))


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
    """The launch contract (shapes, dtypes, devices, strides): asserted here, before any launch."""
    if target_logits.dim() != 3:
        raise ValueError(f"target_logits must be [B, K+1, V], got shape {tuple(target_logits.shape)}")
    B, K1, V = target_logits.shape
    K = K1 - 1
    if K < 0:
        raise ValueError("target_logits needs at least one position (K+1 >= 1)")
    if tuple(draft_logits.shape) != (B, K, V):
        raise ValueError(f"draft_logits must be [B, K, V] = {(B, K, V)}, got {tuple(draft_logits.shape)}")
    if tuple(draft_tokens.shape) != (B, K):
        raise ValueError(f"draft_tokens must be [B, K] = {(B, K)}, got {tuple(draft_tokens.shape)}")
    if draft_tokens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"draft_tokens must be int32 or int64, got {draft_tokens.dtype}")
    if num_draft_tokens is not None and tuple(num_draft_tokens.shape) != (B,):
        raise ValueError(f"num_draft_tokens must be [B] = ({B},), got {tuple(num_draft_tokens.shape)}")
    check_lenience(lenience, lenience_eps)
    dev = target_logits.device
    if {draft_logits.device, draft_tokens.device} != {dev}:
        raise ValueError("all verify_triton inputs must be on one device")
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
    return B, K, V


def verify_triton(target_logits: torch.Tensor, draft_logits: torch.Tensor, draft_tokens: torch.Tensor,
                  temperature: torch.Tensor, num_draft_tokens: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, lenience: str | None = None,
                  lenience_eps: float = 1.0, *, block: int | None = None,
                  sample_block: int | None = None, num_warps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused verification; same contract as `verify_reference` (temperature a [B] fp32 tensor).
    Returns (tokens [B, K+1] int64: emitted tokens left-aligned, -1 after the last; num_accepted [B]
    int64): the fields of engine/verify.py's VerifyResult, which `verify(..., backend="triton")` wraps
    them in (one result type; this module imports nothing of the engine).

    target_logits [B, K+1, V], draft_logits [B, K, V]: fp32 / bf16 / fp16, last dim contiguous (other
    strides are free, so a slice to the shared vocabulary needs no copy). draft_tokens [B, K] int32/int64.
    num_draft_tokens [B] int or None. block: vocabulary tile of kernel 1 (a power of two; the default
    is 4096 elements for 16-bit logits, 2048 for fp32, i.e. 8 KB per tile); sample_block: the tile of
    kernels 3 and 4 (default: block; the two-level sampling's chunks are whole tiles). Tests shrink
    both.
    num_warps: kernel 1's warps (default 8 for a 4096-element tile, else 4); bench/kernel_bench.py
    sweeps block and num_warps to tune them on a device.
    Randomness: one torch.rand of B*(K+2) uniforms from `generator`; nothing else is random.
    """
    B, K, V = _check(target_logits, draft_logits, draft_tokens, temperature, num_draft_tokens,
                     lenience, lenience_eps)
    dev = target_logits.device
    tokens = torch.empty((B, K + 1), device=dev, dtype=torch.int64)
    num_accepted = torch.empty((B,), device=dev, dtype=torch.int64)
    if B == 0:
        return tokens, num_accepted
    if block is None:
        block = 4096 if target_logits.element_size() <= 2 else 2048
    if sample_block is None:
        sample_block = block
    for name, v in (("block", block), ("sample_block", sample_block)):
        if v < 16 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {v}")
    p2 = triton.next_power_of_2
    sms = _num_sms(dev)
    # One draw: [B, K] accept uniforms (the same numbers the reference draws first, for one seed on
    # the CPU generator), then [B, 2] for the two-level sampling.
    # Drawn on the generator's device (a CPU generator seeds CUDA work too), as engine.sampling.uniform
    # does: the kernels sit below the engine and do not import it.
    draw_dev = dev if generator is None else generator.device
    u_all = torch.rand((B * (K + 2),), device=draw_dev, generator=generator).to(dev)
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
    f32 = dict(device=dev, dtype=torch.float32)

    # Triton launches on the current CUDA device: make it the tensors' one (a no-op on the CPU).
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        # (1) chunk partials over [B*(K+1) rows, NC1 chunks]. A tile holds `block` elements: one row's
        # slice when V >= block, else R1 whole rows (small vocabularies, and the CPU interpreter, whose
        # cost is per program and per operation, not per element).
        rows = B * (K + 1)
        block1 = max(16, min(block, p2(V)))
        r1 = min(p2(rows), max(1, block // block1))
        nc1, tiles1 = _split(triton.cdiv(rows, r1), V, block1, sms, max_tiles=4)
        pm_t = torch.empty((rows, nc1), **f32)
        ps_t = torch.empty((rows, nc1), **f32)
        pm_d = torch.empty((rows, nc1), **f32)
        ps_d = torch.empty((rows, nc1), **f32)
        pai = torch.empty((rows, nc1), device=dev, dtype=torch.int32)
        _partials_kernel[(triton.cdiv(rows, r1) * nc1,)](
            target_logits, draft_logits, temperature, n_arg, pm_t, ps_t, pm_d, ps_d, pai,
            rows, K, V, nc1, tiles1, s_tb, s_tk, s_db, s_dk, s_n,
            HAS_N=has_n, R=r1, BLOCK=block1, num_warps=num_warps or (8 if r1 * block1 >= 4096 else 4))

        # (2) accept tests, R2 rows per program on [R2, K+1, NC1] tiles of partials
        lse_t = torch.empty((B,), **f32)
        lse_d = torch.empty((B,), **f32)
        gx = torch.empty((B,), device=dev, dtype=torch.int32)
        bk1, bnc1 = max(2, p2(K + 1)), max(2, p2(nc1))
        r2 = min(p2(B), max(1, 1024 // (bk1 * bnc1)))
        _accept_kernel[(triton.cdiv(B, r2),)](
            target_logits, draft_logits, draft_tokens, temperature, n_arg, u, pm_t, ps_t, pm_d, ps_d, pai,
            num_accepted, lse_t, lse_d, gx, B, K, V, nc1, float(lenience_eps),
            s_tb, s_tk, s_db, s_dk, s_xb, s_xk, s_n,
            HAS_N=has_n, LEN_KIND=lcode, R=r2, BLOCK_K1=bk1, BLOCK_NC=bnc1, num_warps=4)

        # (3) residual / bonus mass per chunk of position j; (4) the emitted token and the output rows.
        block3 = max(16, min(sample_block, p2(V)))
        rows_budget = max(1024, sample_block)  # several rows per program only when V < a tile
        r3 = min(p2(B), max(1, rows_budget // block3))
        nc3, tiles3 = _split(triton.cdiv(B, r3), V, block3, sms, max_tiles=2)
        rmass = torch.empty((B, nc3), **f32)
        pmass = torch.empty((B, nc3), **f32)
        _residual_mass_kernel[(triton.cdiv(B, r3) * nc3,)](
            target_logits, draft_logits, temperature, n_arg, num_accepted, lse_t, lse_d, rmass, pmass,
            B, K, V, nc3, tiles3, s_tb, s_tk, s_db, s_dk, s_n,
            HAS_N=has_n, R=r3, BLOCK=block3, num_warps=8 if r3 * block3 >= 4096 else 4)
        bnc3 = max(2, p2(nc3))
        r4 = min(p2(B), max(1, rows_budget // max(block3, bnc3)))
        _emit_kernel[(triton.cdiv(B, r4),)](
            target_logits, draft_logits, draft_tokens, temperature, n_arg, us, num_accepted, lse_t, lse_d, gx,
            rmass, pmass, tokens, B, K, V, nc3, tiles3, s_tb, s_tk, s_db, s_dk, s_xb, s_xk, s_n,
            HAS_N=has_n, R=r4, BLOCK=block3, BLOCK_NC=bnc3, BLOCK_K1=max(2, p2(K + 1)),
            num_warps=8 if r4 * block3 >= 4096 else 4)
    return tokens, num_accepted
