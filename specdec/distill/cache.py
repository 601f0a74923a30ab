"""`specdec cache-teacher`: the target's top-K log-probabilities (+ a tail bucket) per generated token,
for the data sources that do not depend on the draft (dataset, teacher). `specdec distill
--teacher-cache DIR` then trains without a target forward pass.

Layout of DIR:
  meta.json            the settings the batches depend on (checked against the training config)
  step_NNNNNN.pt       one file per optimizer step: for each global micro-batch index the sequences
                       (input_ids, attention_mask, cont_mask) and, for the N real continuation tokens,
                       topk_idx [N, K] int32, topk_logp [N, K] fp32, tail_logp [N] fp32
The batches are exactly those `specdec distill` would build (same pure function of seed and step),
so a cached run and an uncached one see the same sequences. The log-probs are at the deployment
temperature: a cache serves one temperature only.
Size: about N * K * 8 bytes per micro-batch (K = 32, 8 x 32 tokens: 64 KiB).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import Batch, PromptSet, make_batch
from .losses import teacher_topk

# Settings a cache and a training run must agree on.
MATCH = ("data_source", "data", "prompt_tokens", "new_tokens", "temperature", "batch_size", "seed")


def _f(default, help_, **kw):
    return field(default=default, metadata={"help": help_, **kw})


@dataclass
class CacheConfig:
    out: str = _f(None, "output folder of the cache")
    target: str | None = _f(None, "target model folder or hub id (default: the bundled target)")
    data_source: str = _f("dataset", "sequences to cache (only sources that do not depend on the draft)",
                          choices=("dataset", "teacher"))
    data: str | None = _f(None, "JSONL prompts (+ completions); default: the bundled corpus' train split")
    prompt_tokens: int = _f(96, "prompt length in tokens")
    new_tokens: int = _f(32, "continuation length in tokens")
    temperature: float = _f(1.0, "deployment temperature the log-probs are taken at (0 -> the loss's 1)")
    topk: int = _f(32, "log-probs kept per token (plus the tail bucket)")
    steps: int = _f(200, "optimizer steps to cache")
    batch_size: int = _f(8, "sequences per micro-batch per process")
    micro_batches: int = _f(1, "micro-batches per step over all processes (the run's --grad-accum x processes)")
    seed: int = _f(0, "seed (must equal the training run's)")
    device: str = _f("auto", "auto | cpu | cuda")

    def __post_init__(self):
        if not self.out:
            raise ValueError("--out DIR is required")
        if self.data_source not in ("dataset", "teacher"):
            raise ValueError(f"a teacher cache needs a source that does not depend on the draft (dataset or teacher), "
                             f"got {self.data_source!r}")
        for name in ("prompt_tokens", "new_tokens", "topk", "steps", "batch_size", "micro_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")


class TeacherCache:
    """Read side of a cache folder."""

    def __init__(self, folder):
        self.folder = Path(folder)
        meta = self.folder / "meta.json"
        if not meta.is_file():
            raise FileNotFoundError(f"{self.folder} is not a teacher cache (no meta.json); build one with "
                                    "`specdec cache-teacher --out DIR`")
        self.meta = json.loads(meta.read_text())
        self._step, self._data = None, None

    def check_compatible(self, cfg, world: int) -> None:
        bad = [f"{k}: cache {self.meta.get(k)!r} vs run {getattr(cfg, k)!r}" for k in MATCH
               if self.meta.get(k) != getattr(cfg, k)]
        if self.meta.get("micro_batches") != cfg.grad_accum * world:
            bad.append(f"micro-batches per step: cache {self.meta.get('micro_batches')} vs run "
                       f"{cfg.grad_accum} x {world} processes")
        if cfg.steps > self.meta.get("steps", 0):
            bad.append(f"steps: cache has {self.meta.get('steps')}, run wants {cfg.steps}")
        if bad:
            raise ValueError("teacher cache does not match this run (" + "; ".join(bad) + "); rebuild it with the "
                             "same settings")

    def entry(self, step: int, micro: int) -> dict:
        """The cached micro-batch with GLOBAL index `micro` of `step`."""
        if self._step != step:
            path = self.folder / f"step_{step:06d}.pt"
            if not path.is_file():
                raise FileNotFoundError(f"teacher cache {self.folder} lacks step {step} ({path.name})")
            self._data, self._step = torch.load(path, map_location="cpu", weights_only=True), step
        d = self._data[str(micro)]
        return {"batch": Batch(d["input_ids"], d["attention_mask"], d["cont_mask"], d["source"]),
                "topk_idx": d["topk_idx"].long(), "topk_logp": d["topk_logp"], "tail_logp": d["tail_logp"]}


@torch.no_grad()
def build_cache(cfg: CacheConfig) -> Path:
    from ..models import bundled_pair, load_model, load_tokenizer
    from .trainer import continuation_logits

    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    target_path = cfg.target or str(bundled_pair()[0])
    tok = load_tokenizer(target_path)
    target = load_model(target_path, "float32", device)
    vocab = min(len(tok), target.get_output_embeddings().weight.shape[0])
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos_ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    prompts = PromptSet(tok, cfg.prompt_tokens, cfg.new_tokens, jsonl=cfg.data)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k not in ("out", "device")}
    meta["target"] = target_path
    meta["vocab_size"] = vocab
    for step in range(cfg.steps):
        path = out / f"step_{step:06d}.pt"
        if path.exists():  # resumable: steps already written are kept (each file appears whole)
            continue
        data = {}
        for micro in range(cfg.micro_batches):
            b = make_batch(prompts, source=cfg.data_source, batch_size=cfg.batch_size, seed=cfg.seed, step=step,
                           micro=micro, temperature=cfg.temperature, pad_id=pad_id, eos_ids=eos_ids,
                           vocab_size=vocab, target=target, device=device)
            idx, logp, tail = teacher_topk(continuation_logits(target, b, vocab), cfg.topk, cfg.temperature)
            b = b.to("cpu")
            data[str(micro)] = {"input_ids": b.input_ids, "attention_mask": b.attention_mask,
                                "cont_mask": b.cont_mask, "source": b.source,
                                "topk_idx": idx.to(torch.int32).cpu(), "topk_logp": logp.cpu(),
                                "tail_logp": tail.cpu()}
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        torch.save(data, tmp)
        os.replace(tmp, path)
    tmp = out / f".meta.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / "meta.json")  # written last: a cache without meta.json is incomplete
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .trainer import add_arguments as add
    add(parser, CacheConfig)


def run(args) -> int:
    from .trainer import config_from_args
    cfg = config_from_args(args, CacheConfig)
    out = build_cache(cfg)
    print(json.dumps({"out": str(out), "steps": cfg.steps, "topk": cfg.topk}))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="specdec cache-teacher")
    add_arguments(p)
    sys.exit(run(p.parse_args()))
