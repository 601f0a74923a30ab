"""Trained tokens per second of each distillation data source, beside the draft's raw training speed.

    python bench/distill_throughput.py --out bench/results/distill_throughput.json
    python bench/distill_throughput.py --sources dataset,student --rounds 2        # a quick look

What is measured (every job on the bundled pair, the same batch shape: B sequences of P prompt +
C continuation tokens from the corpus' train split):
  raw          the draft alone: forward + backward + AdamW step with a next-token cross-entropy at
               every position of the P + C window (how bench/train_pair.py pretrains it); every token
               of the window counts. No distillation source can beat it: it is the ceiling.
  <source>     `specdec distill`'s own step (trainer.setup, trainer.train_step): sampling where the
               source samples, the teacher side (the live target's forward, or the target logits the
               sampling kept), the draft's forward and backward, the optimizer step; trained tokens =
               the continuation tokens that carry loss.
  cache:<src>  the same source read from a `specdec cache-teacher` folder built before the timing;
               the build's own rate is reported beside it (a cache is built once and read by every
               run with its settings).
Timing: after one untimed warm-up step per job, `rounds` rounds each run `steps` steps of every job
(alternating order); a job's rate is the median over rounds of tokens / seconds, so a load burst
from other jobs on a shared CPU hits one round of one job rather than a whole ratio. Prints a
fixed-width table and ends with one JSON line; the JSON file is rewritten after every round.
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdec.common.config import option, parse_script_args, to_dict  # noqa: E402
from specdec.common.values import check_temperature  # noqa: E402
from specdec.distill import CacheConfig, DistillConfig, build_cache  # noqa: E402
from specdec.distill.data import SOURCES, PromptSet, make_batch  # noqa: E402
from specdec.distill.dist import Dist  # noqa: E402
from specdec.distill.trainer import setup, train_step  # noqa: E402
from specdec.models import bundled_pair, load_model, load_tokenizer  # noqa: E402
from specdec.common.env import environment  # noqa: E402
from specdec.common.files import write_json_atomic  # noqa: E402
from specdec.common.table import format_table  # noqa: E402

CACHEABLE = ("dataset", "teacher")
ON_POLICY = ("student", "mix", "skd")
GOALS = {"cached": 0.5, "on_policy": 0.2}   # fraction of raw (the goals of the throughput work)


@dataclass
class ThroughputConfig:
    sources: tuple[str, ...] = option(("dataset", "teacher", "student", "mix", "skd", "cache:dataset", "cache:teacher"),
                                      "jobs besides raw: sources, and cache:<dataset|teacher>", group="jobs")
    batch_size: int = option(32, "sequences per step", group="shape")
    prompt_tokens: int = option(16, "prompt tokens per sequence", group="shape")
    new_tokens: int = option(112, "continuation (trained) tokens per sequence", group="shape")
    divergence: str = option("fkl", "divergence of the distillation steps", group="shape")
    temperature: float = option(1.0, "sampling / loss temperature", group="shape")
    steps: int = option(2, "steps of every job per round", group="timing")
    rounds: int = option(3, "rounds (median over rounds)", group="timing")
    threads: int = option(1, "torch CPU threads", group="timing")
    out: str = option("bench/results/distill_throughput.json", "result file", group="output")

    def __post_init__(self):
        for s in self.sources:
            name = s.split(":", 1)[1] if s.startswith("cache:") else s
            if name not in SOURCES or (s.startswith("cache:") and name not in CACHEABLE):
                raise ValueError(f"--sources: {s!r} is not a source {SOURCES} or cache:<{'|'.join(CACHEABLE)}>")
        for name in ("batch_size", "prompt_tokens", "new_tokens", "steps", "rounds", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        self.temperature = check_temperature(self.temperature, "--temperature")


def distill_config(cfg: ThroughputConfig, out: Path, source: str, steps: int, cache: str | None = None):
    return DistillConfig(out=str(out), data_source=source, teacher_cache=cache, batch_size=cfg.batch_size,
                         prompt_tokens=cfg.prompt_tokens, new_tokens=cfg.new_tokens, divergence=cfg.divergence,
                         temperature=cfg.temperature, steps=steps, warmup_steps=1, lr=1e-4, eval_every=0,
                         spec_eval_every=0, save_every=0, progress=False, device="cpu")


def raw_job(cfg: ThroughputConfig):
    """The draft's own training step on corpus windows; returns step(i) -> (tokens, seconds)."""
    draft_path = bundled_pair()[1]
    tok = load_tokenizer(draft_path)
    draft = load_model(draft_path, "float32", "cpu").train().requires_grad_(True)
    opt = torch.optim.AdamW(draft.parameters(), lr=1e-4)
    prompts = PromptSet(tok, cfg.prompt_tokens, cfg.new_tokens)

    def step(i: int):
        x = make_batch(prompts, source="dataset", batch_size=cfg.batch_size, seed=0, step=i, micro=0,
                       temperature=cfg.temperature, pad_id=tok.pad_token_id, vocab_size=len(tok)).input_ids
        t0 = time.perf_counter()
        logits = draft(x[:, :-1]).logits                                               # [B, T, V]
        F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return x[:, 1:].numel(), time.perf_counter() - t0
    return step


def trainer_job(dcfg: DistillConfig):
    """train_step of a real trainer job; returns step(i) -> (trained tokens, seconds)."""
    job = setup(dcfg, Dist(), torch.device("cpu"))

    def step(i: int):
        t0 = time.perf_counter()
        row = train_step(job, i)
        return row["tokens"], time.perf_counter() - t0
    return step


def build_caches(cfg: ThroughputConfig, tmp: Path, steps: int) -> tuple[dict, dict]:
    """One cache per cached source; returns (source -> folder, source -> build record)."""
    folders, builds = {}, {}
    for s in cfg.sources:
        if not s.startswith("cache:"):
            continue
        src = s.split(":", 1)[1]
        folder = tmp / f"cache_{src}"
        t0 = time.perf_counter()
        build_cache(CacheConfig(out=str(folder), data_source=src, prompt_tokens=cfg.prompt_tokens,
                                new_tokens=cfg.new_tokens, temperature=cfg.temperature, steps=steps,
                                batch_size=cfg.batch_size, device="cpu"))
        secs = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in folder.glob("step_*.pt"))
        tokens = steps * cfg.batch_size * cfg.new_tokens   # upper bound: rows cut at EOS carry fewer
        builds[s] = {"seconds": secs, "steps": steps, "tokens_per_s": tokens / secs, "bytes": size,
                     "bytes_per_token": size / tokens}
        folders[s] = str(folder)
        print(f"built {s}: {steps} steps in {secs:.0f} s ({tokens / secs:.0f} tok/s), {size / 2**20:.1f} MiB",
              flush=True)
    return folders, builds


def summarise(times: dict, raw_name: str = "raw") -> list[dict]:
    """times: job -> list of (tokens, seconds) per round. Rows with median rate and fraction of raw."""
    rate = {k: statistics.median(t / s for t, s in v) for k, v in times.items() if v}
    rows = []
    for k, v in times.items():
        if not v:
            continue
        kind = "raw" if k == raw_name else ("cached" if k.startswith("cache:") else
                                            ("on_policy" if k in ON_POLICY else "fixed data, live target"))
        frac = rate[k] / rate[raw_name] if raw_name in rate else None
        goal = GOALS.get(kind)
        rows.append({"job": k, "kind": kind, "tokens_per_s": rate[k], "min": min(t / s for t, s in v),
                     "max": max(t / s for t, s in v), "fraction_of_raw": frac, "goal": goal,
                     "met": None if goal is None or frac is None else frac >= goal})
    return rows


COLUMNS = [("job", "job", 14, "s"), ("kind", "kind", 24, "s"), ("tokens_per_s", "tok/s", 8, ".0f"),
           ("min", "min", 7, ".0f"), ("max", "max", 7, ".0f"), ("fraction_of_raw", "of raw", 7, ".2f"),
           ("goal", "goal", 5, ".2f"), ("met", "met", 5, "")]


def main(argv=None) -> int:
    cfg = parse_script_args(argv, __doc__, ThroughputConfig)
    torch.set_num_threads(cfg.threads)
    tmp = Path(tempfile.mkdtemp(prefix="distill_throughput_"))
    total = 1 + cfg.rounds * cfg.steps
    try:
        folders, builds = build_caches(cfg, tmp, total)
        jobs = {"raw": raw_job(cfg)}
        for s in cfg.sources:
            src = s.split(":", 1)[1] if s.startswith("cache:") else s
            jobs[s] = trainer_job(distill_config(cfg, tmp / ("run_" + s.replace(":", "_")), src, total, folders.get(s)))
        times = {k: [] for k in jobs}
        for k, job in jobs.items():   # warm-up (first use of every code path, the lean weights)
            job(0)
        env = environment("cpu")
        for r in range(cfg.rounds):
            order = list(jobs) if r % 2 == 0 else list(jobs)[::-1]
            for k in order:
                done = [jobs[k](1 + r * cfg.steps + i) for i in range(cfg.steps)]
                times[k].append((sum(t for t, _ in done), sum(s for _, s in done)))
            rows = summarise(times)
            write_json_atomic(cfg.out, {"env": env, "settings": to_dict(cfg), "cache_builds": builds, "rows": rows,
                                        "rounds": {k: v for k, v in times.items()}}, indent=2)
            print(f"round {r + 1}/{cfg.rounds}: " + ", ".join(f"{x['job']} {x['tokens_per_s']:.0f}" for x in rows),
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(format_table(rows, COLUMNS))
    print(json.dumps({"out": cfg.out, **{x["job"]: round(x["tokens_per_s"]) for x in rows}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
