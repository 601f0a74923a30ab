"""`specdec bench`: speculative decoding against plain decoding and Hugging Face assisted generation.

Methods (the `method` field of each row):
  ar                   plain decoding of the target in the same run; the denominator of every speedup
  sd                   specdec's SpeculativeDecoder at each gamma
  hf_assisted          transformers' `target.generate(assistant_model=draft)`, batch size 1, a constant
                       schedule of exactly gamma drafts (confidence early stop disabled)
  hf_assisted_default  the same with transformers' own assistant defaults (gamma = null)

Timing. Configurations (method, gamma, temperature, batch size) are grouped by (temperature, batch
size). In a group each configuration gets `warmup` untimed runs of the first batch, then `repeats`
timed passes over every prompt, interleaved: round r runs every configuration of the group once (in
alternating order), so load drift on a shared machine does not bias one method's ratio. Batches are consecutive prompts of the
prompt list (which is grouped by category), left-padded by the tokenizer. A category gets its own row
only where every batch holding its prompts holds nothing else (always at batch size 1); the "all" row
covers every prompt. tokens_per_s is the median over repeats of (new tokens / wall seconds of the pass);
`repeats` keeps every repeat's value and the spread. speedup = tokens_per_s / that of "ar" with the same
temperature, batch size and category. Acceptance statistics are pooled over all timed repeats.

Cost model (REFERENCES.md): predicted speedup = tau / (gamma * c + v) with tau = (1 - alpha^(gamma+1)) /
(1 - alpha) from the measured per-token acceptance `alpha` (see per_token_acceptance: the paper's alpha,
not the vLLM-convention `acceptance_rate` = accepted / drafted, which is also reported), c = draft 1-token step / target 1-token step and v = target (gamma+1)-token
step / target 1-token step, both timed once per batch size on a prompt-length cache before the sweep.
`predicted_speedup_tau` uses the measured mean acceptance length as tau instead of the i.i.d. formula.

Defaults are sized for a 2-core CPU and the bundled pair: 2 prompts per built-in category (8 prompts,
so batch size 8 is one full batch), 64 new tokens, 1 warmup, 3 repeats, gamma 1,2,4,8, temperature 0,1,
batch size 1,8 and both baselines: 30 configurations, 9 minutes with --threads 1 on a busy shared
2-core CPU (bench/RESULTS.md). On a GPU with a
real pair, raise --num-prompts (Spec-Bench uses 80 questions) and --max-new-tokens (e.g. 256).

results.json is rewritten atomically (temp file + os.replace) after every group, so a crash keeps the
rows already measured.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .decoding import SpeculativeDecoder, cache_kwarg, autoregressive_generate
from .metrics import DecodeStats, per_token_acceptance, predicted_speedup  # noqa: F401 (re-exported)

METHODS = ("ar", "sd", "hf_assisted", "hf_assisted_default")
BASELINES = ("ar", "hf")


# ----------------------------------------------------------------------------------------------------
# Configuration: the one source of truth for defaults; the CLI flags are built from it.

def _csv(text, kind, flag):
    """'1,2,4' -> (1, 2, 4); raises a one-line ValueError naming the flag."""
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise ValueError(f"{flag} needs at least one value (comma-separated)")
    try:
        return tuple(kind(x) for x in items)
    except (TypeError, ValueError):
        raise ValueError(f"{flag} must be a comma-separated list of {kind.__name__}s, got {text!r}") from None


@dataclass
class BenchConfig:
    # models
    target: str | None = None          # path or hub id; None = the bundled pair
    draft: str | None = None
    device: str = "auto"               # auto = cuda if available, else cpu
    dtype: str | None = None           # None = bfloat16 on CUDA, float32 on CPU
    device_map: str | None = None      # e.g. "auto": shard the target across GPUs (transformers/accelerate)
    threads: int | None = None         # torch CPU threads (None = torch's default)
    # sweep
    gamma: tuple = (1, 2, 4, 8)
    temperature: tuple = (0.0, 1.0)
    batch_size: tuple = (1, 8)
    baselines: tuple = ("ar", "hf")
    # prompts
    prompts: str | None = None         # JSONL (user or Spec-Bench format); None = built-in sets
    num_prompts: int | None = 2        # per category; None = all
    max_new_tokens: int = 64
    # timing
    warmup: int = 1                    # untimed runs of the first batch per configuration
    repeats: int = 3                   # timed passes over all prompts per configuration
    seed: int = 0
    # output
    out: str = "bench_out"
    no_plots: bool = False
    no_progress: bool = False

    def __post_init__(self):
        self.gamma = _csv(self.gamma, int, "--gamma")
        self.temperature = _csv(self.temperature, float, "--temperature")
        self.batch_size = _csv(self.batch_size, int, "--batch-size")
        self.baselines = tuple(b.lower() for b in _csv(self.baselines, str, "--baselines")) if self.baselines else ()
        bad = [g for g in self.gamma if g < 1]
        if bad:
            raise ValueError(f"--gamma values must be >= 1 (draft tokens per step), got {bad[0]}")
        bad = [t for t in self.temperature if t < 0 or t != t]
        if bad:
            raise ValueError(f"--temperature values must be >= 0 (0 = greedy), got {bad[0]}")
        bad = [b for b in self.batch_size if b < 1]
        if bad:
            raise ValueError(f"--batch-size values must be >= 1, got {bad[0]}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline {unknown[0]!r}; --baselines takes a comma-separated subset of {','.join(BASELINES)}")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ValueError(f"--num-prompts must be >= 1 (prompts per category), got {self.num_prompts}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {self.warmup}")
        if self.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {self.repeats}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.dtype is None:
            self.dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        if self.prompts is not None and not Path(self.prompts).exists():
            raise FileNotFoundError(f"prompts file {self.prompts!r} does not exist; pass a JSONL file with one "
                                    '{"prompt": ..., "category": ...} per line')


_HELP = {
    "target": "target model path or hub id (default: the bundled pair)",
    "draft": "draft model path or hub id (default: the bundled pair)",
    "device": "cpu | cuda | cuda:1 | auto (cuda if available)",
    "dtype": "float32 | bfloat16 | float16 (default: bfloat16 on CUDA, float32 on CPU)",
    "device_map": "e.g. auto: spread the target over several GPUs via transformers/accelerate",
    "threads": "torch CPU threads (default: torch's own; 1 is fastest on a busy shared CPU)",
    "gamma": "draft tokens per step, comma-separated",
    "temperature": "sampling temperatures, comma-separated (0 = greedy)",
    "batch_size": "batch sizes, comma-separated (HF assisted runs only at 1)",
    "baselines": "comma-separated subset of ar,hf ('' for none)",
    "prompts": "JSONL prompts: {\"prompt\", \"category\"} lines or Spec-Bench question.jsonl (default: built-in sets)",
    "num_prompts": "prompts per category (0 = all)",
    "max_new_tokens": "new tokens per prompt",
    "warmup": "untimed runs of the first batch per configuration",
    "repeats": "timed passes over all prompts per configuration (median and spread reported)",
    "seed": "base seed of the samplers",
    "out": "output folder (results.json and PNGs)",
    "no_plots": "skip the plots",
    "no_progress": "no progress bar",
}


def add_arguments(p):
    d = BenchConfig()
    groups = {
        "models": ("target", "draft", "device", "dtype", "device_map", "threads"),
        "sweep": ("gamma", "temperature", "batch_size", "baselines"),
        "prompts": ("prompts", "num_prompts", "max_new_tokens"),
        "timing": ("warmup", "repeats", "seed"),
        "output": ("out", "no_plots", "no_progress"),
    }
    types = {f.name: f.type for f in dataclasses.fields(BenchConfig)}
    for title, names in groups.items():
        g = p.add_argument_group(title)
        for name in names:
            flag = "--" + name.replace("_", "-")
            default = getattr(BenchConfig, name, None) if name in ("device", "dtype") else getattr(d, name)
            if isinstance(default, bool):
                g.add_argument(flag, action="store_true", help=_HELP[name])
            elif isinstance(default, tuple):
                shown = ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in default)
                g.add_argument(flag, default=shown, help=f"{_HELP[name]} (default: {shown})")
            else:  # ints stay strings here: config_from_args converts them with a one-line error
                shown = "" if default is None or "default" in _HELP[name] else f" (default: {default})"
                g.add_argument(flag, type=str if "int" in str(types[name]) else None, default=default,
                               help=_HELP[name] + shown)


def config_from_args(args) -> BenchConfig:
    kw = {}
    for f in dataclasses.fields(BenchConfig):
        v = getattr(args, f.name)
        if "int" in str(f.type) and isinstance(v, str):
            try:
                v = int(v)
            except ValueError:
                raise ValueError(f"--{f.name.replace('_', '-')} must be an integer, got {v!r}") from None
        kw[f.name] = v
    if kw["num_prompts"] == 0:
        kw["num_prompts"] = None
    return BenchConfig(**kw)


# ----------------------------------------------------------------------------------------------------
# Small pure helpers.

def _median(xs):
    return float(statistics.median(xs)) if xs else None


def spread(values) -> dict:
    """Median, min, max and stdev of one measurement's repeats."""
    vals = [float(v) for v in values]
    return {"n": len(vals), "values": vals, "median": _median(vals), "min": min(vals), "max": max(vals),
            "stdev": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def make_batches(n: int, batch_size: int) -> list[list[int]]:
    """Consecutive prompt indices in batches of batch_size (the last may be smaller)."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def pure_batches(batches, cats_of_prompt) -> dict:
    """category -> indices of the batches that hold only that category; categories split across a
    mixed batch get no entry (their time cannot be separated)."""
    by_cat: dict[str, list[int]] = {}
    mixed = set()
    for bi, b in enumerate(batches):
        cs = {cats_of_prompt[i] for i in b}
        if len(cs) == 1:
            by_cat.setdefault(next(iter(cs)), []).append(bi)
        else:
            mixed |= cs
    return {c: bis for c, bis in by_cat.items() if c not in mixed}


def merge_stats(stats_list) -> DecodeStats:
    return DecodeStats.merged(stats_list)


def write_json_atomic(path: Path, obj) -> None:
    """Write to a temp file in the same folder, then os.replace: readers see the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# Cost ratios c and v, measured on the models' own cached decode steps.

def _sync(device):
    """Wait for queued kernels before reading the clock; every GPU when the target is sharded."""
    if torch.device(device).type == "cuda":
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


@torch.no_grad()
def measure_costs(target, draft, prompt_ids, gammas, batch_size: int, iters: int = 15) -> dict:
    """Median seconds of one cached forward over S new tokens after a prompt-length prefill: target
    S=1 and S=gamma+1, draft S=1. The steps are interleaved round-robin (one of each per round) so a
    load change on a shared machine hits numerator and denominator alike. Returns seconds, c and v."""
    from transformers import DynamicCache

    def prefilled(model):
        dev = model.get_input_embeddings().weight.device
        ids = prompt_ids.to(dev).repeat(batch_size, 1)                          # [B, P]
        cache, kw = DynamicCache(), cache_kwarg(model)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1, **{kw: cache})
        return ids, cache, kw

    def step(model, state, S):
        ids, cache, kw = state
        P = ids.shape[1]
        new = ids[:, -S:] if S <= P else ids[:, :1].repeat(1, S)                # [B, S]
        mask = torch.ones((batch_size, P + S), dtype=torch.long, device=ids.device)
        _sync(ids.device)
        t0 = time.perf_counter()
        model(input_ids=new, attention_mask=mask, use_cache=True, **{kw: cache})
        _sync(ids.device)
        dt = time.perf_counter() - t0
        cache.crop(-S)  # negative = drop the last S (positive values are refused in transformers 5.24)
        return dt

    ts, ds = prefilled(target), prefilled(draft)
    jobs = [("t1", target, ts, 1), ("d1", draft, ds, 1)] + [(int(g), target, ts, int(g) + 1) for g in gammas]
    times: dict = {name: [] for name, *_ in jobs}
    for i in range(iters + 2):                                                  # 2 untimed warmup rounds
        for name, model, state, S in jobs:
            dt = step(model, state, S)
            if i >= 2:
                times[name].append(dt)
    t1, d1 = _median(times["t1"]), _median(times["d1"])
    tv = {int(g): _median(times[int(g)]) for g in gammas}
    return {"batch_size": batch_size, "target_step_s": t1, "draft_step_s": d1, "target_verify_s": tv,
            "c": d1 / t1, "v": {g: t / t1 for g, t in tv.items()}}


# ----------------------------------------------------------------------------------------------------
# One method on one batch.

class _Counter:
    def __init__(self):
        self.n = 0

    def __call__(self, *a, **k):
        self.n += 1


def hf_assisted_generate(target, draft, input_ids, attention_mask, gamma, temperature, max_new_tokens,
                         eos_token_id, pad_token_id, seed):
    """transformers' assisted generation at batch size 1. gamma None = the assistant's own defaults;
    else a constant schedule of exactly gamma drafts with the confidence early stop disabled.
    Returns (new tokens, target forward calls)."""
    from transformers.utils import logging as hf_logging

    saved = draft.generation_config
    draft.generation_config = copy.deepcopy(saved)  # HF keeps schedule state there: isolate each run
    counter = _Counter()
    handle = target.register_forward_hook(counter)
    try:
        if gamma is not None:
            gc = draft.generation_config
            gc.num_assistant_tokens = int(gamma)
            gc.num_assistant_tokens_schedule = "constant"
            gc.assistant_confidence_threshold = 0.0  # 0 disables ConfidenceCriteria (and its ROC tuning)
        kw = dict(max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=eos_token_id,
                  pad_token_id=pad_token_id, assistant_model=draft)
        if temperature > 0:
            kw.update(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
        else:
            kw.update(do_sample=False)
        torch.manual_seed(seed)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the assistant's inner generate warns about max_length every round
        try:
            out = target.generate(input_ids=input_ids, attention_mask=attention_mask, **kw)
        finally:
            hf_logging.set_verbosity(verbosity)
    finally:
        handle.remove()
        draft.generation_config = saved
    return out[0, input_ids.shape[1]:].tolist(), counter.n


def hf_assistant_defaults(draft) -> dict:
    """The assistant settings transformers uses when none are set (recorded with hf_assisted_default)."""
    gc = copy.deepcopy(draft.generation_config)
    getter = getattr(gc, "_get_default_generation_params", None)
    if getter is not None:  # transformers >= 5 fills unset fields from global defaults at generate time
        try:
            gc.update(**getter(), defaults_only=True)
        except Exception:  # noqa: BLE001 - informational only
            pass
    return {k: getattr(gc, k, None) for k in ("num_assistant_tokens", "num_assistant_tokens_schedule",
                                               "assistant_confidence_threshold")}


# ----------------------------------------------------------------------------------------------------
# The runner.

def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class _Run:
    def __init__(self, cfg: BenchConfig, argv=None):
        self.cfg = cfg
        self.argv = argv if argv is not None else sys.argv
        self.out_dir = Path(cfg.out)
        self.results_path = self.out_dir / "results.json"
        self.rows: list[dict] = []
        self.ar_outputs: dict = {}   # (temperature, batch_size) -> list of per-prompt outputs
        self.ar_tps: dict = {}       # (temperature, batch_size, category) -> tokens/s

    # -- setup
    def load(self):
        from .models import load_pair
        from .prompts import load_prompts

        cfg = self.cfg
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        if cfg.target is None or cfg.draft is None:
            from .models import bundled_pair
            bt, bd = bundled_pair()
            self.target_name = str(cfg.target or bt)
            self.draft_name = str(cfg.draft or bd)
        else:
            self.target_name, self.draft_name = str(cfg.target), str(cfg.draft)
        if cfg.prompts is not None:
            load_prompts(cfg.prompts, None, cfg.num_prompts)  # fail on a bad file before loading any model
        if cfg.no_progress:
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
        self.target, self.draft, self.tok, self.vocab = load_pair(
            self.target_name, self.draft_name, cfg.dtype, cfg.device, cfg.device_map)
        # Where input ids go: the target's embedding device (cuda:0 when --device-map shards it).
        self.device = self.target.get_input_embeddings().weight.device
        if cfg.device_map is not None and self.draft.get_input_embeddings().weight.device != self.device:
            # load_pair puts the draft where the target's logits come out; SpeculativeDecoder wants it
            # beside the target's input embeddings.
            self.draft.to(self.device)
        self.prompts, self.prompts_source = load_prompts(cfg.prompts, self.tok, cfg.num_prompts)
        if not self.prompts:
            raise ValueError("no prompts to run; check --prompts / --num-prompts")
        self.ids = self._encode([p["prompt"] for p in self.prompts])
        self.cats = [p["category"] for p in self.prompts]
        self.categories = list(dict.fromkeys(self.cats))
        self.eos = self.tok.eos_token_id
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos

    def _encode(self, texts):
        """Token ids per prompt, left-truncated so that prompt + max_new_tokens fits both contexts."""
        from .decoding import _max_positions

        limits = [m for m in (_max_positions(self.target), _max_positions(self.draft)) if m]
        keep = (min(limits) - self.cfg.max_new_tokens) if limits else None
        if keep is not None and keep < 1:
            raise ValueError(f"--max-new-tokens {self.cfg.max_new_tokens} leaves no room for a prompt in the "
                             f"models' context of {min(limits)} positions; lower it")
        out = []
        for t in texts:
            ids = self.tok(t).input_ids
            if not ids:
                raise ValueError(f"a prompt tokenizes to nothing: {t[:40]!r}")
            out.append(ids[-keep:] if keep is not None else ids)
        return out

    def _batch(self, idx):
        enc = self.tok.pad({"input_ids": [self.ids[i] for i in idx]}, padding=True, return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def meta(self) -> dict:
        import transformers

        from . import __version__

        def n_params(m):
            return sum(p.numel() for p in m.parameters())

        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                    capture_output=True, text=True, timeout=10).stdout.strip() or None
        except Exception:
            commit = None
        dev = str(self.device)
        dev_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else _cpu_name()
        return {
            "target": self.target_name, "draft": self.draft_name,
            "target_params": n_params(self.target), "draft_params": n_params(self.draft), "vocab_size": self.vocab,
            "device": dev, "device_name": dev_name, "device_map": self.cfg.device_map,
            "hf_device_map": {k: str(v) for k, v in (getattr(self.target, "hf_device_map", None) or {}).items()} or None, "dtype": self.cfg.dtype,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "python": platform.python_version(), "specdec": __version__},
            "commit": commit, "command": " ".join(["specdec"] + list(self.argv[1:])), "prompts_source": self.prompts_source,
            "num_prompts": len(self.prompts), "categories": self.categories,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self.cfg).items()},
            "hf_assistant_defaults": hf_assistant_defaults(self.draft) if "hf" in self.cfg.baselines else None,
            "costs": {},
        }

    def save(self):
        write_json_atomic(self.results_path, {"meta": self.meta_dict, "runs": self.rows})

    # -- configurations
    def plan(self) -> list[tuple]:
        cfg, plan = self.cfg, []
        for temp in cfg.temperature:
            for bs in cfg.batch_size:
                if "ar" in cfg.baselines:
                    plan.append(("ar", None, temp, bs))
                plan += [("sd", g, temp, bs) for g in cfg.gamma]
                if "hf" in cfg.baselines and bs == 1:
                    plan += [("hf_assisted", g, temp, bs) for g in cfg.gamma]
                    plan.append(("hf_assisted_default", None, temp, bs))
        return plan

    def _run_batch(self, method, gamma, temp, idx, seed):
        """Returns (outputs per prompt in idx, DecodeStats or None, target_calls)."""
        ids, mask = self._batch(idx)
        kw = dict(max_new_tokens=self.cfg.max_new_tokens, temperature=temp, seed=seed, eos_token_id=self.eos)
        if method == "ar":
            out = autoregressive_generate(self.target, ids, mask, vocab_size=self.vocab, **kw)
            return out.new_tokens, out.stats, out.stats.target_calls
        if method == "sd":
            out = self.decoders[gamma].generate(ids, mask, **kw)
            return out.new_tokens, out.stats, out.stats.target_calls
        toks, calls = hf_assisted_generate(self.target, self.draft, ids, mask, gamma, temp, self.cfg.max_new_tokens,
                                           self.eos, self.pad, seed)
        return [toks], None, calls

    def _timed_pass(self, method, gamma, temp, batches, r) -> dict:
        """One timed pass of one configuration over every batch: wall seconds, stats, calls, outputs."""
        dev = self.device
        rec = {"walls": [], "stats": [], "calls": [], "outputs": [None] * len(self.prompts)}
        for bi, idx in enumerate(batches):
            seed = self.cfg.seed + 1000 * r + bi  # the same seeds for every method
            _sync(dev)
            t0 = time.perf_counter()
            outs, st, nc = self._run_batch(method, gamma, temp, idx, seed)
            _sync(dev)
            rec["walls"].append(time.perf_counter() - t0)
            rec["stats"].append(st)
            rec["calls"].append(nc)
            for i, o in zip(idx, outs):
                rec["outputs"][i] = list(o)
        return rec

    def run_group(self, temp, bs, configs, bar=None) -> list[dict]:
        """Every configuration at one (temperature, batch size), repeats interleaved: round r runs each
        configuration once, in alternating order, so load drift on a shared machine hits the methods
        alike instead of landing on whichever ran last. An HF failure becomes an error row."""
        cfg = self.cfg
        batches = make_batches(len(self.prompts), bs)
        passes = {c: [] for c in configs}
        errors: dict = {}

        def guarded(c, fn):
            if c in errors:
                return None
            if not c[0].startswith("hf"):
                return fn()
            try:  # one failing HF baseline must not end the run
                return fn()
            except Exception as e:  # noqa: BLE001 - recorded in the row
                errors[c] = e
                return None

        for c in configs:
            for _ in range(cfg.warmup):
                guarded(c, lambda: self._run_batch(c[0], c[1], temp, batches[0], cfg.seed))
        for r in range(cfg.repeats):
            for c in (configs if r % 2 == 0 else configs[::-1]):
                if bar is not None:
                    bar.set_postfix_str(f"{c[0]} g={c[1]} T={temp:g} bs={bs} rep {r + 1}/{cfg.repeats}")
                rec = guarded(c, lambda: self._timed_pass(c[0], c[1], temp, batches, r))
                if rec is not None:
                    passes[c].append(rec)
                if bar is not None:
                    bar.update(1)
        rows = []
        for c in configs:  # "ar" first: the others' speedups and equality checks refer to it
            if c in errors:
                rows.append(self.error_row(c[0], c[1], temp, bs, errors[c]))
            else:
                rows += self.rows_for(c[0], c[1], temp, bs, batches, passes[c])
        return rows

    def rows_for(self, method, gamma, temp, bs, batches, passes) -> list[dict]:
        """One row per category (and "all") from the timed passes of one configuration."""
        R = len(passes)
        walls = [p["walls"] for p in passes]        # [R][batch]
        stats = [p["stats"] for p in passes]
        calls = [p["calls"] for p in passes]
        outputs = [p["outputs"] for p in passes]    # [R][prompt]
        if method == "ar":
            self.ar_outputs[(temp, bs)] = outputs[0]

        groups = {"all": list(range(len(batches)))}
        groups.update(pure_batches(batches, self.cats))
        costs = self.costs.get(bs)
        rows = []
        for cat in ["all"] + [c for c in self.categories if c in groups]:
            bis = groups[cat]
            pidx = [i for bi in bis for i in batches[bi]]
            toks_r = [sum(len(outputs[r][i]) for i in pidx) for r in range(R)]
            wall_r = [sum(walls[r][bi] for bi in bis) for r in range(R)]
            tps_r = [t / w if w > 0 else 0.0 for t, w in zip(toks_r, wall_r)]
            tps = _median(tps_r)
            row = {"method": method, "gamma": gamma, "temperature": temp, "batch_size": bs, "category": cat,
                   "num_prompts": len(pidx), "new_tokens": toks_r[0], "wall_s": _median(wall_r),
                   "tokens_per_s": tps, "speedup": None,
                   "target_calls": sum(calls[0][bi] for bi in bis),
                   "acceptance_rate": None, "alpha": None, "draft_steps": None, "mean_accepted_length": None,
                   "per_position_acceptance": None, "draft_cost_ratio": None, "verify_cost_ratio": None, "predicted_speedup": None,
                   "predicted_speedup_tau": None, "outputs_match_ar": None,
                   "repeats": {"tokens_per_s": spread(tps_r), "wall_s": spread(wall_r), "new_tokens": toks_r}}
            if method == "ar":
                self.ar_tps[(temp, bs, cat)] = tps
                row["mean_accepted_length"] = 1.0
            else:
                base = self.ar_tps.get((temp, bs, cat))
                row["speedup"] = tps / base if base else None
                if temp == 0 and (temp, bs) in self.ar_outputs:
                    ref = self.ar_outputs[(temp, bs)]
                    row["outputs_match_ar"] = all(outputs[r][i] == ref[i] for r in range(R) for i in pidx)
            if method == "sd":
                st = merge_stats([stats[r][bi] for r in range(R) for bi in bis])
                row.update(acceptance_rate=st.acceptance_rate, mean_accepted_length=st.mean_accepted_length,
                           per_position_acceptance=st.per_position_acceptance, draft_steps=st.draft_steps,
                           alpha=st.alpha)
            elif method.startswith("hf"):
                # HF exposes no acceptance counts; tokens per target forward is its mean acceptance length.
                row["mean_accepted_length"] = toks_r[0] / row["target_calls"] if row["target_calls"] else None
            if costs is not None and gamma is not None:
                c, v = costs["c"], costs["v"][gamma]
                row.update(draft_cost_ratio=c, verify_cost_ratio=v)
                if method == "sd":
                    row["predicted_speedup"] = predicted_speedup(row["alpha"], gamma, c, v)
                    row["predicted_speedup_tau"] = predicted_speedup(row["alpha"], gamma, c, v,
                                                                     tau=row["mean_accepted_length"])
            rows.append(row)
        return rows

    def error_row(self, method, gamma, temp, bs, err) -> dict:
        return {"method": method, "gamma": gamma, "temperature": temp, "batch_size": bs, "category": "all",
                "num_prompts": len(self.prompts), "new_tokens": None, "wall_s": None, "tokens_per_s": None,
                "speedup": None, "target_calls": None, "acceptance_rate": None, "alpha": None, "draft_steps": None,
                "mean_accepted_length": None,
                "per_position_acceptance": None, "draft_cost_ratio": None, "verify_cost_ratio": None,
                "predicted_speedup": None, "predicted_speedup_tau": None, "outputs_match_ar": None,
                "repeats": None, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}

    def execute(self):
        from tqdm.auto import tqdm

        self.load()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.meta_dict = self.meta()
        self.decoders = {g: SpeculativeDecoder(self.target, self.draft, gamma=g, vocab_size=self.vocab)
                         for g in self.cfg.gamma}
        # c and v per batch size, on the first prompt (already truncated to fit the context)
        prompt = torch.tensor([self.ids[0]])
        self.costs = {bs: measure_costs(self.target, self.draft, prompt, self.cfg.gamma, bs)
                      for bs in self.cfg.batch_size}
        self.meta_dict["costs"] = {str(bs): c for bs, c in self.costs.items()}
        self.save()
        plan = self.plan()
        groups: dict = {}
        for method, gamma, temp, bs in plan:
            groups.setdefault((temp, bs), []).append((method, gamma))
        bar = tqdm(total=len(plan) * self.cfg.repeats, desc="bench", unit="pass", disable=self.cfg.no_progress,
                   file=sys.stderr)
        for (temp, bs), configs in groups.items():
            self.rows.extend(self.run_group(temp, bs, configs, bar))
            self.save()
        bar.close()
        return self.rows


# ----------------------------------------------------------------------------------------------------
# Report.

def _fmt(x, spec):
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    return format(x, spec)


def format_table(rows, category="all") -> str:
    cols = [("method", 20, "s"), ("gamma", 5, "d"), ("T", 4, "g"), ("bs", 3, "d"), ("tok/s", 8, ".1f"),
            ("±sd", 6, ".1f"), ("speedup", 7, ".2f"), ("pred", 5, ".2f"), ("accept", 6, ".3f"), ("alpha", 5, ".3f"), ("MAL", 5, ".2f"),
            ("c", 5, ".3f"), ("v", 5, ".2f"), ("match", 5, "s")]
    head = " ".join(f"{n:>{w}}" for n, w, _ in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("category") != category:
            continue
        sd = r["repeats"]["tokens_per_s"]["stdev"] if r.get("repeats") else None
        vals = [r["method"], r["gamma"], r["temperature"], r["batch_size"], r["tokens_per_s"], sd, r["speedup"],
                r["predicted_speedup"], r["acceptance_rate"], r.get("alpha"), r["mean_accepted_length"], r["draft_cost_ratio"],
                r["verify_cost_ratio"], r["outputs_match_ar"]]
        cells = []
        for (n, w, spec), v in zip(cols, vals):
            cells.append(f"{(_fmt(v, spec) if n != 'match' else _fmt(v, '')):>{w}}")
        line = " ".join(cells)
        if r.get("error"):
            line += f"  error: {r['error'][:60]}"
        lines.append(line)
    return "\n".join(lines)


def run(args) -> int:
    cfg = config_from_args(args)
    runner = _Run(cfg)
    rows = runner.execute()
    print(f"specdec bench: {runner.target_name} <- {runner.draft_name} on {cfg.device} ({cfg.dtype}), "
          f"{len(runner.prompts)} prompts x {cfg.max_new_tokens} new tokens, median of {cfg.repeats}")
    print(format_table(rows))
    if not cfg.no_plots:
        from .plots import plot_files
        written = plot_files([runner.results_path], runner.out_dir)
        print(f"plots: {', '.join(str(p) for p in written) or 'none'}")
    best = max((r for r in rows if r["method"] == "sd" and r["category"] == "all" and r.get("speedup")),
               key=lambda r: r["speedup"], default=None)
    print(json.dumps({"results": str(runner.results_path), "rows": len(rows),
                      "best_sd": None if best is None else {k: best[k] for k in ("gamma", "temperature", "batch_size", "speedup")}}))
    return 0
