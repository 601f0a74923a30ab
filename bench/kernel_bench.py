"""Microbenchmark of batched draft verification: the fused Triton kernel vs the PyTorch reference.

Sweeps B x K x V x dtype. On a GPU, for each config it reports the median time of
`verify_triton` and of `verify_reference` (triton.testing.do_bench, rotating input buffers so the
60 MB L2 of an H200 cannot hold them between calls), the bytes the kernel must read
(target B*(K+1)*V + draft B*K*V logits, plus tokens/temperatures), the effective GB/s, that as a
percent of a device-to-device copy measured in the same run, the speedup, and whether greedy
outputs equal the reference's. On a CPU it times only the reference (time.perf_counter medians over
a small sweep) and says so: the Triton interpreter's speed says nothing about the kernel's.

  python bench/kernel_bench.py                               # the full sweep on a GPU
  python bench/kernel_bench.py --batch 64 --k 8 --vocab 128256 --dtype bf16
  python bench/kernel_bench.py --json out.json --temperature 0

Prints a fixed-width table, writes JSON (device, versions, git commit, rows) and ends with one JSON
summary line.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from specdec.engine.verify import verify_reference

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # --- the sweep (defaults: the full GPU sweep; a CPU run narrows it unless flags are given)
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="B values (GPU default 1 8 64 256)")
    ap.add_argument("--k", type=int, nargs="+", default=None, help="K values (GPU default 1 4 8)")
    ap.add_argument("--vocab", type=int, nargs="+", default=None,
                    help="V values (GPU default 32000 128256 151936)")
    ap.add_argument("--dtype", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    ap.add_argument("--temperature", type=float, default=1.0, help="0 = greedy rows (no sampling pass)")
    ap.add_argument("--block", type=int, nargs="+", default=[0],
                    help="GPU: kernel 1 tile sizes to time (0 = the kernel's default); a tuning sweep")
    ap.add_argument("--warps", type=int, nargs="+", default=[0],
                    help="GPU: kernel 1 num_warps to time (0 = the kernel's default)")
    # --- timing
    ap.add_argument("--warmup-ms", type=float, default=25.0)
    ap.add_argument("--rep-ms", type=float, default=100.0)
    ap.add_argument("--rotate-mb", type=float, default=512.0,
                    help="allocate enough input sets to exceed this many MB (well above L2), rotated per call")
    ap.add_argument("--max-sets", type=int, default=16)
    ap.add_argument("--no-reference", action="store_true", help="GPU: skip timing the PyTorch reference")
    ap.add_argument("--no-check", action="store_true", help="GPU: skip the greedy equality check")
    ap.add_argument("--no-graph", action="store_true",
                    help="GPU: skip timing the kernel replayed from a CUDA graph (its launches and host work "
                         "removed, as a decode step that captures it would see)")
    ap.add_argument("--cpu-reps", type=int, default=9, help="CPU: timed repetitions per config")
    ap.add_argument("--cpu-threads", type=int, default=1,
                    help="CPU: torch threads (1 keeps medians stable on a shared machine)")
    # --- output
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "kernel_bench.json")
    return ap.parse_args(argv)


def environment(device: torch.device) -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return None
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv[1:],
    }
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    return env


def make_inputs(B, K, V, dtype, device, seed):
    """Target logits, draft logits near them (so acceptance is high, as with a good draft) and drafts
    = argmax of the draft (a likely sample)."""
    g = torch.Generator(device=device).manual_seed(seed)
    t = torch.randn((B, K + 1, V), device=device, generator=g, dtype=torch.float32).mul_(2.0)
    d = t[:, :K] + 0.5 * torch.randn((B, K, V), device=device, generator=g, dtype=torch.float32)
    x = d.argmax(-1)
    return t.to(dtype), d.to(dtype), x


def must_read_bytes(B, K, V, dtype) -> int:
    """Logits every verification must read once, plus the small inputs (tokens, temperature, counts)."""
    elem = torch.empty((), dtype=dtype).element_size()
    return B * (K + 1) * V * elem + B * K * V * elem + B * K * 8 + B * 4 + B * 8


def copy_bandwidth(device, nbytes=1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s, counting read + write bytes (the usual convention)."""
    from triton.testing import do_bench
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9


def graph_timing(row, sets, temp, set_bytes, args, do_bench, verify_triton):
    """The same call replayed from CUDA graphs (one per input set, rotated like the eager timing), so
    the figure is the GPU's time alone: the eager figure also holds the host's launches, the uniform
    draw and the allocations, which set the pace when the GPU work is short (the first H200 run: ~0.2
    ms at every size). The default CUDA generator is graph-safe; a user's generator would need
    registering with the graph. Sets row["graph_ms"] / row["graph_GBps"], or row["graph_error"]."""
    kw = {k: v for k, v in (("block", row.get("block")), ("num_warps", row.get("num_warps"))) if v}
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for t, d, x in sets[:1]:
                for _ in range(2):
                    verify_triton(t, d, x, temp, None, None, **kw)
        torch.cuda.current_stream().wait_stream(side)
        pool, graphs = torch.cuda.graph_pool_handle(), []
        for t, d, x in sets:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                verify_triton(t, d, x, temp, None, None, **kw)
            graphs.append(g)
        state = {"i": 0}

        def replay():
            graphs[state["i"] % len(graphs)].replay()
            state["i"] += 1
        row["graph_ms"] = do_bench(replay, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median")
        row["graph_GBps"] = set_bytes / (row["graph_ms"] * 1e-3) / 1e9
    except Exception as e:  # noqa: BLE001 - a capture that fails is reported, the sweep goes on
        row["graph_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"


def bench_gpu(args, device) -> list[dict]:
    from triton.testing import do_bench

    from specdec.kernels.verify_triton import verify_triton

    rows = []
    for dname in args.dtype:
        dtype = DTYPES[dname]
        for V in args.vocab:
            for K in args.k:
                for B in args.batch:
                    set_bytes = must_read_bytes(B, K, V, dtype)
                    n_sets = max(2, min(args.max_sets, math.ceil(args.rotate_mb * 2**20 / set_bytes)))
                    sets = [make_inputs(B, K, V, dtype, device, seed=s) for s in range(n_sets)]
                    temp = torch.full((B,), args.temperature, device=device)
                    gen = torch.Generator(device=device).manual_seed(0)
                    row = dict(B=B, K=K, V=V, dtype=dname, temperature=args.temperature, input_sets=n_sets,
                               must_read_MB=set_bytes / 1e6)
                    if not args.no_check:
                        t, d, x = sets[0]
                        z = torch.zeros((B,), device=device)
                        (tokens, accepted), r = verify_triton(t, d, x, z), verify_reference(t, d, x, z)
                        row["greedy_equal"] = bool(torch.equal(tokens, r.tokens)
                                                   and torch.equal(accepted, r.num_accepted))

                    def rotating(fn):
                        state = {"i": 0}

                        def call():
                            t, d, x = sets[state["i"] % n_sets]
                            state["i"] += 1
                            fn(t, d, x, temp, None, gen)
                        return call

                    variants = [(bl, w) for bl in args.block for w in args.warps]
                    for bl, w in variants:
                        kw = {k: v for k, v in (("block", bl), ("num_warps", w)) if v}

                        def kern(*a, kw=kw):
                            return verify_triton(*a, **kw)
                        ms = do_bench(rotating(kern), warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median")
                        if len(variants) > 1:
                            row.setdefault("variants", []).append(dict(block=bl or None, num_warps=w or None, ms=ms))
                            print(f"#   block {bl or 'default'} warps {w or 'default'}: {ms:.4f} ms", flush=True)
                        if "triton_ms" not in row or ms < row["triton_ms"]:
                            row["triton_ms"], row["block"], row["num_warps"] = ms, bl or None, w or None
                    if not args.no_reference:
                        row["reference_ms"] = do_bench(rotating(verify_reference), warmup=args.warmup_ms,
                                                       rep=args.rep_ms, return_mode="median")
                        row["speedup"] = row["reference_ms"] / row["triton_ms"]
                    row["GBps"] = set_bytes / (row["triton_ms"] * 1e-3) / 1e9
                    if not args.no_graph:
                        graph_timing(row, sets, temp, set_bytes, args, do_bench, verify_triton)
                    rows.append(row)
                    print_row(row, args.copy_GBps)
                    if "graph_ms" in row:
                        print(f"#   in a CUDA graph: {row['graph_ms']:.4f} ms, {row['graph_GBps']:.1f} GB/s, "
                              f"{100 * row['graph_GBps'] / args.copy_GBps:.1f} % of copy", flush=True)
                    elif "graph_error" in row:
                        print(f"#   CUDA graph not timed: {row['graph_error']}", flush=True)
                    del sets
                    torch.cuda.empty_cache()
    return rows


def bench_cpu(args, device) -> list[dict]:
    rows = []
    for dname in args.dtype:
        dtype = DTYPES[dname]
        for V in args.vocab:
            for K in args.k:
                for B in args.batch:
                    t, d, x = make_inputs(B, K, V, dtype, device, seed=0)
                    temp = torch.full((B,), args.temperature)
                    gen = torch.Generator().manual_seed(0)
                    verify_reference(t, d, x, temp, None, gen)  # warm-up
                    times = []
                    for _ in range(args.cpu_reps):
                        t0 = time.perf_counter()
                        verify_reference(t, d, x, temp, None, gen)
                        times.append((time.perf_counter() - t0) * 1e3)
                    set_bytes = must_read_bytes(B, K, V, dtype)
                    row = dict(B=B, K=K, V=V, dtype=dname, temperature=args.temperature,
                               must_read_MB=set_bytes / 1e6, reference_ms=statistics.median(times),
                               reference_min_ms=min(times))
                    row["reference_GBps"] = set_bytes / (row["reference_ms"] * 1e-3) / 1e9
                    rows.append(row)
                    print_row(row, None)
    return rows


HEADER = (f"{'B':>4} {'K':>2} {'V':>7} {'dtype':>5} {'MB read':>9} {'triton ms':>10} {'GB/s':>8} {'%copy':>6} "
          f"{'ref ms':>9} {'speedup':>8} {'greedy=':>7}")


def _fmt(v, spec, width):
    return format(v, spec).rjust(width) if v is not None else "-".rjust(width)


def print_row(row, copy_gbps):
    pct = 100 * row["GBps"] / copy_gbps if copy_gbps and "GBps" in row else None
    eq = {True: "yes", False: "NO"}.get(row.get("greedy_equal"), "-")
    gbps = row.get("GBps", row.get("reference_GBps"))
    print(f"{row['B']:>4} {row['K']:>2} {row['V']:>7} {row['dtype']:>5} {row['must_read_MB']:>9.1f} "
          f"{_fmt(row.get('triton_ms'), '.4f', 10)} {_fmt(gbps, '.1f' if gbps and gbps >= 10 else '.3f', 8)} "
          f"{_fmt(pct, '.1f', 6)} {_fmt(row.get('reference_ms'), '.3f', 9)} {_fmt(row.get('speedup'), '.1f', 8)} "
          f"{eq:>7}", flush=True)
    if pct is not None:
        row["pct_copy"] = pct


def main(argv=None):
    args = parse_args(argv)
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    if on_gpu:
        args.batch = args.batch or [1, 8, 64, 256]
        args.k = args.k or [1, 4, 8]
        args.vocab = args.vocab or [32000, 128256, 151936]
    else:
        torch.set_num_threads(args.cpu_threads)
        args.batch = args.batch or [1, 8]
        args.k = args.k or [1, 4]
        args.vocab = args.vocab or [32000, 128256]
    env = environment(device)
    print(f"# device: {env['device']} | torch {env['torch']} | triton {env['triton']} | commit {env['git_commit']}")
    if on_gpu:
        args.copy_GBps = copy_bandwidth(device)
        print(f"# measured device-to-device copy bandwidth: {args.copy_GBps:.0f} GB/s (read + write)")
    else:
        args.copy_GBps = None
        print("# no CUDA device: timing ONLY the PyTorch reference (time.perf_counter medians); GB/s is the "
              "reference's effective rate over the bytes the kernel must read")
    print(f"# temperature {args.temperature}; GB/s = bytes the kernel must read / median time")
    print(HEADER)
    rows = bench_gpu(args, device) if on_gpu else bench_cpu(args, device)
    out = dict(env, kind="gpu" if on_gpu else "cpu-reference-only", copy_GBps=args.copy_GBps, rows=rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    summary = dict(kind=out["kind"], device=env["device"], commit=env["git_commit"], n=len(rows), json=str(args.json))
    if on_gpu:
        big = [r for r in rows if r["dtype"] == "bf16" and r["B"] * (r["K"] + 1) * r["V"] >= 64 * 9 * 128256]
        if big:
            summary["goal_rows"] = len(big)
            summary["goal_min_pct_copy"] = min(r["pct_copy"] for r in big)
            if all("speedup" in r for r in big):
                summary["goal_min_speedup"] = min(r["speedup"] for r in big)
        summary["greedy_all_equal"] = all(r.get("greedy_equal", True) for r in rows)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
