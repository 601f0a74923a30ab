"""`specdec demo --out DIR [--quick]`: the closed loop on the bundled pair.

    1. DIR/before/results.json   the benchmark of the original draft (held-out built-in prompts)
    2. DIR/draft/                DistillSpec training of the draft toward the target (train split)
    3. DIR/after/results.json    the benchmark of the distilled draft on the same held-out prompts
    4. a before/after table on stdout, DIR/summary.json, and plots in DIR/plots/: acceptance and
       speedup against gamma, before and after overlaid, and the training curves (loss, estimated
       acceptance, mean acceptance length) from DIR/draft/metrics.jsonl.
Each benchmark covers greedy and temperature 1 at batch size 1 over several gamma. Every setting of all
three stages is built and checked before the first one starts.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .benchmark import BenchConfig, run_bench
from .config import add_arguments as _add_arguments, config_from_args, option, to_dict
from .distill.data import SOURCES
from .distill.losses import KINDS
from .distill.trainer import DistillConfig, train
from .plots import plot_files
from .results import BenchRow
from .util import format_table as _table, prepare_out_dir, read_jsonl, resolve_device, write_json_atomic


@dataclass
class DemoConfig:
    out: str | None = option(None, "output folder (before/, draft/, after/, plots/, summary.json)", group="output",
                             required=True)
    overwrite: bool = option(False, "delete the demo run already in --out first", group="output")
    no_progress: bool = option(False, "no progress bars", group="output")
    quick: bool = option(False, "a couple of minutes: fewer steps, prompts and gammas (checks the loop, too short "
                         "to move acceptance much)")
    target: str | None = option(None, "target (default: the bundled target)", group="models")
    draft: str | None = option(None, "draft to distill (default: the bundled draft)", group="models")
    device: str = option("auto", "cpu | cuda | cuda:N | auto (cuda when one is visible)", group="models")
    threads: int | None = option(1, "torch CPU threads of the benchmarks and the distillation (1: fastest on a busy "
                                 "shared CPU, where 2 threads thrash)", group="models")
    steps: int | None = option(None, "distillation steps (default: 300; quick: 40)", group="distillation")
    divergence: str = option("rkl", "divergence of the distillation (rkl: best greedy gain in bench/distill_matrix.py)",
                             group="distillation", choices=KINDS)
    data_source: str = option("student", "data source of the distillation", group="distillation", choices=SOURCES)
    train_temperature: float = option(1.0, "temperature the draft is distilled at", group="distillation")
    lr: float = option(1e-3, "peak learning rate of the distillation", group="distillation")
    batch_size: int = option(8, "distillation sequences per step", group="distillation")
    gamma: tuple[int, ...] | None = option(None, "gammas benchmarked, comma-separated (default: 1,2,4; quick: 2,4)",
                                           group="benchmark")
    num_prompts: int | None = option(None, "held-out prompts per category in the benchmarks (default: 2; quick: 1)",
                                     group="benchmark")
    max_new_tokens: int | None = option(None, "new tokens per benchmark prompt (default: 64; quick: 32)",
                                        group="benchmark")
    seed: int = option(0, "seed of the distillation and the benchmarks")

    def __post_init__(self):
        if not self.out:
            raise ValueError("--out DIR is required")
        q = self.quick
        self.steps = self.steps if self.steps is not None else (40 if q else 300)
        self.gamma = self.gamma or ((2, 4) if q else (1, 2, 4))
        self.num_prompts = self.num_prompts if self.num_prompts is not None else (1 if q else 2)
        self.max_new_tokens = self.max_new_tokens if self.max_new_tokens is not None else (32 if q else 64)


def distill_config(cfg: DemoConfig) -> DistillConfig:
    """Stage 2's settings (DistillConfig validates them: a bad --lr fails before the first benchmark)."""
    try:
        return _distill_config(cfg)
    except ValueError as e:  # name the demo's flag, not the trainer's
        raise ValueError(str(e).replace("--temperature", "--train-temperature")) from None


def _distill_config(cfg: DemoConfig) -> DistillConfig:
    return DistillConfig(out=str(Path(cfg.out) / "draft"), target=cfg.target, draft=cfg.draft,
                         divergence=cfg.divergence, data_source=cfg.data_source, temperature=cfg.train_temperature,
                         steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=max(1, cfg.steps // 10),
                         seed=cfg.seed, eval_every=max(1, cfg.steps // 4), spec_eval_every=cfg.steps, eval_prompts=8,
                         save_every=max(1, cfg.steps // 3), threads=cfg.threads, device=cfg.device,
                         progress=not cfg.no_progress)


def bench_config(cfg: DemoConfig, draft: str | None, out: Path) -> BenchConfig:
    """Stage 1's and 3's settings: the same held-out prompts and seeds, only the draft differs."""
    return BenchConfig(target=cfg.target, draft=draft, device=cfg.device, threads=cfg.threads, gamma=cfg.gamma,
                       temperature=(0.0, 1.0), batch_size=(1,), baselines=("ar",), num_prompts=cfg.num_prompts,
                       max_new_tokens=cfg.max_new_tokens, repeats=1, warmup=1, seed=cfg.seed, out=str(out),
                       no_plots=True, no_progress=cfg.no_progress)


def _sd_rows(rows: list[BenchRow]) -> dict:
    """(temperature, gamma) -> the speculative row over all categories at batch size 1."""
    return {(float(r.temperature), int(r.gamma)): r for r in rows
            if r.method == "sd" and r.category == "all" and r.batch_size == 1 and r.mean_accepted_length is not None}


def compare(before: list[BenchRow], after: list[BenchRow]) -> list[dict]:
    """One row per (temperature, gamma): acceptance and speedup before and after, and the gains."""
    b, a = _sd_rows(before), _sd_rows(after)
    out = []
    for key in sorted(set(b) & set(a)):
        rb, ra = b[key], a[key]
        out.append({"temperature": key[0], "gamma": key[1],
                    "mal_before": rb.mean_accepted_length, "mal_after": ra.mean_accepted_length,
                    "acc_before": rb.acceptance_rate, "acc_after": ra.acceptance_rate,
                    "speedup_before": rb.speedup, "speedup_after": ra.speedup,
                    "mal_gain_pct": 100.0 * (ra.mean_accepted_length / rb.mean_accepted_length - 1.0)})
    return out


TABLE = [("temperature", "T", 4, "g"), ("gamma", "gamma", 5, "d"), ("mal_before", "MAL before", 10, ".3f"),
         ("mal_after", "MAL after", 9, ".3f"), ("mal_gain_pct", "gain %", 7, "+.1f"),
         ("acc_before", "acc before", 10, ".3f"), ("acc_after", "acc after", 9, ".3f"),
         ("speedup_before", "speedup before", 14, ".2f"), ("speedup_after", "speedup after", 13, ".2f")]


def format_table(rows: list[dict]) -> str:
    return _table(rows, TABLE)


def plot_training(metrics_path: Path, out: Path) -> Path:
    """Loss per step and the evaluation curves (estimated acceptance, mean acceptance length)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, _ = read_jsonl(metrics_path)
    train_rows = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], lw=1)
    axes[0].set(title="training loss (divergence per token)", xlabel="step")
    axes[1].plot([r["step"] for r in evals], [r["est_acceptance"] for r in evals], "o-")
    axes[1].set(title="estimated acceptance (held-out)", xlabel="step")
    spec = [r for r in evals if "mean_accepted_length" in r]
    axes[2].plot([r["step"] for r in spec], [r["mean_accepted_length"] for r in spec], "o-")
    gamma = spec[0].get("spec_gamma", "?") if spec else "?"
    axes[2].set(title=f"mean acceptance length (gamma {gamma})", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "training.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _timed(times: dict, name: str, fn):
    t0 = time.perf_counter()
    result = fn()
    times[name] = time.perf_counter() - t0
    return result


def run_demo(cfg: DemoConfig) -> dict:
    out = Path(cfg.out)
    # Every stage's settings first: a bad flag of the last stage must not cost the first one.
    dcfg = distill_config(cfg)
    before_cfg, after_cfg = bench_config(cfg, cfg.draft, out / "before"), bench_config(cfg, dcfg.out, out / "after")
    resolve_device(cfg.device)
    prepare_out_dir(out, "demo", to_dict(cfg), overwrite=cfg.overwrite)
    times: dict = {}
    print(f"[demo] 1/3 bench before -> {out / 'before'}", flush=True)
    before = _timed(times, "bench_before_s", lambda: run_bench(before_cfg))
    print(f"[demo] 2/3 distill {cfg.steps} steps ({cfg.divergence}, {cfg.data_source}) -> {dcfg.out}", flush=True)
    _timed(times, "distill_s", lambda: train(dcfg))
    print(f"[demo] 3/3 bench after -> {out / 'after'}", flush=True)
    after = _timed(times, "bench_after_s", lambda: run_bench(after_cfg))

    rows = compare(before.rows, after.rows)
    print("\nDistilled draft on held-out prompts, batch size 1 (MAL = mean acceptance length):")
    print(format_table(rows))
    plots = [str(p) for p in plot_files([before.results_path, after.results_path], out / "plots", ["before", "after"])]
    plots.append(str(plot_training(Path(dcfg.out) / "metrics.jsonl", out / "plots")))
    summary = {"config": to_dict(cfg), "distill": to_dict(dcfg), "rows": rows, "times_s": times,
               "total_s": sum(times.values()), "plots": plots}
    write_json_atomic(out / "summary.json", summary, indent=2)
    print(f"plots: {', '.join(plots) or 'none'}")
    print(json.dumps({"summary": str(out / "summary.json"), "total_s": round(summary["total_s"], 1),
                      "mal_gain_pct": {f"T{r['temperature']:g}/g{r['gamma']}": round(r["mal_gain_pct"], 1) for r in rows}}))
    return summary


def add_arguments(parser) -> None:
    _add_arguments(parser, DemoConfig)


def run(args) -> int:
    run_demo(config_from_args(args, DemoConfig))
    return 0
