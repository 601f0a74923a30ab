"""`specdec cache-teacher`: the target's top-K log-probabilities (+ a tail bucket) per generated token,
for the data sources that do not depend on the draft (dataset, teacher). `specdec distill
--teacher-cache DIR` then trains without a target forward pass.

Layout of DIR (an output folder like any other: refused when it holds another run unless --overwrite;
--resume continues an interrupted build with the same settings):
  specdec_run.json     the settings, as every command writes them
  build_id             a random id drawn when the build starts (kept by --resume)
  step_NNNNNN.pt       one file per optimizer step: the build id, and for each global micro-batch the
                       sequences (input_ids, attention_mask, cont_mask) and, for the N real continuation
                       tokens, topk_idx [N, K] int32, topk_logp [N, K] fp32, tail_logp [N] fp32
  checksums.jsonl      one line per step file as it is written: its name, size and sha256
  meta.json            written last (a folder without it is an unfinished build): the settings the
                       batches depend on, the build id, and every step file with its size and sha256
A reader refuses a folder whose step files are missing, or of another size or sha256 than meta.json says
(checked when it opens the cache, before any model loads, and again as it reads each file), or carry
another build id: a cache is used only as exactly what its meta.json describes, and a damaged file (a
flipped bit, a bad copy) is named with what to do: `--resume` rewrites the steps that do not match
their checksum. --resume of an unfinished build likewise keeps only the step files checksums.jsonl
vouches for.

The batches are exactly those `specdec distill` would build (same pure function of seed and step), so a
cached run and an uncached one see the same sequences. The log-probs are at the deployment temperature:
a cache serves one temperature only. Size: about N * K * 8 bytes per micro-batch (K = 32, 8 x 32
tokens: 64 KiB).
"""
from __future__ import annotations

import argparse
import io
import json
import re
import uuid
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..common import config
from ..common.blocks import ResumableOutputBlock
from ..common.config import option
from ..common.values import check_int, check_seed, check_temperature
from ..models import bundled_pair, context_of, load_model, load_tokenizer
from ..models.options import TargetBlock
from ..common.files import (append_jsonl, read_json, read_jsonl, read_text, require, write_bytes_atomic,
                            write_json_atomic, write_text_atomic)
from ..common.fingerprint import bytes_digest, file_digest, fingerprint_inputs
from ..common.outdir import claim
from ..engine.devices import resolve_device
from ..engine.params import check_logits_flag
from ..engine.sampling import unusable_rows
from .config import check_fits
from .data import Batch, PromptSet, TeacherTopK, continuation_logits, make_batch
from .losses import teacher_topk

# Settings a cache and a training run must agree on.
MATCH = ("data_source", "data", "chat_template", "prompt_tokens", "new_tokens", "temperature", "batch_size", "seed")
FORMAT = 4   # 3: checksums; 4: chat_template in MATCH (a format-3 cache has none, so it is rebuilt, not mismatched)
CHECKSUMS = "checksums.jsonl"
# What a build writes into DIR (common.outdir: --overwrite deletes these and nothing else).
OUTPUTS = ("build_id", CHECKSUMS, "meta.json", "step_*.pt")
_REBUILD = "rebuild the cache with `specdec cache-teacher --overwrite`"


@dataclass
class CacheConfig(ResumableOutputBlock, TargetBlock):
    """The target and output blocks (models/options.py, common/blocks.py) and what to cache."""
    data_source: str = option("dataset", "sequences to cache (only sources that do not depend on the draft)",
                              group="data", choices=("dataset", "teacher"))
    data: str | None = option(None, "JSONL prompts (+ completions); default: the bundled corpus' train split",
                              group="data")
    prompt_tokens: int = option(96, "prompt length in tokens", group="data")
    new_tokens: int = option(32, "continuation length in tokens", group="data")
    temperature: float = option(1.0, "deployment temperature the log-probs are taken at (0 -> the loss's 1)",
                                group="data")
    topk: int = option(32, "log-probs kept per token (plus the tail bucket)", group="cache")
    steps: int = option(200, "optimizer steps to cache", group="cache")
    batch_size: int = option(8, "sequences per micro-batch per process", group="cache")
    micro_batches: int = option(1, "micro-batches per step over all processes (the run's --grad-accum x processes)",
                                group="cache")
    seed: int = option(0, "seed (must equal the training run's)", group="cache")

    def __post_init__(self):
        super().__post_init__()
        if self.data_source not in ("dataset", "teacher"):
            raise ValueError(f"a teacher cache needs a source that does not depend on the draft (dataset or teacher), "
                             f"got {self.data_source!r}")
        for name in ("prompt_tokens", "new_tokens", "topk", "steps", "batch_size", "micro_batches"):
            setattr(self, name, check_int(getattr(self, name), config.flag_name(name), 1))
        self.temperature = check_temperature(self.temperature, "--temperature")
        self.seed = check_seed(self.seed, "--seed")


def same_model(a, b) -> bool:
    """Two model names that point at the same folder (or the same hub id)."""
    pa, pb = Path(str(a)).expanduser(), Path(str(b)).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return str(a) == str(b)


# ----------------------------------------------------------------------------------------------------
# Reading.

class TeacherCache:
    """Read side of a cache folder; a data source for the trainer (`micro_batches`)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        meta = self.folder / "meta.json"
        if not meta.is_file():
            raise ValueError(f"--teacher-cache {self.folder} is not a finished teacher cache (no meta.json); build "
                             "one with `specdec cache-teacher --out DIR` (or finish it with --resume)")
        self.meta = require(read_json(meta, _REBUILD), meta, _REBUILD)
        if self.meta.get("format") != FORMAT or "files" not in self.meta:
            raise ValueError(f"--teacher-cache {self.folder} was written by another version of specdec; {_REBUILD}")
        require(self.meta, meta, _REBUILD, steps=int, files=dict, cache_id=str)
        for step in range(self.meta["steps"]):   # every file's size and checksum before any model loads
            path, entry = self._check_size(step)
            raw = path.read_bytes()
            if bytes_digest(raw) != entry["sha256"]:
                self._verify(path, step, raw, entry)
        self._step, self._data = None, None

    def _check_size(self, step: int) -> tuple[Path, dict]:
        name = step_name(step)
        path, entry = self.folder / name, self.meta["files"].get(name)
        if entry is not None:
            require(entry, f"{self.folder / 'meta.json'}: {name}", _REBUILD, size=int, sha256=str)
        if entry is None or not path.is_file() or path.stat().st_size != entry["size"]:
            raise ValueError(f"--teacher-cache {self.folder}: {name} is missing or not the file meta.json "
                             f"describes; {_REBUILD}")
        return path, entry

    def _check_file(self, step: int) -> dict:
        """The step file, after checking it is the one meta.json lists (size, sha256, build id, step),
        again: it may have changed since the cache was opened. A step file holds a few micro-batches."""
        path, entry = self._check_size(step)
        return self._verify(path, step, path.read_bytes(), entry)

    def _verify(self, path: Path, step: int, raw: bytes, entry: dict) -> dict:
        data = _load_step(raw)
        if data is not None and (data.get("cache_id") != self.meta["cache_id"] or data.get("step") != step):
            raise ValueError(f"--teacher-cache {path} belongs to another build than {self.folder / 'meta.json'}; "
                             f"{_REBUILD}")
        if data is None or bytes_digest(raw) != entry["sha256"]:
            raise ValueError(f"--teacher-cache {path} is damaged (its sha256 is not the one meta.json lists); run "
                             "its `specdec cache-teacher` again with --resume (the same settings) to rewrite the "
                             f"damaged steps, or {_REBUILD}")
        return data

    def check_compatible(self, cfg, world: int, target: str) -> None:
        """cfg: the DistillConfig of the run; target: the run's resolved target path."""
        m = self.meta
        bad = [f"{k}: cache {m.get(k)!r} vs run {getattr(cfg, k)!r}" for k in MATCH if m.get(k) != getattr(cfg, k)]
        if m.get("micro_batches") != cfg.grad_accum * world:
            bad.append(f"micro-batches per step: cache {m.get('micro_batches')} vs run {cfg.grad_accum} x {world} "
                       "processes")
        if cfg.steps > m.get("steps", 0):
            bad.append(f"steps: cache has {m.get('steps')}, run wants {cfg.steps}")
        if not same_model(m.get("target"), target):
            bad.append(f"target: cache {m.get('target')!r} vs run {target!r}")
        if bad:
            raise ValueError("teacher cache does not match this run (" + "; ".join(bad) + "); rebuild it with the "
                             "same settings")

    def _load(self, step: int) -> dict:
        if self._step != step:
            if not 0 <= step < self.meta["steps"]:
                raise ValueError(f"teacher cache {self.folder} holds {self.meta['steps']} steps, not step {step}")
            self._data, self._step = self._check_file(step), step
        return self._data

    def entry(self, step: int, micro: int) -> tuple[Batch, TeacherTopK]:
        """The cached micro-batch with GLOBAL index `micro` of `step`."""
        d = self._load(step)["micro_batches"][micro]
        batch = Batch(d["input_ids"], d["attention_mask"], d["cont_mask"], d["source"])
        return batch, TeacherTopK(d["topk_idx"].long(), d["topk_logp"], d["tail_logp"])

    def micro_batches(self, step: int, micros) -> list[tuple[Batch, TeacherTopK]]:
        return [self.entry(step, m) for m in micros]


def step_name(step: int) -> str:
    return f"step_{step:06d}.pt"


# ----------------------------------------------------------------------------------------------------
# Building.

def _build_id(out: Path) -> str:
    """The build's identity, random, drawn when the build starts and kept by --resume (in DIR/build_id):
    files of another build are told apart even when its settings were the same."""
    path = out / "build_id"
    if path.is_file():
        build_id = read_text(path, _REBUILD).strip()
        if not re.fullmatch("[0-9a-f]{32}", build_id):
            raise ValueError(f"{path} is damaged (not a build id); {_REBUILD}")
        return build_id
    build_id = uuid.uuid4().hex
    write_text_atomic(path, build_id + "\n")
    return build_id


def _load_step(raw: bytes) -> dict | None:
    """A step file's content, or None when it does not read."""
    try:
        data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - whatever torch raises for a damaged file
        return None
    return data if isinstance(data, dict) else None


def _checksums(out: Path) -> dict:
    """name -> {"size", "sha256"} of the step files this build wrote (a resumed build keeps those whose
    bytes still match), from checksums.jsonl (a step written again: its last line)."""
    path = out / CHECKSUMS
    if not path.is_file():
        return {}
    rows, _ = read_jsonl(path, _REBUILD)
    for n, r in enumerate(rows, 1):
        require(r, f"{path}: row {n}", _REBUILD, file=str, size=int, sha256=str)
    return {r["file"]: {"size": r["size"], "sha256": r["sha256"]} for r in rows}


def _intact(path: Path, entry: dict | None) -> bool:
    return (entry is not None and path.is_file() and path.stat().st_size == entry["size"]
            and file_digest(path) == entry["sha256"])


def _write_step(path: Path, content: dict) -> dict:
    """One step file, written whole (a temporary file renamed into place); its {"size", "sha256"}, also
    appended to checksums.jsonl."""
    buf = io.BytesIO()
    torch.save(content, buf)
    raw = buf.getvalue()
    write_bytes_atomic(path, raw)
    entry = {"size": len(raw), "sha256": bytes_digest(raw)}
    append_jsonl(path.parent / CHECKSUMS, {"file": path.name, **entry})
    return entry


@torch.no_grad()
def _cache_step(step: int, cfg: CacheConfig, prompts: PromptSet, target, tok, vocab: int, device) -> list:
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos_ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    out = []
    for micro in range(cfg.micro_batches):
        b = make_batch(prompts, source=cfg.data_source, batch_size=cfg.batch_size, seed=cfg.seed, step=step,
                       micro=micro, temperature=cfg.temperature, pad_id=pad_id, eos_ids=eos_ids,
                       vocab_size=vocab, target=target, device=device)
        t_logits = b.teacher_logits if b.teacher_logits is not None else continuation_logits(target, b, vocab)
        # a row without a finite maximum would be cached as NaN log-probabilities
        check_logits_flag(int(unusable_rows(t_logits).any()), {1: ("target", target)}, f"cache step {step}")
        idx, logp, tail = teacher_topk(t_logits, cfg.topk, cfg.temperature)
        b = b.to("cpu")
        out.append({"input_ids": b.input_ids, "attention_mask": b.attention_mask, "cont_mask": b.cont_mask,
                    "source": b.source, "topk_idx": idx.to(torch.int32).cpu(), "topk_logp": logp.cpu(),
                    "tail_logp": tail.cpu()})
    return out


def build_cache(cfg: CacheConfig) -> Path:
    """Write (or, with cfg.resume, finish) the cache described by cfg; returns its folder."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    target_path = str(cfg.target or bundled_pair()[0])
    check_fits(context_of(target_path), cfg.prompt_tokens, {"--new-tokens": cfg.new_tokens})
    tok = load_tokenizer(target_path)
    prompts = PromptSet(tok, cfg.prompt_tokens, cfg.new_tokens, jsonl=cfg.data, chat_template=cfg.chat_template)
    prompts.check_source(cfg.data_source)
    inputs = fingerprint_inputs({"--target": target_path}, {"--data": cfg.data})
    with claim(cfg.out, "cache-teacher", config.to_dict(cfg), overwrite=cfg.overwrite, resume=cfg.resume,
               can_resume=True, free=("out", "resume", "overwrite", "device", "threads"), inputs=inputs,
               outputs=OUTPUTS) as run:
        # released as found if the target does not load
        out = run.path
        target = load_model(target_path, "float32", device)
        run.commit()
        vocab = min(len(tok), target.get_output_embeddings().weight.shape[0])
        settings = {f.name: getattr(cfg, f.name) for f in fields(cfg)
                    if f.name not in ("out", "resume", "overwrite", "device", "threads")}
        settings.update(target=target_path, vocab_size=vocab)
        cache_id, known, files = _build_id(out), _checksums(out), {}
        for step in range(cfg.steps):
            path = out / step_name(step)
            files[path.name] = known.get(path.name)
            if not _intact(path, files[path.name]):
                files[path.name] = _write_step(path, {"cache_id": cache_id, "step": step, "micro_batches": _cache_step(
                    step, cfg, prompts, target, tok, vocab, device)})
        write_json_atomic(out / "meta.json", {**settings, "format": FORMAT, "cache_id": cache_id, "files": files})
    return out


# ----------------------------------------------------------------------------------------------------
# CLI.

def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, CacheConfig)


def run(args) -> int:
    cfg = config.config_from_args(args, CacheConfig)
    out = build_cache(cfg)
    print(json.dumps({"out": str(out), "steps": cfg.steps, "topk": cfg.topk}))
    return 0
