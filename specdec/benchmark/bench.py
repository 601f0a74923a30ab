"""`specdec bench`: speculative decoding against plain decoding, Hugging Face's plain and assisted generation,
and llama.cpp's plain decoding of a GGUF target (where llama-cpp-python is installed).

Stages, each a function with a typed record between it and the next:
  validate   BenchConfig (config.py; flags) -> the device, the prompt file and the output folder are checked and
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
grouped by category), left-padded by the tokenizer. c and v (specdec/costmodel/predict.py) are timed once per batch
size on a prompt-length cache before the sweep; with gamma auto, so are whole decode rounds at each
count it may choose (costmodel.measure_round_costs), which auto then chooses by.

The sweep's defaults are one of config.SWEEPS (`--sweep`); --gamma, --temperature, --batch-size and
--baselines override single axes. results.json is rewritten atomically after every group, so a crash
keeps the groups already measured, and `--resume` measures only the groups that are missing.
"""
from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import baselines, llamacpp
from ..costmodel import AUTO
from ..costmodel.measure import measure_round_costs, measure_step_costs, sync
from ..costmodel.policy import AutoConfig
from ..costmodel.table import read_table
from ..common.config import add_arguments as _add_arguments, config_from_args, to_argv, to_dict
from ..engine import ngram
from ..engine.decoding import SpeculativeDecoder, autoregressive_generate, capacity_for
from ..engine.params import check_cache_memory, max_positions
from ..engine.quant import quantization_of
from ..models import bundled_pair, context_of, load_pair, load_target
from ..models.gguf_cache import source_gguf, source_record
from ..engine.runner import ModelRunner, resolve_impl
from .config import RESUMABLE_CHANGES, BenchConfig
from .plots import FIGURES, plot_files
from ..data.prompts import load_prompts, uses_chat_template
from .results import (BenchRow, Measured, Setting, TimedPass, auto_report, auto_shift, error_text, make_batches,
                      read_results, summarise, with_speedups)
from ..common.env import environment
from ..common.files import write_json_atomic
from ..common.fingerprint import fingerprint_inputs
from ..common.outdir import RunFolder, claim
from ..common.progress import Progress
from ..common.table import format_table as _table
from ..common.values import is_greedy
from ..engine.devices import input_device, resolve_device

# What a run writes into --out (common.outdir: --overwrite deletes these and nothing else).
OUTPUTS = ("results.json",) + tuple(f"{name}.png" for name in FIGURES)


def plan(cfg: BenchConfig) -> dict:
    """(temperature, batch size) -> the configurations measured together, "ar" first."""
    with_llamacpp = llamacpp_absent(cfg) is None
    groups: dict = {}
    for temp in cfg.temperature:
        for bs in cfg.batch_size:
            group = [Setting("ar", None, temp, bs)] if cfg.runs("ar") else []
            group += [Setting("sd", g, temp, bs) for g in cfg.gamma]
            if cfg.runs("hf_generate"):   # transformers' plain generate, against specdec's plain loop
                group.append(Setting("hf_generate", None, temp, bs))
            if cfg.runs("hf_assisted") and bs == 1:
                group += [Setting("hf_assisted", g, temp, bs) for g in cfg.fixed_gammas]
                if not ngram.is_lookup(cfg.draft):   # HF's prompt lookup has no schedules
                    group += [Setting(m, None, temp, bs) for m in ("hf_assisted_default", "hf_assisted_heuristic")]
            if with_llamacpp and bs == 1:
                group.append(Setting(llamacpp.METHOD, None, temp, bs))
            groups[(temp, bs)] = group
    return groups


def llamacpp_absent(cfg: BenchConfig) -> str | None:
    """Why the run has no llama.cpp row (None: it has one, at batch size 1)."""
    if not cfg.runs("llamacpp"):
        return "not in --baselines"
    if 1 not in cfg.batch_size:
        return "it runs at batch size 1 only"
    return llamacpp.unavailable(source_gguf(cfg.target) if cfg.target is not None else None)


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
    cfg.quantization_on(device)
    if cfg.cuda_graphs == "on" and device.type != "cuda":
        raise ValueError("--cuda-graphs on needs a CUDA device; use --cuda-graphs off or auto")
    check_new_tokens(cfg.max_new_tokens, *(m for m in _model_paths(cfg) if m is not None))
    # a bad line fails here, not later
    prompts, _ = load_prompts(cfg.prompts, None, cfg.prompts_per_category, cfg.chat_template)
    if max(cfg.batch_size) > len(prompts):
        # refused, not clamped: a row labelled batch 16 must have run 16 rows
        raise ValueError(f"--batch-size {max(cfg.batch_size)} is more than the {len(prompts)} prompts, so no batch "
                         f"would hold that many rows; use --batch-size {len(prompts)} or less, or more prompts "
                         "(--num-prompts, --prompts)")
    return device


def _model_paths(cfg: BenchConfig) -> tuple[str, str | None]:
    """(target, draft): the bundled pair's where not given; draft None for a pair without one (no_draft)."""
    if cfg.no_draft:
        return str(cfg.target), None
    bt, bd = bundled_pair() if cfg.target is None or cfg.draft is None else (None, None)
    return str(cfg.target or bt), str(cfg.draft or bd)


def check_new_tokens(max_new_tokens: int, *models) -> None:
    """--max-new-tokens must leave room for a prompt in the models' context (read from their configs,
    before they load)."""
    positions = context_of(*models)
    if positions is not None and max_new_tokens >= positions:
        raise ValueError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the models' context of "
                         f"{positions} positions; lower it")


def _graphs(cfg: BenchConfig, device, impls) -> bool:
    if cfg.cuda_graphs == "off":
        return False
    usable = device.type == "cuda" and all(i == "lean" for i in impls)
    if cfg.cuda_graphs == "on" and not usable:
        raise ValueError("--cuda-graphs on needs a CUDA device and models the lean forward supports; "
                         "use --cuda-graphs off")
    return usable


def _claim_out(cfg: BenchConfig) -> RunFolder:
    target, draft = _model_paths(cfg)
    inputs = fingerprint_inputs({"--target": target, "--draft": None if ngram.is_lookup(draft) else draft},
                                {"--prompts": cfg.prompts, "--draft": ngram.store_path(draft)})
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
    chat_template: bool = False  # whether the prompts went through the tokenizer's chat template
    llamacpp: object = None      # llamacpp.LlamaCppRunner when the run has a llama.cpp row

    @property
    def cats(self) -> list:
        return [p["category"] for p in self.prompts]

    @property
    def eos(self):
        return self.tokenizer.eos_token_id

    @property
    def pad(self):
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos


def _load_models(cfg: BenchConfig, device, target_name: str, draft_name: str | None) -> tuple:
    """(target, draft, tokenizer, vocab); draft None for a run without one (cfg.no_draft)."""
    tq, dq = cfg.quantization_on(device)
    if draft_name is None:
        target, tok, vocab = load_target(target_name, cfg.dtype_on(device), str(device), cfg.device_map, quantize=tq)
        cfg.apply_kv_cache(target)
        return target, None, tok, vocab
    target, draft, tok, vocab = load_pair(target_name, draft_name, cfg.dtype_on(device), str(device), cfg.device_map,
                                          quantize=tq, draft_quantize=dq)
    if cfg.device_map is not None and not ngram.is_lookup(draft) and input_device(draft) != input_device(target):
        draft.to(input_device(target))  # the decoder keeps its state beside the target's input embeddings
    cfg.apply_kv_cache(target, draft)
    return target, draft, tok, vocab


def load_inputs(cfg: BenchConfig, device) -> BenchInputs:
    target_name, draft_name = _model_paths(cfg)
    target, draft, tok, vocab = _load_models(cfg, device, target_name, draft_name)
    dev = input_device(target)  # cuda:0 when --device-map shards the target
    models = (target,) if draft is None or ngram.is_lookup(draft) else (target, draft)   # what has weights
    prompts, source = load_prompts(cfg.prompts, tok, cfg.prompts_per_category, cfg.chat_template)
    if not prompts:
        raise ValueError("no prompts to run; check --prompts / --num-prompts")
    chat = uses_chat_template(tok, cfg.chat_template)
    ids = _encode(tok, [p["prompt"] for p in prompts], models, cfg.max_new_tokens, chat)
    runner = None
    if llamacpp_absent(cfg) is None:   # the rule plan() adds the llamacpp rows by
        runner = llamacpp.LlamaCppRunner(source_gguf(target_name), max(map(len, ids)) + cfg.max_new_tokens,
                                         cfg.threads or torch.get_num_threads(), cfg.seed)
    # what ran: quantize "auto" is chosen per model as it loads (models/load.py quantize_auto)
    named = dict(zip(("target", "draft"), models))
    engine = {"quantize": {k: quantization_of(m) for k, m in named.items()}, "impl": cfg.impl,
              "resolved_impl": {k: resolve_impl(m, cfg.impl) for k, m in named.items()}}
    if ngram.is_lookup(draft):
        engine["draft"] = draft.describe()
    engine["cuda_graphs"] = _graphs(cfg, dev, engine["resolved_impl"].values())
    # greedy rows take the target's argmax from its greedy head (runner.ModelRunner.forward_greedy) or its logits;
    # asked only where the sweep has greedy rows (the first ask builds the greedy head)
    engine["greedy_head"] = (dev.type == "cpu" and 0.0 in cfg.temperature
                             and ModelRunner(target, 1, 8, impl=cfg.impl).greedy_ids)
    # the largest caches the sweep allocates, before any of them (the decoders check their own again)
    check_cache_memory(models, max(cfg.batch_size), capacity_for(
        max(map(len, ids)), cfg.max_new_tokens, max(cfg.cost_gammas, default=0)), cfg.impl, engine["cuda_graphs"])
    decoders = {g: SpeculativeDecoder(target, draft, gamma=g, vocab_size=vocab, impl=cfg.impl,
                                      cuda_graphs=engine["cuda_graphs"]) for g in cfg.fixed_gammas}
    return BenchInputs(target, draft, tok, vocab, dev, target_name, draft_name, prompts, source, ids, decoders,
                       engine, chat, runner)


def _encode(tok, texts, models, max_new_tokens, chat: bool = False) -> list:
    """Token ids per prompt, left-truncated so that prompt + max_new_tokens fits both contexts. chat: the
    texts came out of the chat template, which writes the special tokens itself (no second BOS)."""
    limits = [m for m in (max_positions(model) for model in models) if m]
    keep = (min(limits) - max_new_tokens) if limits else None
    if keep is not None and keep < 1:
        raise ValueError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the models' context "
                         f"of {min(limits)} positions; lower it")
    out = []
    for t in texts:
        ids = tok(t, add_special_tokens=not chat).input_ids
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
        "draft_params": None if inputs.draft is None or ngram.is_lookup(inputs.draft) else n_params(inputs.draft),
        "no_draft": cfg.no_draft,
        "vocab_size": inputs.vocab, **environment(inputs.device),
        "device_map": cfg.device_map, "hf_device_map": hf_map, "dtype": cfg.dtype_on(inputs.device),
        "command": shlex.join(["specdec", "bench", *to_argv(cfg)]), "prompts_source": inputs.prompts_source,
        "num_prompts": len(inputs.prompts), "categories": list(dict.fromkeys(inputs.cats)), "config": to_dict(cfg),
        "hf_assistant_defaults": baselines.hf_assistant_defaults(inputs.draft) if cfg.runs("hf_assisted") else None,
        "engine": inputs.engine,
        "pair": cfg.pair, "target_source": source_record(inputs.target_name),
        "chat_template": {"mode": cfg.chat_template, "applied": inputs.chat_template},
        "llamacpp": inputs.llamacpp.describe() if inputs.llamacpp else {"absent": llamacpp_absent(cfg)},
        "costs": {},
    }


# ----------------------------------------------------------------------------------------------------
# Stage 3: the sweep (timing only).

def run_batch(inputs: BenchInputs, cfg: BenchConfig, s: Setting, idx: list, seed: int):
    """One method on one batch: (outputs per prompt in idx, DecodeStats or None, target calls)."""
    enc = inputs.tokenizer.pad({"input_ids": [inputs.ids[i] for i in idx]}, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"].to(inputs.device), enc["attention_mask"].to(inputs.device)
    eos = None if cfg.ignore_eos else inputs.eos
    kw = dict(max_new_tokens=cfg.max_new_tokens, temperature=s.temperature, seed=seed, eos_token_id=eos)
    if s.method == "ar":  # the same model and forward path as the speculative decoders
        out = autoregressive_generate(inputs.target, ids, mask, vocab_size=inputs.vocab, impl=cfg.impl,
                                      cuda_graphs=inputs.engine["cuda_graphs"], **kw)
        return out.new_tokens, out.stats, out.stats.target_calls
    if s.method == "sd":
        out = inputs.decoders[s.gamma].generate(ids, mask, **kw)
        return out.new_tokens, out.stats, out.stats.target_calls
    if s.method == llamacpp.METHOD:   # batch size 1: one prompt
        toks, st = inputs.llamacpp.generate(inputs.ids[idx[0]], cfg.max_new_tokens, s.temperature, seed, eos)
        return [toks], st, st.target_calls
    if s.method == "hf_generate":
        toks, calls = baselines.hf_generate(inputs.target, ids, mask, s.temperature, cfg.max_new_tokens, eos,
                                            inputs.pad, seed)
        return toks, None, calls
    if ngram.is_lookup(inputs.draft):   # transformers' own n-gram lookup: prompt_lookup_num_tokens
        toks, calls = baselines.hf_prompt_lookup_generate(inputs.target, ids, mask, s.gamma, s.temperature,
                                                          cfg.max_new_tokens, eos, inputs.pad, seed)
        return [toks], None, calls
    schedule = baselines.HF_SCHEDULES[s.method]
    toks, calls = baselines.hf_assisted_generate(inputs.target, inputs.draft, ids, mask, s.gamma, s.temperature,
                                                 cfg.max_new_tokens, eos, inputs.pad, seed, schedule)
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
    # a bar from the first second: loading and the cost measurement show as its status
    progress = Progress(sum(len(g) for g in groups.values()) * cfg.repeats, "bench", enabled=cfg.progress,
                        unit="pass")
    try:
        inputs = _load(cfg, device, progress)
        meta, rows = _start(cfg, inputs, path)
        costs, greedy_costs = _costs(cfg, inputs, meta, progress)
        autos = {}   # auto reads the costs measured in this run (recorded in meta), not the cache: greedy rows theirs
        if AUTO in cfg.gamma:
            autos[False] = _auto_decoder(cfg, inputs, costs)
            autos[True] = autos[False] if greedy_costs is costs else _auto_decoder(cfg, inputs, greedy_costs)
            inputs.decoders[AUTO] = autos[False]
        run.commit()   # a failure before this point leaves --out as it was found
        write_results(path, meta, rows)
        done = {(r.temperature, r.batch_size) for r in rows}
        for (temp, bs), settings in groups.items():
            if (temp, bs) in done:
                progress.advance(len(settings) * cfg.repeats)
                continue
            if autos:
                inputs.decoders[AUTO] = autos[is_greedy(temp)]
            measured = run_group(inputs, cfg, settings, progress)
            _llamacpp_agreement(meta, measured, temp)
            mixed = ngram.is_lookup(inputs.draft)   # the lookup's counts vary by round
            rows = with_speedups(rows + summarise(measured, inputs.cats, greedy_costs if is_greedy(temp) else costs,
                                                  mixed=mixed))
            write_results(path, meta, rows)
    except BaseException:
        progress.close(keep=False)  # the error message gets a line of its own
        raise
    progress.close()
    return meta, rows


def _load(cfg: BenchConfig, device, progress: Progress) -> BenchInputs:
    progress.status("loading the models")
    if not cfg.progress:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    return load_inputs(cfg, device)


def _start(cfg: BenchConfig, inputs: BenchInputs, path: Path) -> tuple[dict, list]:
    """(meta, rows already measured): nothing for a new run; the saved rows and costs on --resume."""
    meta = meta_of(cfg, inputs)
    if not (cfg.resume and path.exists()):
        return meta, []
    saved, rows = read_results(path)
    # old and new rows' predictions share c and v (_costs measures what is unusable)
    for name in ("costs", "costs_greedy"):
        costs = saved.get(name)
        meta[name] = costs if isinstance(costs, dict) else {}
    resumed = saved.get("resumed")
    meta["resumed"] = (resumed if isinstance(resumed, list) else []) + [meta["date"]]
    meta["date"] = saved.get("date", meta["date"])
    return meta, rows


def _costs(cfg: BenchConfig, inputs: BenchInputs, meta: dict, progress: Progress) -> tuple[dict, dict]:
    """(costs, greedy_costs), each batch size -> c and v, measured on the first prompt (already truncated to
    fit the context).

    costs (meta["costs"]): on the forward a greedy decode runs where every temperature is 0 (on a greedy
    head: no float logits), else on the logits forward (`greedy` in the entry); with, when gamma auto runs
    with a draft model, the round times it chooses by (greedy and/or sampled, as the temperatures need) on
    the first bs prompts. greedy_costs: what the greedy rows are priced and auto-chosen by: costs itself,
    except in a sweep that also samples on a target with a greedy head, where they are measured apart on
    the greedy path (meta["costs_greedy"]; auto's round times from costs). Measured for each batch size
    the saved run does not have (or has costs no prediction may use, or timed on the other forward:
    measured again); none without a draft (no sd rows)."""
    if inputs.draft is None:
        return {}, {}
    greedy = all(is_greedy(t) for t in cfg.temperature)
    costs = _costs_on(cfg, inputs, meta, progress, "costs", greedy, rounds=True)
    if greedy or not inputs.engine.get("greedy_head"):   # no greedy head: a greedy verify runs the logits forward
        return costs, costs
    greedy_costs = _costs_on(cfg, inputs, meta, progress, "costs_greedy", True, rounds=False)
    return costs, {bs: {**e, "round_s": costs[bs]["round_s"]} if "round_s" in costs[bs] else e
                   for bs, e in greedy_costs.items()}


def _costs_on(cfg: BenchConfig, inputs: BenchInputs, meta: dict, progress: Progress, name: str, greedy: bool,
              rounds: bool) -> dict:
    """meta[name], batch size -> entry: the step costs on the greedy path or the logits forward (greedy), and
    with `rounds` gamma auto's round times where a draft model's auto needs them (_costs)."""
    costs = {bs: c for bs, c in _saved_costs(meta.get(name)).items() if bool(c.get("greedy")) == greedy}
    # gamma auto's round times; the n-gram draft's auto is its match, capped by the step costs' v: nothing to time
    modes = sorted({"greedy" if is_greedy(t) else "sampling" for t in cfg.temperature}) \
        if rounds and AUTO in cfg.gamma and not ngram.is_lookup(inputs.draft) else []
    probe = SpeculativeDecoder(inputs.target, inputs.draft, gamma=1, vocab_size=inputs.vocab, impl=cfg.impl,
                               cuda_graphs=inputs.engine["cuda_graphs"])
    for bs in cfg.batch_size:
        if bs not in costs:
            path = "the greedy path" if greedy else "the logits forward"
            progress.status(f"measuring the step costs c, v at batch size {bs} on {path}")
            costs[bs] = measure_step_costs(probe, torch.tensor([inputs.ids[0]]), cfg.cost_gammas, bs, greedy=greedy)
            if modes:   # on the first bs prompts: rows that accept differently leave holes, as in the sweep
                enc = inputs.tokenizer.pad({"input_ids": [inputs.ids[i % len(inputs.ids)] for i in range(bs)]},
                                           padding=True, return_tensors="pt")
                ids, mask = enc["input_ids"].to(inputs.device), enc["attention_mask"].to(inputs.device)
                costs[bs]["round_s"] = {}
                for mode in modes:
                    progress.status(f"timing decode rounds for gamma auto at batch size {bs} ({mode})")
                    costs[bs]["round_s"][mode] = measure_round_costs(
                        probe, ids, mask, mode == "sampling", range(1, AutoConfig().max_gamma + 1))
    meta[name] = {str(bs): c for bs, c in costs.items()}
    return costs


def _saved_costs(saved: dict) -> dict:
    """meta["costs"] of the run being resumed, batch size -> entry, leaving out any entry that cannot be
    used (a damaged or edited file: zeros, negatives, missing tables), so that it is measured again."""
    out = {}
    for bs, entry in (saved or {}).items():
        try:
            out.update(read_table({bs: entry}))
        except ValueError:
            continue
    return out


def _llamacpp_agreement(meta: dict, measured: list, temperature: float) -> None:
    """Greedy: how far llama.cpp's outputs follow specdec's plain decoding of the converted target (they
    part where llama.cpp's 8-bit activations round differently), in meta["llamacpp"]."""
    by = {m.setting.method: m for m in measured if m.passes and m.error is None}
    if is_greedy(temperature) and llamacpp.METHOD in by and "ar" in by:
        meta["llamacpp"].setdefault("greedy_agreement", {})[f"bs{by['ar'].setting.batch_size}"] = \
            llamacpp.agreement(by[llamacpp.METHOD].passes[0].outputs, by["ar"].passes[0].outputs)


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
         ("verify_cost_ratio", "v", 5, ".2f"), ("outputs_match_ar", "match", 5, ""),
         ("repeated_share", "rep", 4, ".2f")]


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
    print(f"specdec bench: {m['target']} <- {m['draft'] or 'no draft'} on {m['device']} ({m['dtype']}), "
          f"{m['num_prompts']} prompts x {cfg.max_new_tokens} new tokens, median of {cfg.repeats}")
    print(format_table(rows))
    if m["no_draft"]:
        print(f"speculative rows not run: {m['no_draft']}")
    if cfg.runs("llamacpp") and m["llamacpp"].get("absent") and source_gguf(m["target"]) is not None:
        print(f"llama.cpp row absent: {m['llamacpp']['absent']}")
    for bs, a in m["llamacpp"].get("greedy_agreement", {}).items():
        print(f"llama.cpp greedy vs plain decoding ({bs}): {a['identical']}/{a['prompts']} outputs identical, common "
              f"prefix {a['common_prefix_fraction'] or 0:.0%} of the tokens (llama.cpp quantizes activations to 8 "
              "bits)")
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
