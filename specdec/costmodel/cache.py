"""The cost table cache: round costs measured once per key, read back by every later decoder.

One JSON file per key in `default_cache_dir()` (`costs/` under common/cachedir.cache_root():
$SPECDEC_CACHE_DIR, else $XDG_CACHE_HOME/specdec, else ~/.cache/specdec). The key (`cost_key`) holds everything a
round's cost depends on: each model's architecture (config, module types, parameter shapes and dtypes:
int8 layers show; weight values do not matter), the batch size, the context bucket, greedy or sampled,
the measured gammas, the resolved forward (lean / numpy / hf), CUDA graphs, the device's name, the torch
thread count, the torch and transformers versions and a hash of the engine's and the cost model's
source files. The file is named by the key's hash and holds the key itself. A file is used only when
its stored key equals the asked key field for field (a table written for another pair, machine, thread
count or engine version is never read, only replaced) and its costs pass `table.read_entry` (a
damaged file, e.g. costs of zero or below, is measured again and replaced, with a warning naming it).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import threading
import warnings
import weakref
from pathlib import Path

import torch

from ..common.cachedir import cache_root
from ..common.env import device_name
from ..common.files import write_json_atomic
from ..engine.runner import kv_cache_of
from .measure import measure_round_costs, measure_step_costs
from .table import read_entry

SCHEMA = 1
_PACKAGE = Path(__file__).resolve().parents[1]   # specdec/


def default_cache_dir() -> Path:
    return cache_root() / "costs"


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
    kv = kv_cache_of(model)   # a float16 cache streams half the bytes; the default keeps the fingerprints it had
    return _sha([type(model).__name__, cfg, modules, tensors] + ([] if kv == "float32" else [kv]))


def engine_sources() -> list[Path]:
    """The files a round's cost depends on: every module of the engine (the decode loop, forwards, cache,
    int8, graphs, verification, sampling, the C kernels' source) and of the cost model (read as files:
    nothing is imported)."""
    return sorted(_PACKAGE.glob("engine/*.py")) + sorted(_PACKAGE.glob("engine/*.c")) \
        + sorted(_PACKAGE.glob("costmodel/*.py"))


def engine_fingerprint(sources=()) -> str:
    """A hash of the engine's source (engine_sources) and of `sources`."""
    h = hashlib.sha256()
    for path in sorted({str(p) for p in engine_sources()} | {str(p) for p in sources}):
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def context_bucket(prompt_len: int) -> int:
    """Prompt lengths share a measurement up to the next power of two (at least 16)."""
    return max(16, 1 << (max(1, int(prompt_len)) - 1).bit_length())


def cost_key(target, draft, batch_size: int, context: int, sampling: bool, gammas, impl="auto",
             cuda_graphs: bool = False, device=None, sources=()) -> dict:
    """Everything a decode round's cost depends on (see the module docstring). impl: the forward each
    model runs, resolved ("lean", "numpy", "hf": one name for both, or a (target, draft) pair); device:
    where the decoder runs (default: the target's input embeddings')."""
    import transformers   # heavy: only where a key is built

    dev = torch.device(device) if device is not None else target.get_input_embeddings().weight.device
    draft_print = model_fingerprint(draft) if hasattr(draft, "config") else type(draft).__name__   # a lookup: no weights
    return {"schema": SCHEMA, "target": model_fingerprint(target), "draft": draft_print,
            "batch_size": int(batch_size), "context": int(context), "sampling": bool(sampling),
            "gammas": sorted({int(g) for g in gammas}),
            "impl": [impl, impl] if isinstance(impl, str) else list(impl), "cuda_graphs": bool(cuda_graphs),
            "device": dev.type, "device_name": device_name(dev),
            "threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "engine": engine_fingerprint(sources)}


class CostCache:
    """Cost tables on disk, one file per key; a file whose stored key differs in any field is ignored,
    one whose costs cannot be used is measured again."""

    def __init__(self, folder=None):
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    def path(self, key: dict) -> Path:
        return self.folder / f"costs-{_sha(key)[:24]}.json"

    def load(self, key: dict) -> dict | None:
        path = self.path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None   # absent or unreadable: measure again
        if not isinstance(data, dict) or data.get("key") != json.loads(json.dumps(key)):
            return None   # another key hashed to this name, or an edited key
        try:
            return read_entry(data.get("costs"))
        except ValueError as e:
            warnings.warn(f"specdec: the cost cache file {path} holds unusable costs ({e}); measuring them again",
                          stacklevel=2)
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
            hit = read_entry(measure())   # a measurement that cannot be used is an error, not a cache entry
            self.store(key, hit)
        return hit


class CachedRoundCosts:
    """Where gamma="auto" gets round costs it was not handed: per (batch size, context bucket, greedy or
    sampled), from this process's memo, else the cost cache, else measured once on the call's own
    prompts (a few seconds) and stored. Shared by every call (a lock: concurrent calls measure once)."""

    def __init__(self, folder=None):
        self.cache = CostCache(folder)
        self.memo = weakref.WeakKeyDictionary()   # decoder -> {(B, context, sampled, gammas): costs entry}
        self.lock = threading.RLock()

    def __call__(self, decoder, input_ids, attention_mask, sampling: bool, gammas) -> dict:
        B, context = input_ids.shape[0], context_bucket(input_ids.shape[1])
        memo = (B, context, sampling, tuple(gammas))
        with self.lock:
            known = self.memo.setdefault(decoder, {})
            if memo not in known:
                key = cost_key(decoder.target, decoder.draft, B, context, sampling, gammas, decoder.resolved_impl,
                               decoder.cuda_graphs, decoder.device)
                mode = "sampling" if sampling else "greedy"
                known[memo] = self.cache.get(key, lambda: {"round_s": {mode: measure_round_costs(
                    decoder, input_ids, attention_mask, sampling, gammas)}})
        return {B: known[memo]}


class CachedStepCosts:
    """Step costs (measure_step_costs: c and v) per (context bucket, gammas, greedy or sampled) at batch size
    1, from this process's memo, else the cost cache (keyed as round costs, with "measure": "step"), else
    measured once on the call's first prompt (a few seconds) and stored. What the n-gram lookup's auto prices
    its long proposals with (policy.LookupAuto); a greedy decode's on the forward it runs (no float logits on
    a greedy head)."""

    def __init__(self, folder=None):
        self.cache = CostCache(folder)
        self.memo = weakref.WeakKeyDictionary()   # decoder -> {(context, gammas, greedy): costs entry}
        self.lock = threading.RLock()

    def __call__(self, decoder, input_ids, gammas, greedy: bool = False) -> dict:
        context, gammas = context_bucket(input_ids.shape[1]), sorted({int(g) for g in gammas})
        memo = (context, tuple(gammas), bool(greedy))
        with self.lock:
            known = self.memo.setdefault(decoder, {})
            if memo not in known:
                key = dict(cost_key(decoder.target, decoder.draft, 1, context, not greedy, gammas,
                                    decoder.resolved_impl, decoder.cuda_graphs, decoder.device), measure="step")
                known[memo] = self.cache.get(key, lambda: measure_step_costs(decoder, input_ids[:1], gammas, 1,
                                                                             greedy=greedy))
        return known[memo]
