"""What specdec is measured against, and the step costs its prediction needs.

hf_assisted_generate   transformers' assisted generation (`target.generate(assistant_model=draft)`)
hf_assistant_defaults  the assistant settings transformers uses when none are set
measure_costs          c = draft step / target step and v = target (gamma+1)-token step / target step,
                       timed on the models' own cached forwards
Plain decoding, the denominator of every speedup, is decoding.autoregressive_generate.
"""
from __future__ import annotations

import copy
import time

import torch

from .decoding import cache_kwarg
from .results import median
from .util import input_device


def synchronize(device) -> None:
    """Wait for queued kernels before reading the clock; every GPU when the target is sharded."""
    if torch.device(device).type == "cuda":
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


class _Counter:
    def __init__(self):
        self.n = 0

    def __call__(self, *a, **k):
        self.n += 1


def hf_assisted_generate(target, draft, input_ids, attention_mask, gamma, temperature, max_new_tokens,
                         eos_token_id, pad_token_id, seed):
    """transformers' assisted generation at batch size 1. gamma None = the assistant's own defaults;
    else a constant schedule of exactly gamma drafts with the confidence early stop disabled.
    Returns (new tokens, target forward calls)."""
    from transformers.utils import logging as hf_logging

    saved = draft.generation_config
    draft.generation_config = copy.deepcopy(saved)  # HF keeps schedule state there: isolate each run
    counter = _Counter()
    handle = target.register_forward_hook(counter)
    try:
        if gamma is not None:
            gc = draft.generation_config
            gc.num_assistant_tokens = int(gamma)
            gc.num_assistant_tokens_schedule = "constant"
            gc.assistant_confidence_threshold = 0.0  # 0 disables ConfidenceCriteria (and its ROC tuning)
        kw = dict(max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=eos_token_id,
                  pad_token_id=pad_token_id, assistant_model=draft)
        if temperature > 0:
            kw.update(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
        else:
            kw.update(do_sample=False)
        torch.manual_seed(seed)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the assistant's inner generate warns about max_length every round
        try:
            out = target.generate(input_ids=input_ids, attention_mask=attention_mask, **kw)
        finally:
            hf_logging.set_verbosity(verbosity)
    finally:
        handle.remove()
        draft.generation_config = saved
    return out[0, input_ids.shape[1]:].tolist(), counter.n


def hf_assistant_defaults(draft) -> dict:
    """The assistant settings transformers uses when none are set (recorded with hf_assisted_default)."""
    gc = copy.deepcopy(draft.generation_config)
    getter = getattr(gc, "_get_default_generation_params", None)
    if getter is not None:  # transformers >= 5 fills unset fields from global defaults at generate time
        try:
            gc.update(**getter(), defaults_only=True)
        except Exception:  # noqa: BLE001 - informational only
            pass
    return {k: getattr(gc, k, None) for k in ("num_assistant_tokens", "num_assistant_tokens_schedule",
                                               "assistant_confidence_threshold")}


@torch.no_grad()
def measure_costs(target, draft, prompt_ids, gammas, batch_size: int, iters: int = 15) -> dict:
    """Median seconds of one cached forward over S new tokens after a prompt-length prefill: target
    S=1 and S=gamma+1, draft S=1. The steps are interleaved round-robin (one of each per round) so a
    load change on a shared machine hits numerator and denominator alike. Returns seconds, c and v."""
    from transformers import DynamicCache

    def prefilled(model):
        ids = prompt_ids.to(input_device(model)).repeat(batch_size, 1)             # [B, P]
        cache, kw = DynamicCache(), cache_kwarg(model)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1, **{kw: cache})
        return ids, cache, kw

    def step(model, state, S):
        ids, cache, kw = state
        P = ids.shape[1]
        new = ids[:, -S:] if S <= P else ids[:, :1].repeat(1, S)                # [B, S]
        mask = torch.ones((batch_size, P + S), dtype=torch.long, device=ids.device)
        synchronize(ids.device)
        t0 = time.perf_counter()
        model(input_ids=new, attention_mask=mask, use_cache=True, **{kw: cache})
        synchronize(ids.device)
        dt = time.perf_counter() - t0
        cache.crop(-S)  # negative = drop the last S (positive values are refused in transformers 5.24)
        return dt

    ts, ds = prefilled(target), prefilled(draft)
    jobs = [("t1", target, ts, 1), ("d1", draft, ds, 1)] + [(int(g), target, ts, int(g) + 1) for g in gammas]
    times: dict = {name: [] for name, *_ in jobs}
    for i in range(iters + 2):                                                  # 2 untimed warmup rounds
        for name, model, state, S in jobs:
            dt = step(model, state, S)
            if i >= 2:
                times[name].append(dt)
    t1, d1 = median(times["t1"]), median(times["d1"])
    tv = {int(g): median(times[int(g)]) for g in gammas}
    return {"batch_size": batch_size, "target_step_s": t1, "draft_step_s": d1, "target_verify_s": tv,
            "c": d1 / t1, "v": {g: t / t1 for g, t in tv.items()}}


def costs_from_json(saved: dict) -> dict:
    """meta["costs"] as read back from results.json (JSON keys are strings) -> batch size -> costs."""
    return {int(bs): {**c, "v": {int(g): v for g, v in c["v"].items()}} for bs, c in saved.items()}
