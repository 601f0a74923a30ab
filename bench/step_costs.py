"""Step costs of the target and the draft on every decode path, beside what the hardware allows.

    python bench/step_costs.py --threads 1 --out bench/results/step_costs_cpu.json       (CPU)
    python bench/step_costs.py --device cuda --shapes real --out step_costs_cuda.json    (GPU)

For each model, path and precision: the median time of one cached forward over 1 and gamma+1 new tokens
after a prompt-length prefill (the cache cropped back after each, so every step sees the same context),
all timed interleaved in one run. Paths:
  hf-dynamic   transformers' forward with its DynamicCache (concatenates the whole cache every step):
               what specdec ran before the in-place cache
  hf           transformers' forward over specdec's in-place KVCache (the path for any model)
  lean         specdec's lean forward over the same cache (Llama-family models)
  numpy        the same lean forward in NumPy (float32 on the CPU; what small drafts run there)
  lean+graphs  the lean forward replayed as CUDA graphs (CUDA only)
Precisions: the model dtype (fp32 on the CPU, bf16 on CUDA) and, on the CPU, int8 (specdec.engine.quant).
The draft is also timed "in a round": gamma steps back to back after a target verify, as decoding runs
it (the first finds its weights evicted by the target's, the next find them cached); its c is that mean
over the target's one-token step. The floor of a step is the bytes of its weights (in the precision used) / the read bandwidth this
machine measured in the same run: a one-token decode step must stream every weight once.
--shapes real (CUDA): randomly initialised Llama models shaped like a ~0.5B draft and a ~7B target in
bf16 (no download exists on the device); the bundled pair otherwise.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from specdec.common.config import add_arguments, config_from_args, option, to_dict
from specdec.common.values import check_gamma
from specdec.costmodel.measure import interleaved_medians, sync
from specdec.engine.runner import cache_kwarg
from specdec.engine.timing import StepTimer
from specdec.engine.quant import RowwiseInt8Linear, quantize_model
from specdec.common.env import environment
from specdec.common.files import write_json_atomic
from specdec.common.table import format_table
from specdec.engine.devices import resolve_device


@dataclass
class StepCostsConfig:
    device: str = option("auto", "cpu | cuda | auto", group="machine")
    threads: int | None = option(None, "torch CPU threads (1 is steadiest on a shared CPU)", group="machine")
    shapes: str = option("bundled", "bundled: the bundled pair; real: random ~0.5B / ~7B Llama shapes (CUDA)",
                         choices=("bundled", "real"), group="models")
    prompt_len: int = option(256, "context length before the timed steps", group="timing")
    gamma: int = option(4, "the verify step covers gamma + 1 tokens", group="timing")
    batch_size: int = option(1, "rows per step", group="timing")
    iters: int = option(30, "timed rounds (each times every path once)", group="timing")
    out: str | None = option(None, "JSON output path", group="output")

    def __post_init__(self):
        for name in ("prompt_len", "batch_size", "iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        self.gamma = check_gamma(self.gamma, "--gamma", auto=False)


def read_bandwidth(device, nbytes: int = 1 << 28) -> float:
    """Bytes per second this device streams: a sum over 256 MB (CPU) or a 1 GiB copy (CUDA, read +
    write counted), best of 5."""
    dev = torch.device(device)
    best = float("inf")
    if dev.type == "cuda":
        src = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        for _ in range(6):
            sync(dev)
            t0 = time.perf_counter()
            dst.copy_(src)
            sync(dev)
            best = min(best, time.perf_counter() - t0)
        return 2 * src.numel() / best
    x = torch.ones(nbytes // 4)
    for _ in range(5):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def weight_bytes(model) -> int:
    """Bytes one decode step streams: every parameter and buffer once (int8 projections at a byte per
    weight), except the input embedding, of which a step reads one row per token (a tied LM head
    streams that matrix as the head)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = isinstance(head, torch.nn.Linear) and head.weight.data_ptr() == emb.data_ptr()
    seen, total = set(), 0
    for m in model.modules():
        if isinstance(m, RowwiseInt8Linear):
            total += m.out_features * (m.in_features + 2) + 4 * m.out_features
            continue
        for t in list(m.parameters(recurse=False)) + [b for b in m.buffers(recurse=False) if b is not None]:
            if t.data_ptr() in seen or (t.data_ptr() == emb.data_ptr() and not tied):
                continue
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


class _DynamicStepper:
    """transformers' forward with its DynamicCache, cropped back after each step."""

    def __init__(self, model, prompt_ids, batch_size):
        from transformers import DynamicCache

        dev = model.get_input_embeddings().weight.device
        self.ids = prompt_ids.to(dev).repeat(batch_size, 1)
        self.model, self.kw, self.cache = model, cache_kwarg(model), DynamicCache()
        with torch.no_grad():
            model(input_ids=self.ids, use_cache=True, logits_to_keep=1, **{self.kw: self.cache})
        self.device = dev

    def step(self, S: int) -> float:
        B, P = self.ids.shape
        new = self.ids[:, -1:].repeat(1, S)
        mask = torch.ones((B, P + S), dtype=torch.long, device=self.device)
        with torch.no_grad():
            sync(self.device)
            t0 = time.perf_counter()
            self.model(input_ids=new, attention_mask=mask, use_cache=True, **{self.kw: self.cache})
            sync(self.device)
            dt = time.perf_counter() - t0
        self.cache.crop(-S)
        return dt


def _in_round(target_stepper, draft_stepper, gamma: int) -> float:
    """Mean seconds of a draft step as a round runs it: a (gamma+1)-token verify of the target (untimed;
    it streams the target's weights through the cache), then gamma draft steps back to back."""
    target_stepper.step(gamma + 1)
    return sum(draft_stepper.step(1) for _ in range(gamma)) / gamma


def _real_pair(device):
    """Random Llama models shaped like Qwen2.5-0.5B (draft) and Llama-2-7B (target), bf16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shapes = {"draft_0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                 num_attention_heads=14, num_key_value_heads=2, head_dim=64),
              "target_7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=32, head_dim=128)}
    out = {}
    for name, kw in shapes.items():
        cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False, **kw)
        with torch.device(device):
            model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
        out[name] = model
    return out["target_7B"], out["draft_0.5B"]


def _models(cfg: StepCostsConfig, device):
    from specdec.models import load_pair
    if cfg.shapes == "real":
        if device.type != "cuda":
            raise ValueError("--shapes real needs --device cuda (a 7B-shaped model on this CPU takes minutes a step)")
        target, draft = _real_pair(device)
        return {"target": target, "draft": draft}, "bfloat16"
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    target, draft, _, _ = load_pair(None, None, dtype, str(device))
    return {"target": target, "draft": draft}, dtype


def _paths(device):
    if device.type == "cuda":
        return [("hf-dynamic", "model"), ("hf", "model"), ("lean", "model"), ("lean+graphs", "model")]
    return [("hf-dynamic", "model"), ("hf", "model"), ("lean", "model"), ("numpy", "model"), ("hf", "int8"),
            ("lean", "int8")]


def measure(cfg: StepCostsConfig) -> dict:
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    models, dtype = _models(cfg, device)
    prompt = torch.randint(3, 1000, (1, cfg.prompt_len))
    bandwidth = read_bandwidth(device)
    jobs, meta, steppers = {}, {}, {}
    for name, model in models.items():
        variants = {"model": model}
        if device.type == "cpu":
            variants["int8"] = quantize_model(copy.deepcopy(model))
        for path, precision in _paths(device):
            m = variants[precision]
            if path == "hf-dynamic":
                stepper = _DynamicStepper(m, prompt, cfg.batch_size)
            else:
                stepper = StepTimer(m, prompt, cfg.batch_size, cfg.gamma + 1, impl=path.split("+")[0],
                                    cuda_graphs=path.endswith("graphs"))
            prec = dtype if precision == "model" else "int8"
            meta[(name, path, prec)] = weight_bytes(m)
            steppers[(name, path, prec)] = stepper
            for S in (1, cfg.gamma + 1):
                jobs[(name, path, prec, S)] = (lambda st, s: (lambda: st.step(s)))(stepper, S)
    for path, precision in _paths(device):   # the draft as a round runs it: gamma steps after a verify
        prec = dtype if precision == "model" else "int8"
        tstep, dstep = steppers[("target", path, prec)], steppers[("draft", path, prec)]
        jobs[("draft", path, prec, "round")] = (lambda ts, ds: (lambda: _in_round(ts, ds, cfg.gamma)))(tstep, dstep)
    med = interleaved_medians(jobs, cfg.iters, warmup=3)
    rows = []
    for (name, path, prec, S), secs in med.items():
        floor = meta[(name, path, prec)] / bandwidth
        one = med[(name, path, prec, 1)]
        target_one = med.get(("target", path, prec, 1))
        in_round = S == "round"
        rows.append({"model": name, "path": path, "precision": prec, "tokens": 1 if in_round else S,
                     "when": "in a round" if in_round else "alone", "ms": 1e3 * secs,
                     "weight_MB": meta[(name, path, prec)] / 1e6, "floor_ms": 1e3 * floor,
                     "x_floor": secs / floor if S == 1 or in_round else None,
                     "v": secs / one if not in_round and S > 1 else None,
                     "c": secs / target_one if name != "target" and (S == 1 or in_round) and target_one else None})
    return {"env": environment(device), "config": to_dict(cfg), "read_bandwidth_GBps": bandwidth / 1e9,
            "rows": rows}


COLUMNS = [("model", "model", 10, "s"), ("path", "path", 12, "s"), ("precision", "prec", 8, "s"),
           ("tokens", "S", 2, "d"), ("when", "when", 10, "s"), ("ms", "ms", 8, ".3f"), ("weight_MB", "MB", 7, ".1f"),
           ("floor_ms", "floor", 7, ".3f"), ("x_floor", "x floor", 7, ".2f"), ("v", "v", 5, ".2f"),
           ("c", "c", 5, ".3f")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/step_costs.py", description=__doc__.split("\n\n")[0])
    add_arguments(p, StepCostsConfig)
    try:
        cfg = config_from_args(p.parse_args(argv), StepCostsConfig)
        result = measure(cfg)
    except ValueError as e:
        print(f"step_costs: error: {e}", file=sys.stderr)
        return 2
    print(f"read bandwidth {result['read_bandwidth_GBps']:.1f} GB/s, {result['env']['device_name']}, "
          f"threads {result['env']['torch_threads']}")
    print(format_table(result["rows"], COLUMNS))
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cfg.out, result)
    print(json.dumps({"out": cfg.out, "rows": len(result["rows"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
