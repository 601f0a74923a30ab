"""Scratch (2026-12-06; not a product script): an S-token forward_greedy of SmolLM2 (gguf) after the first Spec-Bench
prompt (52 columns), split into the C layers, the greedy head and the rest (Python), medians of 13 after 2.
`PYTHONPATH=<tree> taskset -c 1 python verify_split_scratch.py` (bench/RESULTS.md, "The greedy ratio on the Zen 4
VM against its floors"; head_split.txt)"""
import json, time, statistics, torch, numpy as np
from specdec.engine.timing import StepTimer
from specdec.models.pairs import resolve_pair
import specdec.models.load as L
pair = resolve_pair("smollm2")
m = L.load_target(pair.target, quantize="gguf"); m = m[0] if isinstance(m, tuple) else m
tok = L.load_tokenizer(L.local_source(pair.target))
q = json.loads(open("/work/shared/data/spec_bench_question.jsonl").readline())
ids = torch.tensor([tok(tok.apply_chat_template([{"role": "user", "content": q["turns"][0]}], tokenize=False, add_generation_prompt=True), add_special_tokens=False).input_ids])
t = StepTimer(m, ids, 1, 16)
r = t.runner
lean = r._lean
timings = {}
orig_run, orig_head = lean._run_layers, lean._argmax_rows
def run_layers(*a, **k):
    t0 = time.perf_counter(); out = orig_run(*a, **k); timings.setdefault("layers", []).append(time.perf_counter() - t0); return out
def head(*a, **k):
    t0 = time.perf_counter(); out = orig_head(*a, **k); timings.setdefault("head", []).append(time.perf_counter() - t0); return out
lean._run_layers, lean._argmax_rows = run_layers, head
print("columns", r.kv.length)
for S in (1, 2, 4, 8):
    timings.clear(); tot = []
    for rep in range(15):
        i = t.ids[:, -1:].repeat(1, S); pos = t.pos0 + torch.arange(S)[None]; valid = torch.ones((1, S), dtype=torch.bool)
        L0 = r.kv.length
        t0 = time.perf_counter(); r.forward_greedy(i, pos, valid, 49152); tot.append(time.perf_counter() - t0)
        r.kv.crop(L0)
    med = lambda x: 1e3 * statistics.median(x[2:])
    print(f"S={S}: total {med(tot):.2f} ms  layers {med(timings['layers']):.2f}  head {med(timings['head']):.2f}  rest {med(tot) - med(timings['layers']) - med(timings['head']):.2f}")
