"""What specdec is measured against: Hugging Face's plain and assisted generation.

hf_generate            transformers' plain `target.generate()` (no assistant)
hf_assisted_generate   transformers' assisted generation (`target.generate(assistant_model=draft)`) under
                       one of its schedules (HF_SCHEDULES)
hf_prompt_lookup_generate  transformers' n-gram lookup (prompt_lookup_num_tokens), beside the n-gram draft
hf_assistant_defaults  the assistant settings transformers uses when none are set
Plain decoding, the denominator of every speedup, is decoding.autoregressive_generate.
"""
from __future__ import annotations

import copy

import torch

from ..common.values import is_greedy
from ..engine import ngram


# The schedules of transformers' assisted generation that specdec is compared with, by result method:
#   constant   exactly gamma drafts every round, confidence early stop off (hf_assisted)
#   default    transformers' own assistant settings (5.x: 20 drafts, constant, stop when the draft's
#              probability of its token falls below 0.4 -- the confidence-threshold schedule)
#   heuristic  its adaptive schedule (transformers 4.x's default): start at 5 drafts, +2 after a round
#              that accepted every draft, -1 otherwise; confidence stop off. Each generate starts afresh
#              (the schedule state lives in the draft's generation_config, copied per run).
HF_SCHEDULES = {"hf_assisted": "constant", "hf_assisted_default": "default", "hf_assisted_heuristic": "heuristic"}
HEURISTIC_START = 5


class _Counter:
    def __init__(self):
        self.n = 0

    def __call__(self, *a, **k):
        self.n += 1


def _counted_generate(target, input_ids, attention_mask, temperature, max_new_tokens, eos_token_id, pad_token_id,
                      seed, **extra):
    """`target.generate()` with what every HF row shares: sampling reduced to the temperature (top-k and
    top-p off), no minimum length, the seed, transformers' warnings silenced (an assistant's inner generate
    warns about max_length every round), and the target's forwards counted. extra: further generate()
    arguments (an assistant, prompt lookup). Returns (output ids [B, P + new], target forwards)."""
    from transformers.utils import logging as hf_logging

    counter = _Counter()
    handle = target.register_forward_hook(counter)
    kw = dict(max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=eos_token_id,
              pad_token_id=pad_token_id, **extra)
    kw.update(dict(do_sample=False) if is_greedy(temperature) else
              dict(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0))
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        out = target.generate(input_ids=input_ids, attention_mask=attention_mask, **kw)
    finally:
        hf_logging.set_verbosity(verbosity)
        handle.remove()
    return out, counter.n


def hf_generate(target, input_ids, attention_mask, temperature, max_new_tokens, eos_token_id, pad_token_id,
                seed) -> tuple[list, int]:
    """transformers' plain `target.generate()` (no assistant) on a left-padded batch: what plain decoding
    (`ar`, specdec's loop on the same model) is compared with. Returns (new tokens per row, forwards)."""
    out, calls = _counted_generate(target, input_ids, attention_mask, temperature, max_new_tokens, eos_token_id,
                                   pad_token_id, seed)
    P = input_ids.shape[1]
    rows = []
    for row in out[:, P:].tolist():   # generate pads finished rows with pad_token_id after their EOS
        if eos_token_id is not None and eos_token_id in row:
            row = row[:row.index(eos_token_id) + 1]
        rows.append(row)
    return rows, calls


def hf_assisted_generate(target, draft, input_ids, attention_mask, gamma, temperature, max_new_tokens,
                         eos_token_id, pad_token_id, seed, schedule: str = "constant"):
    """transformers' assisted generation at batch size 1 under `schedule` (see HF_SCHEDULES): constant
    (gamma drafts), default (gamma ignored) or heuristic (gamma: its start, default HEURISTIC_START).
    Returns (new tokens, target forward calls)."""
    if schedule not in HF_SCHEDULES.values():
        raise ValueError(f"schedule must be one of {sorted(set(HF_SCHEDULES.values()))}, got {schedule!r}")
    saved = draft.generation_config
    draft.generation_config = copy.deepcopy(saved)  # HF keeps schedule state there: isolate each run
    try:
        gc = draft.generation_config
        if schedule == "constant":
            gc.num_assistant_tokens = int(gamma)
        elif schedule == "heuristic":
            gc.num_assistant_tokens = int(gamma) if gamma is not None else HEURISTIC_START
        if schedule != "default":
            gc.num_assistant_tokens_schedule = schedule
            gc.assistant_confidence_threshold = 0.0  # 0 disables ConfidenceCriteria (and its ROC tuning)
        out, calls = _counted_generate(target, input_ids, attention_mask, temperature, max_new_tokens, eos_token_id,
                                       pad_token_id, seed, assistant_model=draft)
    finally:
        draft.generation_config = saved
    return out[0, input_ids.shape[1]:].tolist(), calls


def hf_prompt_lookup_generate(target, input_ids, attention_mask, gamma, temperature, max_new_tokens, eos_token_id,
                              pad_token_id, seed):
    """transformers' own n-gram lookup (`generate(prompt_lookup_num_tokens=gamma)`, its other settings
    left at their defaults: hf_assistant_defaults), the HF row beside specdec's n-gram draft, batch size 1.
    Returns (new tokens, target forward calls)."""
    out, calls = _counted_generate(target, input_ids, attention_mask, temperature, max_new_tokens, eos_token_id,
                                   pad_token_id, seed, prompt_lookup_num_tokens=int(gamma))
    return out[0, input_ids.shape[1]:].tolist(), calls


def hf_assistant_defaults(draft) -> dict:
    """The assistant settings transformers uses when none are set (recorded with hf_assisted_default);
    for the n-gram draft, its prompt lookup's (hf_prompt_lookup_generate)."""
    if ngram.is_lookup(draft):
        from transformers import GenerationConfig
        return {"prompt_lookup": {k: getattr(GenerationConfig(), k, None) for k in ("max_matching_ngram_size",)}}
    gc = copy.deepcopy(draft.generation_config)
    getter = getattr(gc, "_get_default_generation_params", None)
    if getter is not None:  # transformers >= 5 fills unset fields from global defaults at generate time
        try:
            gc.update(**getter(), defaults_only=True)
        except Exception:  # noqa: BLE001 - informational only
            pass
    return {k: getattr(gc, k, None) for k in ("num_assistant_tokens", "num_assistant_tokens_schedule",
                                               "assistant_confidence_threshold")}
