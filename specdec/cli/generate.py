"""`specdec generate`: a few prompts through the speculative decoder, checked against plain decoding."""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass

import torch

from ..common.config import add_arguments as _add_arguments, config_from_args, option
from ..data.corpus import builtin_prompts
from ..engine.decoding import AUTO, SpeculativeDecoder, autoregressive_generate
from ..engine.params import SamplingParams
from ..models import load_pair, resolve_dtype
from ..engine.quant import QUANTIZE
from ..engine.runner import IMPLS
from ..engine.devices import resolve_device


@dataclass
class GenerateConfig:
    # models
    target: str | None = option(None, "target model path or hub id (default: the bundled pair)", group="models")
    draft: str | None = option(None, "draft model path or hub id (default: the bundled pair)", group="models")
    device: str = option("auto", "cpu | cuda | cuda:N | auto (cuda when one is visible)", group="models")
    dtype: str | None = option(None, "float32 | bfloat16 | float16 (default: bfloat16 on CUDA, float32 on CPU)",
                               group="models")
    threads: int | None = option(None, "torch CPU threads (default: torch's own; 1 is fastest on a busy shared CPU)",
                                 group="models")
    quantize: str = option("none", "int8: row-independent int8 projections for both models (CPU)", group="models",
                           choices=QUANTIZE)
    impl: str = option("auto", "forward: lean (Llama-family), hf (any model), auto", group="models", choices=IMPLS)
    # decoding
    gamma: str = option("4", "draft tokens per step, or auto (chosen each round from the cost model)",
                        group="decoding")
    max_new_tokens: int = option(64, "new tokens per prompt", group="decoding")
    temperature: float = option(0.0, "sampling temperature; 0 = greedy", group="decoding")
    top_k: int = option(0, "top-k filter; 0 = off", group="decoding")
    top_p: float = option(1.0, "top-p (nucleus) filter; 1 = off", group="decoding")
    seed: int = option(0, "sampling seed", group="decoding")
    # prompts and output
    prompt: tuple[str, ...] | None = option(None, "a prompt (default: 2 built-in prompts)", group="prompts",
                                            repeat=True)
    json: bool = option(False, "print one JSON line instead of text", group="output")
    no_progress: bool = option(False, "no status lines on stderr (and no model-loading bars)", group="output")

    def __post_init__(self):
        self.gamma = str(self.gamma).strip().lower()
        if self.gamma != AUTO and not (self.gamma.isdigit() and int(self.gamma) >= 1):
            raise ValueError(f"--gamma must be an integer >= 1 or auto (draft tokens per step), got {self.gamma!r}")
        if self.gamma != AUTO:
            self.gamma = int(self.gamma)
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"--temperature must be finite and >= 0 (0 = greedy), got {self.temperature}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.prompt is not None and not all(self.prompt):
            raise ValueError("--prompt must not be empty")

    def sampling(self, eos_token_id=None) -> SamplingParams:
        """The decoding settings (SamplingParams validates the rest: max_new_tokens, top_k, top_p)."""
        return SamplingParams(self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed, eos_token_id)


def generate(cfg: GenerateConfig) -> dict:
    """Plain and speculative decoding of the same prompts; returns the summary (and prints status)."""
    def status(text):
        if not cfg.no_progress:
            print(f"[generate] {text}", file=sys.stderr, flush=True)

    cfg.sampling()  # every setting checked before a model loads
    device = resolve_device(cfg.device)
    dtype = cfg.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    resolve_dtype(dtype)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.no_progress:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    status("loading the models")
    if cfg.quantize == "int8" and device.type != "cpu":
        raise ValueError("--quantize int8 is a CPU path; on CUDA use --dtype bfloat16")
    target, draft, tok, vocab = load_pair(cfg.target, cfg.draft, dtype, str(device), quantize=cfg.quantize)
    prompts = list(cfg.prompt or [p["prompt"] for p in builtin_prompts(max_per_category=1)][:2])
    enc = tok(prompts, return_tensors="pt", padding=True)
    p = cfg.sampling(tok.eos_token_id)
    kw = dict(max_new_tokens=p.max_new_tokens, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, seed=p.seed,
              eos_token_id=p.eos_token_id)
    status(f"plain decoding of {len(prompts)} prompts")
    t0 = time.perf_counter()
    ar = autoregressive_generate(target, enc.input_ids, enc.attention_mask, vocab_size=vocab, impl=cfg.impl, **kw)
    t_ar = time.perf_counter() - t0
    status(f"speculative decoding, gamma {cfg.gamma}")
    t0 = time.perf_counter()
    decoder = SpeculativeDecoder(target, draft, gamma=cfg.gamma, vocab_size=vocab, impl=cfg.impl)
    sd = decoder.generate(enc.input_ids, enc.attention_mask, **kw)
    t_sd = time.perf_counter() - t0
    s = sd.stats
    summary = {"gamma": cfg.gamma, "temperature": p.temperature, "new_tokens": s.new_tokens,
               "quantize": cfg.quantize, "mean_gamma": round(s.mean_gamma, 3),
               "acceptance_rate": round(s.acceptance_rate, 4), "alpha": round(s.alpha, 4),
               "mean_accepted_length": round(s.mean_accepted_length, 3),
               "per_position_acceptance": [round(x, 3) for x in s.per_position_acceptance],
               "target_calls_sd": s.target_calls, "target_calls_ar": ar.stats.target_calls,
               # the decoder's own clock: a first gamma=auto call's one-off timing of its rounds is not decoding
               "sd_tokens_per_s": round(s.tokens_per_s, 2),
               "ar_tokens_per_s": round(ar.stats.new_tokens / t_ar, 2),
               "outputs_match_ar": sd.new_tokens == ar.new_tokens if p.temperature == 0 else None}
    texts = [(prompt, len(tok(prompt).input_ids), tok.decode(out)) for prompt, out in zip(prompts, sd.new_tokens)]
    return {"summary": summary, "texts": texts}


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
