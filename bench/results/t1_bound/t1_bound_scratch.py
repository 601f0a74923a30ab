"""Scratch (2026-12-06; not a product script): how far any DETERMINISTIC draft (the n-gram lookup, the store, a
draft decoded greedily, an oracle that knows the target's argmax) can take speculative sampling at T = 1 on
SmolLM2-135M-Instruct (gguf). A deterministic proposal x is accepted with probability p(x) <= max p, so the
target's own max p along its T = 1 samples bounds every such draft's per-token acceptance.
Samples --new tokens at T = 1 (specdec's plain decoding, seed 0) for one Spec-Bench first turn a category, then
one forward over prompt + sample gives p at every sampled position. Prints E[max p], E[p(sampled)] and the
speedup bound max_k tau(a, k) / v(k) at draft cost 0 for the i.i.d. acceptance a = E[max p], v from --v
(the logits forward's verify costs, as measured).
`PYTHONPATH=<tree> taskset -c 1 python t1_bound_scratch.py --new 256 [--per-category 3 --seed 1]`"""
import argparse, json, os, sys, time
import numpy as np, torch
from specdec.engine.decoding import autoregressive_generate
from specdec.engine.runner import ModelRunner
from specdec.models.pairs import resolve_pair
import specdec.models.load as L

ap = argparse.ArgumentParser()
ap.add_argument("--new", type=int, default=256)
ap.add_argument("--per-category", type=int, default=1)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--prompts", default="/work/shared/data/spec_bench_question.jsonl")
ap.add_argument("--v", default='{"1": 1.23, "2": 1.55, "3": 1.99, "4": 2.21, "5": 2.49, "6": 2.79, "7": 3.12, "8": 4.03}')
a = ap.parse_args()
pair = resolve_pair("smollm2")
m = L.load_target(pair.target, quantize="gguf"); m = m[0] if isinstance(m, tuple) else m
tok = L.load_tokenizer(L.local_source(pair.target))
seen, rows = {}, []
for line in open(a.prompts):
    q = json.loads(line)
    if seen.get(q["category"], 0) >= a.per_category:
        continue
    seen[q["category"]] = seen.get(q["category"], 0) + 1
    rows.append(q)
pmax_all, psel_all, seqs = [], [], []
for q in rows:
    text = tok.apply_chat_template([{"role": "user", "content": q["turns"][0]}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
    out = autoregressive_generate(m, ids, max_new_tokens=a.new, temperature=1.0, seed=a.seed,
                                  eos_token_id=tok.eos_token_id)
    new = list(out.new_tokens[0])
    full = torch.tensor([ids[0].tolist() + new])
    r = ModelRunner(m, 1, full.shape[1] + 1)
    S = full.shape[1]
    lg = r.forward(full, torch.arange(S)[None], torch.ones((1, S), dtype=torch.bool))
    lg = lg[0, ids.shape[1] - 1: S - 1].float()        # the distributions the new tokens came from
    p = torch.softmax(lg, -1)
    pm = p.max(-1).values.numpy()
    ps = p[torch.arange(len(new)), torch.tensor(new)].numpy()
    pmax_all += pm.tolist(); psel_all += ps.tolist(); seqs.append(pm)
    print(f"{q['category']:16s} {len(new):4d} tokens  E[max p] {pm.mean():.3f}  E[p(sampled)] {ps.mean():.3f}", flush=True)
v = {int(k): x for k, x in json.loads(a.v).items()}
al = float(np.mean(pmax_all))
tau = lambda al, k: sum(al ** j for j in range(k + 1))
best = max((tau(al, k) / v[k], k) for k in v)
print(f"all {len(pmax_all)} tokens: E[max p] {al:.3f}, E[p(sampled)] {np.mean(psel_all):.3f}; "
      f"share of positions with max p >= 0.9: {np.mean(np.array(pmax_all) >= 0.9):.3f}")
print("bound, draft cost 0, i.i.d. acceptance E[max p]: " + ", ".join(f"k={k} {tau(al, k) / v[k]:.3f}x" for k in sorted(v))
      + f"; best {best[0]:.3f}x at k={best[1]}")

# An oracle that knows max p at every coming position and drafts the argmax chain at each round with the k that
# maximises that round's expected tokens / v(k) (k = 0: a plain step, cost 1), its drafts accepted with
# probability max p each (the sampled path's max p standing in for the argmax path's). Simulated, 200 passes.
rng = np.random.default_rng(0)
vv = {0: 1.0, **v}
tok_n, cost = 0, 0.0
for _ in range(200):
    for pm in seqs:
        t = 0
        while t < len(pm):
            def exp_tokens(k):
                e, pr = 1.0, 1.0
                for i in range(k):
                    if t + i >= len(pm):
                        break
                    pr *= pm[t + i]; e += pr
                return e
            k = max(vv, key=lambda k: exp_tokens(k) / vv[k])
            n = 0
            while n < k and t + n < len(pm) and rng.random() < pm[t + n]:
                n += 1
            t += n + 1; tok_n += n + 1; cost += vv[k]
print(f"oracle-adaptive deterministic draft, cost 0: {tok_n / cost:.3f}x plain decoding")
