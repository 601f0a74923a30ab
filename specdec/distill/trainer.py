"""`specdec distill`: DistillSpec training of the draft toward the target.

    specdec distill --out DIR [--target T --draft D] [--divergence fkl|rkl|jsd|tvd] [--data-source ...]
    torchrun --nproc_per_node N -m specdec distill --out DIR ...      (DDP: gloo on CPU, nccl on GPU)

One step = `grad_accum` micro-batches per process. The loss of a step is
    sum over all generated tokens of all micro-batches on all ranks of D(p || q) / (global token count)
where the count is all_reduced before any backward (losses.py explains why per-micro-batch means are
wrong). DDP averages gradients over ranks, so each rank scales its sum by world_size / count.

Outputs in DIR: the trained draft as a Hugging Face checkpoint with its tokenizer (loadable by
AutoModelForCausalLM and `specdec bench --draft DIR`), `metrics.jsonl` (train loss every step, eval
rows every --eval-every / --spec-eval-every steps), and `checkpoints/step_NNNNNN/` every --save-every
steps, each written to a temporary folder and renamed into place (a kill at any moment leaves either
the previous or the new checkpoint, never half of one). `--resume` restarts from the newest one; since
every batch and every sample is a function of (seed, step), the resumed run ends with the same weights
as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import SOURCES, Batch, PromptSet, heldout_prompts, left_pad, make_batch, stream_seed
from .losses import KINDS, acceptance, divergence, divergence_topk


# ----------------------------------------------------------------------------------------------------
# Config: the single source of truth for defaults; the CLI is built from it.

def _f(default, help_, **kw):
    return field(default=default, metadata={"help": help_, **kw})


@dataclass
class DistillConfig:
    out: str = _f(None, "output folder: the distilled draft (HF checkpoint + tokenizer), metrics.jsonl, checkpoints/")
    # models
    target: str | None = _f(None, "target model folder or hub id (default: the bundled target)")
    draft: str | None = _f(None, "draft model folder or hub id to start from (default: the bundled draft)")
    # objective
    divergence: str = _f("fkl", "token-level divergence D(p || q)", choices=KINDS)
    beta: float = _f(0.5, "JSD(beta) mixture weight, in (0, 1)")
    temperature: float = _f(1.0, "deployment temperature: sampling AND loss temperature (0 = greedy; the loss then uses 1)")
    # data
    data_source: str = _f("student", "where sequences come from", choices=SOURCES)
    lmbda: float = _f(0.5, "mix: fraction of batches the draft samples (else dataset)")
    skd_topk: int = _f(25, "skd: a draft token outside the target's top-K is replaced by a target sample")
    data: str | None = _f(None, "JSONL prompts ({\"prompt\", optional \"completion\"}); default: the bundled corpus' train split")
    prompt_tokens: int = _f(96, "prompt length in tokens (last tokens of longer prompts)")
    new_tokens: int = _f(32, "continuation length in tokens")
    teacher_cache: str | None = _f(None, "train from a `specdec cache-teacher` folder (no target forward in training)")
    # optimisation
    steps: int = _f(200, "optimizer steps")
    batch_size: int = _f(8, "sequences per micro-batch per process")
    grad_accum: int = _f(1, "micro-batches per step")
    lr: float = _f(3e-4, "peak learning rate (AdamW; linear warm-up, cosine decay to 10%%)")
    warmup_steps: int = _f(10, "linear warm-up steps")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping (0 = off)")
    seed: int = _f(0, "seed of the data order and of every sample")
    chunk_size: int = _f(1024, "tokens per chunk of the fp32 loss computation")
    # evaluation
    eval_every: int = _f(25, "estimated acceptance on held-out prompts every N steps (0 = only at the end)")
    spec_eval_every: int = _f(100, "real speculative decoding run every M steps (0 = only at the end)")
    eval_prompts: int = _f(16, "held-out prompts used by the evaluations")
    eval_gamma: int = _f(4, "gamma of the speculative evaluation run")
    # checkpoints
    save_every: int = _f(50, "atomic checkpoint every N steps (0 = only the final output)")
    keep_checkpoints: int = _f(2, "checkpoints kept on disk")
    resume: bool = _f(False, "continue from the newest checkpoint in --out")
    # scale-out / placement
    fsdp: bool = _f(False, "shard the draft with FSDP (under torchrun)")
    device: str = _f("auto", "auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)")
    threads: int | None = _f(None, "torch CPU threads (default: torch's own; 1 is often fastest on a busy shared CPU)")
    progress: bool = _f(True, "tqdm progress bar (rank 0)")

    def __post_init__(self):
        if not self.out:
            raise ValueError("--out DIR is required (where the distilled draft and metrics go)")
        if self.divergence not in KINDS:
            raise ValueError(f"--divergence must be one of {KINDS}, got {self.divergence!r}")
        if self.divergence == "jsd" and not (0.0 < self.beta < 1.0):
            raise ValueError(f"--beta must be in (0, 1) for jsd (0 and 1 make JSD vanish; use fkl / rkl), got {self.beta}")
        if self.data_source not in SOURCES:
            raise ValueError(f"--data-source must be one of {SOURCES}, got {self.data_source!r}")
        if not (0.0 <= self.lmbda <= 1.0):
            raise ValueError(f"--lmbda must be in [0, 1], got {self.lmbda}")
        if self.skd_topk < 1:
            raise ValueError(f"--skd-topk must be >= 1, got {self.skd_topk}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        for name in ("steps", "batch_size", "grad_accum", "prompt_tokens", "new_tokens", "chunk_size",
                     "eval_prompts", "eval_gamma", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "spec_eval_every", "save_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.teacher_cache is not None and self.data_source not in ("dataset", "teacher"):
            raise ValueError(f"--teacher-cache holds sequences that do not depend on the draft; it works with "
                             f"--data-source dataset or teacher, not {self.data_source!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def add_arguments(parser: argparse.ArgumentParser, cls=DistillConfig, skip=()) -> None:
    """One flag per config field; defaults come from the dataclass only."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        if f.type in ("bool", bool):
            if f.default:
                parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false", help="disable: " + help_)
            else:
                parser.add_argument(flag, dest=f.name, action="store_true", help=help_)
            continue
        typ = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
        kw = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
        if f.name == "out":
            kw["required"] = True
        elif "default" not in help_:
            help_ = f"{help_} (default: {f.default})"
        parser.add_argument(flag, dest=f.name, type=typ, default=f.default, help=help_, **kw)


def config_from_args(args, cls=DistillConfig):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


# ----------------------------------------------------------------------------------------------------
# Distributed helpers (a single process is world 1, rank 0).

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(x)
        return x

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()


def init_dist(device_kind: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as td
    here = False
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        here = True
    return Dist(td.get_rank(), td.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), here)


def _pick_device(cfg: DistillConfig, dist: Dist) -> torch.device:
    kind = cfg.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda but no CUDA device is visible; use --device cpu")
        if dist.world > 1:
            torch.cuda.set_device(dist.local_rank)
            return torch.device("cuda", dist.local_rank)
    return torch.device(kind)


def unwrap(model):
    return getattr(model, "module", model)


# ----------------------------------------------------------------------------------------------------
# Loss of one micro-batch.

def continuation_logits(model, batch: Batch, vocab_size: int) -> torch.Tensor:
    """Logits predicting the real continuation tokens: [N, V'] (N = batch.num_tokens), in model dtype.
    Only the last C + 1 columns go through the LM head (logits_to_keep), not the prompt's."""
    C = batch.new_tokens
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids(),
                logits_to_keep=C + 1, use_cache=False)
    logits = out.logits[:, :-1, :vocab_size]                                  # [B, C, V']
    return logits[batch.cont_mask]                                            # [N, V']


def micro_loss(student, batch: Batch, cfg: DistillConfig, vocab_size: int, normalizer, teacher=None, cached=None):
    """sum over the micro-batch's generated tokens of D(p || q) / normalizer (a differentiable scalar).
    The teacher side is either the target model (no grad) or a cached top-K + tail entry."""
    s = continuation_logits(student, batch, vocab_size)                       # [N, V]
    if cached is not None:
        return divergence_topk(cached["topk_idx"].to(s.device), cached["topk_logp"].to(s.device),
                               cached["tail_logp"].to(s.device), s, cfg.divergence, cfg.beta, cfg.temperature,
                               normalizer=normalizer, chunk_size=cfg.chunk_size)
    with torch.no_grad():
        t = continuation_logits(teacher, batch, vocab_size)                   # [N, V]
    return divergence(t, s, cfg.divergence, cfg.beta, cfg.temperature, normalizer=normalizer,
                      chunk_size=cfg.chunk_size)


# ----------------------------------------------------------------------------------------------------
# Evaluation.

@torch.no_grad()
def evaluate(target, draft, prompts: list, cfg: DistillConfig, vocab_size: int, pad_id: int, eos_ids, spec: bool,
             batch_size: int = 8) -> dict:
    """Estimated acceptance (mean over generated tokens of sum_x min(p, q), argmax agreement at T = 0)
    and the divergence on draft-generated continuations of held-out prompts at the deployment
    temperature; with spec=True also a real speculative run's mean acceptance length.
    Uses its own fixed seeds: never touches the training RNG streams."""
    from ..decoding import SpeculativeDecoder, autoregressive_generate

    device = draft.get_input_embeddings().weight.device
    was_training = draft.training
    draft.eval()
    acc_sum, div_sum, n = 0.0, 0.0, 0
    for a in range(0, len(prompts), batch_size):
        chunk = prompts[a:a + batch_size]
        ids, mask = left_pad(chunk, pad_id)
        ids, mask = ids.to(device), mask.to(device)
        conts = autoregressive_generate(draft, ids, mask, max_new_tokens=cfg.new_tokens, temperature=cfg.temperature,
                                        seed=stream_seed(cfg.seed, "eval", a), vocab_size=vocab_size).new_tokens
        from .data import assemble
        b = assemble(chunk, conts, cfg.new_tokens, pad_id, "student").to(device)
        t = continuation_logits(target, b, vocab_size)
        s = continuation_logits(draft, b, vocab_size)
        acc_sum += float(acceptance(t, s, cfg.temperature).sum())
        div_sum += float(divergence(t, s, cfg.divergence, cfg.beta, cfg.temperature))
        n += t.shape[0]
    row = {"est_acceptance": acc_sum / max(n, 1), "eval_divergence": div_sum / max(n, 1), "eval_tokens": n}
    if spec:
        dec = SpeculativeDecoder(target, draft, gamma=cfg.eval_gamma, vocab_size=vocab_size)
        steps, accepted = 0, 0
        for a in range(0, len(prompts), batch_size):
            ids, mask = left_pad(prompts[a:a + batch_size], pad_id)
            st = dec.generate(ids.to(device), mask.to(device), max_new_tokens=cfg.new_tokens * 2,
                              temperature=cfg.temperature, seed=stream_seed(cfg.seed, "spec", a)).stats
            steps += st.draft_steps
            accepted += st.accepted_tokens
        row["mean_accepted_length"] = 1.0 + accepted / steps if steps else 1.0
        row["spec_gamma"] = cfg.eval_gamma
    draft.train(was_training)
    return row


# ----------------------------------------------------------------------------------------------------
# Checkpoints.

def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_hf(model, tokenizer, folder: Path) -> None:
    """The draft as a Hugging Face checkpoint (+ tokenizer) in `folder`, written to a temporary sibling
    first; files are then moved in one by one with os.replace (each file appears whole)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-hf-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    for f in sorted(tmp.iterdir()):
        os.replace(f, folder / f.name)
    tmp.rmdir()


def save_checkpoint(out: Path, step: int, model_state: dict, hf_model, tokenizer, optimizer_state, scheduler,
                    keep: int) -> Path:
    ck_root = out / "checkpoints"
    ck_root.mkdir(parents=True, exist_ok=True)
    final = ck_root / f"step_{step:06d}"
    tmp = ck_root / f".tmp-step_{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if hf_model is not None:
        hf_model.save_pretrained(tmp, safe_serialization=True)
    torch.save({"step": step, "model": model_state, "optimizer": optimizer_state,
                "scheduler": scheduler.state_dict(), "rng": _rng_state()}, tmp / "trainer_state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)                   # the checkpoint appears whole, or not at all
    _atomic_write_text(ck_root / "latest", final.name)
    for old in sorted(p for p in ck_root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    ck_root = Path(out) / "checkpoints"
    done = sorted(p for p in ck_root.glob("step_*") if (p / "trainer_state.pt").exists())
    return done[-1] if done else None


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ----------------------------------------------------------------------------------------------------
# The loop.

def _lr_lambda(cfg: DistillConfig):
    def f(step):
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(1, cfg.steps - cfg.warmup_steps)
        frac = min(1.0, (step - cfg.warmup_steps) / span)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))
    return f


class _Metrics:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int):
        """On resume: drop rows the previous run wrote after its last checkpoint."""
        if not self.enabled or not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        _atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))

    def write(self, row: dict):
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(row) + "\n")


def _wrap(draft, cfg: DistillConfig, dist: Dist, device):
    if dist.world <= 1:
        if cfg.fsdp:
            raise ValueError("--fsdp shards across processes: run under torchrun --nproc_per_node N (on CUDA)")
        return draft
    if cfg.fsdp:
        if device.type != "cuda":
            raise ValueError("--fsdp needs CUDA devices (PyTorch's FSDP does not run on CPU); on CPU drop --fsdp "
                             "and train with DDP")
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        return FSDP(draft, device_id=device, use_orig_params=True)
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(draft, device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def _full_params(model, cfg):
    """Eval / save of an FSDP model need its full parameters on every rank for the duration."""
    if cfg.fsdp and hasattr(model, "summon_full_params"):
        with model.summon_full_params(model, writeback=False):
            yield
    else:
        yield


def _model_state(model, cfg):
    if cfg.fsdp:
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=True, rank0_only=True)):
            return model.state_dict()
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def _optim_state(model, optimizer, cfg):
    if cfg.fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        return FSDP.optim_state_dict(model, optimizer)
    return optimizer.state_dict()


def train(cfg: DistillConfig) -> dict:
    """Run the distillation described by cfg; returns the final evaluation row (rank 0) or {}."""
    from ..models import check_vocab, load_model, load_tokenizer, bundled_pair

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    kind = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dist = init_dist("cuda" if kind.startswith("cuda") else "cpu")
    try:
        return _train(cfg, dist, check_vocab, load_model, load_tokenizer, bundled_pair)
    finally:
        if dist.initialised_here:
            torch.distributed.destroy_process_group()


def _train(cfg, dist, check_vocab, load_model, load_tokenizer, bundled_pair) -> dict:
    device = _pick_device(cfg, dist)
    out = Path(cfg.out)
    bt, bd = (None, None)
    if cfg.target is None or cfg.draft is None:
        bt, bd = bundled_pair()
    target_path = cfg.target or str(bt)
    draft_path = cfg.draft or str(bd)
    cache = None
    if cfg.teacher_cache is not None:
        from .cache import TeacherCache
        cache = TeacherCache(cfg.teacher_cache)
        cache.check_compatible(cfg, dist.world)
    ttok, tok = load_tokenizer(target_path), load_tokenizer(draft_path)
    vocab = check_vocab(ttok, tok, target_path, draft_path)
    # The target is needed for sampling (teacher / skd), the loss without a cache, and every evaluation.
    target = load_model(target_path, "float32", device)
    draft = load_model(draft_path, "float32", device)
    vocab = min(vocab, target.get_output_embeddings().weight.shape[0], draft.get_output_embeddings().weight.shape[0])
    draft.requires_grad_(True).train()
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos_ids = [tok.eos_token_id] if tok.eos_token_id is not None else []

    if cfg.resume:
        ck = latest_checkpoint(out)
        if ck is None:
            raise ValueError(f"--resume: no checkpoint in {out / 'checkpoints'}; run without --resume to start")
        state = torch.load(ck / "trainer_state.pt", map_location="cpu", weights_only=False)
        draft.load_state_dict(state["model"])
    else:
        state = None
        if dist.main and (out / "checkpoints").exists() and latest_checkpoint(out) is not None:
            raise ValueError(f"{out} already holds checkpoints: pass --resume to continue, or choose a new --out")
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(out / "distill_config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")

    model = _wrap(draft, cfg, dist, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    start = 0
    if state is not None:
        if cfg.fsdp:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
            optimizer.load_state_dict(FSDP.optim_state_dict_to_load(model, optimizer, state["optimizer"]))
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start = int(state["step"])

    prompts = PromptSet(tok, cfg.prompt_tokens, cfg.new_tokens, jsonl=cfg.data) if cache is None else None
    eval_ids = heldout_prompts(tok, cfg.eval_prompts, cfg.prompt_tokens) if dist.main else []
    metrics = _Metrics(out / "metrics.jsonl", dist.main)
    if state is not None:
        metrics.truncate_after(start)

    bar = None
    if dist.main and cfg.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=start, desc=f"distill {cfg.divergence}/{cfg.data_source}", dynamic_ncols=True)
    last_eval: dict = {}

    def run_eval(step, spec):
        nonlocal last_eval
        with _full_params(model, cfg):
            if dist.main:
                row = evaluate(target, unwrap(model), eval_ids, cfg, vocab, pad_id, eos_ids, spec)
                row.update(step=step, kind="eval")
                metrics.write(row)
                last_eval = row
        dist.barrier()

    if start == 0 and cfg.eval_every and not cfg.resume:
        run_eval(0, spec=bool(cfg.spec_eval_every))

    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        raw = unwrap(model)
        with _full_params(model, cfg):
            if cache is not None:
                entries = [cache.entry(step, m * dist.world + dist.rank) for m in range(cfg.grad_accum)]
                batches = [e["batch"].to(device) for e in entries]
            else:
                entries = [None] * cfg.grad_accum
                batches = [make_batch(prompts, source=cfg.data_source, batch_size=cfg.batch_size, seed=cfg.seed,
                                      step=step, micro=m * dist.world + dist.rank, temperature=cfg.temperature,
                                      pad_id=pad_id, eos_ids=eos_ids, vocab_size=vocab, target=target, draft=raw,
                                      lmbda=cfg.lmbda, skd_topk=cfg.skd_topk, device=device)
                           for m in range(cfg.grad_accum)]
        gen_s = time.perf_counter() - t0
        # The normaliser: generated tokens over all micro-batches and all ranks, known before any backward.
        count = dist.all_sum(torch.tensor(float(sum(b.num_tokens for b in batches)), device=device))
        normalizer = count / dist.world        # DDP averages gradients over ranks: sum / count overall
        loss_sum = torch.zeros((), device=device)
        for m, (b, e) in enumerate(zip(batches, entries)):
            sync = m == len(batches) - 1 or dist.world == 1 or cfg.fsdp
            ctx = contextlib.nullcontext() if sync else model.no_sync()
            with ctx:
                loss = micro_loss(model, b, cfg, vocab, normalizer, teacher=target, cached=e)
                loss.backward()
            loss_sum += loss.detach() / dist.world
        dist.all_sum(loss_sum)
        if cfg.max_grad_norm > 0:
            if cfg.fsdp:
                model.clip_grad_norm_(cfg.max_grad_norm)
            else:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        row = {"step": done, "kind": "train", "loss": float(loss_sum), "tokens": int(count.item()),
               "lr": scheduler.get_last_lr()[0], "sources": sorted({b.source for b in batches}),
               "gen_s": round(gen_s, 4), "step_s": round(time.perf_counter() - t0, 4)}
        metrics.write(row)
        last = done == cfg.steps
        if (cfg.eval_every and done % cfg.eval_every == 0) or last \
                or (cfg.spec_eval_every and done % cfg.spec_eval_every == 0):
            run_eval(done, spec=last or bool(cfg.spec_eval_every and done % cfg.spec_eval_every == 0))
        if cfg.save_every and done % cfg.save_every == 0 and not last:
            ms, os_ = _model_state(model, cfg), _optim_state(model, optimizer, cfg)
            if dist.main:
                save_checkpoint(out, done, ms, None, None, os_, scheduler, cfg.keep_checkpoints)
            dist.barrier()
        if bar is not None:
            post = {"loss": f"{row['loss']:.4f}"}
            if "est_acceptance" in last_eval:
                post["acc"] = f"{last_eval['est_acceptance']:.3f}"
            if "mean_accepted_length" in last_eval:
                post["mal"] = f"{last_eval['mean_accepted_length']:.2f}"
            bar.set_postfix(post)
            bar.update(1)
    if bar is not None:
        bar.close()

    # Final output: the HF checkpoint + tokenizer in DIR.
    ms = _model_state(model, cfg)
    if dist.main:
        raw = unwrap(model)
        if cfg.fsdp:
            raw = load_model(draft_path, "float32", "cpu")
            raw.load_state_dict(ms)
        save_hf(raw, tok, out)
    dist.barrier()
    return last_eval if dist.main else {}


# ----------------------------------------------------------------------------------------------------
# CLI.

def run(args) -> int:
    cfg = config_from_args(args)
    final = train(cfg)
    if final:
        print(json.dumps({"out": cfg.out, **final}))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="specdec distill")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
