"""`specdec distill`: DistillSpec training of the draft toward the target.

    specdec distill --out DIR [--target T --draft D] [--divergence fkl|rkl|jsd|tvd] [--data-source ...]
    torchrun --nproc_per_node N -m specdec distill --out DIR ...      (DDP: gloo on CPU, nccl on GPU)

One step = `grad_accum` micro-batches per process. The loss of a step is
    sum over all generated tokens of all micro-batches on all ranks of D(p || q) / (global token count)
where the count is all_reduced before any backward (losses.py explains why per-micro-batch means are
wrong). DDP averages gradients over ranks, so each rank scales its sum by world_size / count.

Outputs in DIR (an output folder holds one run: common.outdir): the trained draft as a Hugging
Face checkpoint with its tokenizer (loadable by AutoModelForCausalLM and `specdec bench --draft DIR`),
`distill_config.json`, `metrics.jsonl` (train loss every step, eval rows every --eval-every /
--spec-eval-every steps), and `checkpoints/step_NNNNNN/` every --save-every steps (checkpoint.py).
`--resume` restarts from the newest intact checkpoint, with the same settings; since every batch and
every sample is a function of (seed, step) and the learning rate a function of the step, the resumed
run ends with the same weights as an uninterrupted one.

The file reads top to bottom: `train` = `setup` then `fit`; `fit` is the loop over `train_step`, with
`log_eval`, `save` and, at the end, `export`.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..common import config
from ..common.config import config_from_args
from ..models import bundled_pair, check_vocab, load_config, load_model, load_tokenizer
from ..engine.features import CONFIG_KEY as FEATURE_DRAFT_KEY
from ..models.draft import EMBED_KEY
from ..common.files import write_json_atomic
from ..common.fingerprint import fingerprint_inputs
from ..common.outdir import RunFolder, claim
from ..common.progress import Progress
from .cache import TeacherCache
from .checkpoint import (OUTPUTS, MetricsLog, checkpoint_dirs, export_hf, load_latest, save_checkpoint,
                         set_rng_state)
from .config import FREE_ON_RESUME, DistillConfig, check_context
from .data import LiveSource, PromptSet, TeacherTopK, continuation_logits, heldout_prompts
from .dist import (Dist, clip_grad_norm, full_params, grad_sync, init_dist, load_optim_state, model_state,
                   optim_state, pick_device, wrap)
from .evaluate import evaluate
from .losses import divergence, divergence_topk
from .samples import SampleSource
from .subset import HeadFrame, has_subset_head, one_hot_teacher
from .schedule import warmup_cosine


@dataclass
class Job:
    """What one training run holds once `setup` has built it."""
    cfg: DistillConfig
    dist: Dist
    device: torch.device
    out: Path
    run: RunFolder                  # the claimed output folder (held on rank 0)
    tokenizer: object
    target: torch.nn.Module
    draft: torch.nn.Module          # the draft itself (sampling, evaluation, export)
    model: torch.nn.Module          # the draft as trained: itself, or its DDP / FSDP wrapper
    optimizer: torch.optim.Optimizer
    source: object                  # LiveSource or TeacherCache: .micro_batches(step, micros)
    eval_prompts: list
    metrics: MetricsLog
    vocab: int
    pad_id: int
    draft_path: str
    frame: HeadFrame | None = None  # a draft whose head covers some ids: the loss in its frame (subset.py)
    start: int = 0
    last_eval: dict = field(default_factory=dict)


def train(cfg: DistillConfig) -> dict:
    """Run the distillation described by cfg; returns the last evaluation row (rank 0) or {}."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    dist = init_dist(device, cfg.fsdp)
    try:
        inputs = check_inputs(cfg, dist)
        with claim_out_dir(cfg, dist, inputs.fingerprints) as run:   # released as found if the setup fails
            return fit(setup(cfg, dist, device, inputs, run))
    finally:
        dist.close()


# ----------------------------------------------------------------------------------------------------
# Setup: every check that can fail runs before the output folder is claimed or a model is loaded.

@dataclass
class Inputs:
    """What is checked before the output folder is claimed: the models' paths, tokenizer and vocabulary,
    and the data (a teacher cache, or the prompts)."""
    target_path: str
    draft_path: str
    tokenizer: object
    vocab: int
    cache: TeacherCache | None
    prompts: PromptSet | None
    fingerprints: dict       # of the models and data files (common.fingerprint): --resume refuses a change


def check_inputs(cfg: DistillConfig, dist: Dist) -> Inputs:
    bt, bd = bundled_pair() if cfg.target is None or cfg.draft is None else (None, None)
    target_path, draft_path = str(cfg.target or bt), str(cfg.draft or bd)
    if getattr(load_config(draft_path), FEATURE_DRAFT_KEY, None) is not None:
        raise ValueError(f"{draft_path} is a draft that reads the target's features (EAGLE-1): specdec distill "
                         "trains drafts that read tokens only; train it with bench/smollm2_feature_draft.py")
    tok = load_tokenizer(draft_path)
    vocab = check_vocab(load_tokenizer(target_path), tok, target_path, draft_path)
    check_context(cfg, target_path, draft_path)
    cache, prompts = None, None
    if cfg.samples is not None:
        cache = SampleSource(cfg.samples, batch_size=cfg.batch_size, micros_per_step=cfg.grad_accum * dist.world,
                             prompt_tokens=cfg.prompt_tokens, new_tokens=cfg.new_tokens, seed=cfg.seed,
                             pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0)
    elif cfg.teacher_cache is not None:
        cache = TeacherCache(cfg.teacher_cache)
        cache.check_compatible(cfg, dist.world, target_path)
    else:
        prompts = PromptSet(tok, cfg.prompt_tokens, cfg.new_tokens, jsonl=cfg.data, chat_template=cfg.chat_template)
        prompts.check_source(cfg.data_source, cfg.lmbda)
    teacher_meta = cache.folder / "meta.json" if isinstance(cache, TeacherCache) else None
    fingerprints = fingerprint_inputs({"--target": target_path, "--draft": draft_path},
                                      {"--data": cfg.data, "--teacher-cache": teacher_meta})
    if isinstance(cache, SampleSource):
        fingerprints["--samples"] = cache.digest()
    return Inputs(target_path, draft_path, tok, vocab, cache, prompts, fingerprints)


def setup(cfg: DistillConfig, dist: Dist, device: torch.device, inputs: Inputs, run: RunFolder) -> Job:
    out, tok = run.path, inputs.tokenizer
    resumed = resume_state(cfg, out, dist)
    target = load_model(inputs.target_path, "float32", device)
    draft = load_model(inputs.draft_path, "float32", device)
    vocab = min(inputs.vocab, target.get_output_embeddings().weight.shape[0],
                draft.get_output_embeddings().weight.shape[0])
    draft.requires_grad_(True).train()
    if getattr(draft.config, EMBED_KEY, None):   # the target's embedding (models/draft.py): not trained, not shipped
        draft.get_input_embeddings().weight.requires_grad_(False)
    if resumed is not None:
        draft.load_state_dict(resumed["model"])
    frame = HeadFrame(draft) if has_subset_head(draft) else None
    if frame is not None and dist.world > 1:
        raise ValueError("a draft whose head covers some ids trains in one process (no torchrun)")
    model = wrap(draft, dist, device)
    params = [p for p in model.parameters() if p.requires_grad] + ([frame.rows] if frame is not None else [])
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    metrics = MetricsLog(out / "metrics.jsonl", enabled=dist.main)
    start = 0
    if resumed is not None:
        load_optim_state(model, optimizer, resumed["optimizer"], dist)
        set_rng_state(resumed["rng"])
        start = int(resumed["step"])
        metrics.truncate_after(start)

    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos_ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    source = inputs.cache or LiveSource(inputs.prompts, cfg, target=target, draft=draft, pad_id=pad_id,
                                        eos_ids=eos_ids, vocab_size=vocab, device=device)
    eval_prompts = heldout_prompts(tok, cfg.eval_prompts, cfg.prompt_tokens) if dist.main else []
    run.commit()
    return Job(cfg, dist, device, out, run, tok, target, draft, model, optimizer, source, eval_prompts, metrics,
               vocab, pad_id, inputs.draft_path, frame, start)


def claim_out_dir(cfg: DistillConfig, dist: Dist, inputs: dict) -> RunFolder:
    """The output-folder policy (rank 0 checks and claims; the others wait). A fresh run also records its
    settings in distill_config.json; a resumed one leaves both files describing the checkpoint."""
    out, error, run = Path(cfg.out), None, RunFolder.elsewhere(cfg.out)
    if dist.main:
        try:
            run = claim(out, "distill", config.to_dict(cfg), overwrite=cfg.overwrite, resume=cfg.resume,
                        can_resume=True, free=FREE_ON_RESUME, inputs=inputs, outputs=OUTPUTS,
                        setup_files=("distill_config.json",))
            if not cfg.resume:
                write_json_atomic(out / "distill_config.json", config.to_dict(cfg), indent=2)
        except (ValueError, OSError) as e:
            run.close(failed=True)
            error = e
    dist.raise_together(error)
    return run


def resume_state(cfg: DistillConfig, out: Path, dist: Dist) -> dict | None:
    if not cfg.resume:
        return None
    found = load_latest(out, verbose=dist.main)
    if found is None:
        why = (": every one is damaged (the warnings above name them)" if checkpoint_dirs(out) else
               " (the run stopped before its first --save-every step)")
        raise ValueError(f"--resume: no intact checkpoint in {out / 'checkpoints'}{why}; start it again with "
                         "--overwrite")
    return found[1]


# ----------------------------------------------------------------------------------------------------
# The loop.

def fit(job: Job) -> dict:
    cfg = job.cfg
    if job.start == 0 and cfg.eval_every:
        log_eval(job, 0, spec=bool(cfg.spec_eval_every))
    bar = _progress(job)
    for step in range(job.start, cfg.steps):
        row = train_step(job, step)
        job.metrics.write(row)
        done, last = step + 1, step + 1 == cfg.steps
        spec = last or bool(cfg.spec_eval_every and done % cfg.spec_eval_every == 0)
        if spec or (cfg.eval_every and done % cfg.eval_every == 0):
            log_eval(job, done, spec)
        if cfg.save_every and done % cfg.save_every == 0 and not last:
            save(job, done)
        bar.advance(**_figures(row, job.last_eval))
    bar.close()
    export(job)
    return job.last_eval if job.dist.main else {}


def learning_rate(cfg: DistillConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of --lr over the remaining steps: a function of the step."""
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * warmup_cosine(step, cfg.warmup_steps, progress)


def train_step(job: Job, step: int) -> dict:
    """One optimizer step over grad_accum micro-batches per process; returns its metrics row."""
    cfg, dist = job.cfg, job.dist
    t0 = time.perf_counter()
    lr = learning_rate(cfg, step)
    for group in job.optimizer.param_groups:
        group["lr"] = lr
    micros = [m * dist.world + dist.rank for m in range(cfg.grad_accum)]   # GLOBAL micro-batch indices
    with full_params(job.model, dist):
        pairs = job.source.micro_batches(step, micros)
    gen_s = time.perf_counter() - t0
    # The normaliser: generated tokens over all micro-batches and all ranks, known before any backward.
    count = dist.all_sum(torch.tensor(float(sum(b.num_tokens for b, _ in pairs)), device=job.device))
    normalizer = count / dist.world        # DDP averages gradients over ranks: sum / count overall
    loss_sum = torch.zeros((), device=job.device)
    for i, (batch, teacher) in enumerate(pairs):
        with grad_sync(job.model, dist, last_micro=i == len(pairs) - 1):
            loss = micro_loss(job, batch.to(job.device), teacher, normalizer)
            loss.backward()
        loss_sum += loss.detach() / dist.world
    dist.all_sum(loss_sum)
    check_loss(job, step, float(loss_sum))   # before the update: the weights and checkpoints stay good
    clip_grad_norm(job.model, dist, cfg.max_grad_norm)
    job.optimizer.step()
    job.optimizer.zero_grad(set_to_none=True)
    if job.frame is not None:
        job.frame.sync(job.draft)
    return {"step": step + 1, "kind": "train", "loss": float(loss_sum), "tokens": int(count.item()), "lr": lr,
            "sources": sorted({b.source for b, _ in pairs}), "gen_s": round(gen_s, 4),
            "step_s": round(time.perf_counter() - t0, 4)}


def weights_finite(job: Job) -> bool:
    """Whether every draft weight is finite, on every rank (one reduction over this rank's parameters)."""
    bad = torch.zeros((), device=job.device)
    for p in job.model.parameters():
        bad += (~p.detach().isfinite()).any().float()
    return float(job.dist.all_sum(bad)) == 0


def check_loss(job: Job, step: int, loss: float) -> None:
    """A loss that is not finite stops the run (it would only spread NaN into the weights and every later
    checkpoint): almost always a learning rate too high for the draft. Every rank sees the same summed
    loss, so all of them stop."""
    if math.isfinite(loss):
        return
    why = "the draft's weights are no longer finite" if not weights_finite(job) else "the draft's weights are finite"
    raise ValueError(f"the training loss is {loss} at step {step + 1} ({why}): the learning rate is probably too "
                     f"high (--lr {job.cfg.lr:g}); lower it and run again with --overwrite (the checkpoints "
                     f"written so far, in {job.out / 'checkpoints'}, are from before it); if it persists at a low "
                     "--lr, the target's logits overflow (float16?)")


def micro_loss(job: Job, batch, teacher: TeacherTopK | None, normalizer) -> torch.Tensor:
    """sum over the micro-batch's generated tokens of D(p || q) / normalizer (a differentiable scalar).
    The teacher side is the cached top-K + tail when the source read one, else the target's logits the
    sampling kept, else a forward of the live target."""
    cfg = job.cfg
    if cfg.hard_labels:
        teacher = one_hot_teacher(batch)
    frame = getattr(job, "frame", None)
    if frame is not None:
        s = frame.student_logits(job.model, batch)                             # [N, K]
    else:
        s = continuation_logits(job.model, batch, job.vocab)                  # [N, V]
    t_logits = None
    if teacher is not None:
        teacher = teacher.to(s.device)
    else:
        t_logits = batch.teacher_logits
        if t_logits is None:
            with torch.no_grad():
                t_logits = continuation_logits(job.target, batch, job.vocab)  # [N, V]
    if frame is not None:
        return frame.loss(s, teacher, t_logits, cfg, normalizer)
    if teacher is not None:
        return divergence_topk(teacher.idx, teacher.logp, teacher.tail, s, cfg.divergence, cfg.beta,
                               cfg.temperature, normalizer=normalizer, chunk_size=cfg.chunk_size)
    return divergence(t_logits, s, cfg.divergence, cfg.beta, cfg.temperature, normalizer=normalizer,
                      chunk_size=cfg.chunk_size)


def log_eval(job: Job, step: int, spec: bool) -> None:
    """Evaluate on rank 0 (the others wait) and append the row to metrics.jsonl."""
    with full_params(job.model, job.dist):
        if job.dist.main:
            row = evaluate(job.target, job.draft, job.eval_prompts, job.cfg, job.vocab, job.pad_id, spec)
            row.update(step=step, kind="eval")
            job.metrics.write(row)
            job.last_eval = row
    job.dist.barrier()


def save(job: Job, step: int) -> None:
    if not weights_finite(job):   # the step's update overflowed: a checkpoint of it would be no good
        raise ValueError(f"the draft's weights are no longer finite after step {step}: the learning rate is too high "
                         f"(--lr {job.cfg.lr:g}); lower it and run again with --overwrite (the checkpoints written "
                         f"so far, in {job.out / 'checkpoints'}, are from before it)")
    ms, opt = model_state(job.model, job.dist), optim_state(job.model, job.optimizer, job.dist)
    if job.dist.main:
        save_checkpoint(job.out, step, ms, opt, job.cfg.keep_checkpoints)
    job.dist.barrier()


def export(job: Job) -> None:
    """The final draft as a Hugging Face checkpoint + tokenizer in DIR."""
    ms = model_state(job.model, job.dist)
    if job.dist.main:
        draft = job.draft
        if job.dist.fsdp:  # the module holds only this rank's shards: rebuild a whole one from the gathered state
            draft = load_model(job.draft_path, "float32", "cpu")
            draft.load_state_dict(ms)
        export_hf(draft, job.tokenizer, job.out, record=job.run.record)
    job.dist.barrier()


def _progress(job: Job) -> Progress:
    """The bar on rank 0 (when --progress): loss, and the latest estimated acceptance and MAL."""
    cfg = job.cfg
    return Progress(cfg.steps, f"distill {cfg.divergence}/{cfg.data_source}", enabled=job.dist.main and cfg.progress,
                    initial=job.start)


def _figures(row: dict, last_eval: dict) -> dict:
    post = {"loss": f"{row['loss']:.4f}"}
    if "est_acceptance" in last_eval:
        post["acc"] = f"{last_eval['est_acceptance']:.3f}"
    if "mean_accepted_length" in last_eval:
        post["mal"] = f"{last_eval['mean_accepted_length']:.2f}"
    return post


# ----------------------------------------------------------------------------------------------------
# CLI.

def add_arguments(parser: argparse.ArgumentParser, cls=DistillConfig) -> None:
    """The flags of `specdec distill` (cls: another config dataclass built the same way)."""
    config.add_arguments(parser, cls)


def run(args) -> int:
    cfg = config_from_args(args, DistillConfig)
    final = train(cfg)
    if final:
        print(json.dumps({"out": cfg.out, **final}))
    return 0
