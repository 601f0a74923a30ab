"""Logits processing and sampling: temperature, top-k, top-p, and sampling without host syncs.

These are the only functions that turn logits into distributions. The decode loop samples draft tokens
with them and `verify` rebuilds q with the same calls, so the q a draft token is verified against is
exactly the distribution it was sampled from (the bug in transformers #32867 / #47932 was two
different code paths for these).

Conventions (Hugging Face's warper order): top-k and top-p are applied to the logits divided by the
temperature; the masked logits keep their raw scale (masked entries are -inf), and the temperature is
applied once more by `probs_from_logits`. Temperature 0 means greedy (`common.values.is_greedy`: the one
rule, with the smallest sampling temperature the callers' checks enforce).
"""
from __future__ import annotations

import numpy as np
import torch

from ..common.values import is_greedy

NEG_INF = float("-inf")


def mask_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask logits outside the top-k / nucleus with -inf; returns raw-scale logits.

    logits: [..., V] (any float dtype). top_k <= 0 and top_p >= 1 are no-ops. The nucleus is computed on
    softmax(logits / temperature) (temperature 0 keeps only the argmax, which greedy uses anyway).
    Costs one sort over V per row when top_p < 1 (the expensive part), a topk when top_k > 0.
    """
    V = logits.shape[-1]
    if top_k > 0 and top_k < V:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # [..., 1]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if top_p < 1.0 and not is_greedy(temperature):
        scaled = logits.float() / temperature
        sorted_logits, sorted_idx = torch.sort(scaled, dim=-1, descending=True)  # [..., V]
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p: a token is dropped when the mass strictly
        # before it already reaches top_p. The first token is always kept.
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, NEG_INF)
    return logits


def pad_vocab(logits: torch.Tensor, width: int) -> torch.Tensor:
    """[..., W] -> [..., width]: a model's logits widened with -inf (probability 0) for the ids it has no
    logit for (a draft whose vocabulary is smaller than the target's). Costs a copy when W < width."""
    missing = width - logits.shape[-1]
    return torch.nn.functional.pad(logits, (0, missing), value=NEG_INF) if missing > 0 else logits


def unusable_rows(logits: torch.Tensor) -> torch.Tensor:
    """[..., V] -> [...] bool: rows no token can be chosen from (a NaN or +inf logit, or every logit
    -inf). softmax turns such a row into NaN and argmax then returns an id nobody sampled (token 0 for
    an all -inf row). One max over V: torch's max propagates NaN, as NumPy's (the CPU path: fewer
    operations, each paid cold right after a forward; see argmax)."""
    if _numpy_rows(logits):
        return torch.from_numpy(~np.isfinite(logits.numpy().max(-1)))
    return ~logits.amax(dim=-1).isfinite()


def probs_from_logits(logits: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """softmax(logits / T) in fp32. logits: [B, ..., V]; temperature: scalar or [B] (> 0 where used).

    Rows with temperature 0 are computed at T = 1 here; callers treat them as greedy.
    """
    x = logits.float()
    if isinstance(temperature, torch.Tensor):
        t = temperature.to(device=x.device, dtype=torch.float32)
        t = torch.where(is_greedy(t), torch.ones_like(t), t).reshape(t.shape + (1,) * (x.dim() - t.dim()))
        x = x / t
    elif not is_greedy(temperature):
        x = x / temperature
    return x.softmax(dim=-1)


def _draw_device(device, generator: torch.Generator | None) -> torch.device:
    """Where the draw happens: on the generator's device, so that a CPU generator seeds CUDA work too
    (the numbers then cross once to `device`: a few bytes a row, and the same stream on every device)."""
    return torch.device(device) if generator is None else generator.device


def uniform(shape, device, generator: torch.Generator | None) -> torch.Tensor:
    """i.i.d. U[0, 1) float32 on `device`, drawn from `generator` on whichever device it lives."""
    return torch.rand(shape, device=_draw_device(device, generator), generator=generator).to(device)


def exponential_noise(shape, device, generator: torch.Generator | None) -> torch.Tensor:
    """i.i.d. Exp(1) noise, clamped away from 0 so that prob / E never divides 0 by 0."""
    e = torch.empty(shape, device=_draw_device(device, generator), dtype=torch.float32)
    e = e.exponential_(generator=generator).to(device)
    return e.clamp_min_(torch.finfo(torch.float32).tiny)


def argmax(x: torch.Tensor) -> torch.Tensor:
    """x.argmax(dim=-1): the first index of each row's maximum (NaN counts as the maximum, as torch's).
    On the CPU through NumPy: torch 2.13's CPU argmax over a logits row is the slow one (measured on the
    2-core Xeon: [1, 2, 49152] float32 134 us against NumPy's 5 us), and greedy decoding pays it on the
    target's logits every step and on the draft's every draft step (bench/RESULTS.md, "The feature
    draft in the engine")."""
    if _numpy_rows(x):
        return torch.from_numpy(x.numpy().argmax(-1).astype("int64", copy=False))
    return x.argmax(dim=-1)


def _numpy_rows(x: torch.Tensor) -> bool:
    """Whether x's rows can go through NumPy (argmax, unusable_rows): a float CPU tensor outside autograd."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not x.requires_grad and x.dim() > 0


def sample_from_probs(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One categorical sample per row: probs [..., V] (need not be normalised; zeros are never chosen
    unless the row is all zero: then id 0) -> [...] int64. On the CPU `inverse_cdf`, else `race`."""
    return inverse_cdf(probs, generator) if _numpy_rows(probs) else race(probs, generator)


def race(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The exponential race argmax(p / E), E ~ Exp(1) a value: no host sync (unlike torch.multinomial,
    which checks its input on the host), V random numbers a row."""
    return argmax(probs / exponential_noise(probs.shape, probs.device, generator))


CDF_BLOCK = 512   # inverse_cdf's block: the search runs over block sums, then inside one block


def inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The first id whose cumulative mass (float64) exceeds u * total, u ~ U[0, 1) in float64: one
    random number a row (CPU tensors; NumPy). The cumulative mass is summed in blocks of CDF_BLOCK ids:
    the block sums (float64), their running total, the block where it passes u * total, and the running
    sum inside that block alone (so a zero-mass id is never the first to pass: the sum is flat there).
    Equal to the plain float64 cumsum's pick up to float rounding at a boundary; where rounding puts the
    target past the block's own running sum (~2^-50 of draws) the row takes the plain cumsum.
    Why: on the 2-core Xeon with SmolLM2 (V = 49152) the plain float64 cumsum over V and its compare took
    ~0.22 of the ~0.26 ms a sample took warm (~0.58 cold, right after a forward); block sums are one
    vectorised pass (bench/RESULTS.md, "An n-gram store"). Why not the race on the CPU: plain decoding at
    T = 1 spent ~1.2 ms a token sampling by it against a 4.4 ms forward ("A draft without a model")."""
    V = probs.shape[-1]
    p = probs.numpy().reshape(-1, V)                                                     # [R, V]
    u = torch.rand(p.shape[0], dtype=torch.float64, generator=generator).numpy()         # [R]
    ids = np.array([pick(row, ur) for row, ur in zip(p, u)], dtype=np.int64).reshape(-1)
    return torch.from_numpy(ids).view(probs.shape[:-1])


def pick(p: np.ndarray, u: float) -> int:
    """inverse_cdf's rule for one row p [V] (>= 0, any float dtype) and its u in [0, 1): the first id
    whose float64 cumulative mass, summed by blocks, exceeds u * total; 0 for an all-zero (or NaN) row.
    verify_sampled_cpu draws its recovered / bonus token by it too."""
    V = p.shape[0]
    starts = np.arange(0, V, CDF_BLOCK)
    cum = np.cumsum(np.add.reduceat(p, starts, dtype=np.float64))                        # [V / block]
    if not cum[-1] > 0:
        return 0
    t = u * cum[-1]
    b = min(int(np.searchsorted(cum, t, side="right")), starts.size - 1)
    lo = int(starts[b])
    inner = np.cumsum(p[lo:lo + CDF_BLOCK], dtype=np.float64)
    if b:
        inner += cum[b - 1]
    k = int(np.searchsorted(inner, t, side="right"))
    if k < inner.size:
        return lo + k
    # rounding put t at or past the block's own running sum: the plain cumsum's pick
    return min(int(np.searchsorted(np.cumsum(p, dtype=np.float64), t, side="right")), V - 1)


def sample_tokens(masked_logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next tokens from masked logits [..., V] -> [...] int64: argmax at temperature 0, else a sample of
    softmax(masked_logits / temperature)."""
    if is_greedy(temperature):
        return argmax(masked_logits)
    return sample_from_probs(probs_from_logits(masked_logits, temperature), generator)
