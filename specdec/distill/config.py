"""`DistillConfig`: every setting of `specdec distill`, its default and its help, in one place.

The CLI is built from it (common/config.py) and the Python API constructs it directly; either way
`__post_init__` validates every field before anything is loaded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..common import config
from ..common.blocks import ProgressBlock, ResumableOutputBlock
from ..common.config import option
from ..common.values import check_gamma, check_int, check_number, check_seed, check_temperature
from ..models import context_of
from ..models.options import ModelsBlock
from .data import SOURCES
from .losses import KINDS

# Settings that may change when a run is resumed: they do not change the trained weights or the meaning
# of a metrics row. Every other setting must equal the checkpoint's (common.outdir.claim names the ones
# that differ).
FREE_ON_RESUME = ("out", "resume", "overwrite", "threads", "progress", "device", "eval_every", "spec_eval_every",
                  "save_every", "keep_checkpoints")


@dataclass
class DistillConfig(ProgressBlock, ResumableOutputBlock, ModelsBlock):
    """The models and output blocks (models/options.py, common/blocks.py) and the training settings. --out
    holds the distilled draft (a Hugging Face checkpoint + tokenizer), metrics.jsonl and checkpoints/;
    --device under torchrun: each process takes cuda:LOCAL_RANK."""
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

    def __post_init__(self):
        super().__post_init__()
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
        self.lmbda = check_number(self.lmbda, "--lmbda", 0.0, 1.0)
        self.temperature = check_temperature(self.temperature, "--temperature")
        self.lr = check_number(self.lr, "--lr", 0.0, low_open=True)
        self.weight_decay = check_number(self.weight_decay, "--weight-decay", 0.0)
        self.max_grad_norm = check_number(self.max_grad_norm, "--max-grad-norm", 0.0)
        for name in ("steps", "batch_size", "grad_accum", "prompt_tokens", "new_tokens", "chunk_size",
                     "eval_prompts", "eval_new_tokens", "keep_checkpoints", "skd_topk"):
            setattr(self, name, check_int(getattr(self, name), config.flag_name(name), 1))
        for name in ("eval_every", "spec_eval_every", "save_every", "warmup_steps"):
            setattr(self, name, check_int(getattr(self, name), config.flag_name(name), 0))
        self.eval_gamma = check_gamma(self.eval_gamma, "--eval-gamma", auto=False)
        self.seed = check_seed(self.seed, "--seed")
        temps = (self.temperature,) if self.eval_temperatures is None else self.eval_temperatures
        if not temps:
            raise ValueError("--eval-temperatures needs at least one value (comma-separated)")
        self.eval_temperatures = tuple(check_temperature(t, "--eval-temperatures") for t in temps)
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


def check_fits(positions: int | None, prompt_tokens: int, new_tokens: dict) -> None:
    """Every sequence a run builds, --prompt-tokens plus each {flag: tokens} in new_tokens, must fit the
    models' context: checked before any model loads, so it does not fail after the training it spoils."""
    if positions is None:
        return
    for flag, n in new_tokens.items():
        if prompt_tokens + n > positions:
            raise ValueError(f"--prompt-tokens {prompt_tokens} + {flag} {n} = {prompt_tokens + n} exceeds the models' "
                             f"context of {positions} positions; lower one of them")


def check_context(cfg: DistillConfig, target: str, draft: str) -> None:
    """The training sequences and the evaluation runs of `cfg` fit both models' context."""
    check_fits(context_of(target, draft), cfg.prompt_tokens,
               {"--new-tokens": cfg.new_tokens, "--eval-new-tokens": cfg.eval_new_tokens})
