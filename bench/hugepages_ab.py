"""Weights on 4 KB pages vs specdec's huge-page arena (specdec/engine/arena.py): one gguf-q8a (or any
--quantize) target step of S tokens at a few contexts, both layouts in one process, interleaved.

    OPENBLAS_NUM_THREADS=1 taskset -c 0 python bench/hugepages_ab.py --target SmolLM2-135M-Instruct.Q4_1.gguf \
        --out bench/results/smollm2_draft/feature_engine/hugepages_ab.json

The same model is loaded twice; the "4k" copy's forward is built with the arena turned off (its blocks stay
in ordinary NumPy arrays), the "huge" copy's with it. Each iteration times one forward of S tokens of
each copy in turn (then crops it away), so both see the same machine load; two copies alternating also
means neither keeps its weights in the last-level cache between steps, as a target beside a draft does not.
Medians after two warm-up iterations; prints one line per context and writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from specdec.common.env import environment  # noqa: E402
from specdec.common.files import write_json_atomic  # noqa: E402
from specdec.engine import qweights  # noqa: E402
from specdec.engine.runner import ModelRunner  # noqa: E402
from specdec.engine.timing import StepTimer, interleaved_medians  # noqa: E402
from specdec.models import load_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="a GGUF file or a model folder")
    ap.add_argument("--quantize", default="gguf-q8a")
    ap.add_argument("--contexts", default="100,300,1000")
    ap.add_argument("--tokens", default="1,2", help="S: tokens per forward")
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    arena_on = qweights._huge_arena
    models = {}
    for name in ("4k", "huge"):
        qweights._huge_arena = arena_on if name == "huge" else (lambda qw: None)
        m = load_model(args.target, quantize=args.quantize)
        r = ModelRunner(m, 1, 64)   # the first forward builds the kernels' weights (and the arena)
        r.forward(torch.tensor([[5]]), torch.tensor([[0]]), torch.ones((1, 1), dtype=torch.bool))
        models[name] = m
    qweights._huge_arena = arena_on
    tokens = [int(s) for s in args.tokens.split(",")]
    vocab = models["huge"].config.vocab_size
    out = {"command": " ".join(sys.argv), "env": environment(), "ms": {}}
    for ctx in (int(c) for c in args.contexts.split(",")):
        ids = torch.randint(0, vocab, (1, ctx))
        times = interleaved_medians({n: StepTimer(m, ids, 1, max(tokens)) for n, m in models.items()}, tokens,
                                    args.iters)
        med = {f"{n} S={S}": round(v * 1000, 3) for (n, S), v in times.items()}
        out["ms"][ctx] = med
        print(ctx, med, {f"4k/huge S={S}": round(med[f"4k S={S}"] / med[f"huge S={S}"], 3) for S in tokens}, flush=True)
    if args.out:
        write_json_atomic(args.out, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
