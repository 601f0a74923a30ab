"""How well the draft matches the target on held-out prompts, during and after distillation.

Two measures, at the deployment temperature:
  estimated acceptance   mean over draft-generated tokens of sum_x min(p, q) (argmax agreement at
                         T = 0), with the divergence being trained on the same tokens
  mean acceptance length a real speculative decoding run (1 + accepted / draft steps, vLLM's convention)
Both use their own fixed seeds: an evaluation never touches the training RNG streams, so evaluating
more or less often does not change the trained weights.
"""
from __future__ import annotations

import torch

from ..decoding import SpeculativeDecoder, autoregressive_generate
from ..metrics import DecodeStats
from ..util import input_device
from .data import assemble, continuation_logits, left_pad, stream_seed
from .losses import acceptance, divergence


@torch.no_grad()
def estimate_acceptance(target, draft, prompts: list, cfg, vocab_size: int, pad_id: int, batch_size: int = 8) -> dict:
    """est_acceptance, eval_divergence (per token) and eval_tokens on the draft's own continuations of
    `prompts` (token id lists). cfg: a DistillConfig (temperature, divergence, beta, new_tokens, seed)."""
    device = input_device(draft)
    acc_sum, div_sum, n = 0.0, 0.0, 0
    for a in range(0, len(prompts), batch_size):
        chunk = prompts[a:a + batch_size]
        ids, mask = left_pad(chunk, pad_id)
        conts = autoregressive_generate(draft, ids.to(device), mask.to(device), max_new_tokens=cfg.new_tokens,
                                        temperature=cfg.temperature, seed=stream_seed(cfg.seed, "eval", a),
                                        vocab_size=vocab_size).new_tokens
        b = assemble(chunk, conts, cfg.new_tokens, pad_id, "student").to(device)
        t = continuation_logits(target, b, vocab_size)                        # [N, V]
        s = continuation_logits(draft, b, vocab_size)                         # [N, V]
        acc_sum += float(acceptance(t, s, cfg.temperature).sum())
        div_sum += float(divergence(t, s, cfg.divergence, cfg.beta, cfg.temperature))
        n += t.shape[0]
    return {"est_acceptance": acc_sum / max(n, 1), "eval_divergence": div_sum / max(n, 1), "eval_tokens": n}


@torch.no_grad()
def speculative_acceptance(target, draft, prompts: list, cfg, vocab_size: int, pad_id: int,
                           batch_size: int = 8) -> dict:
    """mean_accepted_length of speculative decoding at gamma = cfg.eval_gamma over `prompts`."""
    device = input_device(draft)
    dec = SpeculativeDecoder(target, draft, gamma=cfg.eval_gamma, vocab_size=vocab_size)
    stats = []
    for a in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[a:a + batch_size], pad_id)
        stats.append(dec.generate(ids.to(device), mask.to(device), max_new_tokens=cfg.new_tokens * 2,
                                  temperature=cfg.temperature, seed=stream_seed(cfg.seed, "spec", a)).stats)
    return {"mean_accepted_length": DecodeStats.merged(stats).mean_accepted_length, "spec_gamma": cfg.eval_gamma}


def evaluate(target, draft, prompts: list, cfg, vocab_size: int, pad_id: int, spec: bool) -> dict:
    """The estimate, and with spec=True the real run too; the draft is put back in its training mode."""
    was_training = draft.training
    draft.eval()
    try:
        row = estimate_acceptance(target, draft, prompts, cfg, vocab_size, pad_id)
        if spec:
            row.update(speculative_acceptance(target, draft, prompts, cfg, vocab_size, pad_id))
    finally:
        draft.train(was_training)
    return row
