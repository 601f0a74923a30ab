#!/bin/bash
# DistillSpec closed loop, equal budget (360 steps x 8 rows) from the same init (init_t2):
#  ce   : cross-entropy on the target's samples (core 0), then fkl: forward KL to the stored top-32 (core 0)
#  onp  : fkl on the target's samples 180 steps, then fkl on the draft's own samples (on-policy, target live) 180 steps (core 1)
cd /work/main
T=$(ls -d /work/scratch/d2/cache/gguf/*/ | head -1)
D=/work/scratch/d7
C="env PYTHONPATH=. OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python -m specdec distill --target $T --prompt-tokens 256 --new-tokens 160 --batch-size 8 --lr 1e-3 --warmup-steps 5 --eval-every 0 --spec-eval-every 0 --threads 1 --no-progress --overwrite"
(date; taskset -c 0 $C --draft $D/init_t2 --samples $D/train11 --data-source teacher --divergence fkl --hard-labels --steps 360 --out $D/runs/ce > $D/runs/ce.log 2>&1; date;
 taskset -c 0 $C --draft $D/init_t2 --samples $D/train11 --data-source teacher --divergence fkl --steps 360 --out $D/runs/fkl > $D/runs/fkl.log 2>&1; date) > $D/runs/core0.times &
(date; taskset -c 1 $C --draft $D/init_t2 --samples $D/train11 --data-source teacher --divergence fkl --steps 180 --out $D/runs/onp1 > $D/runs/onp1.log 2>&1; date;
 taskset -c 1 $C --draft $D/runs/onp1 --data $D/train11_prompts.jsonl --data-source student --divergence fkl --steps 180 --out $D/runs/onp > $D/runs/onp.log 2>&1; date) > $D/runs/core1.times &
wait
