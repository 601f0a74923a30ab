"""What decoding costs, measured two ways.

Step costs, the inputs of the speedup model tau / (gamma c + v) (`measure_costs`):
  c = one draft step / one target step,  v(gamma) = one target forward over gamma+1 tokens / one step,
each the median over repeats of a cached forward after a prompt-length prefill, on the same path the
decoders run (ModelRunner: the lean or transformers forward, the in-place cache, CUDA graphs).
The steps are interleaved round-robin (one of each per round) so that a load change on a shared
machine hits numerator and denominator alike.

Round costs, what gamma="auto" chooses by (SpeculativeDecoder.measure_round_costs): seconds per whole
decode round that drafts k tokens, timed between the decoder's own rounds (draft, verify, sampling,
commit and bookkeeping included, which isolated forwards leave out: on a small CPU model they add a few
tenths of a target step per round), greedy and sampled apart (sampling costs more per draft). A costs
entry (one batch size) is a measure_costs result, optionally with
`round_s = {"greedy" | "sampling": {k: seconds}}`; `round_costs` reads either.

The cost table cache (what gamma="auto" reads when it is not handed costs): one JSON file per key in
`default_cache_dir()` ($SPECDEC_CACHE_DIR/costs, else $XDG_CACHE_HOME/specdec/costs, else
~/.cache/specdec/costs). The key (`cost_key`) holds everything a round's cost depends on: each model's
architecture (config, module types, parameter shapes and dtypes: int8 layers show; weight values do not
matter), the batch size, the context bucket, greedy or sampled, the measured gammas, the resolved
forward (lean / hf), CUDA graphs, the device's name, the torch thread count, the torch and transformers
versions and a hash of the engine's source files. The file is named by the key's hash and holds the key
itself; a file is used only when its stored key equals the asked key field for field, so a table
written for another pair, machine, thread count or engine version (stale or foreign) is never read,
only replaced.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

from .engine.runner import ModelRunner, resolve_impl
from .common.env import device_name
from .common.files import write_json_atomic
from .engine.devices import input_device


def sync(device) -> None:
    """Wait for queued kernels before reading the clock; every GPU when a model is sharded."""
    if torch.device(device).type == "cuda":
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


class StepTimer:
    """One model prefilled with a prompt; `step(S)` times one forward over S new tokens, then forgets
    them (the cache is cropped back, so every step sees the same context length)."""

    def __init__(self, model, prompt_ids, batch_size: int, max_tokens: int, impl: str = "auto",
                 cuda_graphs: bool = False):
        dev = input_device(model)
        ids = prompt_ids.to(dev).repeat(batch_size, 1)                            # [B, P]
        self.runner = ModelRunner(model, batch_size, ids.shape[1] + max_tokens + 8, impl=impl,
                                  cuda_graphs=cuda_graphs)
        self.runner.prefill(ids, torch.ones_like(ids))
        self.pos0 = ids.shape[1] - 1
        self.ids = ids
        self.device = dev

    def step(self, S: int) -> float:
        B = self.ids.shape[0]
        ids = self.ids[:, -1:].repeat(1, S)
        pos = self.pos0 + torch.arange(S, device=self.device).repeat(B, 1)
        valid = torch.ones((B, S), dtype=torch.bool, device=self.device)
        with torch.no_grad():
            sync(self.device)
            t0 = time.perf_counter()
            self.runner.peek(ids, pos, valid)
            sync(self.device)
        return time.perf_counter() - t0


def interleaved_medians(jobs: dict, iters: int, warmup: int = 2) -> dict:
    """jobs: name -> zero-argument callable returning seconds. Runs warmup + iters rounds, each
    calling every job once (in alternating order); returns name -> median seconds."""
    times = {name: [] for name in jobs}
    names = list(jobs)
    for i in range(warmup + iters):
        for name in (names if i % 2 == 0 else names[::-1]):
            dt = jobs[name]()
            if i >= warmup:
                times[name].append(dt)
    return {name: statistics.median(v) for name, v in times.items()}


DRAFT_BURST = 4   # draft steps timed back to back (a round of gamma 4)


def measure_costs(target, draft, prompt_ids, gammas, batch_size: int, iters: int = 15, impl: str = "auto",
                  cuda_graphs: bool = False) -> dict:
    """Median seconds of the target step (S=1), the draft step (S=1) and the target verify
    (S=gamma+1 for each gamma) after a prompt-length prefill; with c and v(gamma)."""
    gammas = [int(g) for g in gammas]
    top = max(gammas) + 1
    t = StepTimer(target, prompt_ids, batch_size, top, impl, cuda_graphs)
    d = StepTimer(draft, prompt_ids, batch_size, 2, impl, cuda_graphs)
    # A round's draft steps run back to back after a verify that streamed the target's weights: the
    # first finds the draft's weights out of the cache, the next find them in it. The draft step is the
    # mean over such a burst (DRAFT_BURST steps), not one step between target forwards (always cold).
    jobs = {"t1": lambda: t.step(1), "d1": lambda: sum(d.step(1) for _ in range(DRAFT_BURST)) / DRAFT_BURST}
    for g in gammas:
        jobs[g] = (lambda S: (lambda: t.step(S)))(g + 1)
    med = interleaved_medians(jobs, iters)
    t1, d1 = med["t1"], med["d1"]
    return {"batch_size": batch_size, "target_step_s": t1, "draft_step_s": d1,
            "target_verify_s": {g: med[g] for g in gammas}, "c": d1 / t1,
            "v": {g: med[g] / t1 for g in gammas}}


def _int_keys(d: dict) -> dict:
    return {int(g): float(x) for g, x in d.items()}


def entry_from_json(entry: dict) -> dict:
    """One costs entry read back from JSON (whose object keys are strings)."""
    out = dict(entry)
    for name in ("v", "target_verify_s"):
        if isinstance(entry.get(name), dict):
            out[name] = _int_keys(entry[name])
    if isinstance(entry.get("round_s"), dict):
        out["round_s"] = {mode: _int_keys(t) for mode, t in entry["round_s"].items()}
    return out


def round_costs(entry: dict, sampling: bool) -> dict:
    """k -> the cost of a round drafting k tokens, from one costs entry: the measured round times of the
    mode (greedy or sampling; the other mode's when only that one was measured), else the step-cost
    model k c + v(k) at the gammas v was measured at (in target steps; the unit does not matter)."""
    rounds = entry.get("round_s") or {}
    for mode in (("sampling", "greedy") if sampling else ("greedy", "sampling")):
        if rounds.get(mode):
            return dict(rounds[mode])
    return {int(k): int(k) * entry["c"] + v for k, v in entry["v"].items()}


def costs_at(table: dict, batch_size: int):
    """The value of `table` (batch size -> costs) at the batch size nearest `batch_size` (on a log
    scale; the larger on a tie): the live batch shrinks as rows finish and is rarely measured itself."""
    if not table:
        raise ValueError("the cost table is empty; measure it with specdec.costs.measure_costs")
    return table[min(table, key=lambda b: (abs(math.log(b) - math.log(batch_size)), -b))]


# ----------------------------------------------------------------------------------------------------
# The cost table cache (see the module docstring).

SCHEMA = 1
_COST_MODULES = ("metrics.py", "costs.py")   # beside every file of engine/


def default_cache_dir() -> Path:
    if os.environ.get("SPECDEC_CACHE_DIR"):
        return Path(os.environ["SPECDEC_CACHE_DIR"]) / "costs"
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "specdec" / "costs"


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_fingerprint(model) -> str:
    """What a step's cost depends on in a model: its architecture, not its weights (a retrained model
    of the same shape costs the same). Module types catch int8 layers; shapes and dtypes the rest."""
    cfg = {k: v for k, v in model.config.to_dict().items()
           if k not in ("_name_or_path", "transformers_version", "architectures", "id2label", "label2id")}
    modules = [(n, type(m).__name__) for n, m in model.named_modules()]
    tensors = [(n, tuple(t.shape), str(t.dtype)) for n, t in
               list(model.named_parameters()) + list(model.named_buffers())]
    return _sha([type(model).__name__, cfg, modules, tensors])


def engine_sources() -> list[Path]:
    """The files a round's cost depends on: every module of the engine (the decode loop, forwards, cache,
    int8, graphs, verification, sampling) and the cost model's own."""
    here = Path(__file__).parent
    return sorted(here.glob("engine/*.py")) + [here / m for m in _COST_MODULES]


def engine_fingerprint(sources=()) -> str:
    """A hash of the engine's source (engine_sources) and of `sources`."""
    h = hashlib.sha256()
    for path in sorted({str(p) for p in engine_sources()} | {str(p) for p in sources}):
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def context_bucket(prompt_len: int) -> int:
    """Prompt lengths share a measurement up to the next power of two (at least 16)."""
    return max(16, 1 << (max(1, int(prompt_len)) - 1).bit_length())


def cost_key(target, draft, batch_size: int, context: int, sampling: bool, gammas, impl: str = "auto",
             cuda_graphs: bool = False, sources=()) -> dict:
    """Everything a decode round's cost depends on (see the module docstring)."""
    import transformers

    dev = input_device(target)
    return {"schema": SCHEMA, "target": model_fingerprint(target), "draft": model_fingerprint(draft),
            "batch_size": int(batch_size), "context": int(context), "sampling": bool(sampling),
            "gammas": sorted({int(g) for g in gammas}),
            "impl": [resolve_impl(target, impl), resolve_impl(draft, impl)], "cuda_graphs": bool(cuda_graphs),
            "device": dev.type, "device_name": device_name(dev),
            "threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "engine": engine_fingerprint(sources)}


class CostCache:
    """Cost tables on disk, one file per key; a file whose stored key differs in any field is ignored."""

    def __init__(self, folder=None):
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    def path(self, key: dict) -> Path:
        return self.folder / f"costs-{_sha(key)[:24]}.json"

    def load(self, key: dict) -> dict | None:
        try:
            data = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None   # absent or unreadable: measure again
        if not isinstance(data, dict) or data.get("key") != json.loads(json.dumps(key)):
            return None   # another key hashed to this name, or an edited file
        try:
            return entry_from_json(data["costs"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    def store(self, key: dict, costs: dict) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            write_json_atomic(self.path(key), {"key": key, "measured": when, "costs": costs})
        except OSError:
            pass   # a read-only cache costs a measurement per process, nothing else

    def get(self, key: dict, measure) -> dict:
        """The entry stored under exactly `key`, else measure() stored and returned."""
        hit = self.load(key)
        if hit is None:
            hit = measure()
            self.store(key, hit)
        return hit
