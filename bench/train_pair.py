"""Build specdec's bundled target/draft pair from scratch, on the running interpreter's stdlib source.

Stages (each one re-runnable; scratch files live in bench/_work/, which git ignores):

  # 1. byte-level BPE tokenizer + token streams of the train / held-out split (a few minutes)
  python3 bench/train_pair.py --tokenizer
  # 2. pretrain each model (checkpoints every --ckpt-every steps; --resume continues one)
  python3 bench/train_pair.py --model target --max-minutes 75 --threads 1
  python3 bench/train_pair.py --model draft --max-minutes 30 --threads 1
  # 3. export the last checkpoint as an fp16 Hugging Face folder + card, into specdec/assets/<model>
  python3 bench/train_pair.py --model target --export
  python3 bench/train_pair.py --model draft --export
  # 4. pair report: decode-step costs, their ratio, teacher-forced greedy agreement, shipped sizes
  python3 bench/train_pair.py --report

  # a larger draft candidate for the shipped pair (same tokenizer, same data, same recipe), exported
  # beside the results rather than into specdec/assets:
  python3 bench/train_pair.py --streams
  python3 bench/train_pair.py --model draft3m --max-minutes 30 --threads 1
  python3 bench/train_pair.py --model draft3m --export --export-dir bench/results/draft3m

Training stops at --max-steps or at the --max-minutes wall-clock budget, whichever comes first; the
learning rate follows warmup + cosine over the *larger* of the two progress fractions, so a run cut
by the budget still ends annealed. That makes the schedule depend on machine speed (the data order
does not: batch `s` is drawn from a generator seeded with `seed` and `s`), so the cards record the
steps actually taken.

The draft is an ordinary small model pretrained on the same data, never distilled from the target.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from specdec.data import corpus  # noqa: E402
from specdec.common.config import option, parse_script_args  # noqa: E402
from specdec.distill.schedule import warmup_cosine  # noqa: E402
from specdec.common.env import environment  # noqa: E402
from specdec.common.files import write_json_atomic, write_text_atomic  # noqa: E402
from specdec.engine.timing import StepTimer  # noqa: E402

WORK = REPO / "bench" / "_work"
ASSETS = REPO / "specdec" / "assets"
TOKENIZER_DIR = WORK / "tokenizer"
DATA_DIR = WORK / "data"

EOS = "<|endoftext|>"
PAD = "<|pad|>"
MAX_WEIGHT_BYTES = 32_000_000  # all shipped weights together

# Architectures. Decode-step cost on the 2-core dev CPU (HF eager, fp32, KV cache, 300-token
# context) measured before training: target ~7.5 ms / 1 token, draft ~1.0 ms, so the target costs
# ~7x the draft, past the 4x wanted for the pair. A 2-layer d=256 draft (~1.9 ms) came too close to 4x.
MODELS = {
    "target": dict(num_hidden_layers=4, hidden_size=512, intermediate_size=1280,
                   num_attention_heads=8, num_key_value_heads=8),
    "draft": dict(num_hidden_layers=2, hidden_size=128, intermediate_size=384,
                  num_attention_heads=4, num_key_value_heads=4),
    # ~3.2M parameters: is the 0.95M draft what limits distillation? Two layers like the draft (a decode
    # step's cost on a CPU grows with depth more than with width), twice as wide.
    "draft3m": dict(num_hidden_layers=2, hidden_size=256, intermediate_size=1024,
                    num_attention_heads=4, num_key_value_heads=4),
}
MAX_POSITIONS = 1024
PAIR = ("target", "draft")   # the shipped pair (--report measures these)


@dataclass
class Stage:
    """Which stage to run (default: pretrain --model)."""
    tokenizer: bool = option(False, "train the BPE and tokenise the corpus", group="stages")
    streams: bool = option(False, "tokenise the corpus with the SHIPPED tokenizer (specdec/assets/draft), no BPE "
                           "training: the data of a new model for the shipped pair", group="stages")
    export: bool = option(False, "export --model's last checkpoint to specdec/assets", group="stages")
    export_dir: str | None = option(None, "--export into this folder instead of specdec/assets/<model>",
                                    group="stages")
    report: bool = option(False, "measure the exported pair (costs, agreement)", group="stages")
    resume: bool = option(False, "continue --model's checkpoint", group="stages")


@dataclass
class TrainConfig:
    """One model's pretraining."""
    model: str = option("target", "which model", group="model", choices=tuple(MODELS))
    seq_len: int = option(256, "tokens per training window", group="data")
    batch_size: int = option(16, "windows per step (16 x 256 = 4096 tokens)", group="data")
    lr: float | None = option(None, "peak learning rate (default: 1.5e-3 target, 3e-3 draft)", group="optimiser")
    min_lr_frac: float = option(0.1, "the cosine decays to this fraction of --lr", group="optimiser")
    warmup_steps: int = option(50, "linear warm-up steps", group="optimiser")
    weight_decay: float = option(0.1, "AdamW weight decay (matrices only)", group="optimiser")
    grad_clip: float = option(1.0, "gradient clipping", group="optimiser")
    max_steps: int = option(4000, "stop after this many steps", group="budget")
    max_minutes: float = option(75.0, "... or after this many minutes of training", group="budget")
    eval_every: int = option(100, "held-out loss every N steps", group="bookkeeping")
    eval_windows: int = option(64, "fixed held-out windows of the periodic loss", group="bookkeeping")
    ckpt_every: int = option(50, "checkpoint every N steps", group="bookkeeping")
    seed: int = option(1234, "seed of the model init and the data order", group="bookkeeping")
    threads: int = option(2, "torch CPU threads", group="bookkeeping")
    vocab_size: int = option(4096, "BPE vocabulary size", group="data")
    # ~1.6x faster per step on the dev CPU (AVX512-BF16); slower on CPUs without native bf16
    bf16: bool = option(True, "bf16 autocast for the forward (fp32 master weights and loss)", group="optimiser")

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"--model must be one of {sorted(MODELS)}, got {self.model!r}")
        if self.lr is None:
            self.lr = {"target": 1.5e-3, "draft": 3e-3, "draft3m": 3e-3}[self.model]
        if self.seq_len + 1 > MAX_POSITIONS:
            raise ValueError(f"--seq-len must be < {MAX_POSITIONS}")
        if self.max_minutes <= 0 or self.max_steps <= 0:
            raise ValueError("--max-minutes and --max-steps must be positive")


# ----------------------------------------------------------------------------- tokenizer + data

def build_tokenizer(vocab_size: int) -> None:
    """Train byte-level BPE on the train split only; save a folder AutoTokenizer loads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    train_files, _ = corpus.split_files()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t0 = time.time()
    tok.train_from_iterator((corpus.read_source(p) for p in train_files), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS,
                                   pad_token=PAD, model_max_length=MAX_POSITIONS)
    fast.save_pretrained(TOKENIZER_DIR)
    print(f"tokenizer: {len(fast)} tokens, trained in {time.time() - t0:.0f}s -> {TOKENIZER_DIR}")


def use_shipped_tokenizer() -> None:
    """The shipped pair's tokenizer as the working one (a new model must share the target's ids)."""
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(ASSETS / "draft").save_pretrained(TOKENIZER_DIR)
    print(f"tokenizer: the shipped one ({ASSETS / 'draft'}) -> {TOKENIZER_DIR}")


def load_tokenizer():
    from transformers import AutoTokenizer
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer in {TOKENIZER_DIR}; run with --tokenizer first")
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def build_streams() -> None:
    """Each split as one uint16 token stream: file tokens followed by EOS, files in sorted order."""
    tok = load_tokenizer()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for name, files in zip(("train", "heldout"), corpus.split_files()):
        texts = [corpus.read_source(p) for p in files]
        ids: list[int] = []
        for enc in tok(texts, add_special_tokens=False)["input_ids"]:
            ids.extend(enc)
            ids.append(tok.eos_token_id)
        stream = torch.tensor(ids, dtype=torch.int32).to(torch.uint16)
        torch.save(stream, DATA_DIR / f"{name}.pt")
        chars = sum(map(len, texts))
        print(f"{name}: {len(files)} files, {chars} chars, {len(ids)} tokens "
              f"({chars / len(ids):.2f} chars/token)")


def load_stream(name: str) -> torch.Tensor:
    path = DATA_DIR / f"{name}.pt"
    if not path.exists():
        raise FileNotFoundError(f"no token stream {path}; run with --tokenizer first")
    return torch.load(path).to(torch.long)  # [N]


def heldout_windows(stream: torch.Tensor, n: int, seq_len: int) -> torch.Tensor:
    """n fixed windows of seq_len+1 tokens, evenly spaced over the held-out stream. [n, seq_len+1]"""
    last = len(stream) - seq_len - 1
    n = min(n, last // (seq_len + 1))
    starts = torch.linspace(0, last, n).long()
    return torch.stack([stream[s:s + seq_len + 1] for s in starts])


def train_batch(stream: torch.Tensor, step: int, cfg: TrainConfig) -> torch.Tensor:
    """Batch `step`: random windows from a generator seeded by (seed, step), so resuming needs no RNG
    state. [batch_size, seq_len+1]"""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    starts = torch.randint(0, len(stream) - cfg.seq_len - 1, (cfg.batch_size,), generator=g)
    return torch.stack([stream[s:s + cfg.seq_len + 1] for s in starts])


# ----------------------------------------------------------------------------- model + training

def make_model(name: str, tok, attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=MAX_POSITIONS,
                      tie_word_embeddings=True, rope_theta=10000.0, hidden_act="silu",
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, attn_implementation=attn, **MODELS[name])
    return LlamaForCausalLM(cfg)


def lm_loss(model, windows: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) of windows [B, T+1]; the loss itself always in fp32."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(windows[:, :-1]).logits  # [B, T, V]
    return F.cross_entropy(logits.flatten(0, 1).float(), windows[:, 1:].flatten())


@torch.no_grad()
def eval_loss(model, windows: torch.Tensor, batch: int = 16, bf16: bool = False) -> float:
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch):
        chunk = windows[i:i + batch]
        total += lm_loss(model, chunk, bf16).item() * len(chunk)
    model.train(was_training)
    return total / len(windows)


def lr_at(progress: float, step: int, cfg: TrainConfig) -> float:
    return cfg.lr * warmup_cosine(step, cfg.warmup_steps, progress, cfg.min_lr_frac)


def ckpt_path(name: str) -> Path:
    return WORK / name / "ckpt.pt"


def save_ckpt(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on the matrices only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def start_state(cfg: TrainConfig, model, opt, resume: bool) -> dict:
    """A fresh training state, or the checkpoint's (model and optimizer loaded) with --resume."""
    state = {"step": 0, "elapsed_s": 0.0, "tokens_seen": 0, "train_loss_ema": None, "history": [],
             "config": dataclasses.asdict(cfg), "done": False}
    path = ckpt_path(cfg.model)
    if resume and path.exists():
        ck = torch.load(path, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        state = {k: ck[k] for k in state}
        state["config"] = dataclasses.asdict(cfg)  # the budget may be extended on resume
        state["done"] = False
        print(f"resumed {path} at step {state['step']} ({state['elapsed_s'] / 60:.1f} min)")
    elif path.exists() and not resume:
        raise FileExistsError(f"{path} exists; pass --resume to continue it or delete it to restart")
    return state


def history_row(state: dict, held_loss: float, **extra) -> dict:
    return {"step": state["step"], "tokens": state["tokens_seen"], "minutes": round(state["elapsed_s"] / 60, 2),
            "train_loss_ema": round(state["train_loss_ema"] or float("nan"), 4), "heldout_loss": round(held_loss, 4),
            **extra}


def train(cfg: TrainConfig, resume: bool) -> None:
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer()
    train_stream, held = load_stream("train"), load_stream("heldout")
    eval_win = heldout_windows(held, cfg.eval_windows, cfg.seq_len)
    model = make_model(cfg.model, tok)
    opt = make_optimizer(model, cfg)
    state = start_state(cfg, model, opt, resume)
    path = ckpt_path(cfg.model)

    n_params = sum(p.numel() for p in model.parameters())
    print(f"{cfg.model}: {n_params / 1e6:.2f}M params, {len(train_stream)} train tokens, "
          f"{eval_win.numel()} held-out eval tokens, config {dataclasses.asdict(cfg)}", flush=True)
    budget_s = cfg.max_minutes * 60
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=state["step"], desc=cfg.model, mininterval=20,
               file=sys.stdout, dynamic_ncols=False, ncols=110)
    t_start = time.time() - state["elapsed_s"]
    while True:
        step = state["step"]
        progress = max(step / cfg.max_steps, state["elapsed_s"] / budget_s)
        if progress >= 1.0:
            break
        lr = lr_at(progress, step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = lm_loss(model, train_batch(train_stream, step, cfg), cfg.bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema = state["train_loss_ema"]
        state["train_loss_ema"] = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        state.update(step=step + 1, tokens_seen=state["tokens_seen"] + cfg.batch_size * cfg.seq_len,
                     elapsed_s=time.time() - t_start)
        bar.update(1)
        bar.set_postfix(loss=f"{state['train_loss_ema']:.3f}", lr=f"{lr:.2e}", refresh=False)
        if state["step"] % cfg.eval_every == 0:
            r = history_row(state, eval_loss(model, eval_win, bf16=cfg.bf16), lr=lr)
            state["history"].append(r)
            print(f"\n[{cfg.model}] step {r['step']} tokens {r['tokens']} {r['minutes']:.1f}min train "
                  f"{r['train_loss_ema']:.4f} held-out {r['heldout_loss']:.4f} lr {lr:.2e}", flush=True)
        if state["step"] % cfg.ckpt_every == 0:
            save_ckpt(path, {"model": model.state_dict(), "optim": opt.state_dict(), **state})
    bar.close()
    held_loss = eval_loss(model, eval_win)  # fp32, comparable with the export's number
    state["history"].append(history_row(state, held_loss, final=True))
    state["done"] = True
    save_ckpt(path, {"model": model.state_dict(), "optim": opt.state_dict(), **state})
    print(f"[{cfg.model}] done: step {state['step']} tokens {state['tokens_seen']} "
          f"{state['elapsed_s'] / 60:.1f}min held-out {held_loss:.4f}", flush=True)


# ----------------------------------------------------------------------------- measurement

def load_exported(name, attn: str = "eager"):
    """An exported folder (a model name under specdec/assets, or a path) loaded the way the engine does:
    plain transformers, fp32, CPU."""
    from transformers import AutoModelForCausalLM
    path = ASSETS / name if isinstance(name, str) else name
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                attn_implementation=attn).eval()


@torch.inference_mode()
def decode_step_ms(model, n_new: int, context: int = 256, steps: int = 40, repeats: int = 5) -> float:
    """Median wall time (ms) of one cached forward over n_new tokens after a `context`-token prefill, on
    the decoders' own path (specdec.engine.timing.StepTimer: ModelRunner, the lean forward, the in-place cache).

    Each step's tokens are forgotten afterwards, so every step sees the same context length (the cost a
    speculative verify or draft step pays, not a growing one). Median over `repeats` of the mean of
    `steps` steps.
    """
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, model.config.vocab_size, (1, context), generator=g)
    timer = StepTimer(model, prefix, batch_size=1, max_tokens=n_new)
    for _ in range(5):  # warm-up
        timer.step(n_new)
    times = [sum(timer.step(n_new) for _ in range(steps)) / steps * 1e3 for _ in range(repeats)]
    return statistics.median(times)


def step_costs(model, threads: int = 2) -> dict:
    if os.environ.get("SPECDEC_NO_TIMING"):  # dry runs of --report while training runs
        return {"ms_1tok": float("nan"), "ms_5tok": float("nan")}
    torch.set_num_threads(threads)
    return {"ms_1tok": round(decode_step_ms(model, 1), 3), "ms_5tok": round(decode_step_ms(model, 5), 3)}


def pair_step_costs(threads: tuple[int, ...] = (2, 1), rounds: int = 2) -> dict:
    """{threads: {model: {ms_1tok, ms_5tok}}}: the two models timed alternately, `rounds` times, the
    best round kept per model, so a burst of load from other jobs on the shared CPU hits one round of
    one model rather than the whole ratio."""
    models = {name: load_exported(name) for name in PAIR}
    out = {}
    for t in threads:
        best: dict = {}
        for _ in range(rounds):
            for name, model in models.items():
                ms = step_costs(model, t)
                prev = best.get(name, {"ms_1tok": math.inf, "ms_5tok": math.inf})
                best[name] = {k: ms[k] if math.isnan(ms[k]) else min(prev[k], ms[k]) for k in ms}
        out[t] = best
    return out


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def cpu_environment() -> dict:
    """specdec's environment record, plus the load average: how busy the shared CPU was."""
    return {**environment("cpu"), "machine": platform.machine(),
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None}


# ----------------------------------------------------------------------------- export

CARD = """# specdec bundled {name}

{role}

Trained by specdec's own script on the Python source of the standard library (Python {pyver}), train
split only (a module is held out iff `zlib.crc32(relpath) % 10 == 0`, see `specdec/data/corpus.py`).
Byte-level BPE tokenizer ({vocab} tokens, `{eos}` = eos/bos, `{pad}` = pad), shared by target and draft.

Built with:

```
python3 bench/train_pair.py --tokenizer
python3 bench/train_pair.py --model {name} {train_args}
python3 bench/train_pair.py --model {name} --export
```

| | |
|---|---|
| architecture | `LlamaForCausalLM`: {layers} layers, hidden {hidden}, intermediate {inter}, {heads} heads, tied embeddings, max positions {maxpos} |
| parameters | {params:,} |
| weights | {dtype}, {wbytes:,} bytes |
| tokens seen | {tokens:,} ({steps} steps of {batch} x {seq} tokens, {minutes:.1f} min on {threads} CPU thread(s)) |
| train loss (EMA, last steps) | {train_loss:.4f} nats/token |
| held-out loss | {held_loss:.4f} nats/token ({held_tokens:,} held-out tokens, weights as shipped, run in fp32) |

Held-out loss during training (fixed {eval_tokens:,}-token subset; bf16 autocast while training,
fp32 at the end): {curve}

{costs}

Load it with plain transformers:

```python
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(path)
```
"""

COSTS_BEGIN, COSTS_END = "<!-- decode-step costs: written by --report -->", "<!-- end of costs -->"
COSTS_PENDING = "Decode-step costs: not measured yet (`python3 bench/train_pair.py --report`)."
COSTS = """Cost per decode step, measured by `python3 bench/train_pair.py --report`: one cached forward after
a 256-token prefill on the decoders' path (ModelRunner, lean forward, in-place cache), fp32, CPU ({cpu}, {cpu_count} cores, shared with other jobs,
load average {load} at the start), median of 5 x 40 steps, best of {rounds} rounds interleaved with
the other model, {date}.

| decode step | 1 token | 5 tokens (gamma+1 = 5) | target / draft (1 token) |
|---|---|---|---|
{rows}"""

ROLES = {
    "target": "The target of specdec's bundled speculative-decoding pair: the model whose output "
              "speculative decoding must reproduce.",
    "draft": "The draft of specdec's bundled speculative-decoding pair: an ordinary small model "
             "pretrained on the same data as the target (not distilled from it).",
    "draft3m": "A larger draft candidate for specdec's bundled pair (not shipped): an ordinary model "
               "pretrained like the bundled draft, on the same data and with the same tokenizer, twice as "
               "wide (not distilled from the target).",
}


def export(name: str, held_windows_n: int = 256, folder: str | None = None) -> dict:
    from transformers import GenerationConfig

    path = ckpt_path(name)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint {path}; train with --model {name} first")
    ck = torch.load(path, weights_only=False)
    tok = load_tokenizer()
    model = make_model(name, tok)
    model.load_state_dict(ck["model"])
    out = ASSETS / name if folder is None else Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.safetensors"):
        old.unlink()
    model.config.attn_implementation = None  # let the loader choose; the engine asks for its own
    model.half().save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, do_sample=False).save_pretrained(out)

    torch.set_num_threads(2)
    shipped = load_exported(out, attn="sdpa")
    seq_len = ck["config"]["seq_len"]
    held = heldout_windows(load_stream("heldout"), held_windows_n, seq_len)
    held_loss = eval_loss(shipped, held)
    cfg = shipped.config
    stats = {
        "name": name, "params": sum(p.numel() for p in shipped.parameters()),
        "weight_bytes": weight_bytes(out), "tokens_seen": ck["tokens_seen"], "steps": ck["step"],
        "minutes": ck["elapsed_s"] / 60, "train_loss_ema": ck["train_loss_ema"],
        "heldout_loss": held_loss, "heldout_tokens": held.shape[0] * seq_len,
        "finished_schedule": ck["done"], "env": cpu_environment(), "history": ck["history"],
        "train_config": ck["config"],
    }
    c = ck["config"]
    train_args = f"--max-minutes {c['max_minutes']:g} --max-steps {c['max_steps']} --threads {c['threads']}"
    card = CARD.format(
        name=name, role=ROLES[name], pyver=platform.python_version(), vocab=len(tok), eos=EOS, pad=PAD,
        train_args=train_args, layers=cfg.num_hidden_layers, hidden=cfg.hidden_size,
        inter=cfg.intermediate_size, heads=cfg.num_attention_heads, maxpos=cfg.max_position_embeddings,
        params=stats["params"], dtype="float16", wbytes=stats["weight_bytes"], tokens=stats["tokens_seen"],
        steps=stats["steps"], batch=c["batch_size"], seq=c["seq_len"], minutes=stats["minutes"],
        threads=c["threads"], train_loss=stats["train_loss_ema"], held_loss=held_loss,
        held_tokens=stats["heldout_tokens"], costs=COSTS_BEGIN + "\n" + COSTS_PENDING + "\n" + COSTS_END,
        eval_tokens=c["eval_windows"] * c["seq_len"],
        curve=", ".join(f"{h['step']}: {h['heldout_loss']:.3f}" for h in ck["history"]))
    write_text_atomic(out / "README.md", card)
    (WORK / name).mkdir(parents=True, exist_ok=True)
    write_json_atomic(WORK / name / "export.json", stats)
    print(f"exported {name} -> {out}: {stats['params']:,} params, {stats['weight_bytes']:,} bytes, "
          f"held-out {held_loss:.4f}; run --report for decode-step costs")
    return stats


# ----------------------------------------------------------------------------- pair report

@torch.inference_mode()
def greedy_agreement(target, draft, windows: torch.Tensor, batch: int = 16) -> float:
    """Fraction of positions where argmax draft == argmax target, teacher-forced on windows [B, T+1]."""
    agree, total = 0, 0
    for i in range(0, len(windows), batch):
        x = windows[i:i + batch, :-1]
        a = target(x).logits.argmax(-1)  # [b, T]
        b = draft(x).logits.argmax(-1)   # [b, T]
        agree += (a == b).sum().item()
        total += a.numel()
    return agree / total


def write_costs_into_cards(by_threads: dict, env: dict) -> None:
    rows = []
    for t, per_model in by_threads.items():
        for name in PAIR:
            ms = per_model[name]
            ratio = per_model["target"]["ms_1tok"] / per_model["draft"]["ms_1tok"]
            rows.append(f"| {name}, {t} thread{'s' if t > 1 else ''} | {ms['ms_1tok']:.2f} ms "
                        f"| {ms['ms_5tok']:.2f} ms | {ratio:.2f}x |")
    load = "n/a" if env["loadavg"] is None else f"{env['loadavg'][0]:.1f}"
    text = COSTS.format(cpu=env["cpu"], cpu_count=env["cpu_count"], load=load, rounds=2,
                        date=env["date"], rows="\n".join(rows))
    for name in PAIR:
        card = ASSETS / name / "README.md"
        body = card.read_text()
        if COSTS_BEGIN not in body or COSTS_END not in body:
            raise ValueError(f"{card} has no cost section; re-run --model {name} --export")
        head, rest = body.split(COSTS_BEGIN, 1)
        _, tail = rest.split(COSTS_END, 1)
        write_text_atomic(card, head + COSTS_BEGIN + "\n" + text + "\n" + COSTS_END + tail)


def report(windows_n: int = 256, seq_len: int = 256) -> dict:
    torch.set_num_threads(2)
    for name in PAIR:
        if not (ASSETS / name / "config.json").exists():
            raise FileNotFoundError(f"{ASSETS / name} missing; run --model {name} --export first")
    env = cpu_environment()  # before timing: its load average says how busy the CPU was
    by_threads = pair_step_costs()
    costs = by_threads[2]
    target, draft = load_exported("target", "sdpa"), load_exported("draft", "sdpa")
    held = heldout_windows(load_stream("heldout"), windows_n, seq_len)
    agreement = greedy_agreement(target, draft, held)
    sizes = {name: weight_bytes(ASSETS / name) for name in PAIR}
    out = {
        "step_ms": costs,
        "ratio_1tok": costs["target"]["ms_1tok"] / costs["draft"]["ms_1tok"],
        "ratio_5tok": costs["target"]["ms_5tok"] / costs["draft"]["ms_5tok"],
        "greedy_agreement": agreement, "agreement_tokens": held.shape[0] * seq_len,
        "weight_bytes": sizes, "weight_bytes_total": sum(sizes.values()),
        "step_ms_by_threads": by_threads, "env": env,
    }
    for name, ms in costs.items():
        print(f"{name:<7} step 1 tok {ms['ms_1tok']:7.2f} ms   5 tok {ms['ms_5tok']:7.2f} ms   "
              f"weights {sizes[name]:>11,} B")
    print(f"target/draft cost ratio: {out['ratio_1tok']:.2f}x (1 token), {out['ratio_5tok']:.2f}x (5)")
    print(f"greedy top-1 agreement (teacher-forced, {out['agreement_tokens']} held-out tokens): "
          f"{agreement:.4f}")
    if out["weight_bytes_total"] > MAX_WEIGHT_BYTES:
        print(f"WARNING: weights total {out['weight_bytes_total']:,} B > {MAX_WEIGHT_BYTES:,} B")
    write_costs_into_cards(by_threads, env)
    write_json_atomic(WORK / "report.json", out)
    print((WORK / "report.json").read_text().strip())
    return out


# ----------------------------------------------------------------------------- CLI

def parse_args(argv=None) -> tuple[Stage, TrainConfig]:
    return parse_script_args(argv, __doc__, Stage, TrainConfig)


def main(argv=None) -> None:
    args, cfg = parse_args(argv)
    if args.tokenizer:
        build_tokenizer(cfg.vocab_size)
        build_streams()
    elif args.streams:
        use_shipped_tokenizer()
        build_streams()
    elif args.export:
        export(cfg.model, folder=args.export_dir)
    elif args.report:
        report()
    else:
        if not (DATA_DIR / "train.pt").exists():
            build_tokenizer(cfg.vocab_size)
            build_streams()
        train(cfg, resume=args.resume)


if __name__ == "__main__":
    main()
