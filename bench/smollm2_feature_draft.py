"""Would a draft that reads the target's features (EAGLE-style) reach the acceptance an independent
draft does not? A teacher-forced screen on the SmolLM2 draft data (issue 18), before any engine work.

    OPENBLAS_NUM_THREADS=1 python bench/smollm2_feature_draft.py features --target DIR --samples DIR --out FEATS
    OPENBLAS_NUM_THREADS=1 python bench/smollm2_feature_draft.py train --target DIR --features FEATS \
        --val unit_00004.pt --epochs 3 --out bench/results/smollm2_draft/feature_draft.json

features  every row of every sample shard (bench/smollm2_draft_data.py) through the target once:
          its last hidden state after the final norm (what its head reads) at every position, fp16.
train     the draft (EAGLE-1's shape): at position j it reads the target's feature f_j and the next
          token x_{j+1}, and predicts the target's next feature and token x_{j+2}:
              x = fc([embed(x_{j+1}), f_j]);  g_j = norm(layer(x));  logits = head_S(g_j)
          one decoder layer initialised from the target's last (--layer), fc from [I, I], the
          target's head cut to the --head ids its continuations emit most (frozen). Loss: the
          cross-entropy to the target's distribution over those ids plus a smooth-L1 pull of g_j
          toward f_{j+1}. --steps k > 1 also trains chain steps 2..k, where the draft reads its own
          g instead of f, as it would in a round ("training-time test"), weighted 0.8^(s-1).
Scored on the held-out unit (--val), teacher-forced: on its greedy rows, gamma-4 rounds walked along
each row exactly as greedy speculative decoding would accept them (chain steps after the first read
the draft's own features, as in a round): the mean accepted length per round (MAL, bonus token
included), and each step's acceptance given the steps before it were accepted; on its T=1 rows the
first step's acceptance sum_x min(p, q) against the target's full distribution.
The draft's step would cost one layer, fc and the cut head: what `bench/qgemm_bench.py --draft-layers 1
--draft-vocab N` times.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from specdec.common.files import write_bytes_atomic, write_json_atomic  # noqa: E402
from specdec.common.fingerprint import model_fingerprint  # noqa: E402
from specdec.distill.samples import read_shard  # noqa: E402
from specdec.models import load_model  # noqa: E402


@dataclass(frozen=True)
class Shape:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    rope_scaling: float      # the target's attention_scaling (1 for default RoPE)

    @classmethod
    def of(cls, target) -> "Shape":
        config = target.config
        hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.hidden_size, config.num_attention_heads, config.num_key_value_heads, hd,
                   float(config.rms_norm_eps), float(getattr(target.model.rotary_emb, "attention_scaling", 1.0)))


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, pos, inv_freq, scaling):
    """x [n, heads, D] at positions pos [n]: the rotate-half RoPE of Llama, with the target's own
    frequencies (its rotary_emb.inv_freq [D/2] and attention_scaling: any static RoPE type transformers builds)."""
    D = x.shape[-1]
    ang = pos[:, None].float() * inv_freq[None]                                 # [n, D/2]
    cos = torch.cat([ang.cos()] * 2, -1)[:, None] * scaling
    sin = torch.cat([ang.sin()] * 2, -1)[:, None] * scaling
    return x * cos + torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1) * sin


class FeatureDraft(torch.nn.Module):
    def __init__(self, target, layer: int, head_ids):
        super().__init__()
        state, self.shape = target.state_dict(), Shape.of(target)
        self.register_buffer("inv_freq", target.model.rotary_emb.inv_freq.detach().float().clone(), persistent=False)
        p = f"model.layers.{layer}."
        param = lambda k: torch.nn.Parameter(state[p + k].detach().float().clone())   # noqa: E731
        self.ln1, self.ln2 = param("input_layernorm.weight"), param("post_attention_layernorm.weight")
        self.wq, self.wk, self.wv, self.wo = (param(f"self_attn.{n}_proj.weight") for n in "qkvo")
        self.gate, self.up, self.down = (param(f"mlp.{n}_proj.weight") for n in ("gate", "up", "down"))
        H = self.shape.hidden
        self.fc = torch.nn.Parameter(torch.cat([torch.eye(H), torch.eye(H)], 1))     # [H, 2H]: x = e + f
        self.norm = torch.nn.Parameter(state["model.norm.weight"].detach().float().clone())
        self.register_buffer("emb", state["model.embed_tokens.weight"].detach().float(), persistent=False)
        out = state.get("lm_head.weight", state["model.embed_tokens.weight"]).detach().float()
        self.register_buffer("out", out, persistent=False)                           # [V, H] the target's head
        self.register_buffer("head_ids", torch.as_tensor(sorted(head_ids), dtype=torch.long))
        self.register_buffer("head", out[self.head_ids].clone())                     # [S, H], frozen

    def inputs(self, tok, feat):
        """tok [n], feat [n, H] -> the layer's input [n, H]."""
        return torch.cat([self.emb[tok], feat], -1) @ self.fc.T

    def qkv(self, x, pos):
        s = self.shape
        h = rms(x, self.ln1, s.eps)
        rep = s.heads // s.kv_heads
        q = rope((h @ self.wq.T).view(-1, s.heads, s.head_dim), pos, self.inv_freq, s.rope_scaling)
        k = rope((h @ self.wk.T).view(-1, s.kv_heads, s.head_dim), pos, self.inv_freq,
                 s.rope_scaling).repeat_interleave(rep, 1)
        v = (h @ self.wv.T).view(-1, s.kv_heads, s.head_dim).repeat_interleave(rep, 1)
        return q, k, v                                                               # [n, heads, D]

    def finish(self, x, att):
        x = x + att.reshape(x.shape[0], -1) @ self.wo.T
        h = rms(x, self.ln2, self.shape.eps)
        x = x + (F.silu(h @ self.gate.T) * (h @ self.up.T)) @ self.down.T
        return rms(x, self.norm, self.shape.eps)

    def chain(self, ids, feats, steps: int) -> list:
        """ids [n] a row's tokens, feats [n, H] the target's features there. Returns, for chain steps
        s = 1..steps, g_s [n - s, H]: row j is the draft's feature at step s of a round that starts at j
        (the target has produced x_{j+1} from f_j), predicting x_{j+1+s}. Step 1 reads (f_j, x_{j+1});
        step s > 1 reads (g_{s-1}[j], x_{j+s}) at position j+s-1 and attends to the true inputs at
        positions <= j and to the chain's own earlier steps, as the draft's cache holds them in a round
        (vectorised over every j; tests check it against a step-by-step decode)."""
        n, scale = ids.shape[0], 1.0 / math.sqrt(self.shape.head_dim)
        m = n - 1
        x1 = self.inputs(ids[1:], feats[:-1])                                        # [m, H] positions 0..m-1
        q, k1, v1 = self.qkv(x1, torch.arange(m))
        causal = torch.ones(m, m, dtype=torch.bool).tril()
        s1 = torch.einsum("ihd,jhd->hij", q, k1).mul(scale).masked_fill(~causal, float("-inf"))   # [h, m, m]
        out = [self.finish(x1, torch.einsum("hij,jhd->ihd", s1.softmax(-1), v1))]
        ks, vs = [], []
        for s in range(2, steps + 1):
            ms = n - s                                                               # starts j whose x_{j+s} exists
            if ms <= 0:
                break
            xs = self.inputs(ids[s:s + ms], out[-1][:ms])
            qs, kk, vv = self.qkv(xs, torch.arange(ms) + s - 1)
            ks, vs = [k[:ms] for k in ks] + [kk], [v[:ms] for v in vs] + [vv]
            main = torch.einsum("ihd,jhd->hij", qs, k1[:ms]).mul(scale).masked_fill(~causal[:ms, :ms], float("-inf"))
            own = torch.stack([torch.einsum("ihd,ihd->hi", qs, k) for k in ks], -1).mul(scale)   # [h, ms, s-1]
            p = torch.cat([main, own], -1).softmax(-1)
            att = torch.einsum("hij,jhd->ihd", p[..., :ms], v1[:ms])
            att = att + sum(p[..., ms + t].T[..., None] * vs[t] for t in range(len(vs)))
            out.append(self.finish(xs, att))
        return out

    def logits(self, g):
        return g @ self.head.T                                                       # [n, S]


def walk(accepted: list, first: int, n: int, gamma: int) -> tuple[int, int]:
    """Tokens and rounds of greedy speculative decoding along one row of n tokens whose first round
    starts at `first` (the target has produced x_{first+1}): accepted[j] is how many of the round's
    gamma drafts starting at j match (their leading run). Each round emits its accepted drafts plus one
    target token."""
    tokens = rounds = 0
    j = first
    while j + 1 < n:
        a = min(accepted[j], gamma)
        emitted = min(a + 1, n - (j + 1))
        tokens, rounds, j = tokens + emitted, rounds + 1, j + a + 1
    return tokens, rounds


def leading_matches(preds: list, ids, first: int) -> list:
    """preds[s-1][j]: the draft's step-s token for a round starting at j (predicting x_{j+1+s}). Returns
    for every start j the length of the leading run of steps whose token matches the row."""
    n, gamma = ids.shape[0], len(preds)
    out = [0] * n
    for j in range(first, n):
        a = 0
        for s in range(1, gamma + 1):
            if j + 1 + s >= n or j >= preds[s - 1].shape[0] or int(preds[s - 1][j]) != int(ids[j + 1 + s]):
                break
            a += 1
        out[j] = a
    return out


def load_rows(folder, names) -> list:
    rows = []
    for name in names:
        d = torch.load(Path(folder) / name, weights_only=False)
        rows += [(i.long(), f, p, t) for i, f, p, t in zip(d["ids"], d["feats"], d["plen"], d["temps"])]
    return rows


def emitted_ids(rows, n: int) -> list:
    counts = Counter()
    for ids, _, plen, _ in rows:
        counts.update(ids[plen:].tolist())
    return sorted(t for t, _ in counts.most_common(n))


def row_loss(draft, ids, feats, steps: int, wreg: float):
    feats = feats.float()
    total, parts = 0.0, []
    for s, g in enumerate(draft.chain(ids, feats, steps), 1):
        target = feats[s:s + g.shape[0]]                                             # f_{j+s}
        p = (target @ draft.head.T).softmax(-1)                                      # the target's, on the ids
        ce = -(p * draft.logits(g).log_softmax(-1)).sum(-1).mean()
        total = total + 0.8 ** (s - 1) * (ce + wreg * F.smooth_l1_loss(g, target))
        parts.append(float(ce.detach()))
    return total, parts


@torch.no_grad()
def evaluate(draft, rows, gamma: int = 4) -> dict:
    tokens = rounds = agree = n1 = 0
    hits, tries = [0] * gamma, [0] * gamma
    acc_t1, n_t1 = 0.0, 0
    for ids, feats, plen, temp in rows:
        feats, n = feats.float(), ids.shape[0]
        if n - plen < 2:
            continue
        outs = draft.chain(ids, feats, gamma)
        if temp != 0.0:   # a sampled row: the first step's acceptance, sum_x min(p, q)
            j = torch.arange(plen - 1, n - 2)
            p = (feats[j + 1] @ draft.out.T).softmax(-1)
            q = torch.zeros_like(p)
            q[:, draft.head_ids] = draft.logits(outs[0][j]).softmax(-1)
            acc_t1, n_t1 = acc_t1 + float(torch.minimum(p, q).sum()), n_t1 + len(j)
            continue
        preds = [draft.head_ids[draft.logits(g).argmax(-1)] for g in outs]
        acc = leading_matches(preds, ids, plen - 1)
        t, r = walk(acc, plen - 1, n, gamma)
        tokens, rounds = tokens + t, rounds + r
        for j in range(plen - 1, n - 2):
            for s in range(1, gamma + 1):
                if j + 1 + s >= n:
                    break
                tries[s - 1] += 1
                if acc[j] < s:
                    break
                hits[s - 1] += 1
        js = torch.arange(plen - 1, n - 2)
        agree, n1 = agree + int((preds[0][js] == ids[js + 2]).sum()), n1 + len(js)
    return {f"mal_g{gamma}": round(tokens / max(rounds, 1), 4), "rounds": rounds,
            "step1_agreement": round(agree / max(n1, 1), 4),
            "accept_given_previous": [round(h / max(t, 1), 4) for h, t in zip(hits, tries)],
            "t1_step1_acceptance": round(acc_t1 / max(n_t1, 1), 4), "greedy_tokens": n1, "t1_tokens": n_t1}


@torch.no_grad()
def features(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # a folder holds the features of one target: another target's would mix with them unit by unit
    what = {"target": model_fingerprint(args.target)}
    meta = out / "features.json"
    if meta.is_file() and json.loads(meta.read_text(encoding="utf-8")) != what:
        print(f"smollm2_feature_draft: error: {out} holds features of another target (features.json): "
              "write to another --out", file=sys.stderr)
        return 2
    write_json_atomic(meta, what, indent=1)
    target = load_model(args.target).eval()
    for f in sorted(Path(args.samples).glob("unit_*.pt")):
        dst = out / f.name
        if dst.exists():
            continue
        t0, d = time.time(), read_shard(f)
        feats, ids = [], []
        for r in range(len(d["meta"])):
            x = torch.cat([d["prompt_ids"][d["prompt_off"][r]:d["prompt_off"][r + 1]],
                           d["cont_ids"][d["cont_off"][r]:d["cont_off"][r + 1]]]).long()
            feats.append(target.model(input_ids=x[None]).last_hidden_state[0].half())
            ids.append(x.int())
        plen = (d["prompt_off"][1:] - d["prompt_off"][:-1]).tolist()
        tmp = dst.with_name(dst.name + ".tmp")
        torch.save({"feats": feats, "ids": ids, "plen": plen, "temps": [m["temperature"] for m in d["meta"]]}, tmp)
        tmp.replace(dst)
        print(json.dumps({"unit": f.name, "tokens": sum(len(i) for i in ids), "s": round(time.time() - t0, 1)}),
              flush=True)
    return 0


def train(args) -> int:
    torch.manual_seed(args.seed)
    names = sorted(p.name for p in Path(args.features).glob("unit_*.pt"))
    if args.val not in names:
        raise SystemExit(f"smollm2_feature_draft: --val {args.val} is not in {args.features}")
    rows, val = load_rows(args.features, [n for n in names if n != args.val]), load_rows(args.features, [args.val])
    target = load_model(args.target)
    args.layer %= target.config.num_hidden_layers   # -1: the last
    if args.init:   # continue from a saved draft (train --save): its layer, fc, norm and head ids
        saved = torch.load(args.init, weights_only=False)
        args.layer = saved["layer"]
        draft = FeatureDraft(target, args.layer, saved["state"]["head_ids"].tolist())
        draft.load_state_dict(saved["state"], strict=False)
    else:
        draft = FeatureDraft(target, args.layer, emitted_ids(rows, args.head))
    del target
    log = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ"), "args": vars(args),
           "train_rows": len(rows), "train_tokens": sum(len(r[0]) for r in rows), "evals": []}
    t0 = time.time()

    def record(step):
        ev = evaluate(draft, val, args.gamma)
        ev.update(step=step, s=round(time.time() - t0, 1))
        log["evals"].append(ev)
        print(json.dumps(ev), flush=True)
        write_json_atomic(args.out, log, indent=1)

    record(0)
    opt = torch.optim.AdamW(draft.parameters(), lr=args.lr, weight_decay=0.0)
    total = max(1, int(args.epochs * len(rows) / args.batch))
    g, order = torch.Generator().manual_seed(args.seed), []
    for step in range(total):
        if len(order) < args.batch:
            order += torch.randperm(len(rows), generator=g).tolist()
        batch, order = order[:args.batch], order[args.batch:]
        for pg in opt.param_groups:   # 10 warm-up steps, then cosine to 0
            pg["lr"] = args.lr * min(1.0, (step + 1) / 10) * 0.5 * (1 + math.cos(math.pi * step / total))
        opt.zero_grad()
        parts = []
        for r in batch:
            ids, feats, _, _ = rows[r]
            loss, p = row_loss(draft, ids[-args.max_len:], feats[-args.max_len:], args.steps, args.wreg)
            (loss / len(batch)).backward()
            parts.append(p)
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:
            print(json.dumps({"step": step, "of": total, "ce": [round(sum(p[i] for p in parts) / len(parts), 3)
                                                                 for i in range(len(parts[0]))]}), flush=True)
        if (step + 1) % max(total // args.evals, 1) == 0 or step + 1 == total:
            record(step + 1)
    log["wall_s"] = round(time.time() - t0, 1)
    if args.save:   # the trained draft (its parameters and head ids; the frozen target parts are not kept)
        buf = io.BytesIO()
        torch.save({"layer": args.layer, "state": draft.state_dict(), "args": vars(args)}, buf)
        write_bytes_atomic(args.save, buf.getvalue())
        log["saved"] = str(args.save)
    write_json_atomic(args.out, log, indent=1)
    return 0


_LAYER_NAMES = {"ln1": "input_layernorm.weight", "ln2": "post_attention_layernorm.weight",
                "wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight", "wv": "self_attn.v_proj.weight",
                "wo": "self_attn.o_proj.weight", "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight",
                "down": "mlp.down_proj.weight"}


def engine_draft(target, draft: FeatureDraft):
    """The trained draft as the engine runs it (specdec/engine/features.py): a one-layer model of the
    target's shape, fc's token half folded into its embedding, its feature half beside it."""
    from specdec.engine import features as feature_drafts
    H = draft.shape.hidden
    layer = {name: getattr(draft, attr).detach().float() for attr, name in _LAYER_NAMES.items()}
    return feature_drafts.build(target, [layer], draft.fc[:, :H], draft.fc[:, H:], draft.norm.detach().float(),
                                draft.head_ids.tolist(), draft.head)


def export(args) -> int:
    """A saved draft (train --save) as a model folder specdec loads (`--draft FOLDER`), with the target's
    tokenizer."""
    from specdec.engine import features as feature_drafts
    from specdec.models import load_tokenizer
    saved = torch.load(args.draft, weights_only=False)
    target = load_model(args.target)
    ids = saved["state"]["head_ids"].tolist()
    draft = FeatureDraft(target, saved["layer"], ids)
    draft.load_state_dict(saved["state"], strict=False)
    model = engine_draft(target, draft)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"smollm2_feature_draft: error: {out} is not empty: export to a new folder", file=sys.stderr)
        return 2
    tmp = out.with_name(out.name + ".tmp")
    feature_drafts.save(model, tmp)
    load_tokenizer(args.target).save_pretrained(tmp)
    if out.exists():
        out.rmdir()
    tmp.replace(out)
    print(json.dumps({"exported": str(out), "layers": 1, "head_ids": len(ids)}))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("features", help="the target's features for every row of the sample shards")
    f.add_argument("--target", required=True)
    f.add_argument("--samples", required=True)
    f.add_argument("--out", required=True)
    t = sub.add_parser("train", help="train the feature draft, scored on the held-out unit")
    t.add_argument("--target", required=True)
    t.add_argument("--features", required=True)
    t.add_argument("--val", default="unit_00004.pt", help="the held-out unit (never trained on)")
    t.add_argument("--head", type=int, default=8192, help="head ids: the most emitted in the training units")
    t.add_argument("--layer", type=int, default=-1, help="the target layer the draft's starts as (-1: the last)")
    t.add_argument("--steps", type=int, default=1, help="chain steps trained (1: EAGLE-1)")
    t.add_argument("--epochs", type=float, default=3)
    t.add_argument("--batch", type=int, default=8, help="rows per step")
    t.add_argument("--max-len", type=int, default=512, help="the last tokens of a row trained on")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--wreg", type=float, default=1.0, help="weight of the feature regression")
    t.add_argument("--gamma", type=int, default=4)
    t.add_argument("--evals", type=int, default=4, help="evaluations over the run (and one before)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--out", required=True, help="JSON: the settings and every evaluation")
    t.add_argument("--init", default=None, help="start from this saved draft (train --save) instead of the "
                   "target's layer: a longer schedule in steps (--head and --layer are then the saved draft's)")
    t.add_argument("--save", default=None, help="also write the trained draft here (torch.save: its layer's, "
                   "fc's and norm's parameters and the head ids), atomically at the end")
    e = sub.add_parser("export", help="a saved draft (train --save) as a model folder the engine runs")
    e.add_argument("--target", required=True)
    e.add_argument("--draft", required=True, help="the file train --save wrote")
    e.add_argument("--out", required=True, help="a new folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(getattr(args, "threads", 1))
    return {"train": train, "features": features, "export": export}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
