import sys, json, time, pickle
sys.path.insert(0, "/work/main")
import torch, numpy as np
from specdec import autoregressive_generate
from specdec.data.prompts import load_prompts
from specdec.engine import ngram
from specdec.models import load_pair
torch.set_num_threads(1)
gg, n, L, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
target, _, tok, vocab = load_pair(gg, ngram.NAME, quantize="gguf-q8a")
prompts, _ = load_prompts("/work/shared/data/spec_bench_question.jsonl", tok, n, "auto")
rows = []
for p in prompts:
    ids = tok(p["prompt"], add_special_tokens=False).input_ids
    o = autoregressive_generate(target, torch.tensor([ids]), max_new_tokens=L, vocab_size=vocab, eos_token_id=tok.eos_token_id)
    rows.append((ids, list(o.new_tokens[0]), p["category"]))
pickle.dump(rows, open(out, "wb"))
