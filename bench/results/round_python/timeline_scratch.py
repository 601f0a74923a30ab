"""Scratch (2026-12-06; not a product script): where a speculative round's time goes between the C calls.
SmolLM2 on the default gguf path, the n-gram draft with its store, gamma auto with the costs of a bench run
(COSTS: its results.json), the first N Spec-Bench prompts of distinct categories at T new tokens, greedy.
Every wrapped method's entry and exit is stamped; per pair of consecutive stamps the median and the total
per round (the first prompt is a warm-up). ROOT: the source tree to import. WRAP=row: wrap the one-row path's
methods (ModelRunner.greedy_row and what it calls, 20953c0 on) instead of the batch path's.
`ROOT=. taskset -c 1 python timeline_scratch.py 5 1024 COSTS QUESTIONS` (bench/RESULTS.md, "A round's Python";
with WRAP=row and 4 prompts, "One row on host ints")."""
import json, sys, os, time, collections, statistics, torch, functools
sys.path.insert(0, os.environ.get('ROOT', '/work/main'))
from specdec.engine import qkernels, decoding, runner, kvcache, lean_numpy
from specdec.engine.decoding import SpeculativeDecoder
from specdec.models.pairs import resolve_pair
import specdec.models.load as L
N, T = int(sys.argv[1]), int(sys.argv[2])
pair = resolve_pair('smollm2')
m = L.load_target(pair.target, quantize='gguf'); m = m[0] if isinstance(m, tuple) else m
tok = L.load_tokenizer(L.local_source(pair.target))
qs = [json.loads(l) for l in open(sys.argv[4])]
seen, texts = collections.Counter(), []
for q in qs:
    if seen[q['category']] < 1 and len(texts) < N:
        seen[q['category']] += 1
        texts.append(tok.apply_chat_template([{'role': 'user', 'content': q['turns'][0]}], tokenize=False, add_generation_prompt=True))
costs = json.load(open(sys.argv[3]))['meta']['costs']
ON = [False]; LAST = [None, None]; GAPS = collections.defaultdict(list)
def stamp(ev):
    t = time.perf_counter()
    if ON[0] and LAST[0] is not None: GAPS[(LAST[1], ev)].append(t - LAST[0])
    LAST[0], LAST[1] = time.perf_counter(), ev
def wrap(obj, name, label):
    f = getattr(obj, name)
    @functools.wraps(f)
    def w(*a, **k):
        stamp('>' + label); r = f(*a, **k); stamp('<' + label); return r
    setattr(obj, name, w)
lib = qkernels.library()
for name in ('layers_forward', 'qgemm_q8a', 'head_argmax', 'rmsnorm_rows'):
    wrap(lib, name, 'C.' + name)
BATCH = ((decoding._Call, ['score', 'verify', 'commit_target', 'retire']), (decoding._NgramCall, ['plan', 'draft']),
         (runner.ModelRunner, ['forward_greedy']), (kvcache.KVCache, ['begin']),
         (lean_numpy.QuantLeanForward, ['greedy', '_layers_out']))
ROW = ((decoding._NgramCall, ['plan']), (decoding._Rows, ['emit']), (kvcache.KVCache, ['begin_dense']),
       (runner.ModelRunner, ['greedy_row']), (qkernels.GreedyHeadCall, ['__call__']),
       (lean_numpy.QuantLeanForward, ['greedy_row', '_run_layers', '_argmax_rows', '_causal']))
for cls, names in (ROW if os.environ.get('WRAP') == 'row' else BATCH):
    for n in names: wrap(cls, n, n)
dec = SpeculativeDecoder(m, pair.draft, gamma='auto', costs=costs, vocab_size=49152)
for i, t in enumerate(texts):
    ids = torch.tensor([tok(t, add_special_tokens=False).input_ids])
    ON[0] = i > 0; LAST[0] = None
    dec.generate(ids, max_new_tokens=T, temperature=0.0)
tot = 0
rows = sorted(GAPS.items(), key=lambda kv: -sum(kv[1]))
n_rounds = len(GAPS.get(('>C.layers_forward', '<C.layers_forward'), [1]))
for k, v in rows[:40]:
    if k == ('>C.layers_forward', '<C.layers_forward') or k[0].startswith('>C.'): continue
    print(f"{k[0]:22s} -> {k[1]:22s} n {len(v):5d}  median {1e6 * statistics.median(v):7.1f} us  per round {1e6 * sum(v) / n_rounds:7.1f} us")
    tot += sum(v)
print('rounds', n_rounds, 'non-C per round us %.1f' % (1e6 * tot / n_rounds))
