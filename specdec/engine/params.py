"""What a decode takes from its caller, checked before any forward: the sampling settings
(`SamplingParams`, one source of truth for their defaults) and the prompt batch (`prepare_inputs`,
`check_context` against the models' positions)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0   # 0 = greedy
    top_k: int = 0             # 0 = off
    top_p: float = 1.0         # 1 = off
    seed: int | None = None
    eos_token_id: int | list | None = None  # None = no stop token

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)) \
                or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p}")

    @property
    def eos_ids(self) -> set:
        if self.eos_token_id is None:
            return set()
        if isinstance(self.eos_token_id, int):
            return {self.eos_token_id}
        return set(int(e) for e in self.eos_token_id)


def max_positions(model) -> int | None:
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def prepare_inputs(input_ids, attention_mask, device):
    """Validate a (left-padded) batch. Returns ids [B, P], mask [B, P] long, lengths (host list)."""
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError("input_ids must be a [B, P] tensor of token ids (use the tokenizer with padding_side='left')")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids must be [B, P] with B >= 1, got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("empty prompt: every row needs at least one token (e.g. the BOS token)")
    input_ids = input_ids.to(device=device, dtype=torch.long)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device=device, dtype=torch.long)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}")
    lengths = attention_mask.sum(1).tolist()
    if min(lengths) == 0:
        raise ValueError(f"empty prompt in row {lengths.index(0)}: every row needs at least one token")
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("prompts must be left-padded (the last column real in every row): set "
                         "tokenizer.padding_side = 'left'")
    return input_ids, attention_mask, lengths


def check_context(model, name, lengths, max_new_tokens):
    limit = max_positions(model)
    need = max(lengths) + max_new_tokens
    if limit is not None and need > limit:
        raise ValueError(f"prompt ({max(lengths)} tokens) + max_new_tokens ({max_new_tokens}) = {need} exceeds "
                         f"the {name}'s context of {limit} positions; shorten the prompt or lower max_new_tokens")
