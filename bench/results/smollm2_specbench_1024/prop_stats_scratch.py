"""Scratch record (2026-12-05, not part of specdec): the script behind bench/RESULTS.md's "What any gate of
the lookup could gain, by replay". It wraps NgramDraft.propose and DecodeStats.observe to log, for every
round that drafted, the proposal's source (own match length n, or the store's per-token shares), the tokens
drafted and accepted; run as `python prop_stats_scratch.py 256 2 1.0` from a checkout with the smollm2
pair converted in SPECDEC_CACHE_DIR (its paths are this VM's). Output: props_T{temp}_L{tokens}_N{per cat}.json."""
import sys, json, glob, torch, collections
root = "/work/main"; sys.path.insert(0, root)
L = int(sys.argv[1]); NP = int(sys.argv[2]); temp = float(sys.argv[3])
from specdec.models.load import load_pair
from specdec import SpeculativeDecoder
from specdec.engine import ngram as NG
from specdec.engine.stats import DecodeStats
T = glob.glob("/work/scratch/d2/cache/gguf/*/")[0]
target, _, tok, vocab = load_pair(T, "ngram", quantize="gguf-q8a")
draft = NG.as_ngram("ngram:" + root + "/specdec/assets/smollm2-ngram/store.npz")
torch.set_num_threads(1)
log = []; cur = {}
orig = NG.NgramDraft.propose
def propose(self, history, k):
    n, j = NG.match(history, self.max_ngram)
    d = NG.propose(history, k, self.max_ngram, self.min_ngram)
    if d.size or self.store is None or k <= 0:
        cur.update(src="own", n=int(n), k=int(d.size)); return d
    m = max(self.store.ns); h = [int(t) for t in history[-m:]]; shares = []
    out = self.store.propose(history, k)
    for t in out:
        _, s, cn = self.store.lookup(h); shares.append(round(s, 3)); h = (h + [int(t)])[-m:]
    cur.update(src="store", shares=shares, k=int(out.size)); return out
NG.NgramDraft.propose = propose
orig_obs = DecodeStats.observe
def observe(self, drafted, accepted):
    if drafted[0] > 0: log.append(dict(cur, drafted=drafted[0], accepted=accepted[0]))
    return orig_obs(self, drafted, accepted)
DecodeStats.observe = observe
qs = [json.loads(l) for l in open("/work/shared/data/spec_bench_question.jsonl")]
seen = collections.Counter(); encs = []
for q in qs:
    if seen[q["category"]] < NP:
        seen[q["category"]] += 1
        e = tok.apply_chat_template([{"role": "user", "content": q["turns"][0]}], add_generation_prompt=True, return_tensors="pt")
        encs.append(e["input_ids"] if not torch.is_tensor(e) else e)
dec = SpeculativeDecoder(target, draft, gamma=4, vocab_size=vocab)
for i, e in enumerate(encs):
    dec.generate(e, max_new_tokens=L, temperature=temp, seed=i)
json.dump(log, open(f"props_T{temp}_L{L}_N{NP}.json", "w"))
print(len(log))
