"""Scratch (2026-12-06; not a product script): SmolLM2's gguf target, one forward_greedy over S tokens after a prompt of N
tokens (Spec-Bench first turns run together), cropped back; interleaved medians of 11 after 2 dropped; and the ms a
forward gains per 1000 columns between the first and last N (what attention costs). `ROOT=<tree> NS=128,512,1024
SS=1,2,3,5,8 taskset -c 1 python forward_ctx_scratch.py` (bench/RESULTS.md, "A verify's attention without waiting on
memory"; outputs: forward_ctx.txt)."""
import json, sys, os, time, torch
sys.path.insert(0, os.environ.get('ROOT', '.'))
from specdec.engine.timing import StepTimer
from specdec.costmodel.measure import interleaved_medians as job_medians
from specdec.models.pairs import resolve_pair
import specdec.models.load as L
pair = resolve_pair('smollm2')
m = L.load_target(pair.target, quantize='gguf'); m = m[0] if isinstance(m, tuple) else m
tok = L.load_tokenizer(L.local_source(pair.target))
qs = [json.loads(l) for l in open('/work/shared/data/spec_bench_question.jsonl')]
text = ' '.join(q['turns'][0] for q in qs[:60])
base = tok(text, add_special_tokens=False).input_ids
Ns = [int(x) for x in os.environ.get('NS', '128,512,1024').split(',')]
Ss = [int(x) for x in os.environ.get('SS', '1,2,4,6,8').split(',')]
res = {}
for N in Ns:
    ids = torch.tensor([base[:N]])
    t = StepTimer(m, ids, 1, 16)
    r = t.runner
    def gstep(S):
        i = t.ids[:, -1:].repeat(1, S); pos = t.pos0 + torch.arange(S)[None]; valid = torch.ones((1, S), dtype=torch.bool)
        L0 = r.kv.length
        t0 = time.perf_counter(); r.forward_greedy(i, pos, valid, 49152); dt = time.perf_counter() - t0
        r.kv.crop(L0); return dt
    jobs = {S: (lambda S: lambda: gstep(S))(S) for S in Ss}
    med = job_medians(jobs, 11, 2)
    res[N] = med
    print(N, {S: round(1e3 * med[S], 2) for S in Ss}, flush=True)
for S in Ss:
    print('S', S, 'ms per 1k ctx', round(1e6 * (res[Ns[-1]][S] - res[Ns[0]][S]) / (Ns[-1] - Ns[0]), 3))
