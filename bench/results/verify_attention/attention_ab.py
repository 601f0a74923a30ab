"""Scratch (2026-12-06; not a product script): attention_scratch.c built from two commits' qkernels.c, run
interleaved on core 1 (medians of --reps runs, each the best of 3 passes over 90 heads), us a head by tokens S
at each context L, beside the float floor of its multiplies and adds (Q L D of each in the scores and in P V, at
16 multiplies + 16 adds a cycle and --ghz) and the memory floor (K and V from memory at --gbps).
  python attention_ab.py --base 72a9e59 --new a012ef9      (bench/RESULTS.md, "A verify's attention ...")"""
import argparse, os, re, statistics, subprocess, sys, tempfile
here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument('--base', required=True); ap.add_argument('--new', required=True)
ap.add_argument('--L', default='256,512,1024'); ap.add_argument('--S', default='1,2,3,5,8')
ap.add_argument('--reps', type=int, default=7); ap.add_argument('--ghz', type=float, default=3.7)
ap.add_argument('--gbps', type=float, default=24.6)
a = ap.parse_args()
tmp = tempfile.mkdtemp()
bins = {}
for name, commit in (('base', a.base), ('new', a.new)):
    src = subprocess.run(['git', 'show', f'{commit}:specdec/engine/qkernels.c'], capture_output=True, text=True,
                         check=True, cwd=here).stdout
    open(os.path.join(tmp, f'{name}.c'), 'w').write(src)
    kn = ['-DKN_ARG'] if 'const void *Kn) {' in src else []
    bins[name] = os.path.join(tmp, name)
    subprocess.run(['cc', '-O3', '-march=native', '-ffp-contract=off', f'-DQK_SOURCE="{tmp}/{name}.c"', *kn,
                    os.path.join(here, 'attention_scratch.c'), '-o', bins[name], '-lm'], check=True)
Ls, Ss = [int(x) for x in a.L.split(',')], [int(x) for x in a.S.split(',')]
res = {}
for _ in range(a.reps):
    for L in Ls:
        for S in Ss:
            for name in bins:
                out = subprocess.run(['taskset', '-c', '1', bins[name], str(L), str(S), '90'], capture_output=True,
                                     text=True, check=True).stdout
                res.setdefault((name, L, S), []).append(float(out))
print(f'us a head (SmolLM2: 3 query heads a KV head, D 64, float32 cache; 90 heads cycled), medians of {a.reps}')
print(f"{'L':>5} {'S':>3} {'base':>8} {'new':>8} {'base/new':>8} {'flop floor':>10} {'mem floor':>9}")
for L in Ls:
    for S in Ss:
        b, n = (statistics.median(res[(k, L, S)]) for k in ('base', 'new'))
        flop = 1e6 * 3 * S * L * 64 / 16 / (a.ghz * 1e9)          # scores and P V each Q L D mul + add, in parallel pipes
        mem = 1e6 * 2 * L * 64 * 4 / (a.gbps * 1e9)
        print(f'{L:>5} {S:>3} {b:>8.1f} {n:>8.1f} {b / n:>8.2f} {2 * flop:>10.1f} {mem:>9.1f}')
