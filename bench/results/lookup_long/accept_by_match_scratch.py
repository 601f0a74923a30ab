import sys, pickle, collections
sys.path.insert(0, "/work/main")
import numpy as np
from specdec.engine import ngram
rows = pickle.load(open(sys.argv[1], "rb"))
L = 1024
st = collections.defaultdict(lambda: [0, 0, 0])  # rounds, drafted, accepted  by n bucket, cap 12
pos = collections.defaultdict(lambda: [0, 0])   # per position i (0-based) in long rounds: reached, accepted
for prompt, out, cat in rows:
    out = out[:L]; seq = np.array(prompt + out, dtype=np.int64); t = 0
    while t < len(out):
        h = seq[:len(prompt) + t]
        n, j = ngram.match(h)
        k = min(n, 12, len(out) - t - 1) if n >= 2 else 0
        d = h[j + 1:j + 1 + k] if k > 0 else h[:0]
        a = 0
        while a < len(d) and d[a] == out[t + a]: a += 1
        b = "n<4" if n < 4 else "4-7" if n < 8 else "8-11" if n < 12 else "12-15" if n < 16 else "16"
        s = st[b]; s[0] += 1; s[1] += len(d); s[2] += a
        if n >= 12:
            for i in range(len(d)):
                pos[i][0] += 1
                if i < a: pos[i][1] += 1
                else: break
        t += a + 1
for b, s in sorted(st.items()): print(b, s, "acc/drafted %.3f" % (s[2] / max(s[1], 1)))
print("long rounds: P(accept token i | reached i):", {i: round(p[1] / p[0], 3) for i, p in sorted(pos.items())})
