"""What a decode takes from its caller, checked before any forward: the sampling settings
(`SamplingParams`, one source of truth for their defaults) and the prompt batch (`prepare_inputs`,
`check_context` against the models' positions)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..common.values import check_int, check_number, check_seed, check_temperature, check_token_ids, is_greedy


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0   # 0 = greedy (common/values.py: the rule, and the smallest sampling temperature)
    top_k: int = 0             # 0 = off
    top_p: float = 1.0         # 1 = off
    seed: int | None = None
    eos_token_id: int | list | None = None  # None = no stop token

    def __post_init__(self):
        (self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed) = check_sampling(
            self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed)
        self.eos_ids = set(check_token_ids(self.eos_token_id, "eos_token_id"))

    @property
    def greedy(self) -> bool:
        return is_greedy(self.temperature)


def check_sampling(max_new_tokens, temperature, top_k, top_p, seed, name=lambda field: field) -> tuple:
    """The decoding settings, checked and normalised (ints, floats); name(field) is how the caller knows
    each one ("top_p" in the API, "--top-p" on the command line)."""
    return (check_int(max_new_tokens, name("max_new_tokens"), 1),
            check_temperature(temperature, name("temperature")),
            check_int(top_k, name("top_k"), 0, what=" (0 = off)"),
            check_number(top_p, name("top_p"), 0.0, 1.0, low_open=True, what=" (1 = off)"),
            check_seed(seed, name("seed")))


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


def model_name(model) -> str:
    """How a message names a model: its path or hub id, else its class."""
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)


def check_logits_flag(flag: int, models: dict, where: str) -> None:
    """Raise if a host-read flag (a sum of the keys of `models`, {bit: (role, model)}) says a model's
    logits had a row no token can be chosen from (sampling.unusable_rows); where: e.g. "decode step 3"."""
    bad = [(role, model_name(m)) for bit, (role, m) in models.items() if int(flag) & bit]
    if bad:
        raise ValueError(f"{' and '.join('the ' + r for r, _ in bad)} produced NaN logits, +inf or a row of all -inf "
                         f"({', '.join(n for _, n in bad)}, {where}): no token can be chosen from such a "
                         "row; the model or its dtype is broken (float16 overflow? try bfloat16 or float32)")
