"""Scratch: SmolLM2 gguf target's verify costs v(k) timed on the logits forward (StepTimer.step: peek) and on the
greedy head (forward_greedy, cropped back), interleaved (15 rounds after 2 dropped; medians), at the first Spec-Bench
prompt's length; and the long count each gives (predict.long_count). Scratch (2026-12-06; not a product script).
`PYTHONPATH=<tree> taskset -c 1 python greedy_v_scratch.py` (bench/RESULTS.md, "One row on host ints")."""
import json, sys, os, time, torch
sys.path.insert(0, os.environ.get('ROOT', '/work/main'))
from specdec.engine.decoding import SpeculativeDecoder
from specdec.engine.timing import StepTimer
from specdec.costmodel.predict import long_count
from specdec.costmodel.measure import interleaved_medians as job_medians
from specdec.engine import ngram
from specdec.models.pairs import resolve_pair
import specdec.models.load as L
pair = resolve_pair('smollm2')
m = L.load_target(pair.target, quantize='gguf'); m = m[0] if isinstance(m, tuple) else m
tok = L.load_tokenizer(L.local_source(pair.target))
q = json.loads(open('/work/shared/data/spec_bench_question.jsonl').readline())
ids = torch.tensor([tok(tok.apply_chat_template([{'role': 'user', 'content': q['turns'][0]}], tokenize=False, add_generation_prompt=True), add_special_tokens=False).input_ids])
t = StepTimer(m, ids, 1, 16)
r = t.runner
assert r.greedy_ids
def gstep(S):
    i = t.ids[:, -1:].repeat(1, S); pos = t.pos0 + torch.arange(S)[None]; valid = torch.ones((1, S), dtype=torch.bool)
    L0 = r.kv.length
    t0 = time.perf_counter(); r.forward_greedy(i, pos, valid, 49152); dt = time.perf_counter() - t0
    r.kv.crop(L0); return dt
ks = list(range(0, 13))
jobs = {}
for k in ks:
    jobs[('logits', k)] = (lambda S: lambda: t.step(S))(k + 1)
    jobs[('greedy', k)] = (lambda S: lambda: gstep(S))(k + 1)
med = job_medians(jobs, 15, 2)
for kind in ('logits', 'greedy'):
    t1 = med[(kind, 0)]
    v = {k: med[(kind, k)] / t1 for k in ks if k}
    print(kind, 'step ms %.2f' % (1e3 * t1), {k: round(x, 2) for k, x in v.items()},
          'long count', long_count(v, ngram.AUTO_CAP, ngram.LONG_CAP_MAX, ngram.LONG_ALPHA),
          'ms per k', {k: round(1e3 * med[(kind, k)], 2) for k in ks})
