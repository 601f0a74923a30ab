"""The KV cache in float32 vs float16 (--kv-cache, specdec/engine/runner.py set_kv_cache): one target step of
S tokens at a few contexts, both caches in one process, interleaved, against the bytes each step must read.

    OPENBLAS_NUM_THREADS=1 taskset -c 0 python bench/kv_cache_ab.py --target SmolLM2-135M-Instruct.Q4_1.gguf \
        --out bench/results/kv_cache/step_ab.json

The model is loaded twice (one copy per cache type, so neither reuses the other's forward); each iteration
times one forward of S tokens of each copy in turn, then crops it away, so both see the same machine load,
and neither keeps its weights in the last-level cache between steps (as a target beside a draft does not).
Medians after two warm-up iterations (specdec.engine.timing: StepTimer, interleaved_medians). The floor
beside each figure: the bytes a step must read (the quantized weights, once, and the cache's K and V of
every layer, engine.params.cache_bytes) over --bandwidth (a single core's read bandwidth;
bench/qgemm_bench.py measures it).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from specdec.common.env import environment  # noqa: E402
from specdec.common.files import write_json_atomic  # noqa: E402
from specdec.engine import qweights  # noqa: E402
from specdec.engine.params import cache_bytes  # noqa: E402
from specdec.engine.runner import set_kv_cache  # noqa: E402
from specdec.engine.timing import StepTimer, interleaved_medians  # noqa: E402
from specdec.models import load_model  # noqa: E402

KINDS = ("float32", "float16")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="a GGUF file or a model folder")
    ap.add_argument("--quantize", default="gguf-q8a")
    ap.add_argument("--contexts", default="100,500,1000,2000")
    ap.add_argument("--tokens", default="1,5", help="S: tokens per forward (5: a verify at gamma 4)")
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--bandwidth", type=float, default=15.2, help="GB/s a core reads (the floor's denominator)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    models = {}
    for kind in KINDS:
        models[kind] = load_model(args.target, quantize=args.quantize)
        set_kv_cache(models[kind], kind)
    weight_bytes = qweights.weights_of(models["float32"]).nbytes
    tokens = [int(s) for s in args.tokens.split(",")]
    vocab = models["float32"].config.vocab_size
    out = {"command": " ".join([Path(sys.executable).name] + sys.argv), "env": environment(),
           "weight_bytes": weight_bytes, "bandwidth_gbs": args.bandwidth, "rows": []}
    for ctx in (int(c) for c in args.contexts.split(",")):
        ids = torch.randint(0, vocab, (1, ctx), generator=torch.Generator().manual_seed(ctx))
        med = interleaved_medians({k: StepTimer(m, ids, 1, max(tokens)) for k, m in models.items()}, tokens, args.iters)
        for S in tokens:
            row = {"context": ctx, "tokens": S}
            for k in KINDS:
                ms = med[(k, S)] * 1000
                nbytes = weight_bytes + cache_bytes(models[k], 1, ctx + S, impl="numpy")
                floor = nbytes / (args.bandwidth * 1e6)
                row[k] = {"ms": round(ms, 3), "bytes": nbytes, "floor_ms": round(floor, 3),
                          "floor_share": round(floor / ms, 3)}
            row["float32/float16"] = round(row["float32"]["ms"] / row["float16"]["ms"], 3)
            out["rows"].append(row)
            print(f"context {ctx:5d} S={S}: float32 {row['float32']['ms']:7.3f} ms (floor {row['float32']['floor_share']:.2f})"
                  f"  float16 {row['float16']['ms']:7.3f} ms (floor {row['float16']['floor_share']:.2f})"
                  f"  ratio {row['float32/float16']:.3f}", flush=True)
    if args.out:
        write_json_atomic(args.out, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
