"""`specdec demo --out DIR [--quick]`: the closed loop on the bundled pair.

    0. DIR/prompts.jsonl         the held-out prompts of both benchmarks: the built-in sets and two
                                 categories neither the trainer nor the built-in sets hold (data.unseen_prompts)
    1. DIR/before/results.json   the benchmark of the original draft
    2. DIR/draft/                DistillSpec training of the draft toward the target (the corpus' train split)
    3. DIR/after/results.json    the benchmark of the distilled draft on the same prompts
    4. tables on stdout, DIR/summary.json, and plots in DIR/plots/: acceptance and speedup against gamma,
       before and after overlaid, and the training curves from DIR/draft/metrics.jsonl.
Each benchmark covers greedy and temperature 1 at batch size 1 over every gamma and gamma auto. The
summary reports, per temperature and gamma, acceptance rate, alpha, mean acceptance length (MAL) and
speedup before and after; the best gamma before and after with its speedup; the MAL gain at gamma 4 on
the built-in and on the unseen categories; whether greedy output equals plain decoding before and after;
the mean count gamma auto chose before and after. Every setting of all three stages is built and
checked before the first one starts.

The default distillation settings are the recipe measured by bench/distill_matrix.py (bench/RESULTS.md,
"DistillSpec"): forward KL on SKD samples (the draft proposes, the target replaces proposals outside
its top 25), lr 1e-3, batch 32 x 112 trained tokens after 16-token prompts, 96 steps: the front of the
measured curve, where temperature 1 has made most of its gain (bench/RESULTS.md, "The recipe: screening,
then a curve", for the curve and the training time).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..benchmark.bench import BenchConfig, check_new_tokens, format_auto_shift, run_bench
from ..common.blocks import OutputBlock, ProgressBlock
from ..common.config import add_arguments as _add_arguments, config_from_args, option, to_dict, with_default
from ..distill.data import SOURCES, UNSEEN_CATEGORIES, unseen_prompts
from ..distill.losses import KINDS
from ..distill.config import check_context
from ..distill.trainer import DistillConfig, train
from ..benchmark.plots import plot_files
from ..data.prompts import builtin
from ..costmodel import AUTO
from ..benchmark.results import BenchRow, auto_shift
from ..common.files import read_jsonl, write_json_atomic, write_text_atomic
from ..common.fingerprint import fingerprint_inputs
from ..common.outdir import claim
from ..common.table import format_table as _table
from ..engine.devices import resolve_device
from ..models import bundled_pair
from ..models.options import ModelsBlock

GOAL_GAMMA = 4          # the gamma the MAL goal is stated at
# What a demo writes into --out (common.outdir: --overwrite deletes these and nothing else).
OUTPUTS = ("prompts.jsonl", "before", "draft", "after", "plots", "summary.json")


@dataclass
class DemoConfig(ProgressBlock, OutputBlock, ModelsBlock):
    """The models and output blocks (models/options.py, common/blocks.py) and the three stages' settings;
    --out holds prompts.jsonl, before/, draft/, after/, plots/ and summary.json."""
    threads: int | None = with_default(ModelsBlock, "threads", 1)   # 1: the recipe's measurements; 2 thrash
    quick: bool = option(False, "a couple of minutes: fewer steps, prompts and gammas (checks the loop, too short "
                         "to move acceptance much)")
    steps: int | None = option(None, "distillation steps (default: 96; quick: 10)", group="distillation")
    divergence: str = option("fkl", "divergence of the distillation", group="distillation", choices=KINDS)
    data_source: str = option("skd", "data source of the distillation", group="distillation", choices=SOURCES)
    train_temperature: float = option(1.0, "temperature the draft is distilled at", group="distillation")
    lr: float = option(1e-3, "peak learning rate of the distillation", group="distillation")
    batch_size: int | None = option(None, "distillation sequences per step (default: 32; quick: 8)",
                                    group="distillation")
    prompt_tokens: int = option(16, "prompt tokens of each distillation sequence", group="distillation")
    new_tokens: int = option(112, "trained (continuation) tokens of each distillation sequence", group="distillation")
    gamma: tuple[int, ...] | None = option(None, "fixed gammas benchmarked, comma-separated, beside gamma auto "
                                           "(default: 1,2,3,4,6; quick: 2,4)", group="benchmark")
    num_prompts: int | None = option(None, "held-out prompts per built-in category in the benchmarks (default: 2; "
                                     "quick: 1)", group="benchmark")
    unseen_prompts: int | None = option(None, "prompts per unseen category (default: 2; quick: 1; 0: none)",
                                        group="benchmark")
    max_new_tokens: int | None = option(None, "new tokens per benchmark prompt (default: 64; quick: 32)",
                                        group="benchmark")
    repeats: int = option(1, "timed passes of each benchmark configuration", group="benchmark")
    seed: int = option(0, "seed of the distillation and the benchmarks")

    def __post_init__(self):
        super().__post_init__()
        q = self.quick
        self.steps = self.steps if self.steps is not None else (10 if q else 96)
        self.batch_size = self.batch_size if self.batch_size is not None else (8 if q else 32)
        self.gamma = self.gamma or ((2, 4) if q else (1, 2, 3, 4, 6))
        self.num_prompts = self.num_prompts if self.num_prompts is not None else (1 if q else 2)
        self.unseen_prompts = self.unseen_prompts if self.unseen_prompts is not None else (1 if q else 2)
        self.max_new_tokens = self.max_new_tokens if self.max_new_tokens is not None else (32 if q else 64)
        if self.num_prompts < 1 or self.unseen_prompts < 0:
            raise ValueError("--num-prompts must be >= 1 and --unseen-prompts >= 0")


# ----------------------------------------------------------------------------------------------------
# Stage settings.

def distill_config(cfg: DemoConfig) -> DistillConfig:
    """Stage 2's settings (DistillConfig validates them: a bad --lr fails before the first benchmark)."""
    try:
        return _distill_config(cfg)
    except ValueError as e:  # name the demo's flag, not the trainer's
        raise ValueError(str(e).replace("--temperature", "--train-temperature")) from None


def _distill_config(cfg: DemoConfig) -> DistillConfig:
    return DistillConfig(out=str(Path(cfg.out) / "draft"), target=cfg.target, draft=cfg.draft,
                         chat_template=cfg.chat_template,
                         divergence=cfg.divergence, data_source=cfg.data_source, temperature=cfg.train_temperature,
                         prompt_tokens=cfg.prompt_tokens, new_tokens=cfg.new_tokens, steps=cfg.steps,
                         batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=max(1, cfg.steps // 20), seed=cfg.seed,
                         eval_every=max(1, cfg.steps // 4), spec_eval_every=cfg.steps, eval_prompts=8,
                         save_every=max(1, cfg.steps // 3), threads=cfg.threads, device=cfg.device,
                         progress=cfg.progress)


def bench_config(cfg: DemoConfig, draft: str | None, out: Path, prompts: Path | None = None) -> BenchConfig:
    """Stage 1's and 3's settings: the same prompts and seeds, only the draft differs. prompts: the file
    stage 0 wrote (None: the built-in sets, to check every other setting before the file exists)."""
    # gamma auto beside the fixed gammas: the summary shows the count it picks before and after.
    # --pair was resolved into cfg's target and draft; its other defaults are the demo's own settings
    return BenchConfig(target=cfg.target, draft=draft, device=cfg.device, threads=cfg.threads,
                       chat_template=cfg.chat_template,
                       gamma=tuple(cfg.gamma) + (AUTO,), temperature=(0.0, 1.0), batch_size=(1,), baselines=("ar",),
                       prompts=None if prompts is None else str(prompts), num_prompts=0,
                       max_new_tokens=cfg.max_new_tokens, repeats=cfg.repeats, warmup=1, seed=cfg.seed, out=str(out),
                       no_plots=True, progress=cfg.progress)


def prompts_path(cfg: DemoConfig) -> Path:
    return Path(cfg.out) / "prompts.jsonl"


def write_prompts(cfg: DemoConfig) -> list[dict]:
    """Stage 0: the built-in held-out prompts and the unseen categories, one JSONL file."""
    items = builtin(max_per_category=cfg.num_prompts) + (unseen_prompts(cfg.unseen_prompts) if cfg.unseen_prompts
                                                          else [])
    write_text_atomic(prompts_path(cfg), "".join(json.dumps({"id": p["id"], "category": p["category"],
                                                             "prompt": p["prompt"]}) + "\n" for p in items))
    return items


# ----------------------------------------------------------------------------------------------------
# The comparison (pure functions of the two benchmarks' rows).

def _sd_rows(rows: list[BenchRow], category: str = "all") -> dict:
    """(temperature, gamma) -> the speculative row of `category` at batch size 1, fixed gammas only (auto's
    rows are summarised by auto_shift)."""
    return {(float(r.temperature), r.gamma): r for r in rows
            if r.method == "sd" and isinstance(r.gamma, int) and r.category == category and r.batch_size == 1
            and r.mean_accepted_length is not None}


def compare(before: list[BenchRow], after: list[BenchRow]) -> list[dict]:
    """One row per (temperature, gamma) over all prompts: acceptance rate, alpha, MAL and speedup before
    and after, the MAL gain, and whether greedy output equalled plain decoding."""
    b, a = _sd_rows(before), _sd_rows(after)
    out = []
    for key in sorted(set(b) & set(a)):
        rb, ra = b[key], a[key]
        out.append({"temperature": key[0], "gamma": key[1],
                    "mal_before": rb.mean_accepted_length, "mal_after": ra.mean_accepted_length,
                    "mal_gain_pct": 100.0 * (ra.mean_accepted_length / rb.mean_accepted_length - 1.0),
                    "acc_before": rb.acceptance_rate, "acc_after": ra.acceptance_rate,
                    "alpha_before": rb.alpha, "alpha_after": ra.alpha,
                    "speedup_before": rb.speedup, "speedup_after": ra.speedup,
                    "match_before": rb.outputs_match_ar, "match_after": ra.outputs_match_ar})
    return out


def best_gamma(rows: list[dict], when: str) -> dict:
    """temperature -> {"gamma", "speedup"} of the fastest gamma `when` ("before" / "after")."""
    best: dict = {}
    for r in rows:
        s = r[f"speedup_{when}"]
        if s is not None and (r["temperature"] not in best or s > best[r["temperature"]]["speedup"]):
            best[r["temperature"]] = {"gamma": r["gamma"], "speedup": s}
    return best


def pooled_mal(rows: list[BenchRow], categories, temperature: float, gamma: int) -> float | None:
    """MAL over several categories' rows, pooled exactly: MAL = 1 + accepted / draft steps, so each
    category contributes (MAL - 1) x its draft steps accepted tokens."""
    picked = [r for r in rows if r.method == "sd" and r.category in categories and r.batch_size == 1
              and float(r.temperature) == temperature and r.gamma == gamma and r.draft_steps]
    steps = sum(r.draft_steps for r in picked)
    return 1.0 + sum((r.mean_accepted_length - 1.0) * r.draft_steps for r in picked) / steps if steps else None


def group_gains(before: list[BenchRow], after: list[BenchRow], gamma: int = GOAL_GAMMA) -> list[dict]:
    """MAL at `gamma` before / after for each category, the built-in ones pooled and the unseen ones pooled."""
    cats = list(dict.fromkeys(r.category for r in before if r.category != "all"))
    groups = [(c, (c,)) for c in cats]
    groups += [("built-in", tuple(c for c in cats if c not in UNSEEN_CATEGORIES)),
               ("unseen", tuple(c for c in cats if c in UNSEEN_CATEGORIES))]
    out = []
    for name, members in groups:
        for T in (0.0, 1.0):
            b, a = pooled_mal(before, members, T, gamma), pooled_mal(after, members, T, gamma)
            if b is not None and a is not None:
                out.append({"group": name, "temperature": T, "gamma": gamma, "mal_before": b, "mal_after": a,
                            "mal_gain_pct": 100.0 * (a / b - 1.0)})
    return out


def goals(rows: list[dict], groups: list[dict], shift: list[dict] = ()) -> dict:
    """The closed loop's goals, from the summary's own numbers (None where a figure is missing)."""
    gain = {(g["group"], g["temperature"]): g["mal_gain_pct"] for g in groups}
    bb, ba = best_gamma(rows, "before"), best_gamma(rows, "after")
    ratio = {T: ba[T]["speedup"] / bb[T]["speedup"] for T in bb if T in ba and bb[T]["speedup"]}
    matches = [r[k] for r in rows if r["temperature"] == 0 for k in ("match_before", "match_after")]
    return {"mal_gain_builtin_T0_pct": gain.get(("built-in", 0.0)), "mal_gain_builtin_T1_pct": gain.get(("built-in", 1.0)),
            "mal_gain_unseen_T0_pct": gain.get(("unseen", 0.0)), "mal_gain_unseen_T1_pct": gain.get(("unseen", 1.0)),
            "best_speedup_ratio": {f"T{T:g}": v for T, v in ratio.items()},
            "greedy_equals_plain": bool(matches) and all(m is True for m in matches),
            # positive: gamma auto drafts more after distillation, unasked (issue 13's goal)
            "auto_mean_gamma_change": {f"T{r['temperature']:g}": r["gamma_change"] for r in shift}}


TABLE = [("temperature", "T", 3, "g"), ("gamma", "gamma", 5, "d"), ("acc_before", "acc rate", 8, ".3f"),
         ("acc_after", "-> after", 8, ".3f"), ("alpha_before", "alpha", 6, ".3f"), ("alpha_after", "-> after", 8, ".3f"),
         ("mal_before", "MAL", 6, ".3f"), ("mal_after", "-> after", 8, ".3f"), ("mal_gain_pct", "gain %", 7, "+.1f"),
         ("speedup_before", "speedup", 7, ".2f"), ("speedup_after", "-> after", 8, ".2f"),
         ("match_before", "=plain", 6, ""), ("match_after", "-> after", 8, "")]
GROUP_TABLE = [("group", "prompts", 10, "s"), ("temperature", "T", 3, "g"), ("gamma", "gamma", 5, "d"),
               ("mal_before", "MAL before", 10, ".3f"), ("mal_after", "MAL after", 9, ".3f"),
               ("mal_gain_pct", "gain %", 7, "+.1f")]


def format_table(rows: list[dict]) -> str:
    return _table(rows, TABLE)


def format_best(rows: list[dict]) -> str:
    bb, ba = best_gamma(rows, "before"), best_gamma(rows, "after")
    lines = []
    for T in sorted(bb):
        b, a = bb[T], ba.get(T)
        after = f"gamma {a['gamma']} at {a['speedup']:.2f}x" if a else "-"
        ratio = f" ({a['speedup'] / b['speedup']:.2f}x the best before)" if a and b["speedup"] else ""
        lines.append(f"T {T:g}: best gamma before: {b['gamma']} at {b['speedup']:.2f}x; after: {after}{ratio}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# The run.

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
    bench_config(cfg, cfg.draft, out / "before")
    resolve_device(cfg.device)
    bt, bd = bundled_pair()
    check_context(dcfg, cfg.target or bt, cfg.draft or bd)   # the models' context, from their configs
    check_new_tokens(cfg.max_new_tokens, cfg.target or bt, cfg.draft or bd)
    inputs = fingerprint_inputs({"--target": cfg.target or bt, "--draft": cfg.draft or bd}, {})
    # prompts.jsonl is part of the setup: a demo whose first benchmark cannot load its models leaves --out as found
    with claim(out, "demo", to_dict(cfg), overwrite=cfg.overwrite, inputs=inputs, outputs=OUTPUTS,
               setup_files=("prompts.jsonl",)) as run:
        times: dict = {}
        prompts = _timed(times, "prompts_s", lambda: write_prompts(cfg))
        before_cfg = bench_config(cfg, cfg.draft, out / "before", prompts_path(cfg))
        after_cfg = bench_config(cfg, dcfg.out, out / "after", prompts_path(cfg))
        print(f"[demo] 1/3 bench before ({len(prompts)} prompts) -> {out / 'before'}", flush=True)
        before = _timed(times, "bench_before_s", lambda: run_bench(before_cfg))
        run.commit()
        print(f"[demo] 2/3 distill {cfg.steps} steps ({cfg.divergence}, {cfg.data_source}) -> {dcfg.out}", flush=True)
        _timed(times, "distill_s", lambda: train(dcfg))
        print(f"[demo] 3/3 bench after -> {out / 'after'}", flush=True)
        after = _timed(times, "bench_after_s", lambda: run_bench(after_cfg))
        return summarise(cfg, dcfg, before.rows, after.rows, times, out,
                         [before.results_path, after.results_path])


def summarise(cfg: DemoConfig, dcfg: DistillConfig, before: list, after: list, times: dict, out: Path,
              results_paths: list) -> dict:
    rows, groups = compare(before, after), group_gains(before, after)
    print("\nBefore -> after distillation, all prompts, batch size 1 (MAL = mean acceptance length; "
          "=plain: greedy output equals plain decoding):")
    print(format_table(rows))
    print(f"\nMAL at gamma {GOAL_GAMMA} by prompt category (built-in: the held-out sets; unseen: "
          f"{', '.join(UNSEEN_CATEGORIES)}):")
    print(_table(groups, GROUP_TABLE))
    print("\n" + format_best(rows))
    shift = auto_shift(before, after)
    if shift:
        print("\ngamma auto (the count chosen each round from each row's acceptance and the measured round costs), "
              "before -> after:")
        print(format_auto_shift(before, after))
    plots = [str(p) for p in plot_files(results_paths, out / "plots", ["before", "after"])]
    plots.append(str(plot_training(Path(dcfg.out) / "metrics.jsonl", out / "plots")))
    summary = {"config": to_dict(cfg), "distill": to_dict(dcfg), "rows": rows, "groups": groups,
               "best_gamma": {"before": best_gamma(rows, "before"), "after": best_gamma(rows, "after")},
               "auto_gamma": shift,
               "goals": goals(rows, groups, shift), "times_s": times, "total_s": sum(times.values()), "plots": plots}
    write_json_atomic(out / "summary.json", summary, indent=2)
    print(f"plots: {', '.join(plots) or 'none'}")
    print(json.dumps({"summary": str(out / "summary.json"), "total_s": round(summary["total_s"], 1),
                      **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in summary["goals"].items()
                         if not isinstance(v, dict)}}))
    return summary


def add_arguments(parser) -> None:
    _add_arguments(parser, DemoConfig)


def run(args) -> int:
    run_demo(config_from_args(args, DemoConfig))
    return 0
