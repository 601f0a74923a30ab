"""Scratch (2026-12-06; not a product script): per forward of plain greedy decoding and per round of the lookup's
speculative decoding (gamma auto, the costs of costs_0200.json) on SmolLM2's default gguf path, the decode's wall
time against the time inside the C calls (the prefill's C calls left out); 4 Spec-Bench prompts (every 40th), the
first a warm-up, T new tokens. ROOT: the source tree to import.
`ROOT=<tree> PYTHONPATH=<tree> taskset -c 1 python python_per_call_scratch.py 256` (bench/RESULTS.md, "One row on
host ints")."""
import json, sys, os, time, collections, torch
sys.path.insert(0, os.environ.get('ROOT', '/work/main'))
from specdec.engine import qkernels
from specdec.engine.decoding import SpeculativeDecoder, autoregressive_generate
from specdec.models.pairs import resolve_pair
import specdec.models.load as L
T = int(sys.argv[1])
pair = resolve_pair('smollm2')
m = L.load_target(pair.target, quantize='gguf'); m = m[0] if isinstance(m, tuple) else m
tok = L.load_tokenizer(L.local_source(pair.target))
qs = [json.loads(l) for l in open('/work/shared/data/spec_bench_question.jsonl')]
texts = [tok.apply_chat_template([{'role': 'user', 'content': q['turns'][0]}], tokenize=False, add_generation_prompt=True) for q in qs[:: 40][:4]]
lib = qkernels.library()
C = [0.0]
def wrap(name):
    f = getattr(lib, name)
    def w(*a):
        t = time.perf_counter(); r = f(*a); C[0] += time.perf_counter() - t; return r
    setattr(lib, name, w)
for n in ('layers_forward', 'qgemm_q8a', 'head_argmax', 'rmsnorm_rows'): wrap(n)
from specdec.engine.runner import ModelRunner
_pf = ModelRunner.prefill
def pf(self, *a, **k):
    c = C[0]; r = _pf(self, *a, **k); C[0] = c; return r
ModelRunner.prefill = pf
costs = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'round_python', 'costs_0200.json')))['meta']['costs']
dec = SpeculativeDecoder(m, pair.draft, gamma='auto', costs=costs, vocab_size=49152)
for label, fn in (('plain', lambda ids: autoregressive_generate(m, ids, max_new_tokens=T, vocab_size=49152)),
                  ('spec', lambda ids: dec.generate(ids, max_new_tokens=T))):
    for i, t in enumerate(texts):
        ids = torch.tensor([tok(t, add_special_tokens=False).input_ids])
        C[0] = 0.0
        out = fn(ids)
        s = out.stats
        if i == 0: continue
        dec_s = s.total_s - s.prefill_s
        n = s.target_calls - (0 if label == 'spec' else 0)
        print(f"{label} prompt {i}: tokens {s.new_tokens} calls {s.target_calls} decode ms/call {1e3*dec_s/s.target_calls:.2f} "
              f"C ms/call {1e3*C[0]/s.target_calls:.2f} py ms/call {1e3*(dec_s-C[0])/s.target_calls:.2f} prefill {s.prefill_s:.2f}s total {s.total_s:.2f}")
