"""Scratch (2026-12-05, not a product script): replay lookup rules over plain greedy answers pickled by
decode_rows_scratch.py (`python decode_rows_scratch.py GGUF 3 1024 rows_39_1024.pkl`, then 6 for the
held-out half), priced with the v of replay_caps_1024.json (bench/ngram_replay.py with caps up to 16)
plus 0.07 a round. `python rules_replay_scratch.py rows.pkl 1024 [heldout]`. Paths as run on the VM."""
import sys, json, pickle, collections
sys.path.insert(0, "/work/main")
import numpy as np
from specdec.engine import ngram
from specdec.costmodel.predict import verify_cost
rows = pickle.load(open(sys.argv[1], "rb"))
if len(sys.argv) > 3: rows = [r for i, r in enumerate(rows) if (i % 6) >= 3]   # held-out: prompts 4-6 of each category
v = {int(k): x for k, x in json.load(open("/work/scratch/d8/replay_caps_1024.json"))["costs"]["v"].items()}
for k in (5,): v[k] = (v[4] + v[6]) / 2
OVER = 0.07
store = ngram.NgramStore.load("/work/main/specdec/assets/smollm2-ngram/store.npz")
L = int(sys.argv[2])

def own(h, k):
    return ngram.propose(h, k)

def make(rule):
    def run(rs):
        tok = cost = rounds = 0
        for prompt, out, cat in rs:
            out = out[:L]; seq = np.array(prompt + out, dtype=np.int64); t = 0; st = {"full": False, "last_a": 0, "last_d": 0}
            while t < len(out):
                d = rule(seq[:len(prompt) + t], len(out) - t - 1, st)
                a = 0
                while a < len(d) and d[a] == out[t + a]: a += 1
                st["full"] = len(d) > 0 and a == len(d); st["last_a"], st["last_d"] = a, len(d)
                tok += a + 1; rounds += 1; cost += verify_cost(v, len(d)) + OVER; t += a + 1
        return tok / cost, tok / rounds
    return run

def base(cap):
    def r(h, left, st):
        k = min(cap, left)
        d = ngram.propose(h, k)
        return d if d.size or k <= 0 else store.propose(h, k)
    return r

def tier(lo, hi, nhi):
    def r(h, left, st):
        n, j = ngram.match(h)
        if n >= 2:
            k = min(n, hi if n >= nhi else lo, left)
            return h[j + 1:j + 1 + k] if k > 0 else h[:0]
        k = min(lo, left)
        return store.propose(h, k) if k > 0 else h[:0]
    return r

def momentum(lo, hi):
    def r(h, left, st):
        cap = hi if st["full"] and st["last_d"] >= lo else lo
        k = min(cap, left)
        d = ngram.propose(h, k)
        return d if d.size or k <= 0 else store.propose(h, k)
    return r

def both(lo, hi, nhi):
    def r(h, left, st):
        n, j = ngram.match(h)
        if n >= 2:
            cap = hi if (n >= nhi and st["full"]) else lo
            k = min(n, cap, left)
            return h[j + 1:j + 1 + k] if k > 0 else h[:0]
        k = min(lo, left)
        return store.propose(h, k) if k > 0 else h[:0]
    return r

rules = {"cap4": base(4), "cap7": base(7)}
for nhi in (8, 12, 16): rules[f"tier4/7@{nhi}"] = tier(4, 7, nhi)
rules["mom4/7"] = momentum(4, 7)
for nhi in (8, 16): rules[f"both4/7@{nhi}"] = both(4, 7, nhi)
rules["tier4/12@16"] = tier(4, 12, 16); rules["mom4/12"] = momentum(4, 12)
cats = sorted(set(r[2] for r in rows))
for name, rule in rules.items():
    run = make(rule)
    s, tpr = run(rows)
    per = {c: round(run([r for r in rows if r[2] == c])[0], 2) for c in cats}
    print(f"{name:14s} {s:.3f} {tpr:.2f}", " ".join(f"{c[:6]}={x}" for c, x in per.items()), flush=True)
