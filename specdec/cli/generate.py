"""`specdec generate`: a few prompts through the speculative decoder, checked against plain decoding."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import torch

from ..common.blocks import ProgressBlock
from ..common.config import add_arguments as _add_arguments, config_from_args, flag_name, option
from ..common.values import check_gamma
from ..data.prompts import load_prompts, uses_chat_template, with_chat_template
from ..engine import ngram
from ..engine.decoding import SpeculativeDecoder, autoregressive_generate
from ..engine.quant import quantization_of
from ..engine.params import SamplingParams, check_sampling
from ..models import load_pair
from ..models.options import EngineBlock
from ..engine.devices import resolve_device


@dataclass
class GenerateConfig(ProgressBlock, EngineBlock):
    """The models and engine block (models/options.py) and the decoding settings, whose defaults and
    checks are SamplingParams' (engine/params.py)."""
    # decoding
    gamma: int | str = option("4", "draft tokens per step, or auto (chosen each round from the cost model)",
                              group="decoding")
    max_new_tokens: int = option(SamplingParams.max_new_tokens, "new tokens per prompt", group="decoding")
    temperature: float = option(SamplingParams.temperature, "sampling temperature; 0 = greedy", group="decoding")
    top_k: int = option(SamplingParams.top_k, "top-k filter; 0 = off", group="decoding")
    top_p: float = option(SamplingParams.top_p, "top-p (nucleus) filter; 1 = off", group="decoding")
    seed: int = option(0, "sampling seed", group="decoding")
    # prompts and output
    prompt: tuple[str, ...] | None = option(None, "a prompt (default: the first 2 of --prompts)", group="prompts",
                                            repeat=True)
    prompts: str | None = option(None, "the built-in set (builtin:code, builtin:chat) or JSONL file the default "
                                 "prompts come from (default: the --pair's, else builtin:code)", group="prompts")
    json: bool = option(False, "print one JSON line instead of text", group="output")

    def __post_init__(self):
        super().__post_init__()
        self.gamma = check_gamma(self.gamma, "--gamma")
        (self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed) = check_sampling(
            self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed, flag_name)
        if self.prompt is not None and not all(self.prompt):
            raise ValueError("--prompt must not be empty")
        if self.prompts is not None and not self.prompt:
            load_prompts(self.prompts, None, 1, self.chat_template)   # a missing file or bad line fails here

    def sampling(self, eos_token_id=None) -> SamplingParams:
        """The decoding settings as the decoders take them."""
        return SamplingParams(self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed, eos_token_id)


def generate(cfg: GenerateConfig) -> dict:
    """Plain and speculative decoding of the same prompts; returns the summary (and prints status)."""
    def status(text):
        if cfg.progress:
            print(f"[generate] {text}", file=sys.stderr, flush=True)

    device = resolve_device(cfg.device)   # every other setting was checked when cfg was built
    dtype, (tq, dq) = cfg.dtype_on(device), cfg.quantization_on(device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if not cfg.progress:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    status("loading the models")
    target, draft, tok, vocab = load_pair(cfg.target, cfg.draft, dtype, str(device), quantize=tq, draft_quantize=dq)
    cfg.apply_kv_cache(target, draft)
    if cfg.prompt:
        records = with_chat_template([{"prompt": t} for t in cfg.prompt], tok, cfg.chat_template)
    else:
        records = load_prompts(cfg.prompts, tok, 1, cfg.chat_template)[0][:2]
    prompts = [p["prompt"] for p in records]
    chat = uses_chat_template(tok, cfg.chat_template)   # the template writes the special tokens: no second BOS
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat)
    p = cfg.sampling(tok.eos_token_id)
    kw = dict(max_new_tokens=p.max_new_tokens, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, seed=p.seed,
              eos_token_id=p.eos_token_id)
    decoder = SpeculativeDecoder(target, draft, gamma=cfg.gamma, vocab_size=vocab, impl=cfg.impl)
    # One-off setup out of both timings: the first forward builds a quantized model's kernel weights
    # (seconds on SmolLM2: whichever decode ran first read ~3 tok/s), and auto's first call its costs.
    status("warming up")
    one = (enc.input_ids[:1], enc.attention_mask[:1])
    autoregressive_generate(target, *one, vocab_size=vocab, impl=cfg.impl, max_new_tokens=2)
    decoder.generate(*one, max_new_tokens=2)
    status(f"plain decoding of {len(prompts)} prompts")
    ar = autoregressive_generate(target, enc.input_ids, enc.attention_mask, vocab_size=vocab, impl=cfg.impl, **kw)
    status(f"speculative decoding, gamma {cfg.gamma}")
    sd = decoder.generate(enc.input_ids, enc.attention_mask, **kw)
    s = sd.stats
    summary = {"gamma": cfg.gamma, "temperature": p.temperature, "new_tokens": s.new_tokens,
               "quantize": quantize_text(quantization_of(target),
                                         ngram.NAME if ngram.is_lookup(draft) else quantization_of(draft)),
               "mean_gamma": round(s.mean_gamma, 3),
               "acceptance_rate": round(s.acceptance_rate, 4), "alpha": round(s.alpha, 4),
               "mean_accepted_length": round(s.mean_accepted_length, 3),
               "per_position_acceptance": [round(x, 3) for x in s.per_position_acceptance],
               "target_calls_sd": s.target_calls, "target_calls_ar": ar.stats.target_calls,
               # each decoder's own clock (prompt included), after the warm-up
               "sd_tokens_per_s": round(s.tokens_per_s, 2),
               "ar_tokens_per_s": round(ar.stats.tokens_per_s, 2),
               "outputs_match_ar": sd.new_tokens == ar.new_tokens if p.greedy else None}
    lengths = enc.attention_mask.sum(1).tolist()   # each prompt's tokens, as decoded (no padding)
    texts = [(prompt, n, tok.decode(out)) for prompt, n, out in zip(prompts, lengths, sd.new_tokens)]
    return {"summary": summary, "texts": texts}


def quantize_text(target: str, draft: str) -> str:
    return target if target == draft else f"{target} target, {draft} draft"


def add_arguments(parser) -> None:
    _add_arguments(parser, GenerateConfig)


def run(args) -> int:
    cfg = config_from_args(args, GenerateConfig)
    result = generate(cfg)
    if cfg.json:
        print(json.dumps(result["summary"]))
        return 0
    for i, (prompt, n_tokens, text) in enumerate(result["texts"]):
        print(f"--- prompt {i} ({n_tokens} tokens) ---")
        print(prompt[-300:] + "<<<" + text + ">>>")
    print("--- stats ---")
    for k, v in result["summary"].items():
        print(f"{k:>26}: {v}")
    return 0
