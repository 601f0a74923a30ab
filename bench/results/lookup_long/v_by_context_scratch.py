import sys; sys.path.insert(0, "/work/main")
import torch
from specdec import SpeculativeDecoder
from specdec.costmodel.measure import measure_step_costs
from specdec.costmodel.predict import long_count
from specdec.models import load_pair
from specdec.engine import ngram
torch.set_num_threads(1)
gg, q = sys.argv[1], sys.argv[2]
target, _, tok, vocab = load_pair(gg, ngram.NAME, quantize=q)
dec = SpeculativeDecoder(target, ngram.NAME, gamma=12, vocab_size=vocab)
g = torch.Generator().manual_seed(0)
for P in [int(x) for x in sys.argv[3].split(",")]:
    ids = torch.randint(100, 40000, (1, P), generator=g)
    costs = measure_step_costs(dec, ids, list(range(1, 13)), 1, iters=9)
    v = {int(k): round(x, 3) for k, x in costs["v"].items()}
    print(q, P, round(costs["target_step_s"] * 1e3, 2), "ms", v, "long_count", long_count(v, 4, 12, 0.97), flush=True)
