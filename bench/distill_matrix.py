"""DistillSpec recipe search on the bundled pair: cells of divergence x data source x learning rate,
each trained from the same draft and evaluated along the way, so that the gain in real mean acceptance
length can be read against trained tokens and wall time.

    # screening: short runs, evaluated at the end
    python bench/distill_matrix.py --out bench/results/distill_screen --steps 64 \\
        --cells fkl:student,rkl:student,fkl:dataset,fkl:skd,fkl:cache-dataset:3e-3
    # a curve: one long run, evaluated every 40 steps
    python bench/distill_matrix.py --out bench/results/distill_curve --steps 900 --eval-every 40 --cells fkl:student
    # replot / retabulate without training
    python bench/distill_matrix.py --out bench/results/distill_curve --report

A cell is `divergence:source[:lr]`; the source `cache-dataset` / `cache-teacher` reads one teacher cache
(`specdec cache-teacher`, built in DIR once and shared by every cell that uses it; its build time is
reported and charged to the cells pro rata). Every cell starts from the same draft and sees the same
batches (same seed). Evaluation (specdec.distill.evaluate, on `--eval-prompts` held-out built-in
prompts, at greedy and temperature 1): the real mean acceptance length (MAL) of speculative decoding at
`--eval-gamma`, its alpha, and the estimated acceptance on draft-generated continuations. The
undistilled draft is evaluated once (DIR/before.json); gains are relative to it.

Outputs in DIR (written incrementally; an interrupted run continues where it stopped, cells trained
through the trainer's own checkpoints): before.json, cells.jsonl (one line per finished cell: its
curve), runs/<cell>/metrics.jsonl, curve.png. Prints a fixed-width table and ends with one JSON line.
Wall time = the trainer's step times (sampling, teacher, forward, backward, optimizer), evaluations
excluded.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdec.common.config import option, parse_script_args, to_dict  # noqa: E402
from specdec.distill import CacheConfig, DistillConfig, build_cache, train  # noqa: E402
from specdec.distill.data import SOURCES, heldout_prompts  # noqa: E402
from specdec.distill.evaluate import evaluate  # noqa: E402
from specdec.distill.losses import KINDS  # noqa: E402
from specdec.models import bundled_pair, load_model, load_tokenizer  # noqa: E402
from specdec.common.env import environment  # noqa: E402
from specdec.common.files import append_jsonl, read_jsonl, write_json_atomic  # noqa: E402
from specdec.common.table import format_table  # noqa: E402

CACHED = ("cache-dataset", "cache-teacher")
TEMPS = (0.0, 1.0)


@dataclass
class MatrixConfig:
    out: str = option(None, "output folder (before.json, cells.jsonl, runs/, curve.png)", group="output", required=True)
    report: bool = option(False, "only tabulate and plot what DIR holds", group="output")
    also: tuple[str, ...] = option((), "--report: other matrix folders whose cells join the plot (each cell's gain "
                                   "relative to its own undistilled draft; names prefixed by the folder)", group="output")
    keep_models: bool = option(False, "keep each cell's distilled draft (else only its metrics)", group="output")
    cells: tuple[str, ...] = option(("fkl:student",), "divergence:source[:lr] cells; sources: " +
                                    ", ".join(SOURCES + CACHED), group="cells")
    draft: str | None = option(None, "starting draft (default: the bundled draft)", group="cells")
    steps: int = option(64, "optimizer steps per cell", group="training")
    batch_size: int = option(32, "sequences per step", group="training")
    prompt_tokens: int = option(16, "prompt tokens per sequence", group="training")
    new_tokens: int = option(112, "continuation (trained) tokens per sequence", group="training")
    lr: float = option(1e-3, "peak learning rate of cells that do not name one", group="training")
    warmup_steps: int = option(5, "warm-up steps", group="training")
    train_temperature: float = option(1.0, "temperature the draft is distilled at", group="training")
    seed: int = option(0, "seed", group="training")
    eval_every: int = option(0, "evaluate every N steps (0: only at the end)", group="evaluation")
    eval_prompts: int = option(32, "held-out built-in prompts of the evaluations", group="evaluation")
    eval_gamma: int = option(4, "gamma of the speculative evaluation runs", group="evaluation")
    eval_new_tokens: int = option(64, "tokens generated per evaluation prompt", group="evaluation")
    threads: int = option(1, "torch CPU threads (1: fastest on a busy shared CPU)", group="training")

    def __post_init__(self):
        # Every cell's trainer settings are checked here, before any model loads (DistillConfig validates).
        for c in self.cells:
            _, _, lr = parse_cell(c, self.lr)
            try:
                dataclasses.replace(base_config(self, Path("unused")), lr=lr)
            except ValueError as e:
                raise ValueError(f"{e} (cell {c!r})") from None


def parse_cell(cell: str, default_lr: float) -> tuple[str, str, float]:
    parts = cell.split(":")
    if len(parts) not in (2, 3) or parts[0] not in KINDS or parts[1] not in SOURCES + CACHED:
        raise ValueError(f"--cells: {cell!r} is not divergence:source[:lr] ({KINDS} x {SOURCES + CACHED})")
    try:
        lr = float(parts[2]) if len(parts) == 3 else default_lr
    except ValueError:
        raise ValueError(f"--cells: {cell!r}: the learning rate {parts[2]!r} is not a number") from None
    return parts[0], parts[1], lr


def cell_name(div: str, src: str, lr: float) -> str:
    return f"{div}-{src}-lr{lr:g}"


def base_config(args: MatrixConfig, out: Path) -> DistillConfig:
    return DistillConfig(out=str(out), draft=args.draft, steps=args.steps, batch_size=args.batch_size,
                         prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, lr=args.lr,
                         warmup_steps=args.warmup_steps, temperature=args.train_temperature, seed=args.seed,
                         eval_every=0, spec_eval_every=args.eval_every, eval_prompts=args.eval_prompts,
                         eval_gamma=args.eval_gamma, eval_temperatures=TEMPS, eval_new_tokens=args.eval_new_tokens,
                         save_every=max(10, args.steps // 10), keep_checkpoints=1, progress=False,
                         threads=args.threads, device="cpu")


# ----------------------------------------------------------------------------------------------------
# Stages: the undistilled draft, the shared caches, the cells.

def before(args: MatrixConfig, out: Path) -> dict:
    """The undistilled draft's evaluation, once per DIR."""
    path = out / "before.json"
    if path.is_file():
        return json.loads(path.read_text())["eval"]
    target_path, bundled_draft = bundled_pair()
    draft_path = args.draft or str(bundled_draft)
    tok = load_tokenizer(draft_path)
    target, draft = load_model(target_path, "float32", "cpu"), load_model(draft_path, "float32", "cpu")
    vocab = min(len(tok), target.get_output_embeddings().weight.shape[0], draft.get_output_embeddings().weight.shape[0])
    cfg = base_config(args, out / "unused")
    t0 = time.perf_counter()
    row = evaluate(target, draft, heldout_prompts(tok, args.eval_prompts, cfg.prompt_tokens), cfg, vocab,
                   tok.pad_token_id, spec=True)
    write_json_atomic(path, {"eval": row, "eval_s": time.perf_counter() - t0, "draft": draft_path}, indent=2)
    return row


def caches(args: MatrixConfig, out: Path) -> dict:
    """source -> (folder, build seconds) for every cached source the cells use (built or finished here)."""
    found = {}
    for src in sorted({parse_cell(c, args.lr)[1] for c in args.cells} & set(CACHED)):
        folder = out / src
        record = out / f"{src}.json"
        if not record.is_file():
            t0 = time.perf_counter()
            build_cache(CacheConfig(out=str(folder), resume=(folder / "specdec_run.json").is_file(), data_source=src.split("-", 1)[1],
                                    prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                                    temperature=args.train_temperature, steps=args.steps, batch_size=args.batch_size,
                                    seed=args.seed, threads=args.threads, device="cpu"))
            write_json_atomic(record, {"build_s": time.perf_counter() - t0, "steps": args.steps})
        found[src] = (folder, json.loads(record.read_text())["build_s"])
    return found


def curve(metrics: Path) -> list[dict]:
    """Evaluation rows of a run with the trained tokens and training seconds up to each."""
    rows, _ = read_jsonl(metrics)
    tokens, secs, out = 0, 0.0, []
    for r in rows:
        if r.get("kind") == "train":
            tokens += r["tokens"]
            secs += r["step_s"]
        elif r.get("kind") == "eval":
            out.append({"step": r["step"], "tokens": tokens, "train_s": secs,
                        **{k: v for k, v in r.items() if k.endswith(("_T0", "_T1"))}})
    return out


def run_cell(args: MatrixConfig, out: Path, cell: str, found: dict) -> dict:
    div, src, lr = parse_cell(cell, args.lr)
    name = cell_name(div, src, lr)
    run = out / "runs" / name
    cache, build_s = found.get(src, (None, 0.0))
    cfg = base_config(args, run)
    resume = (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir())
    cfg = DistillConfig(**{**to_dict(cfg), "divergence": div, "lr": lr,
                           "data_source": src.split("-", 1)[1] if cache else src,
                           "teacher_cache": None if cache is None else str(cache),
                           "resume": resume, "overwrite": run.is_dir() and not resume})
    t0 = time.perf_counter()
    train(cfg)
    points = curve(run / "metrics.jsonl")
    if not args.keep_models:
        for f in list(run.iterdir()):
            if f.name not in ("metrics.jsonl", "distill_config.json", "specdec_run.json"):
                shutil.rmtree(f) if f.is_dir() else f.unlink()
    return {"cell": name, "divergence": div, "source": src, "lr": lr, "steps": args.steps,
            "cache_build_s": build_s, "wall_s": time.perf_counter() - t0, "curve": points}


# ----------------------------------------------------------------------------------------------------
# Report.

def gains(before_row: dict, point: dict) -> dict:
    return {f"gain_{m}_{T}": 100.0 * (point[f"{m}_{T}"] / before_row[f"{m}_{T}"] - 1.0)
            for m in ("mean_accepted_length", "est_acceptance") for T in ("T0", "T1")}


def table_rows(before_row: dict, cells: list[dict]) -> list[dict]:
    rows = [{"cell": "(undistilled)", "mal_T0": before_row["mean_accepted_length_T0"],
             "mal_T1": before_row["mean_accepted_length_T1"], "est_T0": before_row["est_acceptance_T0"],
             "est_T1": before_row["est_acceptance_T1"]}]
    for c in cells:
        p = c["curve"][-1]
        g = gains(before_row, p)
        rows.append({"cell": c["cell"], "tokens": p["tokens"], "minutes": p["train_s"] / 60,
                     "mal_T0": p["mean_accepted_length_T0"], "gain_T0": g["gain_mean_accepted_length_T0"],
                     "mal_T1": p["mean_accepted_length_T1"], "gain_T1": g["gain_mean_accepted_length_T1"],
                     "est_T0": p["est_acceptance_T0"], "est_T1": p["est_acceptance_T1"]})
    return rows


COLUMNS = [("cell", "cell", 28, "s"), ("tokens", "tokens", 9, "d"), ("minutes", "train min", 9, ".1f"),
           ("mal_T0", "MAL T0", 7, ".3f"), ("gain_T0", "gain %", 7, "+.1f"), ("mal_T1", "MAL T1", 7, ".3f"),
           ("gain_T1", "gain %", 7, "+.1f"), ("est_T0", "est T0", 7, ".3f"), ("est_T1", "est T1", 7, ".3f")]


def plot(runs: list[tuple[dict, list]], path: Path) -> Path:
    """MAL gain (%) against training minutes and trained tokens, greedy and T 1, one line per cell.
    runs: (undistilled evaluation, cells) per matrix folder; each cell is relative to its own folder's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), sharey="row")
    for before_row, c in [(b, c) for b, cells in runs for c in cells]:
        pts = [{"tokens": 0, "train_s": 0.0, **{k: before_row[k] for k in before_row if k.endswith(("_T0", "_T1"))}}]
        pts += c["curve"]
        for row, T in enumerate(("T0", "T1")):
            g = [gains(before_row, p)[f"gain_mean_accepted_length_{T}"] for p in pts]
            axes[row][0].plot([p["train_s"] / 60 for p in pts], g, "o-", ms=3, label=c["cell"])
            axes[row][1].plot([p["tokens"] / 1e6 for p in pts], g, "o-", ms=3, label=c["cell"])
    for row, T in enumerate(("greedy", "temperature 1")):
        axes[row][0].set(xlabel="training wall time (min)", ylabel=f"MAL gain at gamma 4, {T} (%)")
        axes[row][1].set(xlabel="trained tokens (M)")
    for ax in axes.flat:
        ax.axhline(0, color="k", lw=0.8)
        ax.axhline(20, color="g", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=7)
    fig.suptitle("DistillSpec on the bundled pair: mean acceptance length gain on held-out prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load(folder: Path, prefix: str = "") -> tuple[dict, list]:
    """(the undistilled evaluation, the finished cells) of a matrix folder; cell names get `prefix`."""
    before_row = json.loads((folder / "before.json").read_text())["eval"]
    cells, _ = read_jsonl(folder / "cells.jsonl") if (folder / "cells.jsonl").is_file() else ([], 0)
    return before_row, [{**c, "cell": prefix + c["cell"]} for c in cells]


def report(out: Path, also=()) -> int:
    before_row, cells = load(out, out.name + ": " if also else "")   # overlaid: every cell names its folder
    print(format_table(table_rows(before_row, cells), COLUMNS))
    runs = [(before_row, cells)]
    for other in also:
        runs.append(load(Path(other), Path(other).name + ": "))
        print(f"\n{other}:\n" + format_table(table_rows(*runs[-1]), COLUMNS))
    written = plot(runs, out / "curve.png") if cells else None
    print(json.dumps({"out": str(out), "cells": len(cells), "plot": None if written is None else str(written)}))
    return 0


def main(argv=None) -> int:
    args = parse_script_args(argv, __doc__, MatrixConfig)
    out = Path(args.out)
    if args.report:
        return report(out, args.also)
    torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in to_dict(args).items() if k not in ("cells", "report", "keep_models", "threads")}
    saved = out / "settings.json"
    if saved.is_file() and json.loads(saved.read_text())["settings"] != settings:
        raise SystemExit(f"{out} holds a matrix with other settings ({saved}); choose another --out")
    write_json_atomic(saved, {"settings": settings, "env": environment("cpu")}, indent=2)
    b = before(args, out)
    print(f"undistilled: MAL T0 {b['mean_accepted_length_T0']:.3f}, T1 {b['mean_accepted_length_T1']:.3f}", flush=True)
    found = caches(args, out)
    done = {c["cell"] for c in (read_jsonl(out / "cells.jsonl")[0] if (out / "cells.jsonl").is_file() else [])}
    for cell in args.cells:
        if cell_name(*parse_cell(cell, args.lr)) in done:
            continue
        row = run_cell(args, out, cell, found)
        append_jsonl(out / "cells.jsonl", row)
        p = row["curve"][-1]
        g = gains(b, p)
        print(f"{row['cell']}: {p['tokens']} tokens in {p['train_s'] / 60:.1f} min: MAL T0 "
              f"{p['mean_accepted_length_T0']:.3f} ({g['gain_mean_accepted_length_T0']:+.1f}%), T1 "
              f"{p['mean_accepted_length_T1']:.3f} ({g['gain_mean_accepted_length_T1']:+.1f}%)", flush=True)
    print()
    return report(out, args.also)


if __name__ == "__main__":
    sys.exit(main())
