"""`DistillConfig`: every setting of `specdec distill`, its default and its help, in one place.

The CLI is built from it (specdec.config) and the Python API constructs it directly; either way
`__post_init__` validates every field before anything is loaded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..common import config
from ..common.config import option
from .data import SOURCES
from .losses import KINDS

# Settings that may change when a run is resumed: they do not change the trained weights or the meaning
# of a metrics row. Every other setting must equal the checkpoint's (common.outdir.prepare_out_dir names the ones
# that differ).
FREE_ON_RESUME = ("out", "resume", "overwrite", "threads", "progress", "device", "eval_every", "spec_eval_every",
                  "save_every", "keep_checkpoints")


@dataclass
class DistillConfig:
    # output
    out: str = option(None, "output folder: the distilled draft (HF checkpoint + tokenizer), metrics.jsonl, "
                            "checkpoints/", group="output", required=True)
    resume: bool = option(False, "continue the run in --out from its newest intact checkpoint (the other settings "
                                 "must equal the run's)", group="output")
    overwrite: bool = option(False, "replace the run already in --out (deletes it first)", group="output")
    # models
    target: str | None = option(None, "target model folder or hub id (default: the bundled target)", group="models")
    draft: str | None = option(None, "draft model folder or hub id to start from (default: the bundled draft)",
                               group="models")
    # objective
    divergence: str = option("fkl", "token-level divergence D(p || q)", group="objective", choices=KINDS)
    beta: float = option(0.5, "JSD(beta) mixture weight, in (0, 1)", group="objective")
    temperature: float = option(1.0, "deployment temperature: sampling AND loss temperature (0 = greedy; the loss "
                                     "then uses 1)", group="objective")
    # data
    data_source: str = option("student", "where sequences come from", group="data", choices=SOURCES)
    lmbda: float = option(0.5, "mix: fraction of batches the draft samples (else dataset)", group="data")
    skd_topk: int = option(25, "skd: a draft token outside the target's top-K is replaced by a target sample",
                           group="data")
    data: str | None = option(None, "JSONL prompts ({\"prompt\", optional \"completion\"}; Spec-Bench questions "
                                    "too); default: the bundled corpus' train split", group="data")
    prompt_tokens: int = option(96, "prompt length in tokens (last tokens of longer prompts)", group="data")
    new_tokens: int = option(32, "continuation length in tokens", group="data")
    teacher_cache: str | None = option(None, "train from a `specdec cache-teacher` folder (no target forward in "
                                             "training)", group="data")
    samples: str | None = option(None, "train on stored target samples with the target's top-K log-probs (a folder "
                                       "of specdec.distill.samples shards; no target forward in training)",
                                 group="data")
    hard_labels: bool = option(False, "train on the emitted tokens alone (cross-entropy: forward KL to a one-hot "
                                      "teacher), not the target's distribution: the supervised baseline",
                               group="objective")
    # optimisation
    steps: int = option(200, "optimizer steps", group="optimisation")
    batch_size: int = option(8, "sequences per micro-batch per process", group="optimisation")
    grad_accum: int = option(1, "micro-batches per step", group="optimisation")
    lr: float = option(3e-4, "peak learning rate (AdamW; linear warm-up, cosine decay to 10%)", group="optimisation")
    warmup_steps: int = option(10, "linear warm-up steps", group="optimisation")
    weight_decay: float = option(0.0, "AdamW weight decay", group="optimisation")
    max_grad_norm: float = option(1.0, "gradient clipping (0 = off)", group="optimisation")
    seed: int = option(0, "seed of the data order and of every sample", group="optimisation")
    chunk_size: int = option(1024, "tokens per chunk of the fp32 loss computation", group="optimisation")
    # evaluation
    eval_every: int = option(25, "estimated acceptance on held-out prompts every N steps (0 = only at the end)",
                             group="evaluation")
    spec_eval_every: int = option(100, "real speculative decoding run every M steps (0 = only at the end)",
                                  group="evaluation")
    eval_prompts: int = option(16, "held-out prompts used by the evaluations", group="evaluation")
    eval_gamma: int = option(4, "gamma of the speculative evaluation run", group="evaluation")
    eval_temperatures: tuple[float, ...] | None = option(None, "temperatures the evaluations run at, comma-separated "
                                                         "(default: --temperature)", group="evaluation")
    eval_new_tokens: int = option(64, "tokens each evaluation generates per prompt", group="evaluation")
    # checkpoints
    save_every: int = option(50, "atomic checkpoint every N steps (0 = only the final output)", group="checkpoints")
    keep_checkpoints: int = option(2, "checkpoints kept on disk", group="checkpoints")
    # placement
    fsdp: bool = option(False, "shard the draft with FSDP (under torchrun, on CUDA)", group="placement")
    device: str = option("auto", "auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)", group="placement")
    threads: int | None = option(None, "torch CPU threads (default: torch's own; 1 is often fastest on a busy "
                                       "shared CPU)", group="placement")
    progress: bool = option(True, "tqdm progress bar (rank 0)", group="placement")

    def __post_init__(self):
        if not self.out:
            raise ValueError("--out DIR is required (where the distilled draft and metrics go)")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{config.flag_name(f.name)} must be a finite number, got {value}")
        if self.divergence not in KINDS:
            raise ValueError(f"--divergence must be one of {KINDS}, got {self.divergence!r}")
        if self.divergence == "jsd" and not (0.0 < self.beta < 1.0):
            raise ValueError(f"--beta must be in (0, 1) for jsd (0 and 1 make JSD vanish; use fkl / rkl), got {self.beta}")
        if self.data_source not in SOURCES:
            raise ValueError(f"--data-source must be one of {SOURCES}, got {self.data_source!r}")
        if not (0.0 <= self.lmbda <= 1.0):
            raise ValueError(f"--lmbda must be in [0, 1], got {self.lmbda}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("--weight-decay and --max-grad-norm must be >= 0")
        for name in ("steps", "batch_size", "grad_accum", "prompt_tokens", "new_tokens", "chunk_size",
                     "eval_prompts", "eval_gamma", "eval_new_tokens", "keep_checkpoints", "skd_topk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{config.flag_name(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "spec_eval_every", "save_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{config.flag_name(name)} must be >= 0, got {getattr(self, name)}")
        if self.eval_temperatures is None:
            self.eval_temperatures = (self.temperature,)
        self.eval_temperatures = tuple(float(t) for t in self.eval_temperatures)
        if not self.eval_temperatures or any(not math.isfinite(t) or t < 0 for t in self.eval_temperatures):
            raise ValueError(f"--eval-temperatures must be finite numbers >= 0, got {self.eval_temperatures}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite deletes it: pass one of them")
        if self.samples is not None and (self.teacher_cache is not None or self.data_source != "teacher"):
            raise ValueError("--samples holds the target's own samples: use it with --data-source teacher and "
                             "without --teacher-cache")
        if self.hard_labels and self.divergence != "fkl":
            raise ValueError(f"--hard-labels trains the cross-entropy, i.e. forward KL to a one-hot teacher: use "
                             f"--divergence fkl, not {self.divergence!r}")
        if self.teacher_cache is not None and self.data_source not in ("dataset", "teacher"):
            raise ValueError(f"--teacher-cache holds sequences that do not depend on the draft; it works with "
                             f"--data-source dataset or teacher, not {self.data_source!r}")

    def to_dict(self) -> dict:
        return config.to_dict(self)
