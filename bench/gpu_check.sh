#!/usr/bin/env bash
# Everything of specdec that needs a GPU, in one device call within BUDGET seconds (480 unless set):
#   1. environment: nvidia-smi, python / torch / triton / transformers versions;
#   2. tests on CUDA, compiled (TRITON_INTERPRET unset): the verification kernel
#      (tests/test_verify_triton.py, tests/test_verify.py) and the engine's CUDA path
#      (tests/test_gpu.py: CUDA-graph replay equals eager, speculative output with graphs equals plain);
#   3. step costs (bench/step_costs.py): the bundled pair, then random Llama models shaped like a ~0.5B
#      draft and a ~7B target in bf16, each path (HF DynamicCache, HF + in-place cache, lean, lean +
#      CUDA graphs) beside the weight-streaming floor: c and v(4), eager against graphs;
#   4. the end-to-end benchmark on CUDA with the bundled pair (`specdec bench`, graphs on by default), and
#      with the n-gram lookup draft (`--draft ngram`);
#   5. the verification kernel's microbenchmark: the goal configs, then the full sweep with the time left.
# Everything lands in $OUT (./gpu_out when OUT is unset): *.log, *.json, junit XML; the last lines
# printed are a summary table. Usage (repo root): bash bench/gpu_check.sh
set -u
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
START=$(date +%s)
BUDGET=${BUDGET:-480}   # seconds for the whole script; the last step gets what is left
step() { echo; echo "=== $* ($(( $(date +%s) - START )) s elapsed)"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# The device tool brings back at most 8 files: every log and result also goes into one archive, and
# only the summary, the archive and the main JSON files stay loose.
pack() {
  cd "$OUT" || return
  tar czf all.tgz --exclude all.tgz . 2>/dev/null
  find . -mindepth 1 ! -name all.tgz ! -name summary.log ! -name 'step_costs_*.json' \
    ! -name bench_cuda_results.json ! -name kernel_bench_goal.json -exec rm -rf {} + 2>/dev/null
  ls -la
}
trap pack EXIT

{
step "environment"
date -u
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv || true
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

step "making specdec importable"
# Every module lives under specdec/ (kernels included): the tree itself is importable, installed or not.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import specdec.kernels.verify_triton as m; print('kernel module:', m.__file__)"
} 2>&1 | tee "$OUT/env.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step "tests on CUDA: kernel (compiled) and engine (graphs)" | tee "$OUT/tests.log"
timeout 170 $PY -m pytest -q -p no:cacheprovider -rs --durations=8 --junitxml="$OUT/tests.xml" \
  tests/test_gpu.py tests/test_verify_triton.py tests/test_verify.py 2>&1 | tee -a "$OUT/tests.log"
echo "pytest exit: ${PIPESTATUS[0]}" | tee -a "$OUT/tests.log"

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  step "NO CUDA DEVICE: a tiny reference-only kernel benchmark to check the script" | tee "$OUT/bench.log"
  $PY bench/kernel_bench.py --batch 1 --k 1 --vocab 32000 --dtype bf16 --json "$OUT/kernel_bench_cpu.json" \
    2>&1 | tee -a "$OUT/bench.log"
  exit 0
fi

step "step costs: bundled pair (bf16), every path" | tee "$OUT/costs.log"
timeout 60 $PY bench/step_costs.py --device cuda --iters 30 --out "$OUT/step_costs_bundled.json" 2>&1 | tee -a "$OUT/costs.log"
step "step costs: random ~0.5B draft / ~7B target shapes (bf16), eager vs CUDA graphs" | tee -a "$OUT/costs.log"
timeout 120 $PY bench/step_costs.py --device cuda --shapes real --iters 20 --out "$OUT/step_costs_real.json" \
  2>&1 | tee -a "$OUT/costs.log"

step "end-to-end: specdec bench on CUDA, bundled pair" | tee "$OUT/e2e.log"
timeout 150 $PY -m specdec bench --device cuda --gamma 1,2,4 --temperature 0,1 --batch-size 1,8 --baselines ar --repeats 2 \
  --out "$OUT/bench_cuda" --no-plots --no-progress 2>&1 | tee -a "$OUT/e2e.log"
cp "$OUT/bench_cuda/results.json" "$OUT/bench_cuda_results.json" 2>/dev/null || true
# the n-gram lookup draft on CUDA (no draft model: host proposals, the target's verify alone)
timeout 40 $PY -m specdec bench --device cuda --draft ngram --gamma 4 --temperature 0,1 --batch-size 1,8 --baselines ar \
  --repeats 1 --out "$OUT/bench_cuda_ngram" --no-plots --no-progress 2>&1 | tee -a "$OUT/e2e.log"

step "kernel microbenchmark: goal configs, bf16, sampled (T=1) and greedy (T=0)" | tee "$OUT/kernel.log"
timeout 60 $PY bench/kernel_bench.py --dtype bf16 --batch 64 256 --k 4 8 --vocab 128256 151936 \
  --json "$OUT/kernel_bench_goal.json" 2>&1 | tee -a "$OUT/kernel.log"
timeout 30 $PY bench/kernel_bench.py --dtype bf16 --batch 64 256 --k 8 --vocab 128256 151936 --temperature 0 \
  --no-reference --json "$OUT/kernel_bench_goal_greedy.json" 2>&1 | tee -a "$OUT/kernel.log"
LEFT=$(left)
if [ "$LEFT" -gt 40 ]; then
  step "kernel microbenchmark: full sweep (${LEFT} s left)" | tee -a "$OUT/kernel.log"
  timeout "$LEFT" $PY bench/kernel_bench.py --json "$OUT/kernel_bench.json" 2>&1 | tee -a "$OUT/kernel.log"
fi

step "summary" | tee "$OUT/summary.log"
$PY - "$OUT" <<'PY' 2>&1 | tee -a "$OUT/summary.log"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for name in ("step_costs_bundled.json", "step_costs_real.json"):
    p = out / name
    if not p.exists():
        print(name, "missing"); continue
    rows = json.loads(p.read_text())["rows"]
    print(name)
    for r in rows:
        extra = " ".join(f"{k}={r[k]:.3f}" for k in ("x_floor", "v", "c") if r.get(k) is not None)
        print(f"  {r['model']:>10} {r['path']:>12} S={r['tokens']} {r['ms']:8.3f} ms  {extra}")
p = out / "bench_cuda_results.json"
if p.exists():
    runs = json.loads(p.read_text())["runs"]
    for r in runs:
        if r["category"] == "all" and r["method"] in ("sd", "hf_assisted"):
            print(f"  bench {r['method']:>12} g={r['gamma']} T={r['temperature']} bs={r['batch_size']} "
                  f"speedup={r['speedup']} match={r['outputs_match_ar']}")
PY
