"""Scratch (stop 34, 2026-12-05; not a product script): how many vocabulary rows a rigorous Q8-activation error bound leaves for an
exact recheck of the greedy argmax on SmolLM2's head. `PYTHONPATH=. python head_bound_scratch.py question.jsonl` (reads the converted GGUF folder under SPECDEC_CACHE_DIR's gguf/)."""
import glob, json, sys, numpy as np, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from specdec.common.cachedir import cache_root
d = glob.glob(str(cache_root() / 'gguf' / '*' / ''))[0]
tok = AutoTokenizer.from_pretrained(d); m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
W = m.lm_head.weight.detach().numpy().astype(np.float64)            # [V, 576] (the Q8_0 rows, dequantized)
V, K = W.shape; B = K // 32
Wb = np.abs(W).reshape(V, B, 32).sum(-1)                            # [V, B] per-block L1
qs = [json.loads(l)['turns'][0] for l in open(sys.argv[1] if len(sys.argv) > 1 else 'question.jsonl')][::40][:12]
counts, counts_row = [], []
for q in qs:
    ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_tensors='pt')
    if isinstance(ids, dict) or hasattr(ids, 'input_ids'): ids = ids['input_ids']
    out = m.generate(ids, max_new_tokens=64, do_sample=False)
    with torch.no_grad():
        h = m.model(out).last_hidden_state[0, ids.shape[1] - 1:].numpy().astype(np.float64)   # [T, 576], after the final norm
    for x in h:
        xb = x.reshape(B, 32); dx = np.abs(xb).max(-1) / 127.0
        xq = (np.round(xb / np.where(dx > 0, dx, 1)[:, None]) * dx[:, None]).reshape(K)
        a = W @ xq
        E = Wb @ (dx / 2) * (1 + 1e-4) + 1e-4 * (np.abs(W) @ np.abs(x))        # block bound + float rounding margin
        Er = np.abs(W).sum(1) * dx.max() / 2 * (1 + 1e-4) + 1e-4 * (np.abs(W) @ np.abs(x))
        top = (a - E).max(); counts.append(int((a + E >= top).sum()))
        counts_row.append(int((a + Er >= (a - Er).max()).sum()))
        assert np.argmax(W @ x) in np.nonzero(a + E >= top)[0]
c, r = np.array(counts), np.array(counts_row)
print(f"{len(c)} positions: candidates per position, per-block bound: median {np.median(c):.0f}, p90 {np.percentile(c, 90):.0f}, max {c.max()}, mean {c.mean():.1f}; per-row bound: median {np.median(r):.0f}, p90 {np.percentile(r, 90):.0f}, max {r.max()}")
