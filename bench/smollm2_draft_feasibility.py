"""Before training a SmolLM2 draft: how concentrated are the target's emitted tokens, and how well do
cheap drafts cut from the target agree with it (issue 18, step 1).

    OPENBLAS_NUM_THREADS=1 python bench/smollm2_draft_feasibility.py --target DIR --samples DIR \
        --out bench/results/smollm2_draft/feasibility.json

Data: the target's own samples (bench/smollm2_draft_data.py), split by unit: even units choose the
head's ids (the N most frequent emitted tokens), odd units measure, so coverage counts tokens the
choice never saw.
  coverage    share of emitted tokens, and of the target's argmax tokens, inside the top N ids; the
              target's probability mass inside them (its top-32 entries only: a lower bound)
  candidates  drafts built from the target (specdec.models.draft.build): its first L layers, its final
              norm and its head cut to the top N ids, untrained; teacher-forced on held-out rows:
              greedy agreement with the target's argmax, and a lower bound of the T=1 acceptance
              sum_x min(p, q) over the target's top-32 ids; the MAL at gamma 4 an i.i.d. acceptance
              of that size would give
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from specdec.common.files import write_json_atomic  # noqa: E402
from specdec.distill.samples import SampleSource, read_shard  # noqa: E402
from specdec.models import load_model  # noqa: E402
from specdec.models.draft import DraftShape, build  # noqa: E402
from specdec.distill.subset import HeadFrame  # noqa: E402


def mal(alpha: float, gamma: int = 4) -> float:
    return (1 - alpha ** (gamma + 1)) / (1 - alpha) if alpha < 1 else gamma + 1.0


def split(folder) -> tuple[list, list]:
    files = sorted(Path(folder).glob("unit_*.pt"))
    return [f for i, f in enumerate(files) if i % 2 == 0], [f for i, f in enumerate(files) if i % 2 == 1]


def coverage(fit, check, sizes, vocab: int) -> tuple[dict, dict]:
    counts = Counter()
    for f in fit:
        counts.update(read_shard(f)["cont_ids"].tolist())
    ranked = [t for t, _ in counts.most_common()]
    emitted, argmax, mass = [], [], []
    for f in check:
        d = read_shard(f)
        emitted.append(d["cont_ids"].long())
        argmax.append(d["topk_idx"][:, 0].long())
        mass.append((d["topk_idx"].long(), d["topk_logp"].float().exp()))
    emitted, argmax = torch.cat(emitted), torch.cat(argmax)
    idx, p = torch.cat([m[0] for m in mass]), torch.cat([m[1] for m in mass])
    out = {"distinct_emitted_ids_fit": len(ranked), "tokens_fit": sum(counts.values()), "tokens_check": len(emitted)}
    heads = {}
    for n in sizes:
        ids = sorted(ranked[:n])
        inside = torch.zeros(vocab, dtype=torch.bool)
        inside[ids] = True
        out[str(n)] = {"emitted": round(float(inside[emitted].float().mean()), 4),
                       "argmax": round(float(inside[argmax].float().mean()), 4),
                       "top32_mass_inside": round(float((p * inside[idx]).sum(-1).mean()), 4)}
        heads[n] = ids
    return out, heads


@torch.no_grad()
def agreement(draft, source, batches) -> dict:
    """Teacher-forced on `batches` held-out batches: greedy agreement with the target's argmax and the
    lower bound of sum_x min(p, q) over the target's top-32 ids (T = 1)."""
    frame = HeadFrame(draft)
    agree, acc, n = 0.0, 0.0, 0
    for step in range(batches):
        batch, t = source.entry(step, 0)
        s = frame.student_logits(draft, batch)                                       # [N, K]
        q_full = torch.zeros((s.shape[0], frame.inverse.numel() + 1))
        q_full[:, frame.ids] = torch.softmax(s, -1)                                  # [N, V + 1]
        agree += float((frame.ids[s.argmax(-1)] == t.idx[:, 0]).sum())
        acc += float(torch.minimum(t.logp.exp(), q_full.gather(1, t.idx)).sum())
        n += s.shape[0]
    a0, a1 = agree / n, acc / n
    return {"greedy_agreement": round(a0, 4), "t1_acceptance_lb": round(a1, 4), "mal_g4_greedy": round(mal(a0), 3),
            "mal_g4_t1": round(mal(a1), 3), "tokens": n}


def candidate(target, ids, layers, source, batches) -> dict:
    return agreement(build(target, DraftShape(head_ids=ids, target_layers=list(range(layers)))), source, batches)


def score_drafts(args, t0) -> int:
    source = SampleSource(args.samples, batch_size=8, micros_per_step=1, prompt_tokens=256, new_tokens=160, seed=0,
                          pad_id=2)
    out = {}
    for name, folder in (d.split("=", 1) for d in args.draft):
        out[name] = agreement(load_model(folder), source, args.batches)
        print(json.dumps({name: out[name]}), flush=True)
    write_json_atomic(args.out, {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                 "drafts": out, "wall_s": round(time.time() - t0, 1)}, indent=1)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--samples", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sizes", default="1024,2048,4096,8192,16384")
    ap.add_argument("--head", type=int, default=8192, help="head size of the candidates")
    ap.add_argument("--layers", default="1,2,4,8")
    ap.add_argument("--batches", type=int, default=6, help="batches of 8 held-out rows per candidate")
    ap.add_argument("--draft", action="append", default=[], help="NAME=FOLDER: score a trained draft instead "
                    "(teacher-forced on --samples, every shard of it)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    if args.draft:
        return score_drafts(args, t0)
    fit, check = split(args.samples)
    target = load_model(args.target)
    cov, heads = coverage(fit, check, [int(s) for s in args.sizes.split(",")],
                          target.get_input_embeddings().weight.shape[0])
    print(json.dumps(cov), flush=True)
    tmp = Path(args.out).with_suffix(".check")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in check:
        link = tmp / f.name
        if not link.exists():
            link.symlink_to(f.resolve())
    source = SampleSource(tmp, batch_size=8, micros_per_step=1, prompt_tokens=256, new_tokens=160, seed=0, pad_id=2)
    cands = {}
    for L in [int(x) for x in args.layers.split(",")]:
        cands[f"first{L}_head{args.head}"] = candidate(target, heads[args.head], L, source, args.batches)
        print(json.dumps({f"first{L}": cands[f"first{L}_head{args.head}"]}), flush=True)
    write_json_atomic(args.out, {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                 "coverage": cov, "candidates": cands, "wall_s": round(time.time() - t0, 1)},
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
