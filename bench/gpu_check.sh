#!/usr/bin/env bash
# One device call for issue 4 (the fused verification kernel), under 8 minutes on an H200:
#   1. environment: nvidia-smi, python / torch / triton / transformers versions;
#   2. the kernel tests on CUDA, compiled (TRITON_INTERPRET unset): tests/test_verify_triton.py and
#      tests/test_verify.py (whose statistical tests also run the Triton backend);
#   3. the microbenchmark: first the goal configs (bf16, B*(K+1)*V >= 64*9*128256; sampled, then
#      greedy), a small tile/warps tuning sweep, then the full sweep (B 1 8 64 256, K 1 4 8,
#      V 32000 128256 151936, bf16 + fp32).
# Everything lands in $OUT (./gpu_out when OUT is unset): *.log, *.json, junit XML.
# Usage (repo root): bash bench/gpu_check.sh
set -u
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
START=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - START )) s elapsed)"; }

{
step "environment"
date -u
nvidia-smi || true
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
$PY - <<'PY'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for m in ("triton", "transformers"):
    try:
        print(m, __import__(m).__version__)
    except Exception as e:
        print(m, "missing:", e)
PY
git log --oneline -1 2>/dev/null || true

step "making specdec.kernels importable"
if ! $PY -c "import specdec.kernels.verify_triton" 2>/dev/null; then
  $PY -m pip install --no-deps --no-build-isolation -q -e . 2>&1 | tail -2 || true
fi
if ! $PY -c "import specdec.kernels.verify_triton" 2>/dev/null; then
  # no install possible: expose kernels/ as specdec/kernels in this (throwaway) copy of the tree
  ln -sfn ../kernels specdec/kernels && export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY -c "import specdec.kernels.verify_triton as m; print('kernel module:', m.__file__)"
} 2>&1 | tee "$OUT/env.log"
[ -e specdec/kernels ] && export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step "kernel tests on CUDA (compiled, no interpreter)" | tee "$OUT/tests.log"
TESTS="tests/test_verify_triton.py"
[ -f tests/test_verify.py ] && TESTS="$TESTS tests/test_verify.py"
timeout 200 $PY -m pytest -q -p no:cacheprovider -rs --durations=10 --junitxml="$OUT/tests.xml" $TESTS \
  2>&1 | tee -a "$OUT/tests.log"
echo "pytest exit: ${PIPESTATUS[0]}" | tee -a "$OUT/tests.log"

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  step "benchmark: NO CUDA DEVICE - a tiny reference-only run to check the script" | tee "$OUT/bench.log"
  $PY bench/kernel_bench.py --batch 1 --k 1 --vocab 32000 --dtype bf16 --json "$OUT/kernel_bench_cpu.json" \
    2>&1 | tee -a "$OUT/bench.log"
else
  step "benchmark: goal configs, bf16, sampled (T=1)" | tee "$OUT/bench.log"
  timeout 90 $PY bench/kernel_bench.py --dtype bf16 --batch 64 256 --k 4 8 --vocab 128256 151936 \
    --json "$OUT/kernel_bench_goal.json" 2>&1 | tee -a "$OUT/bench.log"
  step "benchmark: goal configs, bf16, greedy (T=0)" | tee -a "$OUT/bench.log"
  timeout 45 $PY bench/kernel_bench.py --dtype bf16 --batch 64 256 --k 8 --vocab 128256 151936 --temperature 0 \
    --no-reference --json "$OUT/kernel_bench_goal_greedy.json" 2>&1 | tee -a "$OUT/bench.log"
  step "benchmark: tuning kernel 1's tile and warps on two goal configs" | tee -a "$OUT/bench.log"
  timeout 60 $PY bench/kernel_bench.py --dtype bf16 --batch 64 --k 8 --vocab 128256 --block 2048 4096 8192 \
    --warps 4 8 16 --no-reference --no-check --json "$OUT/kernel_bench_tune.json" 2>&1 | tee -a "$OUT/bench.log"
  step "benchmark: full sweep" | tee -a "$OUT/bench.log"
  LEFT=$(( 450 - ($(date +%s) - START) ))
  [ "$LEFT" -gt 30 ] && timeout "$LEFT" $PY bench/kernel_bench.py --json "$OUT/kernel_bench.json" 2>&1 | tee -a "$OUT/bench.log"
fi
step "done" | tee -a "$OUT/bench.log"
ls -la "$OUT"
