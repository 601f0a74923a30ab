"""Drafts for SmolLM2-135M-Instruct on Spec-Bench first turns: acceptance per category, greedy and T=1,
and (--timing) speed at batch 1 against plain decoding of the same target on the same path (issue 18).

    OPENBLAS_NUM_THREADS=1 python bench/smollm2_draft_eval.py --target DIR --draft NAME=DIR [...] \
        --questions question.jsonl --out bench/results/smollm2_draft/eval.json [--timing]

Acceptance: every category's first N questions (the first turn through the target's chat template),
decoded as one left-padded batch per category by SpeculativeDecoder at --gamma, per draft and
temperature; mean acceptance length (MAL, vLLM's convention), acceptance rate and alpha per category,
pooled over the categories the drafts' training data held (`seen`) and over those it did not
(`unseen`: translation, roleplay, math, math_reasoning; bench/smollm2_draft_data.py makes no request
of these kinds). Greedy rows are checked against plain greedy decoding of the same batch.

Timing (--timing): one question per category at batch 1, plain decoding and each draft's speculative
decoding interleaved prompt by prompt (so load changes hit all alike), tokens/s over all prompts;
c = the draft's decode step / the target's (median single-token forwards, interleaved).
The target runs on --impl (numpy: specdec's fastest exact fp32 path, or with --quantize gguf / gguf-q8a and
--target the .gguf file the C kernels on the GGUF's blocks).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from specdec.common.files import write_json_atomic  # noqa: E402
from specdec.data.prompts import load_prompts_file  # noqa: E402
from specdec.distill.data import left_pad  # noqa: E402
from specdec.engine.decoding import SpeculativeDecoder, autoregressive_generate  # noqa: E402
from specdec.engine.runner import ModelRunner  # noqa: E402
from specdec.engine.stats import DecodeStats  # noqa: E402
from specdec.models import load_model, load_tokenizer  # noqa: E402

UNSEEN = ("translation", "roleplay", "math", "math_reasoning")


def pick_questions(path, tok, per_category: int) -> dict:
    by_cat: dict = {}
    for rec in load_prompts_file(path, tok):
        by_cat.setdefault(rec["category"], []).append(tok(rec["prompt"], add_special_tokens=False).input_ids)
    return {c: rows[:per_category] for c, rows in by_cat.items()}


def pooled(rows: dict, cats) -> dict:
    s = DecodeStats.merged([rows[c]["_stats"] for c in cats if c in rows])
    return {"mal": round(s.mean_accepted_length, 4), "acceptance_rate": round(s.acceptance_rate, 4),
            "alpha": round(s.alpha, 4), "draft_steps": s.draft_steps}


def acceptance(target, drafts: dict, questions: dict, args) -> dict:
    out = {}
    plain = {}
    for T in args.temperatures:
        for name, draft in drafts.items():
            dec = SpeculativeDecoder(target, draft, gamma=args.gamma, impl=args.impl)
            rows = {}
            for cat, prompts in questions.items():
                ids, mask = left_pad(prompts, args.pad_id)
                t0 = time.time()
                res = dec.generate(ids, mask, max_new_tokens=args.new_tokens, temperature=T, seed=args.seed,
                                   eos_token_id=args.eos_id)
                row = {"mal": round(res.stats.mean_accepted_length, 4),
                       "acceptance_rate": round(res.stats.acceptance_rate, 4), "alpha": round(res.stats.alpha, 4),
                       "new_tokens": res.stats.new_tokens, "seconds": round(time.time() - t0, 1), "_stats": res.stats}
                if T == 0:
                    if cat not in plain:
                        plain[cat] = autoregressive_generate(target, ids, mask, max_new_tokens=args.new_tokens,
                                                             eos_token_id=args.eos_id, impl=args.impl).new_tokens
                    row["greedy_equals_plain"] = res.new_tokens == plain[cat]
                rows[cat] = row
                print(json.dumps({"draft": name, "T": T, "category": cat,
                                  **{k: v for k, v in row.items() if k != "_stats"}}), flush=True)
            seen = [c for c in rows if c not in UNSEEN]
            summary = {"all": pooled(rows, list(rows)), "seen": pooled(rows, seen), "unseen": pooled(rows, UNSEEN)}
            for r in rows.values():
                r.pop("_stats")
            out[f"{name}/T{T:g}"] = {"summary": summary, "categories": rows}
            print(json.dumps({"draft": name, "T": T, **summary}), flush=True)
    return out


def step_ms(model, impl: str, context: int = 160, n: int = 24) -> float:
    r = ModelRunner(model, 1, context + n + 2, impl=impl)
    ids = torch.randint(100, 4000, (1, context))
    r.prefill(ids, torch.ones_like(ids))
    pend, pos, valid = ids[:, -1:], torch.tensor([[context - 1]]), torch.ones((1, 1), dtype=torch.bool)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        r.forward(pend, pos, valid, logits_to_keep=1)
        ts.append(time.perf_counter() - t)
        pos = pos + 1
    return statistics.median(ts[2:]) * 1e3


def timing(target, drafts: dict, questions: dict, args) -> dict:
    costs = {"target": [], **{n: [] for n in drafts}}
    for _ in range(3):   # interleaved rounds
        costs["target"].append(step_ms(target, args.impl, n=12))
        for n, d in drafts.items():
            costs[n].append(step_ms(d, args.impl))
    ms = {k: statistics.median(v) for k, v in costs.items()}
    out = {"step_ms": {k: round(v, 3) for k, v in ms.items()},
           "c": {n: round(ms[n] / ms["target"], 4) for n in drafts}}
    prompts = [p[0] for p in questions.values()]
    for T in args.temperatures:
        decs = {n: SpeculativeDecoder(target, d, gamma=args.gamma, impl=args.impl) for n, d in drafts.items()}
        secs, toks = {"plain": 0.0, **{n: 0.0 for n in drafts}}, {"plain": 0, **{n: 0 for n in drafts}}
        for p in prompts:
            ids = torch.tensor([p])
            t0 = time.perf_counter()
            r = autoregressive_generate(target, ids, max_new_tokens=args.timing_tokens, temperature=T,
                                        seed=args.seed, eos_token_id=args.eos_id, impl=args.impl)
            secs["plain"] += time.perf_counter() - t0
            toks["plain"] += r.stats.new_tokens
            for n, dec in decs.items():
                t0 = time.perf_counter()
                r = dec.generate(ids, max_new_tokens=args.timing_tokens, temperature=T, seed=args.seed,
                                 eos_token_id=args.eos_id)
                secs[n] += time.perf_counter() - t0
                toks[n] += r.stats.new_tokens
        tps = {k: toks[k] / secs[k] for k in secs}
        out[f"T{T:g}"] = {"tokens_per_s": {k: round(v, 2) for k, v in tps.items()},
                          "speedup": {n: round(tps[n] / tps["plain"], 3) for n in drafts}}
        print(json.dumps({"timing": f"T{T:g}", **out[f"T{T:g}"]}), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", action="append", required=True, help="NAME=FOLDER (repeatable)")
    ap.add_argument("--questions", required=True, help="Spec-Bench question.jsonl")
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-category", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--temperatures", default="0,1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--impl", default="numpy")
    ap.add_argument("--quantize", default="none", help="the target's (load_model's): e.g. gguf-q8a with --target "
                                                       "the .gguf file; the drafts run as saved")
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--timing-tokens", type=int, default=64)
    ap.add_argument("--skip-acceptance", action="store_true")
    args = ap.parse_args(argv)
    args.temperatures = [float(t) for t in args.temperatures.split(",")]
    torch.set_num_threads(1)
    tok = load_tokenizer(args.target)
    args.pad_id, args.eos_id = tok.pad_token_id, tok.eos_token_id
    target = load_model(args.target, quantize=args.quantize)
    drafts = {n: load_model(p) for n, p in (d.split("=", 1) for d in args.draft)}
    questions = pick_questions(args.questions, tok, args.per_category)
    t0 = time.time()
    result = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
                         f"{os.getloadavg()[0]:.1f}",
              "versions": {"torch": torch.__version__, "python": platform.python_version()},
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).parent).stdout.strip(),
              "settings": {k: v for k, v in vars(args).items() if k not in ("pad_id", "eos_id")},
              "questions_per_category": {c: len(v) for c, v in questions.items()}, "unseen": list(UNSEEN)}
    with torch.no_grad():
        if not args.skip_acceptance:
            result["acceptance"] = acceptance(target, drafts, questions, args)
        if args.timing:
            result["timing"] = timing(target, drafts, questions, args)
    result["wall_s"] = round(time.time() - t0, 1)
    write_json_atomic(args.out, result, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
