"""`specdec demo --out DIR [--quick]`: the closed loop on the bundled pair.

    1. DIR/before/results.json   `specdec bench` of the original draft (held-out built-in prompts)
    2. DIR/draft/                `specdec distill` of the draft toward the target (train split)
    3. DIR/after/results.json    `specdec bench --draft DIR/draft` on the same held-out prompts
    4. a before/after table on stdout, DIR/summary.json, and plots in DIR/plots/: acceptance and
       speedup against gamma, before and after overlaid (`specdec plot` with both results files),
       and the training curves (loss, estimated acceptance, mean acceptance length) from
       DIR/draft/metrics.jsonl.
Each benchmark covers greedy and temperature 1 at batch size 1 over several gamma. The default budget
fits in about 15 minutes on a 2-core CPU; --quick takes a couple of minutes (and is too short to move
acceptance much: it checks the loop, not the gain).
"""
from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def _f(default, help_, **kw):
    return field(default=default, metadata={"help": help_, **kw})


@dataclass
class DemoConfig:
    out: str = _f(None, "output folder (before/, draft/, after/, plots/, summary.json)")
    quick: bool = _f(False, "a couple of minutes: fewer steps, prompts and gammas")
    target: str | None = _f(None, "target (default: the bundled target)")
    draft: str | None = _f(None, "draft to distill (default: the bundled draft)")
    steps: int | None = _f(None, "distillation steps (default: 300; quick: 40)")
    divergence: str = _f("rkl", "divergence of the distillation (rkl: best greedy gain in bench/distill_matrix.py)",
                         choices=("fkl", "rkl", "jsd", "tvd"))
    data_source: str = _f("student", "data source of the distillation",
                          choices=("dataset", "teacher", "student", "mix", "skd"))
    train_temperature: float = _f(1.0, "temperature the draft is distilled at")
    lr: float = _f(1e-3, "peak learning rate of the distillation")
    batch_size: int = _f(8, "distillation sequences per step")
    gamma: str | None = _f(None, "gammas benchmarked, comma-separated (default: 1,2,4; quick: 2,4)")
    num_prompts: int | None = _f(None, "held-out prompts per category in the benchmarks (default: 2; quick: 1)")
    max_new_tokens: int | None = _f(None, "new tokens per benchmark prompt (default: 64; quick: 32)")
    threads: int | None = _f(1, "torch CPU threads of the benchmarks and the distillation (1: fastest on a busy "
                                "shared CPU, where 2 threads thrash)")
    seed: int = _f(0, "seed")

    def __post_init__(self):
        if not self.out:
            raise ValueError("--out DIR is required")
        q = self.quick
        self.steps = self.steps if self.steps is not None else (40 if q else 300)
        self.gamma = self.gamma or ("2,4" if q else "1,2,4")
        self.num_prompts = self.num_prompts if self.num_prompts is not None else (1 if q else 2)
        self.max_new_tokens = self.max_new_tokens if self.max_new_tokens is not None else (32 if q else 64)
        if self.steps < 1 or self.num_prompts < 1 or self.max_new_tokens < 1:
            raise ValueError("--steps, --num-prompts and --max-new-tokens must be >= 1")


def _bench(cfg: DemoConfig, draft: str | None, out: Path) -> dict:
    try:
        importlib.import_module("specdec.benchmark")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("specdec"):
            raise ValueError("`specdec bench` (specdec/benchmark.py) is not available in this install; the demo "
                             "needs it for the before/after benchmarks") from None
        raise
    from .cli import main as cli_main
    argv = ["bench", "--gamma", cfg.gamma, "--temperature", "0,1", "--batch-size", "1", "--baselines", "ar",
            "--num-prompts", str(cfg.num_prompts), "--max-new-tokens", str(cfg.max_new_tokens), "--repeats", "1",
            "--warmup", "1", "--seed", str(cfg.seed), "--out", str(out), "--no-plots", "--no-progress",
            "--device", "cpu"]
    if cfg.target:
        argv += ["--target", cfg.target]
    if draft:
        argv += ["--draft", draft]
    if cfg.threads:
        argv += ["--threads", str(cfg.threads)]
    rc = cli_main(argv)
    if rc != 0:
        raise ValueError(f"`specdec {' '.join(argv)}` failed with exit code {rc}")
    return json.loads((out / "results.json").read_text())


def _sd_rows(results: dict) -> dict:
    """(temperature, gamma) -> row of the speculative runs over all categories at batch size 1."""
    rows = results.get("runs", results.get("rows", [])) if isinstance(results, dict) else results
    return {(float(r["temperature"]), int(r["gamma"])): r for r in rows
            if r.get("method") == "sd" and r.get("category") == "all" and r.get("batch_size") == 1
            and r.get("mean_accepted_length") is not None}


def compare(before: dict, after: dict) -> list:
    """One row per (temperature, gamma): acceptance and speedup before and after, and the gains."""
    b, a = _sd_rows(before), _sd_rows(after)
    out = []
    for key in sorted(set(b) & set(a)):
        rb, ra = b[key], a[key]
        row = {"temperature": key[0], "gamma": key[1],
               "mal_before": rb["mean_accepted_length"], "mal_after": ra["mean_accepted_length"],
               "acc_before": rb["acceptance_rate"], "acc_after": ra["acceptance_rate"],
               "speedup_before": rb.get("speedup"), "speedup_after": ra.get("speedup")}
        row["mal_gain_pct"] = 100.0 * (row["mal_after"] / row["mal_before"] - 1.0)
        out.append(row)
    return out


def format_table(rows: list) -> str:
    def f(x, spec):
        return "-" if x is None else format(x, spec)
    head = f"{'T':>4} {'gamma':>5} {'MAL before':>10} {'MAL after':>9} {'gain %':>7} {'acc before':>10} " \
           f"{'acc after':>9} {'speedup before':>14} {'speedup after':>13}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['temperature']:>4g} {r['gamma']:>5d} {f(r['mal_before'], '10.3f')} {f(r['mal_after'], '9.3f')} "
                     f"{f(r['mal_gain_pct'], '+7.1f')} {f(r['acc_before'], '10.3f')} {f(r['acc_after'], '9.3f')} "
                     f"{f(r['speedup_before'], '14.2f')} {f(r['speedup_after'], '13.2f')}")
    return "\n".join(lines)


def plot_training(metrics_path: Path, out: Path) -> Path | None:
    """Loss per step and the evaluation curves (estimated acceptance, mean acceptance length)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [json.loads(x) for x in Path(metrics_path).read_text().splitlines() if x.strip()]
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    axes[0].set(title="training loss (divergence per token)", xlabel="step")
    axes[1].plot([r["step"] for r in evals], [r["est_acceptance"] for r in evals], "o-")
    axes[1].set(title="estimated acceptance (held-out)", xlabel="step")
    spec = [r for r in evals if "mean_accepted_length" in r]
    axes[2].plot([r["step"] for r in spec], [r["mean_accepted_length"] for r in spec], "o-")
    axes[2].set(title=f"mean acceptance length (gamma {spec[0]['spec_gamma'] if spec else '?'})", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "training.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(cfg: DemoConfig) -> dict:
    from .distill.trainer import DistillConfig, train

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    t0 = time.perf_counter()
    print(f"[demo] 1/3 bench before -> {out / 'before'}", flush=True)
    before = _bench(cfg, cfg.draft, out / "before")
    times["bench_before_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    print(f"[demo] 2/3 distill {cfg.steps} steps ({cfg.divergence}, {cfg.data_source}) -> {out / 'draft'}", flush=True)
    shutil.rmtree(out / "draft", ignore_errors=True)
    dcfg = DistillConfig(out=str(out / "draft"), target=cfg.target, draft=cfg.draft, divergence=cfg.divergence,
                         data_source=cfg.data_source, temperature=cfg.train_temperature, steps=cfg.steps,
                         batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=max(1, cfg.steps // 10), seed=cfg.seed,
                         eval_every=max(1, cfg.steps // 4), spec_eval_every=cfg.steps,
                         eval_prompts=8, save_every=max(1, cfg.steps // 3), threads=cfg.threads)
    train(dcfg)
    times["distill_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    print(f"[demo] 3/3 bench after -> {out / 'after'}", flush=True)
    after = _bench(cfg, str(out / "draft"), out / "after")
    times["bench_after_s"] = time.perf_counter() - t0

    rows = compare(before, after)
    print("\nDistilled draft on held-out prompts, batch size 1 (MAL = mean acceptance length):")
    print(format_table(rows))
    plots = []
    try:
        from .plots import plot_files
        plots = [str(p) for p in plot_files([out / "before" / "results.json", out / "after" / "results.json"],
                                            out / "plots", ["before", "after"])]
    except ImportError:
        pass
    tp = plot_training(out / "draft" / "metrics.jsonl", out / "plots")
    if tp is not None:
        plots.append(str(tp))
    summary = {"config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "distill": dcfg.to_dict(),
               "rows": rows, "times_s": times, "total_s": sum(times.values()), "plots": plots}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"plots: {', '.join(plots) or 'none'}")
    print(json.dumps({"summary": str(out / "summary.json"), "total_s": round(summary["total_s"], 1),
                      "mal_gain_pct": {f"T{r['temperature']:g}/g{r['gamma']}": round(r["mal_gain_pct"], 1) for r in rows}}))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .distill.trainer import add_arguments as add
    add(parser, DemoConfig)


def run(args) -> int:
    from .distill.trainer import config_from_args
    run_demo(config_from_args(args, DemoConfig))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="specdec demo")
    add_arguments(p)
    sys.exit(run(p.parse_args()))
