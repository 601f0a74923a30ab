"""DistillSpec comparison on the bundled pair: divergences x data sources at equal budgets.

Every cell starts from the same draft, trains the same number of steps on the same batch size (at the
training temperature, default 1), then the distilled draft is evaluated on the same held-out prompts
at greedy AND at temperature 1: estimated acceptance (mean sum_x min(p, q); argmax agreement at
greedy) on draft-generated continuations, and a real speculative run's mean acceptance length (MAL).
Gains are relative to the undistilled draft measured the same way.

    python bench/distill_matrix.py --out bench/results/distill_matrix.json
    python bench/distill_matrix.py --divergences fkl,tvd --sources student,dataset --steps 20
    python bench/distill_matrix.py --cells rkl:student,fkl:dataset --steps 20

Prints a fixed-width table and ends with one JSON line. "Equal budget" = equal optimizer steps and
sequences; the wall time per cell (which differs by source: teacher / skd sampling costs target
forwards) is reported beside it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdec.config import add_arguments, config_from_args, option, to_dict  # noqa: E402
from specdec.distill import DistillConfig, train  # noqa: E402
from specdec.distill.data import SOURCES, heldout_prompts  # noqa: E402
from specdec.distill.evaluate import evaluate  # noqa: E402
from specdec.distill.losses import KINDS  # noqa: E402
from specdec.models import bundled_pair, load_model, load_pair  # noqa: E402
from specdec.util import environment, write_json_atomic  # noqa: E402


@dataclass
class MatrixConfig:
    divergences: tuple[str, ...] = option(KINDS, "divergences to train with", group="cells")
    sources: tuple[str, ...] = option(SOURCES, "data sources to train on", group="cells")
    cells: tuple[str, ...] | None = option(None, "explicit div:source pairs (a reduced matrix), instead of the "
                                                 "cross product", group="cells")
    steps: int = option(20, "optimizer steps per cell", group="training")
    batch_size: int = option(8, "sequences per step", group="training")
    lr: float = option(1e-3, "peak learning rate", group="training")
    train_temperature: float = option(1.0, "temperature the draft is distilled at", group="training")
    eval_prompts: int = option(8, "held-out prompts of the evaluations", group="evaluation")
    eval_gamma: int = option(4, "gamma of the speculative evaluation runs", group="evaluation")
    seed: int = option(0, "seed", group="training")
    threads: int = option(1, "torch CPU threads (1: fastest on a busy shared CPU)", group="training")
    out: str = option("bench/results/distill_matrix.json", "result file (rewritten after every cell)", group="output")

    def __post_init__(self):
        for d in self.divergences:
            if d not in KINDS:
                raise ValueError(f"--divergences: {d!r} is not one of {KINDS}")
        for s in self.sources:
            if s not in SOURCES:
                raise ValueError(f"--sources: {s!r} is not one of {SOURCES}")
        for c in self.cells or ():
            d, _, s = c.partition(":")
            if d not in KINDS or s not in SOURCES:
                raise ValueError(f"--cells: {c!r} is not divergence:source ({KINDS} x {SOURCES})")

    def plan(self) -> list[tuple[str, str]]:
        if self.cells:
            return [tuple(c.split(":")) for c in self.cells]
        return [(d, s) for s in self.sources for d in self.divergences]


def _env() -> dict:
    weights = {p.name: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()[:12] for p in bundled_pair()}
    return {**environment("cpu"), "bundled_weights_sha256": weights}


def measure(target, draft, prompts, base: DistillConfig, vocab, pad_id) -> dict:
    """Estimated acceptance and MAL at greedy and at temperature 1."""
    out = {}
    for T in (0.0, 1.0):
        row = evaluate(target, draft, prompts, replace(base, temperature=T), vocab, pad_id, spec=True)
        out[f"T{T:g}"] = {"est_acceptance": row["est_acceptance"], "mal": row["mean_accepted_length"]}
    return out


def train_cell(div: str, src: str, base: DistillConfig, before: dict, target, prompts, vocab, pad_id,
               tmp: Path) -> dict:
    cfg = replace(base, out=str(tmp / f"{div}_{src}"), divergence=div, data_source=src)
    t0 = time.perf_counter()
    train(cfg)
    train_s = time.perf_counter() - t0
    after = measure(target, load_model(cfg.out, "float32", "cpu"), prompts, base, vocab, pad_id)
    shutil.rmtree(cfg.out, ignore_errors=True)
    gain = {T: {"est_acceptance_pct": 100 * (after[T]["est_acceptance"] / before[T]["est_acceptance"] - 1),
                "mal_pct": 100 * (after[T]["mal"] / before[T]["mal"] - 1)} for T in after}
    print(f"{div:>4} {src:>8}: " + "  ".join(
        f"{T}: acc {after[T]['est_acceptance']:.3f} ({gain[T]['est_acceptance_pct']:+.1f}%) "
        f"MAL {after[T]['mal']:.3f} ({gain[T]['mal_pct']:+.1f}%)" for T in after) + f"  [{train_s:.0f}s]", flush=True)
    return {"divergence": div, "source": src, "train_s": train_s, "after": after, "gain": gain}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap, MatrixConfig)
    try:
        args = config_from_args(ap.parse_args(argv), MatrixConfig)
    except ValueError as e:
        ap.error(str(e))
    torch.set_num_threads(args.threads)

    target, draft, tok, vocab = load_pair()
    pad_id = tok.pad_token_id
    prompts = heldout_prompts(tok, args.eval_prompts, 96)
    base = DistillConfig(out="unused", steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         warmup_steps=max(1, args.steps // 10), temperature=args.train_temperature, seed=args.seed,
                         eval_every=0, spec_eval_every=0, eval_prompts=args.eval_prompts, eval_gamma=args.eval_gamma,
                         save_every=0, progress=False)
    t0 = time.perf_counter()
    before = measure(target, draft, prompts, base, vocab, pad_id)
    print(f"undistilled draft: {json.dumps(before)} ({time.perf_counter() - t0:.0f}s)", flush=True)

    cells = []
    tmp = Path(tempfile.mkdtemp(prefix="distill_matrix_"))
    try:
        for div, src in args.plan():
            cells.append(train_cell(div, src, base, before, target, prompts, vocab, pad_id, tmp))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(args.out, {"env": _env(), "settings": to_dict(args), "before": before, "cells": cells},
                              indent=2)  # after every cell
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(format_table(before, cells))
    print(json.dumps({"out": args.out, "cells": len(cells)}))
    return 0


def format_table(before, cells) -> str:
    head = ("| divergence | source | est. acc. T0 | gain | MAL T0 | gain | est. acc. T1 | gain | MAL T1 | gain | train s |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head, f"| (undistilled) | - | {before['T0']['est_acceptance']:.3f} | | {before['T0']['mal']:.3f} | | "
                   f"{before['T1']['est_acceptance']:.3f} | | {before['T1']['mal']:.3f} | | |"]
    for c in cells:
        a, g = c["after"], c["gain"]
        lines.append(f"| {c['divergence']} | {c['source']} | {a['T0']['est_acceptance']:.3f} | {g['T0']['est_acceptance_pct']:+.1f}% "
                     f"| {a['T0']['mal']:.3f} | {g['T0']['mal_pct']:+.1f}% | {a['T1']['est_acceptance']:.3f} "
                     f"| {g['T1']['est_acceptance_pct']:+.1f}% | {a['T1']['mal']:.3f} | {g['T1']['mal_pct']:+.1f}% "
                     f"| {c['train_s']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
