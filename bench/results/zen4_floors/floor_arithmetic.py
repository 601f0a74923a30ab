"""Arithmetic, not a measurement (2026-12-06): what the 39-prompt Zen 4 run of a012ef9 ("A verify's attention without
waiting on memory", run 2: plain 90.1 tok/s, auto 170.9 tok/s, end to end 1.898x / decode 2.030x, 24581 tokens,
gamma counts 0..7 [2161, 293, 848, 153, 614, 157, 131, 2089]) would give if a verify's attention ran at its float
floor, and the greedy head past 4 rows at its 1-row cost (its memory floor), at a context of 512 columns (~183
prompt tokens + half of ~630 answer tokens). Attention a head at 512 columns from attention_ab.txt (a012ef9; S = 4,
6, 7 interpolated), floors as attention_ab.py computes them; head from head_split.txt. 90 heads a forward."""
toks, plain_tps, auto_tps, ratio_dec = 24581, 90.1, 170.9, 2.030
plain_wall, auto_wall = toks / plain_tps, toks / auto_tps
P = (ratio_dec * auto_wall - plain_wall) / (ratio_dec - 1)          # the prefill both walls share
plain_dec, auto_dec = plain_wall - P, auto_wall - P
counts = [2161, 293, 848, 153, 614, 157, 131, 2089]                 # rounds by drafts k: S = k + 1 tokens
att = {1: 11.4, 2: 17.1, 3: 24.2, 4: 31.0, 5: 37.9, 6: 41.5, 7: 45.1, 8: 48.7}   # us a head at 512 columns
mem = 2 * 512 * 64 * 4 / 24.6e9 * 1e6
floor = {S: max(2 * 3 * S * 512 * 64 / 16 / 3.7e9 * 1e6, mem) for S in att}
head = {1: 1.45, 2: 1.45, 3: 1.45, 4: 1.58, 5: 1.90, 6: 2.35, 7: 2.60, 8: 2.83}    # ms (6, 7 interpolated)
save_att = sum(n * 90 * (att[k + 1] - floor[k + 1]) * 1e-6 for k, n in enumerate(counts))
save_head = sum(n * (head[k + 1] - 1.45) * 1e-3 for k, n in enumerate(counts))
e2e = lambda dec: (P + plain_dec) / (P + dec)
print(f"prefill {P:.1f} s, plain decode {plain_dec:.1f} s, auto decode {auto_dec:.1f} s: {e2e(auto_dec):.3f}x")
print(f"attention at its floor: -{save_att:.1f} s -> {e2e(auto_dec - save_att):.3f}x end to end")
print(f"head past 4 rows at its 1-row cost: -{save_head:.1f} s -> {e2e(auto_dec - save_head):.3f}x")
print(f"both: {e2e(auto_dec - save_att - save_head):.3f}x")
