"""Which n-gram lookup settings pay on a target: replay the lookup (specdec/engine/ngram.py) over the
target's own greedy outputs and price each round with the target's measured verify costs.

    OPENBLAS_NUM_THREADS=1 taskset -c 1 python bench/ngram_replay.py --target SmolLM2-135M-Instruct.Q4_1.gguf \
        --quantize gguf-q8a --prompts question.jsonl --num-prompts 6 --max-new-tokens 128,256 \
        --out bench/results/smollm2_ngram/replay.json

Greedy speculative output equals the plain greedy output, so one plain decode per prompt says, for any
lookup rule, what every round would propose and accept (the first proposed token that differs from the
output is the first rejection). A round that drafts K tokens costs v(K) target steps (v(0) = 1), measured
here on the decoders' own path (costmodel.measure_step_costs at the first prompt's length, greedy: the
forward a greedy decode runs), plus the
lookup's own cost; the predicted speedup is tokens / sum of the rounds' costs. What the replay leaves
out: the loop's own overhead a round (~0.1-0.3 ms on SmolLM2, bench/RESULTS.md) and v's growth with the
context. Rules: the engine's (count = min(match length, cap), at least min_ngram matched) for each
min_ngram and cap, and the alternative "fixed" (count = cap whenever a match is found); with --store FILE
also "store" (the engine's rule, then the n-gram store where the row's tokens give nothing: `--draft
ngram:FILE`); and "auto", gamma="auto" at batch 1 (with the store where one is given): cap AUTO_CAP,
except a match of max_ngram tokens (a row repeating itself), capped at the long count the measured v
picks (predict.long_count; reported as the row's "cap").
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from specdec import SpeculativeDecoder, autoregressive_generate  # noqa: E402
from specdec.common.env import environment  # noqa: E402
from specdec.common.files import write_json_atomic  # noqa: E402
from specdec.costmodel.measure import measure_step_costs  # noqa: E402
from specdec.costmodel.predict import long_count, verify_cost  # noqa: E402
from specdec.data.prompts import load_prompts  # noqa: E402
from specdec.engine import ngram  # noqa: E402
from specdec.models import load_pair  # noqa: E402

CAPS = (1, 2, 3, 4, 6, 8)
LONG = tuple(range(ngram.AUTO_CAP, ngram.LONG_CAP_MAX + 1))   # the counts gamma="auto" may give a long match


def fixed_count(history: np.ndarray, k: int, max_ngram: int, min_ngram: int) -> np.ndarray:
    """The alternative rule: k tokens after the same occurrence, whatever the match's length."""
    n, j = ngram.match(history, max_ngram)
    return history[j + 1:j + 1 + k] if k > 0 and n >= max(min_ngram, 1) else history[:0]


def replay(rows: list, rule, cap: int, min_ngram: int, v: dict, lookup_cost: float, new_tokens: int) -> dict:
    """rows: [(prompt ids, plain greedy output ids)]; rule(history, k, max_ngram, min_ngram) -> proposal."""
    tokens = rounds = drafted = accepted = 0
    cost = 0.0
    for prompt, out in rows:
        out = out[:new_tokens]
        seq = np.array(prompt + out, dtype=np.int64)
        t = 0
        while t < len(out):
            d = rule(seq[:len(prompt) + t], min(cap, len(out) - t - 1), ngram.MAX_NGRAM, min_ngram)
            a = 0
            while a < len(d) and d[a] == out[t + a]:
                a += 1
            tokens, rounds, drafted, accepted = tokens + a + 1, rounds + 1, drafted + len(d), accepted + a
            cost += verify_cost(v, len(d)) + lookup_cost
            t += a + 1
    return {"predicted_speedup": tokens / cost, "tokens_per_round": tokens / rounds, "drafted": drafted,
            "accepted": accepted, "rounds": rounds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="a GGUF file or a model folder")
    ap.add_argument("--quantize", default="auto", help="as load_pair's (auto: none; pass gguf / gguf-q8a)")
    ap.add_argument("--prompts", required=True, help="Spec-Bench question.jsonl or {prompt, category} JSONL")
    ap.add_argument("--num-prompts", type=int, default=6, help="per category")
    ap.add_argument("--max-new-tokens", default="128,256", help="replayed lengths (the decode runs the longest)")
    ap.add_argument("--store", default=None, help="an n-gram store (bench/ngram_store.py) to replay as well")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    lengths = sorted(int(n) for n in args.max_new_tokens.split(","))
    quantize = "none" if args.quantize == "auto" else args.quantize
    target, _, tok, vocab = load_pair(args.target, ngram.NAME, quantize=quantize)
    prompts, _ = load_prompts(args.prompts, tok, args.num_prompts, "auto")
    ids = [tok(p["prompt"], add_special_tokens=False).input_ids for p in prompts]
    dec = SpeculativeDecoder(target, ngram.NAME, gamma=max(CAPS + LONG), vocab_size=vocab)
    costs = measure_step_costs(dec, torch.tensor([ids[0]]), sorted(set(CAPS) | set(LONG)), 1, greedy=True)
    v, c = {int(k): x for k, x in costs["v"].items()}, costs["c"]
    t0, rows = time.perf_counter(), []
    for p in ids:
        o = autoregressive_generate(target, torch.tensor([p]), max_new_tokens=lengths[-1], vocab_size=vocab,
                                    eos_token_id=tok.eos_token_id)
        rows.append((p, o.new_tokens[0]))
    decode_s = time.perf_counter() - t0
    cats = [p["category"] for p in prompts]
    out = {"command": " ".join(sys.argv), "env": environment(), "costs": {"c": c, "v": v,
           "target_step_s": costs["target_step_s"]}, "prompts": len(ids), "decode_s": decode_s, "replays": []}
    store = ngram.NgramStore.load(args.store) if args.store else None
    long = long_count(v, ngram.AUTO_CAP, ngram.LONG_CAP_MAX, ngram.LONG_ALPHA)
    for n in lengths:
        rules = [("match", ngram.propose), ("fixed", fixed_count)]
        if store is not None:
            rules.append(("store", lambda h, k, mx, mn: ngram.NgramDraft(mn, mx, store).propose(h, k)))
        rules.append(("auto", lambda h, k, mx, mn: ngram.NgramDraft(mn, mx, store).propose(h, k, ngram.AUTO_CAP)))
        for rule_name, rule in rules:
            for min_ngram in (1, 2, 3):
                for cap in ((long,) if rule_name == "auto" else CAPS):
                    r = replay(rows, rule, cap, min_ngram, v, c, n)
                    per = collections.defaultdict(list)
                    for row, cat in zip(rows, cats):
                        per[cat].append(row)
                    r["per_category"] = {cat: round(replay(rs, rule, cap, min_ngram, v, c, n)["predicted_speedup"], 3)
                                         for cat, rs in per.items()}
                    out["replays"].append({"new_tokens": n, "rule": rule_name, "min_ngram": min_ngram, "cap": cap, **r})
        best = max((r for r in out["replays"] if r["new_tokens"] == n), key=lambda r: r["predicted_speedup"])
        eng = next(r for r in out["replays"] if r["new_tokens"] == n and r["rule"] == "match"
                   and r["min_ngram"] == ngram.MIN_NGRAM and r["cap"] == ngram.AUTO_CAP)
        print(f"{n} tokens: the engine's defaults (min_ngram {ngram.MIN_NGRAM}, cap {ngram.AUTO_CAP}) "
              f"{eng['predicted_speedup']:.3f}x, {eng['tokens_per_round']:.2f} tokens a round; best: {best['rule']} "
              f"min_ngram {best['min_ngram']} cap {best['cap']} {best['predicted_speedup']:.3f}x")
        au = next(r for r in out["replays"] if r["new_tokens"] == n and r["rule"] == "auto"
                  and r["min_ngram"] == ngram.MIN_NGRAM)
        print(f"  gamma auto (a row repeating itself drafts up to {long}): {au['predicted_speedup']:.3f}x, "
              f"{au['tokens_per_round']:.2f} tokens a round")
        if args.store:
            st = next(r for r in out["replays"] if r["new_tokens"] == n and r["rule"] == "store"
                      and r["min_ngram"] == ngram.MIN_NGRAM and r["cap"] == ngram.AUTO_CAP)
            print(f"  with the store: {st['predicted_speedup']:.3f}x, {st['tokens_per_round']:.2f} tokens a round")
    print("v:", {k: round(x, 3) for k, x in v.items()}, "c:", round(c, 4))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
