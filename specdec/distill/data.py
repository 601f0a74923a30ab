"""Prompts and the DistillSpec data sources: what one micro-batch of sequences is, and where it comes from.

Prompts come from a JSONL file read by specdec.data.prompts (`{"prompt": str, "completion": str (optional)}`
per line; Spec-Bench questions too) or, by default, from the bundled corpus' train split (a window of a
stdlib train-split module, cut at a line start: the first `prompt_tokens` tokens are the prompt, the
next `new_tokens` its fixed continuation).

Data sources (what the sequences y of the loss E_y[D(p || q)] are):
  dataset   the fixed continuations of the data
  teacher   continuations sampled from the target (SeqKD)
  student   continuations sampled from the draft (on-policy; no gradient through sampling)
  mix       per batch, the draft samples with probability lmbda, else the dataset (GKD's lambda)
  skd       the draft proposes each token; a proposal outside the target's top-K is replaced by a
            sample of the target (SKD, Xu et al. 2024)
All sampling is at the deployment temperature, on the shared cached-decode helper (rollout.py). The
teacher and skd sources run the target while sampling and keep its logits (Batch.teacher_logits): their
loss needs no second target forward.

Determinism: every batch is a pure function of (seed, step, global micro-batch index) and the config, so a
resumed run draws the same data and the same samples as an uninterrupted one, and the data position
is just the step counter.

The trainer asks a data source for the micro-batches of a step: `LiveSource` here builds them (sampling
from the models where the source needs it), `TeacherCache` (cache.py) reads them with the target's
top-K log-probs from disk. Both return (Batch, TeacherTopK or None) pairs.
"""
from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.corpus import CATEGORIES, read_source, split_files, stdlib_root
from ..data.prompts import builtin, load_prompts_file
from ..engine.headmap import HeadMap
from .rollout import pick, rollout
from .skd import skd_generate

SOURCES = ("dataset", "teacher", "student", "mix", "skd")


@dataclass
class Batch:
    """One micro-batch of sequences: left-padded prompts, then continuations right-padded.

    input_ids, attention_mask: [B, P + C]; cont_mask: [B, C] bool, True where continuation token c is
    real (not padding after EOS). The logits at column P - 1 + c predict continuation token c, so the
    loss reads the last C + 1 logit columns but the last (logits_to_keep = C + 1, drop the final one).
    teacher_logits: [N, V'] the target's logits on the N real continuation tokens, where sampling the
    batch computed them (teacher, skd); None: the trainer runs the target.
    """
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    cont_mask: torch.Tensor
    source: str
    teacher_logits: torch.Tensor | None = None

    @property
    def new_tokens(self) -> int:
        return self.cont_mask.shape[1]

    @property
    def num_tokens(self) -> int:
        return int(self.cont_mask.sum())

    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.cumsum(1) - 1).clamp_min(0)

    def to(self, device) -> "Batch":
        t = None if self.teacher_logits is None else self.teacher_logits.to(device)
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.cont_mask.to(device), self.source,
                     t)


@dataclass
class TeacherTopK:
    """The target's distribution on a micro-batch's N real continuation tokens, kept offline as its K
    largest log-probs plus a tail bucket (losses.divergence_topk): idx [N, K] int64, logp [N, K] fp32,
    tail [N] fp32."""
    idx: torch.Tensor
    logp: torch.Tensor
    tail: torch.Tensor

    def to(self, device) -> "TeacherTopK":
        return TeacherTopK(self.idx.to(device), self.logp.to(device), self.tail.to(device))


def continuation_logits(model, batch: Batch, vocab_size: int) -> torch.Tensor:
    """Logits predicting the real continuation tokens: [N, V'] (N = batch.num_tokens), in model dtype.
    Only the last C + 1 columns go through the LM head (logits_to_keep), not the prompt's."""
    C = batch.new_tokens
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids(),
                logits_to_keep=C + 1, use_cache=False)
    logits = out.logits[:, :-1]                                               # [B, C, V]
    head = HeadMap.of(getattr(model, "module", model), logits.shape[-1], logits.device)
    if head is not None:   # a head covering some ids: -inf outside them, as the decoders see it
        logits = head.expand(logits)
    return logits[:, :, :vocab_size][batch.cont_mask]                         # [N, V']


def stream_seed(seed: int, *parts) -> int:
    """A 63-bit seed from the run seed and a position (purpose, step, micro-batch)."""
    return zlib.crc32(json.dumps([int(seed), *parts]).encode()) * 2654435761 % (2 ** 63 - 1)


# ----------------------------------------------------------------------------------------------------
# Prompts.

class PromptSet:
    """Deterministic access to (prompt ids, completion ids or None) examples."""

    def __init__(self, tokenizer, prompt_tokens: int, new_tokens: int, jsonl: str | None = None,
                 files: list | None = None, chat_template: str = "auto"):
        self.tok, self.P, self.C = tokenizer, int(prompt_tokens), int(new_tokens)
        self.records = None
        if jsonl is not None:
            self.records = load_prompts_file(jsonl, tokenizer, chat_template)
            self.source_name = str(jsonl)
        else:
            self.files = list(split_files()[0] if files is None else files)
            if not self.files:
                raise ValueError("no training files found in the bundled corpus; pass --data FILE.jsonl")
            self.source_name = "the bundled corpus' train split"
            self._texts: dict = {}

    @property
    def has_completions(self) -> bool:
        return self.records is None or all("completion" in r for r in self.records)

    def check_source(self, source: str, lmbda: float = 0.5) -> None:
        """A source that trains on the data's own continuations needs them: fail before anything runs."""
        uses_data = source == "dataset" or (source == "mix" and lmbda < 1.0)
        if uses_data and not self.has_completions:
            raise ValueError(f"--data-source {source} trains on the data's continuations, but {self.source_name} "
                             "has lines without \"completion\": add them, or use --data-source student, teacher "
                             "or skd")

    def _encode(self, text: str) -> list:
        return self.tok(text, add_special_tokens=False).input_ids

    def _text(self, i: int) -> str:
        if i not in self._texts:
            if len(self._texts) > 64:
                self._texts.clear()
            self._texts[i] = read_source(self.files[i])
        return self._texts[i]

    def sample(self, rng: random.Random) -> tuple[list, list | None]:
        if self.records is not None:
            ex = self.records[rng.randrange(len(self.records))]
            prompt = self._encode(ex["prompt"])[-self.P:]
            comp = ex.get("completion")
            return prompt, (self._encode(comp)[:self.C] if comp else None)
        need = self.P + self.C
        for _ in range(100):
            text = self._text(rng.randrange(len(self.files)))
            if len(text) < 200:
                continue
            start = rng.randrange(len(text))
            start = text.find("\n", start) + 1  # a line start (0 if there is none after: wrap)
            ids = self._encode(text[start:start + need * 8])
            if len(ids) >= need:
                return ids[:self.P], ids[self.P:need]
        raise ValueError("could not cut a long enough window from the corpus; lower --prompt-tokens / --new-tokens")


def heldout_prompts(tokenizer, n: int, prompt_tokens: int) -> list:
    """Token ids of n held-out prompts (the built-in prompt sets, cut from held-out stdlib modules;
    the last prompt_tokens tokens of each), spread over the categories."""
    per_cat = max(1, -(-n // len(CATEGORIES)))
    items = builtin(max_per_category=per_cat)
    # interleave categories so any prefix of the list covers all of them
    by_cat = [[it for it in items if it["category"] == c] for c in CATEGORIES]
    order = [it for group in zip(*by_cat) for it in group] or items
    return [tokenizer(it["prompt"], add_special_tokens=False).input_ids[-prompt_tokens:] for it in order[:n]]


UNSEEN_CATEGORIES = ("test", "window")


def unseen_prompts(per_category: int, chars: int = 800, root: Path | None = None) -> list[dict]:
    """Prompts of categories that neither the trainer nor the built-in sets hold: `test` (the stdlib's own
    test modules, which the corpus leaves out of both splits) and `window` (held-out modules cut at an
    arbitrary line, not at a function, class, docstring or comment). Each prompt is about `chars`
    characters from the first line start after the middle of its file, ending at a line end.
    Deterministic (files sorted, `per_category` spread evenly over them). Records as prompts.builtin."""
    root = stdlib_root() if root is None else Path(root)
    files = {"test": sorted((root / "test").glob("test_*.py")), "window": split_files(root)[1]}
    out = []
    for cat in UNSEEN_CATEGORIES:
        big = [f for f in files[cat] if f.stat().st_size >= 4 * chars]      # a stat each; read only the picks
        for i in range(min(per_category, len(big))):
            path = big[i * len(big) // per_category]
            text = read_source(path)
            start = text.find("\n", len(text) // 2) + 1
            window = text[start:start + chars]
            out.append({"id": f"{cat}-{path.stem}", "category": cat, "prompt": window[:window.rfind("\n") + 1]})
    return out


def left_pad(prompts: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """list of id lists -> (ids [B, P], mask [B, P]) left-padded."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, P - len(p):] = torch.tensor(p)
            mask[i, P - len(p):] = 1
    return ids, mask


def assemble(prompts: list, continuations: list, new_tokens: int, pad_id: int, source: str) -> Batch:
    """Left-padded prompts + continuations right-padded to new_tokens."""
    ids, mask = left_pad(prompts, pad_id)
    B, C = len(prompts), int(new_tokens)
    cont = torch.full((B, C), pad_id, dtype=torch.long)
    cmask = torch.zeros((B, C), dtype=torch.bool)
    for i, c in enumerate(continuations):
        c = list(c)[:C]
        if c:
            cont[i, :len(c)] = torch.tensor(c)
            cmask[i, :len(c)] = True
    return Batch(torch.cat([ids, cont], 1), torch.cat([mask, cmask.long()], 1), cmask, source)


# ----------------------------------------------------------------------------------------------------
# Building one micro-batch.

def resolve_source(source: str, lmbda: float, seed: int, step: int, micro: int) -> str:
    """The concrete source of a micro-batch: `mix` flips a coin per (step, global micro-batch): a pure function, the same on
    every rank (GKD: the fraction lmbda of batches is student-generated)."""
    if source != "mix":
        return source
    return "student" if random.Random(stream_seed(seed, "mix", step, micro)).random() < lmbda else "dataset"


def make_batch(prompts: PromptSet, *, source: str, batch_size: int, seed: int, step: int, micro: int,
               temperature: float, pad_id: int, eos_ids=(), vocab_size: int, target=None, draft=None,
               lmbda: float = 0.5, skd_topk: int = 25, device="cpu") -> Batch:
    """Micro-batch number `micro` of `step`, a pure function of these and the models.

    `micro` is the GLOBAL micro-batch index (micro-batch m on rank r of W processes is m * W + r), so
    W processes with accumulation A see the same data as one process with accumulation A * W."""
    src = resolve_source(source, lmbda, seed, step, micro)
    rng = random.Random(stream_seed(seed, "data", step, micro))
    examples = [prompts.sample(rng) for _ in range(batch_size)]
    p_ids = [e[0] for e in examples]
    C = prompts.C
    if src == "dataset":
        prompts.check_source(src)
        return assemble(p_ids, [e[1] for e in examples], C, pad_id, src).to(device)
    g = torch.Generator(device=device).manual_seed(stream_seed(seed, "sample", step, micro))
    ids, mask = left_pad(p_ids, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    if src == "student":
        if draft is None:
            raise ValueError("data source 'student' needs the draft model")
        out = rollout([draft], ids, mask, C, vocab_size, lambda lg: pick(lg[0], temperature, g))
    elif src == "teacher":
        if target is None:
            raise ValueError("data source 'teacher' needs the target model")
        out = rollout([target], ids, mask, C, vocab_size, lambda lg: pick(lg[0], temperature, g), keep=0)
    elif src == "skd":
        if target is None or draft is None:
            raise ValueError("data source 'skd' needs both the target and the draft")
        out = skd_generate(target, draft, ids, mask, C, temperature, skd_topk, vocab_size, g)
    else:
        raise ValueError(f"data source must be one of {SOURCES}, got {src!r}")
    batch = assemble(p_ids, out.rows(eos_ids), C, pad_id, src).to(device)
    if out.kept is not None:
        batch.teacher_logits = out.kept[batch.cont_mask]                                  # [N, V']
    return batch


class LiveSource:
    """Micro-batches built while training (make_batch); the teacher side is the target's logits the
    sampling kept (teacher, skd) or, for the others, the trainer's forward of the target."""

    def __init__(self, prompts: PromptSet, cfg, *, target, draft, pad_id: int, eos_ids, vocab_size: int, device):
        self.prompts, self.cfg = prompts, cfg
        self.target, self.draft = target, draft
        self.pad_id, self.eos_ids, self.vocab_size, self.device = pad_id, list(eos_ids), vocab_size, device

    def micro_batches(self, step: int, micros) -> list[tuple[Batch, None]]:
        """The micro-batches with GLOBAL indices `micros` of `step`."""
        c = self.cfg
        return [(make_batch(self.prompts, source=c.data_source, batch_size=c.batch_size, seed=c.seed, step=step,
                            micro=m, temperature=c.temperature, pad_id=self.pad_id, eos_ids=self.eos_ids,
                            vocab_size=self.vocab_size, target=self.target, draft=self.draft, lmbda=c.lmbda,
                            skd_topk=c.skd_topk, device=self.device), None) for m in micros]
