"""Write an n-gram store (specdec/engine/ngram.py, NgramStore) from what the target wrote, for `--draft
ngram:FILE`: sample shards (specdec.distill.samples' format, e.g. bench/smollm2_draft_data.py's units), or
texts (a JSONL file of {"text": ...}, e.g. answers your deployment logged) tokenized by the target's
tokenizer.

    python bench/ngram_store.py --samples DIR [--units N] [--prompt-tail 8] --out store.npz
    python bench/ngram_store.py --text answers.jsonl --target DIR_OR_GGUF --out store.npz

From shards each sequence is a row's continuation after the last --prompt-tail tokens of its prompt
(the chat template's assistant header, so the store can start an answer); from texts, each text's
tokens. The file holds the sequences and the store's settings (min_count, tau); the table is built when
a process first loads it (1.2-1.7 s for 0.86 M tokens). Never build one from the prompts you
evaluate on, nor from their answers.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from specdec.distill.samples import read_shard  # noqa: E402
from specdec.engine import ngram  # noqa: E402


def sequences(folder: Path, units: int | None, prompt_tail: int) -> list:
    shards = sorted(folder.glob("unit_*.pt")) or sorted(folder.glob("*.pt"))
    if not shards:
        raise SystemExit(f"error: no sample shards (*.pt) in {folder}")
    out = []
    for path in shards[:units]:
        d = read_shard(path)
        p_ids, p_off, c_ids, c_off = (d[k].tolist() for k in ("prompt_ids", "prompt_off", "cont_ids", "cont_off"))
        for r in range(len(c_off) - 1):
            tail = p_ids[max(p_off[r], p_off[r + 1] - prompt_tail):p_off[r + 1]] if prompt_tail else []
            out.append(tail + c_ids[c_off[r]:c_off[r + 1]])
    return out


def texts(path: Path, target) -> list:
    import json
    from specdec.models.load import load_tokenizer
    tok = load_tokenizer(target)
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                raise SystemExit(f"error: {path} line {i} is not a JSON object with a \"text\" string") from None
            out.append(tok(text, add_special_tokens=False).input_ids)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", type=Path, help="a folder of sample shards (unit_*.pt)")
    src.add_argument("--text", type=Path, help='a JSONL file of {"text": ...} (needs --target for its tokenizer)')
    ap.add_argument("--target", default=None, help="the target (folder or GGUF) whose tokenizer reads --text")
    ap.add_argument("--units", type=int, default=None, help="the first N shards (default: all)")
    ap.add_argument("--prompt-tail", type=int, default=8, help="prompt tokens kept before each continuation")
    ap.add_argument("--min-count", type=int, default=ngram.STORE_MIN_COUNT)
    ap.add_argument("--tau", type=float, default=ngram.STORE_TAU)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.text is not None and args.target is None:
        raise SystemExit("error: --text needs --target (the tokenizer the store's ids must share)")
    seqs = sequences(args.samples, args.units, args.prompt_tail) if args.samples else texts(args.text, args.target)
    try:
        store = ngram.NgramStore(seqs, args.min_count, args.tau)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    store.save(args.out)
    print(f"{args.out}: {store.describe()} ({args.out.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
