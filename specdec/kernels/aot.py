"""Compile every Triton kernel launch of `verify_triton` for a CUDA architecture on a machine without a
GPU (ahead of time, to cubin).

Each kernel launch inside `verify_triton` is intercepted on CPU tensors, its real arguments are turned
into a Triton signature (pointer dtypes, int/float scalars, the constexprs it was launched with), and
the kernel is compiled for the target (default sm_90, an H200). This catches what the CPU interpreter
cannot: lowering and type errors, unsupported operations, shared-memory use. It runs nothing on a GPU,
so it says nothing about speed or numerical results there.

    python -m specdec.kernels.aot [--arch 90]         exit code 1 if any launch fails to compile

TRITON_INTERPRET must be unset before the kernels are defined: run this as its own process.
"""
from __future__ import annotations

import argparse
import os
import sys

# (B, K, V, dtype) of the launches compiled: real vocabularies, every logits dtype, K = 0 (no drafts).
SHAPES = ((1, 4, 32000, "bfloat16"), (64, 8, 128256, "bfloat16"), (8, 4, 151936, "float32"),
          (4, 0, 4096, "float16"), (1, 1, 4096, "bfloat16"))   # the last: the bundled pair, gamma 1


def _signature(jit, args, consts) -> dict:
    """Triton's signature of one launch: pointer dtypes, int / float scalars, constexprs."""
    import torch
    ptr = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.int64: "*i64",
           torch.int32: "*i32", torch.bool: "*i1"}
    sig = {}
    for name, a in zip(jit.arg_names, args):
        if isinstance(a, torch.Tensor):
            sig[name] = ptr[a.dtype]
        elif isinstance(a, bool):
            sig[name] = "i1"
        elif isinstance(a, int):
            sig[name] = "i32" if abs(a) < 2**31 else "i64"
        elif isinstance(a, float):
            sig[name] = "fp32"
    for name in jit.arg_names:
        if name in consts:
            sig[name] = "constexpr"
    return sig


def _divisibility(jit, args, consts) -> dict:
    """The JIT's alignment attributes: a pointer at a multiple of 16 bytes and an int that is a multiple of
    16 are marked divisible by 16, which changes the layouts the compiler picks (and where it can fail)."""
    import torch
    attrs = {}
    for i, (name, a) in enumerate(zip(jit.arg_names, args)):
        if name in consts:
            continue
        if isinstance(a, torch.Tensor):
            aligned = a.data_ptr() % 16 == 0
        else:
            aligned = type(a) is int and a % 16 == 0
        if aligned:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return attrs


class _Intercept:
    """Stands in for a @triton.jit kernel: `kernel[grid](...)` compiles instead of launching."""

    def __init__(self, jit, target, report: list):
        self.jit, self.target, self.report = jit, target, report

    def __getitem__(self, grid):
        import triton

        def launch(*args, num_warps=4, num_stages=None, **consts):
            # The JIT specialises an int argument equal to 1 into a constant; the compiler then folds
            # it, which is where Triton 3.6 failed on the bundled pair (B = K = NC = TILES = 1): do the same.
            consts = {**{n: 1 for n, a in zip(self.jit.arg_names, args)
                         if type(a) is int and a == 1}, **consts}
            opts = {"num_warps": num_warps, **({"num_stages": num_stages} if num_stages else {})}
            src = triton.compiler.ASTSource(fn=self.jit, signature=_signature(self.jit, args, consts),
                                            constexprs=consts, attrs=_divisibility(self.jit, args, consts))
            try:
                k = triton.compile(src, target=self.target, options=opts)
                self.report.append((self.jit.__name__, consts, "ok",
                                    f"shared {k.metadata.shared} B, {num_warps} warps"))
            except Exception as e:  # noqa: BLE001 - reported per launch
                self.report.append((self.jit.__name__, consts, "FAIL", str(e).strip().splitlines()[-1][:300]))
        return launch


def compile_all(arch: int = 90) -> list[tuple]:
    """Compile each launch of SHAPES; returns (kernel, constexprs, "ok" | "FAIL", detail) per launch."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET before importing the kernels (run `python -m specdec.kernels.aot`)")
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction

    from . import verify_triton as vt

    target = GPUTarget("cuda", arch, 32)
    report: list[tuple] = []
    saved = {name: obj for name, obj in vars(vt).items() if isinstance(obj, JITFunction)}
    saved_sms, saved_check = vt._num_sms, vt._check
    try:
        for name, jit in saved.items():
            setattr(vt, name, _Intercept(jit, target, report))
        vt._num_sms = lambda dev: 132                      # an H200's SM count sizes the grids
        vt._check = lambda t, d, *a, **k: (t.shape[0], t.shape[1] - 1, t.shape[2])  # CPU tensors are fine here
        for B, K, V, dt in SHAPES:
            dtype = getattr(torch, dt)
            t, d = torch.zeros(B, K + 1, V, dtype=dtype), torch.zeros(B, K, V, dtype=dtype)
            x = torch.zeros(B, K, dtype=torch.long)
            for temp in (0.0, 1.0):
                for n in (None, torch.full((B,), K, dtype=torch.long)):
                    vt.verify_triton(t, d, x, torch.full((B,), temp), n)
    finally:
        for name, jit in saved.items():
            setattr(vt, name, jit)
        vt._num_sms, vt._check = saved_sms, saved_check
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m specdec.kernels.aot", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (90 = H100/H200, 80 = A100)")
    args = p.parse_args(argv)
    import triton
    report = compile_all(args.arch)
    seen = set()
    for name, consts, status, info in report:
        key = (name, tuple(sorted(consts.items())), status, info)
        if key not in seen:
            seen.add(key)
            print(f"{status:4} {name} {consts} {info}")
    failed = sum(r[2] != "ok" for r in report)
    print(f"triton {triton.__version__}, sm_{args.arch}: {len(report) - failed} compiled, {failed} failed")
    return 1 if failed or not report else 0


if __name__ == "__main__":
    sys.exit(main())
