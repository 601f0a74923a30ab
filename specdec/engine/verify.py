"""Verification of drafted tokens: speculative (rejection) sampling, the PyTorch reference, and the
backend dispatch.

Terms (as in vLLM's rejection sampler):
  accepted  a draft token the target keeps;
  recovered the token emitted at the first rejected position, sampled from norm(max(0, p - q));
  bonus     the token emitted when every draft of a row is accepted, sampled from p at position n.
Each row emits num_accepted + 1 tokens: its accepted drafts, then one recovered or bonus token.

Math (Leviathan et al. 2023, Chen et al. 2023): position i accepts x_i with probability
min(1, p_i(x_i) / q_i(x_i)), which leaves the output distributed exactly as p. With lossy lenience
(DistillSpec, arXiv 2310.08461) p(x) in the test is replaced by f(p(x)): f_lin = p/eps, f_sq = p/eps^2,
f_exp = p^eps (eps in (0, 1], eps = 1 is lossless); the residual stays norm(max(0, p - q)).
Temperature 0 is greedy: accept iff x_i == argmax p_i, and the extra token is argmax p_j.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ..common.values import LENIENCE_KINDS  # noqa: F401 (re-exported)
from ..common.values import MIN_TEMPERATURE, BadType, check_lenience, check_temperature, is_greedy
from .sampling import argmax, pick, probs_from_logits, sample_from_probs, uniform, unusable_rows
BACKENDS = ("torch", "triton", "auto")


@dataclass
class VerifyResult:
    tokens: torch.Tensor        # [B, K+1] int64: emitted tokens left-aligned, -1 after the last
    num_accepted: torch.Tensor  # [B] int64: accepted drafts per row; the row emits num_accepted + 1 tokens


def lenient_target(p_x: torch.Tensor, kind: str | None, eps: float) -> torch.Tensor:
    """f(p(x)) of DistillSpec's lenient acceptance min(1, f(p(x)) / q(x)). p_x: any shape, fp32."""
    if kind is None or eps == 1.0:
        return p_x
    if kind == "lin":
        return p_x / eps
    if kind == "sq":
        return p_x / (eps * eps)
    if kind == "exp":
        return p_x.pow(eps)
    check_lenience(kind, eps)   # raises: an unknown kind


def _temperature_tensor(temperature, B: int, device) -> torch.Tensor:
    """Scalar or [B] temperature -> [B] fp32 on device; each checked by the one temperature rule
    (common/values.py; one host sync when a tensor is passed, paid only on this validation path)."""
    if isinstance(temperature, torch.Tensor):
        t = temperature.to(device=device, dtype=torch.float32).reshape(-1)
        if t.numel() == 1:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"temperature must be a float or a [B]={B} tensor, got shape {tuple(temperature.shape)}")
        bad = ~(t.isfinite() & (is_greedy(t) | (t >= MIN_TEMPERATURE)))
        if bool(bad.any()):
            check_temperature(float(t[bad][0]), "temperature")   # raises, naming the first bad value
        return t.contiguous()
    return torch.full((B,), check_temperature(temperature, "temperature"), device=device, dtype=torch.float32)


def check_values(target_logits, draft_logits, draft_tokens, num_draft_tokens) -> None:
    """What `verify` checks on values (one host sync): every count lies in [0, K], every draft id a row
    verifies lies in [0, V), and every position a row uses has a logit row a token can be chosen from (no
    NaN or +inf; not all -inf: -inf marks a masked token). Without it an out-of-range id would be emitted
    as is, and an unusable row would silently emit token 0."""
    B, K1, V = target_logits.shape
    K = K1 - 1
    n = torch.full((B,), K, device=draft_tokens.device) if num_draft_tokens is None else num_draft_tokens.long()
    pos = torch.arange(K1, device=draft_tokens.device)[None]                       # [1, K+1]
    used = pos[:, :K] < n[:, None]                                                  # [B, K] drafts verified
    x = draft_tokens.long()
    checks = {"counts": (n < 0) | (n > K),                                          # [B] each
              "ids": (((x < 0) | (x >= V)) & used).any(1),
              "target_logits": (unusable_rows(target_logits) & (pos <= n[:, None])).any(1),   # up to the bonus
              "draft_logits": (unusable_rows(draft_logits) & used).any(1)}
    flags = dict(zip(checks, torch.stack(list(checks.values())).tolist()))
    if any(flags["counts"]):
        raise ValueError(f"num_draft_tokens must lie in [0, K={K}], got {n.tolist()}")
    if any(flags["ids"]):
        b = flags["ids"].index(True)
        raise ValueError(f"draft_tokens of row {b} hold ids outside [0, {V}): {draft_tokens[b].tolist()}; "
                         "drafts must come from the shared vocabulary")
    for name in ("target_logits", "draft_logits"):
        if any(flags[name]):
            raise ValueError(f"{name} contain NaN or +inf, or a position whose logits are all -inf (row "
                             f"{flags[name].index(True)}): no token can be chosen from it (-inf marks a masked token)")


def check_inputs(target_logits, draft_logits, draft_tokens, num_draft_tokens, lenience, lenience_eps):
    """Type / shape / dtype / device checks shared by every backend. Returns (B, K, V)."""
    for name, t, shape in (("target_logits", target_logits, "[B, K+1, V]"), ("draft_logits", draft_logits, "[B, K, V]"),
                           ("draft_tokens", draft_tokens, "[B, K]"), ("num_draft_tokens", num_draft_tokens, "[B]")):
        if not isinstance(t, torch.Tensor) and not (name == "num_draft_tokens" and t is None):
            raise BadType(f"{name} must be a {shape} torch.Tensor, got {type(t).__name__}")
    if num_draft_tokens is not None and (num_draft_tokens.is_floating_point() or num_draft_tokens.dtype == torch.bool):
        raise BadType(f"num_draft_tokens must be an integer tensor, got {num_draft_tokens.dtype}")
    if target_logits.dim() != 3:
        raise ValueError(f"target_logits must be [B, K+1, V], got shape {tuple(target_logits.shape)}")
    B, K1, V = target_logits.shape
    K = K1 - 1
    if K < 0:
        raise ValueError("target_logits needs at least one position (K+1 >= 1)")
    if tuple(draft_logits.shape) != (B, K, V):
        raise ValueError(
            f"draft_logits must be [B, K, V] = {(B, K, V)} to match target_logits {tuple(target_logits.shape)}, "
            f"got {tuple(draft_logits.shape)}; slice both to the shared vocabulary first")
    if tuple(draft_tokens.shape) != (B, K):
        raise ValueError(f"draft_tokens must be [B, K] = {(B, K)}, got {tuple(draft_tokens.shape)}")
    if not target_logits.is_floating_point() or not draft_logits.is_floating_point():
        raise ValueError("target_logits and draft_logits must be floating point")
    if draft_tokens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"draft_tokens must be int32 or int64, got {draft_tokens.dtype}")
    devs = {target_logits.device, draft_logits.device, draft_tokens.device}
    if num_draft_tokens is not None:
        if tuple(num_draft_tokens.shape) != (B,):
            raise ValueError(f"num_draft_tokens must be [B] = ({B},), got {tuple(num_draft_tokens.shape)}")
        devs.add(num_draft_tokens.device)
    if len(devs) != 1:
        raise ValueError(f"all verify inputs must be on one device, got {sorted(map(str, devs))}")
    check_lenience(lenience, lenience_eps)
    return B, K, V


def verify_reference(target_logits, draft_logits, draft_tokens, temperature, num_draft_tokens=None,
                     generator=None, lenience=None, lenience_eps=1.0, all_greedy=False) -> VerifyResult:
    """The pure PyTorch reference. Inputs as `verify`; temperature a [B] fp32 tensor; all_greedy (a
    host-side promise that every temperature is 0) skips the softmaxes.

    Memory traffic (what the Triton kernel avoids): two softmaxes write fp32 p [B, K+1, V] and
    q [B, K, V] and read them back; the kernel reads the logits once and writes O(B*K).
    """
    B, K1, V = target_logits.shape
    K = K1 - 1
    device = target_logits.device
    greedy = is_greedy(temperature)                                   # [B]
    n = (torch.full((B,), K, device=device, dtype=torch.int64) if num_draft_tokens is None
         else num_draft_tokens.to(torch.int64).clamp(0, K))           # [B]
    x = draft_tokens.to(torch.int64).clamp(0, V - 1)                  # [B, K]; junk beyond n is masked below

    target_argmax = argmax(target_logits)                             # [B, K+1]
    accept_greedy = x == target_argmax[:, :K]
    valid = torch.arange(K, device=device).unsqueeze(0) < n.unsqueeze(1)
    if all_greedy:  # no probabilities at all: argmax compare, argmax recovered/bonus token
        num_accepted = (accept_greedy & valid).to(torch.int64).cumprod(dim=1).sum(dim=1)
        extra = target_argmax.gather(1, num_accepted.unsqueeze(1)).squeeze(1)
        return _layout(draft_tokens, num_accepted, extra, K)

    p = probs_from_logits(target_logits, temperature)                 # [B, K+1, V] fp32
    q = probs_from_logits(draft_logits, temperature)                  # [B, K, V] fp32
    p_x = p[:, :K].gather(-1, x.unsqueeze(-1)).squeeze(-1)            # [B, K]
    q_x = q.gather(-1, x.unsqueeze(-1)).squeeze(-1)                   # [B, K]
    u = uniform((B, K), device, generator)                             # [B, K] in [0, 1)
    # u < min(1, f(p)/q)  <=>  u * q < f(p): no division, and q = 0 (never sampled) cannot divide by 0.
    accept_sampled = u * q_x < lenient_target(p_x, lenience, lenience_eps)
    accept = torch.where(greedy.unsqueeze(1), accept_greedy, accept_sampled) & valid
    num_accepted = accept.to(torch.int64).cumprod(dim=1).sum(dim=1)   # [B]: leading run of accepts

    j = num_accepted                                                  # [B]: position of the extra token
    rows = torch.arange(B, device=device)
    p_j = p[rows, j]                                                  # [B, V]
    is_bonus = (j >= n).unsqueeze(1)                                  # [B, 1]
    q_j = q[rows, j.clamp(max=max(K - 1, 0))] if K > 0 else torch.zeros_like(p_j)
    residual = torch.where(is_bonus, p_j, (p_j - q_j).clamp_min(0.0))  # [B, V]; a plain sum normalises
    # p == q up to rounding can leave an empty residual after a (rounding-induced) rejection: use p.
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_j)
    sampled = sample_from_probs(residual, generator)                  # [B]
    extra = torch.where(greedy, target_argmax.gather(1, j.unsqueeze(1)).squeeze(1), sampled)
    return _layout(draft_tokens, num_accepted, extra, K)


def verify_greedy_cpu(target_logits, draft_tokens, num_draft_tokens=None) -> VerifyResult:
    """verify_reference's all-greedy path for CPU tensors: the same result (argmax compare, the leading run
    of matches, the argmax recovered / bonus token) from one NumPy argmax and a few host integers.

    Why: it runs right after the target's forward has streamed its weights through the caches, where
    each of the reference's ~20 PyTorch operations pays its dispatch cold: measured on the 2-core Xeon,
    SmolLM2 at gamma 1, ~0.3 ms a round in the decode loop against ~0.09 ms for the same call repeated
    (bench/RESULTS.md, "The feature draft in the engine"). B * K is small (a decode batch's drafts)."""
    target_ids = target_logits.numpy().argmax(-1)                                   # [B, K+1]
    B, K1 = target_ids.shape
    n = [K1 - 1] * B if num_draft_tokens is None else num_draft_tokens.tolist()
    tokens, accepted = greedy_accept(target_ids.tolist(), draft_tokens.tolist(), n)
    return VerifyResult(tokens=torch.tensor(tokens, dtype=torch.int64).view(B, K1),
                        num_accepted=torch.tensor(accepted, dtype=torch.int64))


def greedy_accept(target_ids: list, drafts: list, n: list) -> tuple[list, list]:
    """The greedy test on host lists (verify_greedy_cpu's, and the decode loop's on a greedy head's ids:
    runner.ModelRunner.forward_greedy): target_ids [B][K+1] argmax ids, drafts [B][K], n [B] drafts to
    test per row -> (tokens [B][K+1]: the accepted drafts, then the target's token, then -1s; accepted [B])."""
    tokens, accepted = [], []
    for ta, x, nb in zip(target_ids, drafts, n):
        K = len(x)
        a, limit = 0, min(max(int(nb), 0), K)
        while a < limit and x[a] == ta[a]:
            a += 1
        tokens.append(x[:a] + [ta[a]] + [-1] * (K - a))
        accepted.append(a)
    return tokens, accepted


def verify_sampled_cpu(target_logits, draft_logits, draft_tokens, temperature: float, num_draft_tokens=None,
                       generator=None, lenience=None, lenience_eps=1.0) -> VerifyResult:
    """verify_reference's sampled path for CPU tensors and one temperature > 0: the same test, the same
    random numbers in the same order (u [B, K], then one float64 a row for the recovered / bonus token,
    drawn by sampling.inverse_cdf's rule), in NumPy, computing p and q only at the positions a row reaches
    (its accepted drafts and the first rejection). Equal to the reference up to float rounding at the
    boundaries (tested).

    Why: the reference's ~40 PyTorch operations cost ~0.7 ms a round warm, ~1.0 ms right after the
    target's forward, on SmolLM2 (V = 49152) where plain decoding samples a token in ~0.2 ms (2-core Xeon,
    bench/RESULTS.md, "A draft without a model"): every round that drafts nothing paid the difference.

    draft_logits None: a deterministic draft (the n-gram lookup), q one-hot at each proposed id, as
    ngram.one_hot_logits would give, without building or softmaxing it: q(x) = 1, so a draft is kept
    iff u < f(p(x)), and the recovered token's residual max(p - q, 0) is p with x's mass zeroed; the
    same bits as with the one-hot logits (tested). Why: at T = 1 the lookup's rounds spent ~0.8-1.1 ms
    in this test against ~0.4 ms for a round that drafted nothing, one softmax over V per reached
    position of it for q alone (bench/RESULTS.md, "The lookup's one-hot q left implicit")."""
    B, K1, V = target_logits.shape
    K = K1 - 1
    one_hot = draft_logits is None
    tl, dl = target_logits.numpy(), (None if one_hot else draft_logits.numpy())
    x = draft_tokens.tolist()
    n = [K] * B if num_draft_tokens is None else num_draft_tokens.tolist()
    u = uniform((B, K), "cpu", generator).numpy()                                  # [B, K]
    v = torch.rand(B, dtype=torch.float64, generator=generator).numpy()             # [B]

    def probs(row):                                                                  # softmax(row / T), [V]
        e = np.exp((row - row.max()) / temperature)
        return e / e.sum()

    tokens, accepted = [], []
    for b in range(B):
        a, limit = 0, min(max(int(n[b]), 0), K)
        p = q = None
        while a < limit:
            xa = x[b][a]
            p = probs(tl[b, a])
            if not one_hot:
                q = probs(dl[b, a])
            q_x = np.float32(1.0) if one_hot else q[xa]
            f = float(p[xa]) if lenience is None else float(lenient_target(torch.tensor(float(p[xa])), lenience,
                                                                           lenience_eps))
            if not u[b, a] * q_x < f:
                break
            a, p = a + 1, None
        if a >= limit:                                                               # bonus: p at position a
            residual = probs(tl[b, a])
        else:                                                                        # recovered: max(p - q, 0)
            if one_hot:                                                              # p - 1 <= 0 at x; p elsewhere
                residual = p.copy()
                residual[x[b][a]] = 0.0
            else:
                residual = np.maximum(p - q, 0.0)
            if not residual.sum() > 0:
                residual = p
        extra = pick(residual, v[b])
        tokens.append(x[b][:a] + [extra] + [-1] * (K - a))
        accepted.append(a)
    return VerifyResult(tokens=torch.tensor(tokens, dtype=torch.int64).view(B, K1),
                        num_accepted=torch.tensor(accepted, dtype=torch.int64))


def _layout(draft_tokens, num_accepted, extra, K) -> VerifyResult:
    """[B, K+1] tokens: the accepted drafts, then the recovered / bonus token, then -1."""
    B, device = num_accepted.shape[0], num_accepted.device
    K1 = K + 1
    tokens = torch.full((B, K1), -1, device=device, dtype=torch.int64)
    keep = torch.arange(K, device=device).unsqueeze(0) < num_accepted.unsqueeze(1)
    tokens[:, :K] = torch.where(keep, draft_tokens.to(torch.int64), tokens[:, :K])
    tokens.scatter_(1, num_accepted.unsqueeze(1), extra.unsqueeze(1))
    return VerifyResult(tokens=tokens, num_accepted=num_accepted)


def _triton_usable(t: torch.Tensor) -> bool:
    if t.is_cuda:
        return True
    return os.environ.get("TRITON_INTERPRET") == "1"


def verify(target_logits: torch.Tensor, draft_logits: torch.Tensor, draft_tokens: torch.Tensor,
           temperature: float | torch.Tensor = 1.0, num_draft_tokens: torch.Tensor | None = None,
           generator: torch.Generator | None = None, backend: str = "torch",
           lenience: str | None = None, lenience_eps: float = 1.0, validate: bool = True) -> VerifyResult:
    """Verify K drafted tokens per row against the target and emit 1..K+1 tokens per row.

    target_logits [B, K+1, V], draft_logits [B, K, V]: logits after top-k/top-p masking, before
    temperature (the same masking that produced the draft's samples). draft_tokens [B, K].
    temperature: float or [B] tensor (0 = greedy rows). num_draft_tokens [B]: a row's drafts beyond
    its count are ignored and its bonus comes from target position num_draft_tokens.
    backend: "torch" (reference), "triton" (fused kernel; CUDA, or CPU under TRITON_INTERPRET=1),
    "auto" (Triton for CUDA tensors; CPU tensors: verify_greedy_cpu when greedy, verify_sampled_cpu
    with one temperature, the same result in NumPy; else the reference).
    validate: check values too (`check_values`: draft ids in range, no NaN; costs a host sync). The
    decode loop passes False: its drafts are sampled inside the vocabulary and it checks NaN itself
    in the round's one host read.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise BadType(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    B, K, V = check_inputs(target_logits, draft_logits, draft_tokens, num_draft_tokens, lenience, lenience_eps)
    temp = _temperature_tensor(temperature, B, target_logits.device)
    if validate:
        check_values(target_logits, draft_logits, draft_tokens, num_draft_tokens)
    fastest = backend == "auto"
    if backend == "auto":
        kernel_dtypes = (torch.float32, torch.bfloat16, torch.float16)
        backend = ("triton" if target_logits.is_cuda and _triton_available()
                   and target_logits.dtype in kernel_dtypes and draft_logits.dtype in kernel_dtypes else "torch")
    if backend == "triton":
        if not _triton_usable(target_logits):
            raise ValueError("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before importing "
                             "triton to run it on the CPU; use backend='torch' or 'auto' otherwise")
        from ..kernels.verify_triton import verify_triton  # heavy optional dependency: imported on use
        tokens, num_accepted = verify_triton(target_logits, draft_logits, draft_tokens, temp, num_draft_tokens,
                                             generator, lenience, lenience_eps)
        return VerifyResult(tokens=tokens, num_accepted=num_accepted)
    all_greedy = not isinstance(temperature, torch.Tensor) and is_greedy(float(temperature))
    if all_greedy and fastest and _cpu_float(target_logits):
        return verify_greedy_cpu(target_logits, draft_tokens, num_draft_tokens)
    if fastest and sampled_on_cpu(target_logits, temperature) and draft_logits.dtype == target_logits.dtype:
        return verify_sampled_cpu(target_logits, draft_logits, draft_tokens, float(temperature), num_draft_tokens,
                                  generator, lenience, lenience_eps)
    return verify_reference(target_logits, draft_logits, draft_tokens, temp, num_draft_tokens,
                            generator, lenience, lenience_eps, all_greedy)


def _cpu_float(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)


def sampled_on_cpu(target_logits: torch.Tensor, temperature) -> bool:
    """Whether verify(backend="auto") tests these target logits with verify_sampled_cpu (given draft logits
    of their dtype): CPU float logits and one temperature > 0 (a float, not a per-row tensor)."""
    return (not isinstance(temperature, torch.Tensor) and not is_greedy(float(temperature))
            and _cpu_float(target_logits))


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True
