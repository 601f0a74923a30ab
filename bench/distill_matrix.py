"""DistillSpec comparison on the bundled pair: divergences x data sources at equal budgets.

Every cell starts from the same draft, trains the same number of steps on the same batch size (at the
training temperature, default 1), then the distilled draft is evaluated on the same held-out prompts
at greedy AND at temperature 1: estimated acceptance (mean sum_x min(p, q); argmax agreement at
greedy) on draft-generated continuations, and a real speculative run's mean acceptance length (MAL).
Gains are relative to the undistilled draft measured the same way.

    python bench/distill_matrix.py --out bench/results/distill_matrix.json
    python bench/distill_matrix.py --divergences fkl,tvd --sources student,dataset --steps 20

Prints a fixed-width table and ends with one JSON line. "Equal budget" = equal optimizer steps and
sequences; the wall time per cell (which differs by source: teacher / skd sampling costs target
forwards) is reported beside it.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdec.distill.data import heldout_prompts  # noqa: E402
from specdec.distill.trainer import DistillConfig, evaluate, train  # noqa: E402
from specdec.models import load_pair, load_model  # noqa: E402


def _env() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = None
    import hashlib

    import transformers
    from specdec.models import bundled_pair
    weights = {p.name: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()[:12] for p in bundled_pair()}
    return {"bundled_weights_sha256": weights, "device": "cpu", "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "commit": commit, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def measure(target, draft, prompts, base: DistillConfig, vocab, pad_id, eos) -> dict:
    """Estimated acceptance and MAL at greedy and at temperature 1."""
    out = {}
    for T in (0.0, 1.0):
        row = evaluate(target, draft, prompts, replace(base, temperature=T), vocab, pad_id, eos, spec=True)
        out[f"T{T:g}"] = {"est_acceptance": row["est_acceptance"], "mal": row["mean_accepted_length"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--divergences", default="fkl,rkl,jsd,tvd")
    ap.add_argument("--sources", default="dataset,teacher,student,mix,skd")
    ap.add_argument("--cells", default=None,
                    help="explicit div:source pairs, comma-separated (a reduced matrix), instead of the cross product")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-temperature", type=float, default=1.0)
    ap.add_argument("--eval-prompts", type=int, default=8)
    ap.add_argument("--eval-gamma", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fastest on a busy shared CPU)")
    ap.add_argument("--out", default="bench/results/distill_matrix.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    divs = [d for d in args.divergences.split(",") if d]
    srcs = [s for s in args.sources.split(",") if s]
    plan = [tuple(c.split(":")) for c in args.cells.split(",")] if args.cells else [(d, s) for s in srcs for d in divs]

    target, draft, tok, vocab = load_pair()
    pad_id, eos = tok.pad_token_id, [tok.eos_token_id]
    prompts = heldout_prompts(tok, args.eval_prompts, 96)
    base = DistillConfig(out="unused", steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         warmup_steps=max(1, args.steps // 10), temperature=args.train_temperature, seed=args.seed,
                         eval_every=0, spec_eval_every=0, eval_prompts=args.eval_prompts, eval_gamma=args.eval_gamma,
                         save_every=0, progress=False)
    t0 = time.perf_counter()
    before = measure(target, draft, prompts, base, vocab, pad_id, eos)
    print(f"undistilled draft: {json.dumps(before)} ({time.perf_counter() - t0:.0f}s)", flush=True)

    cells = []
    tmp = Path(tempfile.mkdtemp(prefix="distill_matrix_"))
    try:
        for div, src in plan:
            cfg = replace(base, out=str(tmp / f"{div}_{src}"), divergence=div, data_source=src)
            t0 = time.perf_counter()
            train(cfg)
            train_s = time.perf_counter() - t0
            trained = load_model(cfg.out, "float32", "cpu")
            after = measure(target, trained, prompts, base, vocab, pad_id, eos)
            cell = {"divergence": div, "source": src, "train_s": train_s, "after": after,
                    "gain": {T: {"est_acceptance_pct": 100 * (after[T]["est_acceptance"] / before[T]["est_acceptance"] - 1),
                                 "mal_pct": 100 * (after[T]["mal"] / before[T]["mal"] - 1)} for T in after}}
            cells.append(cell)
            print(f"{div:>4} {src:>8}: " + "  ".join(
                f"{T}: acc {after[T]['est_acceptance']:.3f} ({cell['gain'][T]['est_acceptance_pct']:+.1f}%) "
                f"MAL {after[T]['mal']:.3f} ({cell['gain'][T]['mal_pct']:+.1f}%)" for T in after)
                + f"  [{train_s:.0f}s]", flush=True)
            shutil.rmtree(cfg.out, ignore_errors=True)
            result = {"env": _env(), "settings": vars(args), "before": before, "cells": cells}
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")  # after every cell
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(format_table(before, cells))
    print(json.dumps({"out": args.out, "cells": len(cells)}))
    return 0


def format_table(before, cells) -> str:
    head = (f"| divergence | source | est. acc. T0 | gain | MAL T0 | gain | est. acc. T1 | gain | MAL T1 | gain | train s |\n"
            f"|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
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
