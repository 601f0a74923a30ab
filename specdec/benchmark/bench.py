"""`specdec bench`: speculative decoding against plain decoding and Hugging Face assisted generation.

Stages, each a function with a typed record between it and the next:
  validate   BenchConfig (flags) -> the device, the prompt file and the output folder are checked and
             the folder claimed, before any model loads
  load       -> BenchInputs: the models, tokenizer, prompts (token ids), one decoder per gamma
  sweep      -> Measured per configuration: the raw timed passes (timing only, no aggregation)
  summarise  -> BenchRow per configuration and category (results.summarise, a pure function)
  write      -> DIR/results.json (atomic, after every group), a table, plots

Timing. Configurations (method, gamma, temperature, batch size) are grouped by (temperature, batch
size). In a group each configuration gets `warmup` untimed runs of the first batch, then `repeats`
timed passes over every prompt, interleaved batch by batch: repeat r runs the first batch under every
configuration of the group (in alternating order), then the next batch, so load drift on a shared
machine does not bias one method's ratio. Batches are consecutive prompts of the prompt list (which is
grouped by category), left-padded by the tokenizer. c and v (see results.py) are timed once per batch
size on a prompt-length cache before the sweep; with gamma auto, so are whole decode rounds at each
count it may choose (decoding.SpeculativeDecoder.measure_round_costs), which auto then chooses by.

The sweep's defaults are one of SWEEPS (`--sweep`); --gamma, --temperature, --batch-size and
--baselines override single axes. results.json is rewritten atomically after every group, so a crash
keeps the groups already measured, and `--resume` measures only the groups that are missing.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import torch

from . import baselines
from ..costs import measure_costs, sync
from ..common.config import (add_arguments as _add_arguments, config_from_args, flag_name, option, parse_value,
                             to_argv, to_dict)
from ..engine.decoding import AUTO, AUTO_MAX_GAMMA, SpeculativeDecoder, _max_positions, autoregressive_generate
from ..models import bundled_pair, load_pair, resolve_dtype
from ..engine.quant import QUANTIZE
from ..engine.runner import IMPLS, resolve_impl
from .plots import FIGURES, plot_files
from ..data.prompts import load_prompts
from .results import (BenchRow, Measured, Setting, TimedPass, auto_report, auto_shift, error_text, make_batches,
                      read_results, summarise, with_speedups)
from ..common.env import environment
from ..common.files import write_json_atomic
from ..common.fingerprint import fingerprint_inputs
from ..common.outdir import RunFolder, claim
from ..common.table import format_table as _table
from ..engine.devices import input_device, resolve_device

BASELINES = ("ar", "hf")

# The sweeps, in one place. "default" is a first run sized for a small CPU (no gamma 8, a smaller second
# batch size); "full" is the whole grid. HF assisted generation runs at batch size 1 only.
SWEEPS = {
    "default": {"gamma": (2, 4, AUTO), "temperature": (0.0, 1.0), "batch_size": (1,), "baselines": ("ar", "hf"),
                "repeats": 2},
    "full": {"gamma": (1, 2, 4, 8, AUTO), "temperature": (0.0, 1.0), "batch_size": (1, 8), "baselines": ("ar", "hf"),
             "repeats": 3},
}

# What a run writes into --out (common.outdir: --overwrite deletes these and nothing else).
OUTPUTS = ("results.json",) + tuple(f"{name}.png" for name in FIGURES)

# Settings that may change between a run and its --resume (they do not change what is measured).
RESUMABLE_CHANGES = ("out", "threads", "no_plots", "no_progress")


@dataclass
class BenchConfig:
    # models
    target: str | None = option(None, "target model path or hub id (default: the bundled pair)", group="models")
    draft: str | None = option(None, "draft model path or hub id (default: the bundled pair)", group="models")
    device: str = option("auto", "cpu | cuda | cuda:N | auto (cuda when one is visible)", group="models")
    dtype: str | None = option(None, "float32 | bfloat16 | float16 (default: bfloat16 on CUDA, float32 on CPU)",
                               group="models")
    device_map: str | None = option(None, "e.g. auto: spread the target over several GPUs (transformers/accelerate)",
                                    group="models")
    threads: int | None = option(None, "torch CPU threads (default: torch's own; 1 is fastest on a busy shared CPU)",
                                 group="models")
    quantize: str = option("auto", "int8: row-independent int8 projections for both models (CPU); none; auto: "
                           "the fastest lossless path measured for the device (CPU: int8 target, float draft, "
                           "whose step is dispatch-bound; CUDA: none). Plain decoding runs the same models",
                           group="engine", choices=("auto",) + QUANTIZE)
    impl: str = option("auto", "forward: lean (specdec's, Llama-family), hf (transformers', any model), auto",
                       group="engine", choices=IMPLS)
    cuda_graphs: str = option("auto", "replay the draft step and the verify as CUDA graphs: on, off, auto (on "
                              "with CUDA and the lean forward)", group="engine", choices=("auto", "on", "off"))
    # sweep
    sweep: str = option("default", "preset of gamma / temperature / batch size / baselines / repeats: default "
                        "(gamma 2,4,auto; T 0,1; batch 1; 2 repeats: a first run of a few minutes on a small "
                        "CPU) or full (gamma 1,2,4,8,auto; T 0,1; batch 1,8; 3 repeats)",
                        group="sweep", choices=tuple(SWEEPS))
    gamma: tuple[str, ...] | None = option(None, "draft tokens per step, comma-separated; auto = chosen each round "
                                           "from the measured costs and acceptance, e.g. 1,2,4,auto (default: the "
                                           "--sweep's)", group="sweep")
    temperature: tuple[float, ...] | None = option(None, "sampling temperatures, comma-separated; 0 = greedy "
                                                   "(default: the --sweep's)", group="sweep")
    batch_size: tuple[int, ...] | None = option(None, "batch sizes, comma-separated; HF assisted runs only at 1 "
                                                "(default: the --sweep's)", group="sweep")
    baselines: tuple[str, ...] | None = option(None, "comma-separated subset of ar,hf; '' for none (default: "
                                               "the --sweep's)", group="sweep")
    # prompts
    prompts: str | None = option(None, 'JSONL prompts: {"prompt", "category"} lines or Spec-Bench question.jsonl '
                                 "(default: the built-in held-out sets)", group="prompts")
    num_prompts: int | None = option(2, "prompts per category; 0 = all", group="prompts")
    max_new_tokens: int = option(64, "new tokens per prompt", group="prompts")
    # timing
    warmup: int = option(1, "untimed runs of the first batch per configuration", group="timing")
    repeats: int | None = option(None, "timed passes over all prompts per configuration (median and spread "
                                 "reported; default: the --sweep's, 2 or 3)", group="timing")
    seed: int = option(0, "base seed of the samplers", group="timing")
    # output
    out: str = option("bench_out", "output folder: results.json and the plots (a new or empty folder, or a "
                      "specdec bench run with --overwrite / --resume)", group="output")
    overwrite: bool = option(False, "delete the specdec run already in --out first", group="output")
    resume: bool = option(False, "continue the run in --out: measure only the groups it lacks (same settings)",
                          group="output")
    no_plots: bool = option(False, "skip the plots", group="output")
    no_progress: bool = option(False, "no progress bar or status line", group="output")

    def __post_init__(self):
        preset = SWEEPS.get(self.sweep)
        if preset is None:
            raise ValueError(f"--sweep must be one of {', '.join(SWEEPS)}, got {self.sweep!r}")
        hints = typing.get_type_hints(type(self))
        for name, value in preset.items():  # an axis not given takes the preset's values; "1,2" works too
            given = getattr(self, name)
            setattr(self, name, value if given is None else parse_value(given, hints[name], flag_name(name)))
        self.gamma = tuple(_gamma(g) for g in self.gamma)
        self.temperature = tuple(float(t) for t in self.temperature)
        self.batch_size = tuple(int(b) for b in self.batch_size)
        self.baselines = tuple(str(b).strip().lower() for b in self.baselines)
        self._check()

    def _check(self):
        for flag, values in (("--gamma", self.gamma), ("--temperature", self.temperature),
                             ("--batch-size", self.batch_size)):
            if not values:
                raise ValueError(f"{flag} needs at least one value (comma-separated)")
        if any(g != AUTO and g < 1 for g in self.gamma):
            raise ValueError(f"--gamma values must be >= 1 (draft tokens per step) or auto, got "
                             f"{min(g for g in self.gamma if g != AUTO)}")
        if len(set(self.gamma)) < len(self.gamma):
            raise ValueError(f"--gamma lists a value twice: {','.join(map(str, self.gamma))}")
        bad = [t for t in self.temperature if not (0 <= t < float("inf"))]  # also NaN
        if bad:
            raise ValueError(f"--temperature values must be >= 0 and finite (0 = greedy), got {bad[0]}")
        if any(b < 1 for b in self.batch_size):
            raise ValueError(f"--batch-size values must be >= 1, got {min(self.batch_size)}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline {unknown[0]!r}; --baselines takes a comma-separated subset of "
                             f"{','.join(BASELINES)}")
        for name, low in (("max_new_tokens", 1), ("warmup", 0), ("repeats", 1), ("num_prompts", 0), ("threads", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
        if self.overwrite and self.resume:
            raise ValueError("--overwrite and --resume exclude each other: replace the run or continue it")
        if self.prompts is not None and not Path(self.prompts).exists():
            raise FileNotFoundError(f"prompts file {self.prompts!r} does not exist; pass a JSONL file with one "
                                    '{"prompt": ..., "category": ...} per line')

    @property
    def prompts_per_category(self) -> int | None:
        return self.num_prompts or None  # 0 and None mean all

    @property
    def fixed_gammas(self) -> tuple:
        return tuple(g for g in self.gamma if g != AUTO)

    @property
    def cost_gammas(self) -> list:
        """The gammas whose verify cost is measured: the fixed ones, and every one auto may choose."""
        return sorted(set(self.fixed_gammas) | (set(range(1, AUTO_MAX_GAMMA + 1)) if AUTO in self.gamma else set()))


def _gamma(value):
    """One --gamma value: an integer, or auto."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        try:
            return int(text)
        except ValueError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"--gamma must be an integer or auto, got {value!r}")


def plan(cfg: BenchConfig) -> dict:
    """(temperature, batch size) -> the configurations measured together, "ar" first."""
    groups: dict = {}
    for temp in cfg.temperature:
        for bs in cfg.batch_size:
            group = [Setting("ar", None, temp, bs)] if "ar" in cfg.baselines else []
            group += [Setting("sd", g, temp, bs) for g in cfg.gamma]
            if "hf" in cfg.baselines:   # transformers' plain generate, against specdec's plain loop
                group.append(Setting("hf_generate", None, temp, bs))
            if "hf" in cfg.baselines and bs == 1:
                group += [Setting("hf_assisted", g, temp, bs) for g in cfg.fixed_gammas]
                group += [Setting(m, None, temp, bs) for m in ("hf_assisted_default", "hf_assisted_heuristic")]
            groups[(temp, bs)] = group
    return groups


# ----------------------------------------------------------------------------------------------------
# Progress: a bar from the first second (loading and the cost measurement show as its status).

class Progress:
    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="bench", unit="pass", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True)

    def status(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=True)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self, keep: bool = True) -> None:
        self.bar.leave = keep
        self.bar.close()


# ----------------------------------------------------------------------------------------------------
# Stage 1: validation and the output folder (before any model loads).

@dataclass
class BenchResult:
    out: Path
    results_path: Path
    meta: dict
    rows: list
    plots: list                  # the figures written (none with --no-plots)


def _validate(cfg: BenchConfig):
    """Everything that can be checked without a model: device, dtype, the prompt file. Returns the device."""
    device = resolve_device(cfg.device)
    resolve_dtype(_dtype(cfg, device))
    _quantize(cfg, device)
    if cfg.cuda_graphs == "on" and device.type != "cuda":
        raise ValueError("--cuda-graphs on needs a CUDA device; use --cuda-graphs off or auto")
    if cfg.prompts is not None:
        load_prompts(cfg.prompts, None, cfg.prompts_per_category)  # a bad line fails here, not after loading
    return device


def _dtype(cfg: BenchConfig, device) -> str:
    return cfg.dtype or ("bfloat16" if device.type == "cuda" else "float32")


def _quantize(cfg: BenchConfig, device) -> tuple[str, str]:
    """(target, draft) quantization; auto = the fastest lossless path measured for the device."""
    if cfg.quantize != "auto":
        if cfg.quantize == "int8" and device.type != "cpu":
            raise ValueError("--quantize int8 is a CPU path; on CUDA use --dtype bfloat16 (--quantize none)")
        return cfg.quantize, cfg.quantize
    return ("int8", "none") if device.type == "cpu" else ("none", "none")


def _graphs(cfg: BenchConfig, device, impls) -> bool:
    if cfg.cuda_graphs == "off":
        return False
    usable = device.type == "cuda" and all(i == "lean" for i in impls)
    if cfg.cuda_graphs == "on" and not usable:
        raise ValueError("--cuda-graphs on needs a CUDA device and models the lean forward supports; "
                         "use --cuda-graphs off")
    return usable


def _claim_out(cfg: BenchConfig) -> RunFolder:
    target, draft = _model_names(cfg)
    inputs = fingerprint_inputs({"--target": target, "--draft": draft}, {"--prompts": cfg.prompts})
    run = claim(cfg.out, "bench", to_dict(cfg), overwrite=cfg.overwrite, resume=cfg.resume, can_resume=True,
                free=RESUMABLE_CHANGES, inputs=inputs, outputs=OUTPUTS)
    for name in FIGURES:  # figures of an unfinished run must not sit beside the results that replace it
        (run.path / f"{name}.png").unlink(missing_ok=True)
    return run


# ----------------------------------------------------------------------------------------------------
# Stage 2: the models, prompts and decoders.

@dataclass
class BenchInputs:
    target: object
    draft: object
    tokenizer: object
    vocab: int
    device: object               # where input ids go: the target's input embeddings
    target_name: str
    draft_name: str
    prompts: list                # [{"id", "category", "prompt"}]
    prompts_source: str
    ids: list                    # [prompt] token ids, left-truncated to fit the context
    decoders: dict               # gamma -> SpeculativeDecoder (auto: added once the costs are measured)
    engine: dict                 # quantize / impl / cuda_graphs as resolved for this device and pair

    @property
    def cats(self) -> list:
        return [p["category"] for p in self.prompts]

    @property
    def eos(self):
        return self.tokenizer.eos_token_id

    @property
    def pad(self):
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos


def _model_names(cfg: BenchConfig) -> tuple[str, str]:
    """(target, draft): the flags, or the bundled pair."""
    bt, bd = bundled_pair() if cfg.target is None or cfg.draft is None else (None, None)
    return str(cfg.target or bt), str(cfg.draft or bd)


def load_inputs(cfg: BenchConfig, device) -> BenchInputs:
    target_name, draft_name = _model_names(cfg)
    tq, dq = _quantize(cfg, device)
    target, draft, tok, vocab = load_pair(target_name, draft_name, _dtype(cfg, device), str(device), cfg.device_map,
                                          quantize=tq, draft_quantize=dq)
    dev = input_device(target)  # cuda:0 when --device-map shards the target
    if cfg.device_map is not None and input_device(draft) != dev:
        draft.to(dev)  # the decoder keeps its state beside the target's input embeddings
    prompts, source = load_prompts(cfg.prompts, tok, cfg.prompts_per_category)
    if not prompts:
        raise ValueError("no prompts to run; check --prompts / --num-prompts")
    ids = _encode(tok, [p["prompt"] for p in prompts], (target, draft), cfg.max_new_tokens)
    engine = {"quantize": {"target": tq, "draft": dq}, "impl": cfg.impl,
              "resolved_impl": {"target": resolve_impl(target, cfg.impl), "draft": resolve_impl(draft, cfg.impl)}}
    engine["cuda_graphs"] = _graphs(cfg, dev, engine["resolved_impl"].values())
    decoders = {g: SpeculativeDecoder(target, draft, gamma=g, vocab_size=vocab, impl=cfg.impl,
                                      cuda_graphs=engine["cuda_graphs"]) for g in cfg.fixed_gammas}
    return BenchInputs(target, draft, tok, vocab, dev, target_name, draft_name, prompts, source, ids, decoders,
                       engine)


def _encode(tok, texts, models, max_new_tokens) -> list:
    """Token ids per prompt, left-truncated so that prompt + max_new_tokens fits both contexts."""
    limits = [m for m in (_max_positions(model) for model in models) if m]
    keep = (min(limits) - max_new_tokens) if limits else None
    if keep is not None and keep < 1:
        raise ValueError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the models' context "
                         f"of {min(limits)} positions; lower it")
    out = []
    for t in texts:
        ids = tok(t).input_ids
        if not ids:
            raise ValueError(f"a prompt tokenizes to nothing: {t[:40]!r}")
        out.append(ids[-keep:] if keep is not None else ids)
    return out


def meta_of(cfg: BenchConfig, inputs: BenchInputs) -> dict:
    def n_params(m):
        return sum(p.numel() for p in m.parameters())

    hf_map = {k: str(v) for k, v in (getattr(inputs.target, "hf_device_map", None) or {}).items()} or None
    return {
        "target": inputs.target_name, "draft": inputs.draft_name, "target_params": n_params(inputs.target),
        "draft_params": n_params(inputs.draft), "vocab_size": inputs.vocab, **environment(inputs.device),
        "device_map": cfg.device_map, "hf_device_map": hf_map, "dtype": _dtype(cfg, inputs.device),
        "command": shlex.join(["specdec", "bench", *to_argv(cfg)]), "prompts_source": inputs.prompts_source,
        "num_prompts": len(inputs.prompts), "categories": list(dict.fromkeys(inputs.cats)), "config": to_dict(cfg),
        "hf_assistant_defaults": baselines.hf_assistant_defaults(inputs.draft) if "hf" in cfg.baselines else None,
        "engine": inputs.engine,
        "costs": {},
    }


# ----------------------------------------------------------------------------------------------------
# Stage 3: the sweep (timing only).

def run_batch(inputs: BenchInputs, cfg: BenchConfig, s: Setting, idx: list, seed: int):
    """One method on one batch: (outputs per prompt in idx, DecodeStats or None, target calls)."""
    enc = inputs.tokenizer.pad({"input_ids": [inputs.ids[i] for i in idx]}, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"].to(inputs.device), enc["attention_mask"].to(inputs.device)
    kw = dict(max_new_tokens=cfg.max_new_tokens, temperature=s.temperature, seed=seed, eos_token_id=inputs.eos)
    if s.method == "ar":  # the same model and forward path as the speculative decoders
        out = autoregressive_generate(inputs.target, ids, mask, vocab_size=inputs.vocab, impl=cfg.impl,
                                      cuda_graphs=inputs.engine["cuda_graphs"], **kw)
        return out.new_tokens, out.stats, out.stats.target_calls
    if s.method == "sd":
        out = inputs.decoders[s.gamma].generate(ids, mask, **kw)
        return out.new_tokens, out.stats, out.stats.target_calls
    if s.method == "hf_generate":
        toks, calls = baselines.hf_generate(inputs.target, ids, mask, s.temperature, cfg.max_new_tokens, inputs.eos,
                                            inputs.pad, seed)
        return toks, None, calls
    schedule = baselines.HF_SCHEDULES[s.method]
    toks, calls = baselines.hf_assisted_generate(inputs.target, inputs.draft, ids, mask, s.gamma, s.temperature,
                                                 cfg.max_new_tokens, inputs.eos, inputs.pad, seed, schedule)
    return [toks], None, calls


def timed_batch(inputs: BenchInputs, cfg: BenchConfig, s: Setting, idx: list, seed: int, rec: TimedPass) -> None:
    """One timed run of one configuration on one batch, appended to `rec`."""
    sync(inputs.device)
    t0 = time.perf_counter()
    outs, st, calls = run_batch(inputs, cfg, s, idx, seed)
    sync(inputs.device)
    rec.walls.append(time.perf_counter() - t0)
    rec.stats.append(st)
    rec.calls.append(calls)
    for i, o in zip(idx, outs):
        rec.outputs[i] = list(o)


def run_group(inputs: BenchInputs, cfg: BenchConfig, settings: list, progress: Progress) -> list[Measured]:
    """Every configuration at one (temperature, batch size), interleaved batch by batch: repeat r runs
    batch 1 under every configuration (in alternating order), then batch 2, and so on, so that a load
    change on a shared machine lands on all the methods being compared within seconds of each other
    instead of on whichever ran last. An HF failure is recorded, not raised."""
    batches = make_batches(len(inputs.prompts), settings[0].batch_size)
    measured = {s: Measured(s, batches) for s in settings}

    def guarded(s, fn):
        m = measured[s]
        if m.error is not None:
            return
        if not s.method.startswith("hf"):
            fn()
            return
        try:  # one failing HF baseline must not end the run
            fn()
        except Exception as e:  # noqa: BLE001 - recorded in the row
            m.error = error_text(e)

    for s in settings:
        progress.status(f"warmup {s.method} g={s.gamma} T={s.temperature:g} bs={s.batch_size}")
        for _ in range(cfg.warmup):
            guarded(s, lambda: run_batch(inputs, cfg, s, batches[0], cfg.seed))
    for r in range(cfg.repeats):
        recs = {s: TimedPass(walls=[], stats=[], calls=[], outputs=[None] * len(inputs.prompts)) for s in settings}
        for bi, idx in enumerate(batches):
            seed = cfg.seed + 1000 * r + bi  # the same seeds for every method
            progress.status(f"T={settings[0].temperature:g} bs={settings[0].batch_size} rep {r + 1}/{cfg.repeats} "
                            f"batch {bi + 1}/{len(batches)}")
            for s in (settings if (r + bi) % 2 == 0 else settings[::-1]):
                guarded(s, lambda: timed_batch(inputs, cfg, s, idx, seed, recs[s]))
        for s in settings:
            if measured[s].error is None:
                measured[s].passes.append(recs[s])
            progress.advance()
    return list(measured.values())


# ----------------------------------------------------------------------------------------------------
# Stage 4: write, and the whole run.

def write_results(path: Path, meta: dict, rows: list[BenchRow]) -> None:
    write_json_atomic(path, {"meta": meta, "runs": [r.to_dict() for r in rows]})


def run_bench(cfg: BenchConfig) -> BenchResult:
    """The benchmark as a Python call (what `specdec bench` and `specdec demo` run). Checks everything
    it can before loading a model; writes DIR/results.json after every group, then the plots."""
    device = _validate(cfg)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    with _claim_out(cfg) as run:   # held until the plots are written; released as found if loading fails
        meta, rows = _sweep(cfg, device, run)
        path = run.path / "results.json"
        plots = [] if cfg.no_plots else plot_files([path], run.path)
    return BenchResult(run.path, path, meta, rows, plots)


def _sweep(cfg: BenchConfig, device, run: RunFolder) -> tuple[dict, list]:
    groups = plan(cfg)
    path = run.path / "results.json"
    progress = Progress(sum(len(g) for g in groups.values()) * cfg.repeats, enabled=not cfg.no_progress)
    try:
        inputs = _load(cfg, device, progress)
        meta, rows = _start(cfg, inputs, path)
        costs = _costs(cfg, inputs, meta, progress)
        if AUTO in cfg.gamma:  # auto reads the costs measured in this run (recorded in meta), not the cache
            inputs.decoders[AUTO] = _auto_decoder(cfg, inputs, costs)
        run.commit()   # a failure before this point leaves --out as it was found
        write_results(path, meta, rows)
        done = {(r.temperature, r.batch_size) for r in rows}
        for (temp, bs), settings in groups.items():
            if (temp, bs) in done:
                progress.advance(len(settings) * cfg.repeats)
                continue
            rows = with_speedups(rows + summarise(run_group(inputs, cfg, settings, progress), inputs.cats, costs))
            write_results(path, meta, rows)
    except BaseException:
        progress.close(keep=False)  # the error message gets a line of its own
        raise
    progress.close()
    return meta, rows


def _load(cfg: BenchConfig, device, progress: Progress) -> BenchInputs:
    progress.status("loading the models")
    if cfg.no_progress:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    return load_inputs(cfg, device)


def _start(cfg: BenchConfig, inputs: BenchInputs, path: Path) -> tuple[dict, list]:
    """(meta, rows already measured): nothing for a new run; the saved rows and costs on --resume."""
    meta = meta_of(cfg, inputs)
    if not (cfg.resume and path.exists()):
        return meta, []
    saved, rows = read_results(path)
    costs = saved.get("costs", {})   # old and new rows' predictions share c and v
    if not isinstance(costs, dict) or not all(str(k).isdigit() and isinstance(c, dict) for k, c in costs.items()):
        raise ValueError(f"{path}: its meta 'costs' is damaged (batch size -> costs expected); start the run again "
                         "with --overwrite")
    meta["costs"] = costs
    resumed = saved.get("resumed")
    meta["resumed"] = (resumed if isinstance(resumed, list) else []) + [meta["date"]]
    meta["date"] = saved.get("date", meta["date"])
    return meta, rows


def _costs(cfg: BenchConfig, inputs: BenchInputs, meta: dict, progress: Progress) -> dict:
    """batch size -> c and v, measured on the first prompt (already truncated to fit the context), and,
    when gamma auto runs, the round times it chooses by (greedy and/or sampled, as the temperatures
    need) on the first bs prompts; for each batch size the saved run does not have; recorded in
    meta["costs"]."""
    costs = baselines.costs_from_json(meta["costs"])
    modes = sorted({"sampling" if t > 0 else "greedy" for t in cfg.temperature}) if AUTO in cfg.gamma else []
    for bs in cfg.batch_size:
        if bs not in costs:
            progress.status(f"measuring the step costs c, v at batch size {bs}")
            costs[bs] = measure_costs(inputs.target, inputs.draft, torch.tensor([inputs.ids[0]]), cfg.cost_gammas, bs,
                                      impl=cfg.impl, cuda_graphs=inputs.engine["cuda_graphs"])
            if modes:   # on the first bs prompts: rows that accept differently leave holes, as in the sweep
                probe = _auto_decoder(cfg, inputs, None)
                enc = inputs.tokenizer.pad({"input_ids": [inputs.ids[i % len(inputs.ids)] for i in range(bs)]},
                                           padding=True, return_tensors="pt")
                ids, mask = enc["input_ids"].to(inputs.device), enc["attention_mask"].to(inputs.device)
                costs[bs]["round_s"] = {}
                for mode in modes:
                    progress.status(f"timing decode rounds for gamma auto at batch size {bs} ({mode})")
                    costs[bs]["round_s"][mode] = probe.measure_round_costs(ids, mask, mode == "sampling")
    meta["costs"] = {str(bs): c for bs, c in costs.items()}
    return costs


def _auto_decoder(cfg: BenchConfig, inputs: BenchInputs, costs) -> SpeculativeDecoder:
    return SpeculativeDecoder(inputs.target, inputs.draft, gamma=AUTO, vocab_size=inputs.vocab, impl=cfg.impl,
                              cuda_graphs=inputs.engine["cuda_graphs"], costs=costs)


# ----------------------------------------------------------------------------------------------------
# The command.

TABLE = [("method", "method", 21, "s"), ("gamma", "gamma", 5, ""), ("mean_gamma", "mean", 4, ".2f"),
         ("temperature", "T", 4, "g"), ("batch_size", "bs", 3, "d"), ("tokens_per_s", "tok/s", 8, ".1f"),
         ("sd", "±sd", 6, ".1f"), ("speedup", "speedup", 7, ".2f"), ("decode_speedup", "decode", 6, ".2f"),
         ("predicted_speedup", "pred", 5, ".2f"),
         ("acceptance_rate", "accept", 6, ".3f"), ("alpha", "alpha", 5, ".3f"),
         ("mean_accepted_length", "MAL", 5, ".2f"), ("draft_cost_ratio", "c", 5, ".3f"),
         ("verify_cost_ratio", "v", 5, ".2f"), ("outputs_match_ar", "match", 5, "")]


def format_table(rows: list[BenchRow], category: str = "all") -> str:
    rows = [r for r in rows if r.category == category]
    lines = _table([{**r.to_dict(), "sd": r.repeats["tokens_per_s"]["stdev"] if r.repeats else None} for r in rows],
                   TABLE).split("\n")
    for i, r in enumerate(rows, start=2):  # after the header and its rule
        if r.error:
            lines[i] += f"  error: {r.error[:60]}"
    return "\n".join(lines)


AUTO_TABLE = [("temperature", "T", 4, "g"), ("batch_size", "bs", 3, "d"), ("category", "category", 10, "s"),
              ("auto_tokens_per_s", "auto tok/s", 10, ".1f"), ("auto_mean_gamma", "mean k", 6, ".2f"),
              ("best_fixed_gamma", "best g", 6, ""), ("auto_vs_best_fixed", "/best g", 7, ".3f"),
              ("best_hf", "best HF", 23, "s"), ("auto_vs_best_hf", "/best HF", 8, ".3f")]


def format_auto_table(rows: list[BenchRow]) -> str:
    """gamma auto against the best fixed gamma and the best HF schedule, cell by cell ('' if no auto row)."""
    report = auto_report(rows)
    return _table(report, AUTO_TABLE) if report else ""


SHIFT_TABLE = [("temperature", "T", 4, "g"), ("batch_size", "bs", 3, "d"), ("alpha_before", "alpha before", 12, ".3f"),
               ("alpha_after", "alpha after", 11, ".3f"), ("mean_gamma_before", "auto k before", 13, ".2f"),
               ("mean_gamma_after", "auto k after", 12, ".2f"), ("gamma_change", "change", 6, "+.2f"),
               ("speedup_before", "speedup before", 14, ".2f"), ("speedup_after", "speedup after", 13, ".2f")]


def format_auto_shift(before: list[BenchRow], after: list[BenchRow]) -> str:
    """gamma auto's mean draft count (and alpha, speedup) in two runs of the same cells, e.g. before and
    after `specdec demo` distils the draft: a table, then each run's count histogram ('' without auto)."""
    shift = auto_shift(before, after)
    if not shift:
        return ""
    lines = [_table(shift, SHIFT_TABLE)]
    for r in shift:
        hist = {when: ", ".join(f"{k}:{n}" for k, n in enumerate(r[f"gamma_counts_{when}"] or []) if n)
                for when in ("before", "after")}
        lines.append(f"T={r['temperature']:g} bs={r['batch_size']}: chosen k (row-rounds) before {{{hist['before']}}}"
                     f"  after {{{hist['after']}}}")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    _add_arguments(parser, BenchConfig)


def run(args) -> int:
    cfg = config_from_args(args, BenchConfig)
    result = run_bench(cfg)
    m, rows = result.meta, result.rows
    print(f"specdec bench: {m['target']} <- {m['draft']} on {m['device']} ({m['dtype']}), {m['num_prompts']} "
          f"prompts x {cfg.max_new_tokens} new tokens, median of {cfg.repeats}")
    print(format_table(rows))
    auto = format_auto_table(rows)
    if auto:
        print("\ngamma auto against the best fixed gamma and the best HF schedule, per cell:")
        print(auto)
    if not cfg.no_plots:
        print(f"plots: {', '.join(str(p) for p in result.plots) or 'none'}")
    best = max((r for r in rows if r.method == "sd" and r.category == "all" and r.speedup),
               key=lambda r: r.speedup, default=None)
    print(json.dumps({"results": str(result.results_path), "rows": len(rows),
                      "best_sd": None if best is None else {k: getattr(best, k) for k in
                                                            ("gamma", "temperature", "batch_size", "speedup")}}))
    return 0
