"""Replay decodes of the bundled pair and score draft-count schedules without a clock.

Each schedule (fixed gamma 1..5, gamma auto under candidate estimator constants) decodes held-out
prompts; its score is tokens per modelled second, sum of new tokens / sum over rounds of the round cost
measured by `specdec bench` (results.json meta.costs[batch size].round_s, through the same robust line
gamma auto uses). Timing noise on a shared machine cannot move the comparison; only the schedules'
choices and the acceptance they meet do. This is how AutoConfig's strength and decay were chosen
(bench/RESULTS.md, "gamma auto"): each candidate is an AutoConfig handed to the decoder.

  python bench/auto_replay.py --costs bench/results/cpu_auto/results.json --temperature 0 --skip 2 --per-category 8
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from specdec.common.values import is_greedy
from specdec.costmodel.policy import AutoConfig
from specdec.costmodel.predict import linear_round_costs
from specdec.costmodel.table import read_entry, round_costs
from specdec.engine.decoding import SpeculativeDecoder
from specdec.models import bundled_pair, load_pair
from specdec.data.prompts import load_prompts


def held_out(tok, per_category: int, skip: int) -> list:
    """The built-in prompts after the first `skip` of each category (those the benchmark runs)."""
    prompts, _ = load_prompts(None, tok, per_category)
    seen: dict = {}
    out = []
    for p in prompts:
        seen[p["category"]] = seen.get(p["category"], 0) + 1
        if seen[p["category"]] > skip:
            out.append(p)
    return out


def score(dec, tok, prompts, temperature, seeds, cost) -> dict:
    """category -> new tokens per modelled second (batch size 1)."""
    acc = {}
    for p in prompts:
        ids = tok(p["prompt"], return_tensors="pt")["input_ids"]
        for seed in seeds:
            out = dec.generate(ids, max_new_tokens=64, temperature=temperature, seed=seed,
                               eos_token_id=tok.eos_token_id)
            tokens, secs = acc.get(p["category"], (0, 0.0))
            secs += sum(n * cost[max(k, 1)] for k, n in enumerate(out.stats.gamma_counts))
            acc[p["category"]] = (tokens + out.stats.new_tokens, secs)
    return {c: t / s for c, (t, s) in acc.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--costs", required=True, help="a specdec bench results.json with round_s at batch size 1")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--per-category", type=int, default=8)
    ap.add_argument("--skip", type=int, default=2, help="leave out the first N prompts per category (the bench's)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per prompt when sampling")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    meta = json.load(open(args.costs))["meta"]
    entry = read_entry(meta["costs"]["1"])
    cost = linear_round_costs(round_costs(entry, not is_greedy(args.temperature)), AutoConfig().max_gamma)
    t, d = bundled_pair()
    target, draft, tok, vocab = load_pair(str(t), str(d), "float32", "cpu", None, quantize="int8",
                                          draft_quantize="none")
    prompts = held_out(tok, args.per_category, args.skip)
    seeds = [0] if is_greedy(args.temperature) else list(range(args.seeds))
    fixed = {g: score(SpeculativeDecoder(target, draft, gamma=g, vocab_size=vocab), tok, prompts, args.temperature,
                      seeds, cost) for g in (1, 2, 3, 4, 5)}
    cats = sorted(fixed[1])
    best = {c: max(fixed, key=lambda g: fixed[g][c]) for c in cats}
    print(f"{len(prompts)} prompts, T={args.temperature:g}; best fixed gamma per category: {best}")
    for strength in (2.0, 4.0, 8.0):
        for decay in (0.9, 0.95):
            config = AutoConfig(strength=strength, decay=decay)
            auto = score(SpeculativeDecoder(target, draft, gamma="auto", vocab_size=vocab, costs={1: entry},
                                            auto=config), tok, prompts, args.temperature, seeds, cost)
            ratios = {c: round(auto[c] / fixed[best[c]][c], 3) for c in cats}
            print(f"auto strength {strength:g} decay {decay:g}: / best fixed {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
