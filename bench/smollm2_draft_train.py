"""The SmolLM2-135M-Instruct draft recipe (issue 18): data split, head ids, initial drafts, packing.
Training itself is `specdec distill --samples` (the commands are in bench/RESULTS.md and below).

    python bench/smollm2_draft_train.py split --samples DATA --out DIR        # DIR/train, DIR/val (symlinks)
    python bench/smollm2_draft_train.py head --samples DIR/train --size 4096 --out DIR/head_4096.json
    python bench/smollm2_draft_train.py init --target T --head DIR/head_4096.json --shape t1 --out DIR/init_t1
    specdec distill --target T --draft DIR/init_t1 --samples DIR/train --data-source teacher \
        --divergence fkl [--hard-labels] --prompt-tokens 384 --new-tokens 160 ... --out DIR/run
    python bench/smollm2_draft_train.py pack --target T --draft DIR/run --out specdec/assets/smollm2_draft

split: a unit is held out for validation iff its index % 10 == 9 (bench/smollm2_draft_data.py units).
head: the ids ranked by the target's probability mass over the training split (the sum over positions
of its top-32 probabilities: every plausible token counts, not only the one drawn), the top --size kept,
plus the end-of-turn id.
init shapes (specdec.models.draft): the target's width, some of its layers copied (t*), or fresh and
narrower with the target's embedding projected (f*).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from specdec.common.files import write_json_atomic  # noqa: E402
from specdec.distill.samples import read_shard  # noqa: E402
from specdec.models import load_model, load_tokenizer  # noqa: E402
from specdec.models.draft import DraftShape, build, pack  # noqa: E402

SHAPES = {
    "t1": dict(target_layers=[0]),
    "t2": dict(target_layers=[0, 1]),
    "t1last": dict(target_layers=[29]),
    "t2ends": dict(target_layers=[0, 29]),
    "f2": dict(hidden=256, layers=2, heads=4, kv_heads=2, intermediate=768),
    "f1": dict(hidden=256, layers=1, heads=4, kv_heads=2, intermediate=768),
}


def cmd_split(args) -> None:
    out = Path(args.out)
    for part in ("train", "val"):
        (out / part).mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(args.samples).glob("unit_*.pt")):
        part = "val" if int(f.stem.split("_")[1]) % 10 == 9 else "train"
        link = out / part / f.name
        if not link.exists():
            link.symlink_to(f.resolve())


def cmd_head(args) -> None:
    mass = torch.zeros(args.vocab, dtype=torch.float64)
    emitted = torch.zeros(args.vocab, dtype=torch.float64)
    files = sorted(Path(args.samples).glob("*.pt"))
    for f in files:
        d = read_shard(f)
        mass.index_add_(0, d["topk_idx"].long().flatten(), d["topk_logp"].double().exp().flatten())
        emitted.index_add_(0, d["cont_ids"].long(), torch.ones(len(d["cont_ids"]), dtype=torch.float64))
    ranked = mass.argsort(descending=True)
    ids = sorted(set(ranked[:args.size].tolist()) | set(args.always))
    inside = torch.zeros(args.vocab, dtype=torch.bool)
    inside[ids] = True
    write_json_atomic(args.out, {"ids": ids, "shards": len(files), "tokens": int(emitted.sum()),
                                 "train_emitted_coverage": round(float(emitted[inside].sum() / emitted.sum()), 4),
                                 "train_top32_mass_coverage": round(float(mass[inside].sum() / mass.sum()), 4)})


def cmd_init(args) -> None:
    target = load_model(args.target)
    ids = json.loads(Path(args.head).read_text())["ids"]
    draft = build(target, DraftShape(head_ids=ids, seed=args.seed, **SHAPES[args.shape]))
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(draft.config, k, getattr(target.config, k))
    draft.save_pretrained(args.out)
    load_tokenizer(args.target).save_pretrained(args.out)


def cmd_pack(args) -> None:
    target = load_model(args.target)
    pack(load_model(args.draft), target.get_input_embeddings().weight, args.out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("split")
    p.add_argument("--samples", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("head")
    p.add_argument("--samples", required=True)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=49152, help="the target's vocabulary size")
    p.add_argument("--always", type=int, nargs="*", default=[2], help="ids always covered (2: <|im_end|>)")
    p.add_argument("--out", required=True)
    p = sub.add_parser("init")
    p.add_argument("--target", required=True)
    p.add_argument("--head", required=True)
    p.add_argument("--shape", choices=sorted(SHAPES), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--target", required=True)
    p.add_argument("--draft", required=True)
    p.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    {"split": cmd_split, "head": cmd_head, "init": cmd_init, "pack": cmd_pack}[args.cmd](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
