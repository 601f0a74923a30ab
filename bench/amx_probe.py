"""Does AMX-INT8 pay for the Q8-activation Q4_1 GEMM? Compiles bench/amx_probe.c (the AMX design it
describes, bit-compared with a scalar reference of its order) with specdec's kernel flags and times it
against specdec's qgemm_q8a on SmolLM2-135M's four projection shapes, at 1, 2, 5 and 8 rows, and at 5
rows with each of its phases left out (what each costs). Linux on an AMX CPU (Sapphire Rapids or later);
elsewhere it says so and writes nothing.

    python bench/amx_probe.py --out bench/results/amx_probe/cpu.json

Single-threaded (pin it: taskset -c 1); the weights stay in cache (one matrix, repeated): it times the
arithmetic a verify pays once the weights sit in the last-level cache, not the stream from memory.
Prints a table, writes JSON (device, versions, commit, rows) atomically.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdec.common.env import environment  # noqa: E402
from specdec.common.files import write_json_atomic  # noqa: E402
from specdec.common.table import format_table  # noqa: E402
from specdec.engine import native  # noqa: E402

SHAPES = {"q/o": (576, 576), "k/v": (192, 576), "gate/up": (1536, 576), "down": (576, 1536)}   # N, K
PHASES = {0: "all", 1: "no unpack", 2: "no tiles", 3: "no float pass"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/amx_probe/cpu.json")
    ap.add_argument("--rows", default="1,2,5,8")
    ap.add_argument("--reps", type=int, default=2000)
    args = ap.parse_args(argv)
    try:
        cc = native.compiler()
    except native.NativeUnavailable as e:
        print(f"amx_probe: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "amx_probe"
        cmd = cc + ["-O3", "-march=native", "-ffp-contract=off", "-I", str(ROOT / "specdec/engine"),
                    str(ROOT / "bench/amx_probe.c"), "-o", str(exe), "-lm"]
        built = subprocess.run(cmd, capture_output=True, text=True)
        if built.returncode:
            print(f"amx_probe: the compiler refused it (no AMX intrinsics here?): "
                  f"{(built.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
            return 2

        def run(N, K, M, skip):
            out = subprocess.run([str(exe), str(N), str(K), str(M), str(skip), str(args.reps)],
                                 capture_output=True, text=True, check=True).stdout
            return json.loads(out)

        rows = []
        for name, (N, K) in SHAPES.items():
            for M in [int(m) for m in args.rows.split(",")]:
                for skip in ((0, 1, 2, 3) if M == 5 else (0,)):
                    r = run(N, K, M, skip)
                    if not r["amx"]:
                        print("amx_probe: the kernel refused AMX (arch_prctl): nothing to measure", file=sys.stderr)
                        return 2
                    r.update(shape=name, phases=PHASES[skip], speedup=round(r["q8a_us"] / r["amx_us"], 3))
                    rows.append(r)
    print(format_table(rows, [("shape", "shape", 8, ""), ("M", "rows", 4, "d"), ("phases", "phases", 13, ""),
                              ("q8a_us", "q8a us", 8, ".1f"), ("amx_us", "amx us", 8, ".1f"),
                              ("speedup", "q8a/amx", 8, ".2f"), ("differ_from_reference", "differ", 6, "d")]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, {"env": environment(), "command": " ".join(sys.argv if argv is None else
                                                                          ["amx_probe.py", *argv]),
                                 "rows": rows})
    print(json.dumps({"out": args.out, "rows": len(rows)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
