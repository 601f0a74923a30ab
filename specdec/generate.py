"""`specdec generate`: speculative generation on a few prompts, checked against plain decoding."""
from __future__ import annotations

import json
import time

import torch


def add_arguments(p):
    from .decoding import SamplingParams
    d = SamplingParams()
    # models
    p.add_argument("--target", default=None, help="target model path or hub id (default: the bundled pair)")
    p.add_argument("--draft", default=None, help="draft model path or hub id (default: the bundled pair)")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    p.add_argument("--device", default="cpu")
    # decoding
    p.add_argument("--gamma", type=int, default=4, help="draft tokens per step")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--seed", type=int, default=0)
    # prompts
    p.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable); default: 2 built-in prompts")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of text")


def run(args) -> int:
    from .decoding import SamplingParams, SpeculativeDecoder, autoregressive_generate
    from .models import load_pair

    params = SamplingParams(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    if args.gamma < 1:
        raise ValueError(f"--gamma must be >= 1, got {args.gamma}")
    target, draft, tok, vocab = load_pair(args.target, args.draft, args.dtype, args.device)
    prompts = args.prompt
    if not prompts:
        from .corpus import builtin_prompts
        prompts = [p["prompt"] for p in builtin_prompts(max_per_category=1)][:2]
    enc = tok(prompts, return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_k=params.top_k,
              top_p=params.top_p, seed=params.seed, eos_token_id=tok.eos_token_id)
    dec = SpeculativeDecoder(target, draft, gamma=args.gamma, vocab_size=vocab)
    t0 = time.perf_counter()
    ar = autoregressive_generate(target, enc.input_ids, enc.attention_mask, vocab_size=vocab, **kw)
    t_ar = time.perf_counter() - t0
    t0 = time.perf_counter()
    sd = dec.generate(enc.input_ids, enc.attention_mask, **kw)
    t_sd = time.perf_counter() - t0
    s = sd.stats
    summary = {"gamma": args.gamma, "temperature": params.temperature, "new_tokens": s.new_tokens,
               "acceptance_rate": round(s.acceptance_rate, 4), "mean_accepted_length": round(s.mean_accepted_length, 3),
               "per_position_acceptance": [round(x, 3) for x in s.per_position_acceptance],
               "target_calls_sd": s.target_calls, "target_calls_ar": ar.stats.target_calls,
               "sd_tokens_per_s": round(s.new_tokens / t_sd, 2), "ar_tokens_per_s": round(ar.stats.new_tokens / t_ar, 2),
               "outputs_match_ar": sd.new_tokens == ar.new_tokens if params.temperature == 0 else None}
    if args.json:
        print(json.dumps(summary))
        return 0
    for i, (p, out) in enumerate(zip(prompts, sd.new_tokens)):
        print(f"--- prompt {i} ({len(tok(p).input_ids)} tokens) ---")
        print(p[-300:] + "<<<" + tok.decode(out) + ">>>")
    print("--- stats ---")
    for k, v in summary.items():
        print(f"{k:>26}: {v}")
    return 0
