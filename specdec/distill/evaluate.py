"""How well the draft matches the target on held-out prompts, during and after distillation.

Two measures, at each of the evaluation temperatures (--eval-temperatures; default the deployment one):
  estimated acceptance   mean over draft-generated tokens of sum_x min(p, q) (argmax agreement at
                         T = 0), with the divergence being trained on the same tokens
  mean acceptance length a real speculative decoding run (1 + accepted / draft steps, vLLM's convention)
Both use their own fixed seeds: an evaluation never touches the training RNG streams, so evaluating
more or less often does not change the trained weights.
"""
from __future__ import annotations

import torch

from ..engine.decoding import SpeculativeDecoder, autoregressive_generate
from ..engine.stats import DecodeStats
from ..engine.devices import input_device
from .data import assemble, continuation_logits, left_pad, stream_seed
from .losses import acceptance, divergence


@torch.no_grad()
def estimate_acceptance(target, draft, prompts: list, cfg, vocab_size: int, pad_id: int, temperature: float,
                        batch_size: int = 8) -> dict:
    """est_acceptance, eval_divergence (per token) and eval_tokens on the draft's own continuations of
    `prompts` (token id lists) at `temperature`. cfg: a DistillConfig (divergence, beta, eval_new_tokens,
    seed)."""
    device = input_device(draft)
    acc_sum, div_sum, n = 0.0, 0.0, 0
    for a in range(0, len(prompts), batch_size):
        chunk = prompts[a:a + batch_size]
        ids, mask = left_pad(chunk, pad_id)
        conts = autoregressive_generate(draft, ids.to(device), mask.to(device), max_new_tokens=cfg.eval_new_tokens,
                                        temperature=temperature, seed=stream_seed(cfg.seed, "eval", a),
                                        vocab_size=vocab_size).new_tokens
        b = assemble(chunk, conts, cfg.eval_new_tokens, pad_id, "student").to(device)
        t = continuation_logits(target, b, vocab_size)                        # [N, V]
        s = continuation_logits(draft, b, vocab_size)                         # [N, V]
        acc_sum += float(acceptance(t, s, temperature).sum())
        # where the draft has no mass (a head covering some ids), the teacher is renormalised to its support
        t = t.masked_fill(torch.isneginf(s), float("-inf"))
        div_sum += float(divergence(t, s, cfg.divergence, cfg.beta, temperature))
        n += t.shape[0]
    return {"est_acceptance": acc_sum / max(n, 1), "eval_divergence": div_sum / max(n, 1), "eval_tokens": n}


@torch.no_grad()
def speculative_acceptance(target, draft, prompts: list, cfg, vocab_size: int, pad_id: int, temperature: float,
                           batch_size: int = 8) -> dict:
    """mean_accepted_length (and alpha) of speculative decoding at gamma = cfg.eval_gamma over `prompts`."""
    device = input_device(draft)
    dec = SpeculativeDecoder(target, draft, gamma=cfg.eval_gamma, vocab_size=vocab_size)
    stats = []
    for a in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[a:a + batch_size], pad_id)
        stats.append(dec.generate(ids.to(device), mask.to(device), max_new_tokens=cfg.eval_new_tokens,
                                  temperature=temperature, seed=stream_seed(cfg.seed, "spec", a)).stats)
    merged = DecodeStats.merged(stats)
    return {"mean_accepted_length": merged.mean_accepted_length, "alpha": merged.alpha, "spec_gamma": cfg.eval_gamma}


def evaluate(target, draft, prompts: list, cfg, vocab_size: int, pad_id: int, spec: bool) -> dict:
    """The estimate, and with spec=True the real run too, at every cfg.eval_temperatures: keys suffixed
    _T<temperature> (est_acceptance_T0, mean_accepted_length_T1, ...), the first temperature's also
    unsuffixed. The draft is put back in its training mode."""
    was_training = draft.training
    draft.eval()
    row = {}
    try:
        for i, T in enumerate(cfg.eval_temperatures):
            part = estimate_acceptance(target, draft, prompts, cfg, vocab_size, pad_id, T)
            if spec:
                part.update(speculative_acceptance(target, draft, prompts, cfg, vocab_size, pad_id, T))
            if i == 0:
                row.update(part)
            row.update({f"{k}_T{T:g}": v for k, v in part.items() if k not in ("spec_gamma", "eval_tokens")})
    finally:
        draft.train(was_training)
    return row
