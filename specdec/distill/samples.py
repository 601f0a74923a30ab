"""Samples of the target with its top-K log-probabilities: written once, trained on many times.

A real target is expensive to run (SmolLM2-135M on a 2-core CPU: ~80 tokens/s at batch 64), so the
sequences a draft learns from and the target's distribution at every token are produced once, by a
batched generation that keeps the teacher's top-K log-probs while it samples (`generate`), and stored
as shards (`write_shard`). `SampleSource` then serves them to the trainer as (Batch, TeacherTopK)
micro-batches, as `TeacherCache` does, with no target forward in training.

Shard format (one `torch.save` dict per file, written atomically):
  format        SHARD_FORMAT
  prompt_ids    [sum P_i] int32, prompt_off [R + 1] int64   the prompts (token ids, concatenated)
  cont_ids      [sum C_i] int32, cont_off [R + 1] int64     the target's continuations (cut after EOS)
  topk_idx      [sum C_i, K] int32   the target's K most likely ids predicting each continuation token
  topk_logp     [sum C_i, K] fp16    their log-probabilities at temperature 1
  tail_logp     [sum C_i] fp32       log of the mass outside the K ids (losses.teacher_topk)
  meta          list of R dicts      what each row is (free-form: kind, temperature, the user turn)
"""
from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..common.fingerprint import file_digest
from ..engine.runner import ModelRunner
from .data import Batch, TeacherTopK, assemble, stream_seed
from .losses import teacher_topk
from .rollout import sample_rows

SHARD_FORMAT = 1


@dataclass
class Generation:
    tokens: list            # R lists of continuation ids, each cut after its first stop id
    topk_idx: list          # R tensors [C_i, K] int32 (empty when topk = 0)
    topk_logp: list         # R tensors [C_i, K] fp32
    tail_logp: list         # R tensors [C_i] fp32


@torch.no_grad()
def generate(model, prompts: list, new_tokens: int, temperatures: list, seed: int, stop_ids=(), topk: int = 0,
             impl: str = "auto", pad_id: int = 0) -> Generation:
    """Continue every prompt (token id lists) by up to new_tokens tokens, row i at temperatures[i]
    (0 = greedy), on one batched ModelRunner; with topk > 0 keep the model's top-K log-probs at
    temperature 1 (+ tail) predicting each continuation token. Rows stop after a stop id; the batch
    stops when every row has."""
    B = len(prompts)
    P = max(len(p) for p in prompts)
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    mask = torch.zeros((B, P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):], mask[i, P - len(p):] = torch.tensor(p), 1
    runner = ModelRunner(model, B, P + new_tokens + 1, impl=impl)
    runner.prefill(ids, mask)
    g = torch.Generator().manual_seed(seed)
    temps = torch.tensor([float(t) for t in temperatures])                               # [B]
    greedy = temps == 0
    pending, pos = ids[:, -1:], mask.sum(1, keepdim=True) - 1
    valid = torch.ones((B, 1), dtype=torch.bool)
    stop = torch.tensor(sorted(set(stop_ids)) or [-1])
    done = torch.zeros(B, dtype=torch.bool)
    toks, kept = [], []
    for _ in range(new_tokens):
        logits = runner.forward(pending, pos, valid, logits_to_keep=1)[:, -1].float()   # [B, V]
        if topk:
            kept.append(teacher_topk(logits, topk, 1.0))
        scaled = logits / torch.where(greedy, 1.0, temps)[:, None]
        tok = torch.where(greedy, logits.argmax(-1), sample_rows(torch.softmax(scaled, -1), g))   # [B]
        toks.append(tok)
        done |= torch.isin(tok, stop)
        if bool(done.all()):
            break
        pending, pos = tok[:, None], pos + 1
    return _cut(torch.stack(toks, 1), kept, set(stop_ids))


def _cut(tokens: torch.Tensor, kept: list, stop: set) -> Generation:
    rows, idx, logp, tail = [], [], [], []
    for i, row in enumerate(tokens.tolist()):
        n = next((j + 1 for j, t in enumerate(row) if t in stop), len(row))
        rows.append(row[:n])
        if kept:
            idx.append(torch.stack([k[0][i] for k in kept[:n]]).to(torch.int32))
            logp.append(torch.stack([k[1][i] for k in kept[:n]]))
            tail.append(torch.stack([k[2][i] for k in kept[:n]]))
    return Generation(rows, idx, logp, tail)


def _concat(lists: list, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    off = torch.zeros(len(lists) + 1, dtype=torch.long)
    off[1:] = torch.tensor([len(x) for x in lists]).cumsum(0)
    flat = torch.tensor([t for x in lists for t in x], dtype=dtype)
    return flat, off


def write_shard(path, prompts: list, gen: Generation, meta: list) -> None:
    """One shard, atomically (a temporary file, then a rename: a killed writer leaves no partial shard)."""
    path = Path(path)
    p_ids, p_off = _concat(prompts, torch.int32)
    c_ids, c_off = _concat(gen.tokens, torch.int32)
    data = {"format": SHARD_FORMAT, "prompt_ids": p_ids, "prompt_off": p_off, "cont_ids": c_ids, "cont_off": c_off,
            "topk_idx": torch.cat(gen.topk_idx), "topk_logp": torch.cat(gen.topk_logp).half(),
            "tail_logp": torch.cat(gen.tail_logp).float(), "meta": list(meta)}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(data, tmp)
    os.replace(tmp, path)


def read_shard(path) -> dict:
    data = torch.load(path, map_location="cpu", weights_only=True)
    if data.get("format") != SHARD_FORMAT:
        raise ValueError(f"{path} is not a specdec sample shard of format {SHARD_FORMAT}")
    return data


# ----------------------------------------------------------------------------------------------------
# Reading: a data source for the trainer.

class SampleSource:
    """Micro-batches of stored samples (every `*.pt` shard of a folder, in name order) with the target's
    top-K log-probs, as `TeacherCache` serves its cache: `micro_batches(step, micros)` -> [(Batch,
    TeacherTopK)]. Rows are drawn epoch by epoch in a permutation seeded by (seed, epoch), so micro-batch
    `micro` of `step` is a pure function of them (resume draws the same data). A prompt keeps its last
    prompt_tokens tokens, a continuation its first new_tokens."""

    def __init__(self, folder, *, batch_size: int, micros_per_step: int, prompt_tokens: int, new_tokens: int,
                 seed: int, pad_id: int):
        files = sorted(Path(folder).glob("*.pt"))
        if not files:
            raise ValueError(f"--samples {folder}: no sample shards (*.pt) there; write them with "
                             "bench/smollm2_draft_data.py (specdec.distill.samples.write_shard)")
        self.files = files
        self.shards = [read_shard(f) for f in files]
        self.rows = [(s, r) for s, d in enumerate(self.shards) for r in range(len(d["prompt_off"]) - 1)
                     if d["cont_off"][r + 1] > d["cont_off"][r]]
        self.B, self.M, self.P, self.C = int(batch_size), int(micros_per_step), int(prompt_tokens), int(new_tokens)
        self.seed, self.pad_id = int(seed), int(pad_id)
        self._perm = (None, None)

    def digest(self) -> str:
        """What a resumed run checks it trains on: every shard's name and bytes."""
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.name}:{file_digest(f)}\n".encode())
        return "sha256:" + h.hexdigest()

    @property
    def tokens(self) -> int:
        """Continuation tokens held (before the new_tokens cut)."""
        return sum(int(d["cont_off"][-1]) for d in self.shards)

    def _row_at(self, k: int) -> tuple:
        epoch, i = divmod(k, len(self.rows))
        if self._perm[0] != epoch:
            order = list(range(len(self.rows)))
            random.Random(stream_seed(self.seed, "samples", epoch)).shuffle(order)
            self._perm = (epoch, order)
        return self.rows[self._perm[1][i]]

    def entry(self, step: int, micro: int) -> tuple[Batch, TeacherTopK]:
        prompts, conts, idx, logp, tail = [], [], [], [], []
        first = (step * self.M + micro) * self.B
        for k in range(first, first + self.B):
            s, r = self._row_at(k)
            d = self.shards[s]
            prompts.append(d["prompt_ids"][d["prompt_off"][r]:d["prompt_off"][r + 1]][-self.P:].tolist())
            a = int(d["cont_off"][r])
            b = min(int(d["cont_off"][r + 1]), a + self.C)
            conts.append(d["cont_ids"][a:b].tolist())
            idx.append(d["topk_idx"][a:b])
            logp.append(d["topk_logp"][a:b])
            tail.append(d["tail_logp"][a:b])
        batch = assemble(prompts, conts, self.C, self.pad_id, "samples")
        return batch, TeacherTopK(torch.cat(idx).long(), torch.cat(logp).float(), torch.cat(tail).float())

    def micro_batches(self, step: int, micros) -> list[tuple[Batch, TeacherTopK]]:
        return [self.entry(step, m) for m in micros]
