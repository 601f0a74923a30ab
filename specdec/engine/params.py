"""What a decode takes from its caller, checked before any forward: the sampling settings
(`SamplingParams`, one source of truth for their defaults), the prompt batch (`prepare_inputs`,
`check_context` against the models' positions), and the memory its KV caches will take
(`check_cache_memory`, before they are allocated)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..common.values import (BadType, check_int, check_number, check_seed, check_temperature, check_token_ids,
                             is_greedy)
from .families import num_layers
from .runner import IMPLS, cache_dtype, resolve_impl
from .verify import BACKENDS


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0   # 0 = greedy (common/values.py: the rule, and the smallest sampling temperature)
    top_k: int = 0             # 0 = off
    top_p: float = 1.0         # 1 = off
    seed: int | None = None
    eos_token_id: int | list | None = None  # None = no stop token

    def __post_init__(self):
        (self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed) = check_sampling(
            self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed)
        self.eos_ids = set(check_token_ids(self.eos_token_id, "eos_token_id"))

    @property
    def greedy(self) -> bool:
        return is_greedy(self.temperature)


def check_sampling(max_new_tokens, temperature, top_k, top_p, seed, name=lambda field: field) -> tuple:
    """The decoding settings, checked and normalised (ints, floats); name(field) is how the caller knows
    each one ("top_p" in the API, "--top-p" on the command line)."""
    return (check_int(max_new_tokens, name("max_new_tokens"), 1),
            check_temperature(temperature, name("temperature")),
            check_int(top_k, name("top_k"), 0, what=" (0 = off)"),
            check_number(top_p, name("top_p"), 0.0, 1.0, low_open=True, what=" (1 = off)"),
            check_seed(seed, name("seed")))


def max_positions(model) -> int | None:
    """The positions a model (or its config) can attend over; None when the config does not say."""
    cfg = getattr(model, "config", model)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _int_tensor(value, name: str, shape_hint: str) -> torch.Tensor:
    """`value` as a tensor of integers (bool allowed for masks); anything else is a BadType naming it."""
    if not isinstance(value, torch.Tensor):
        raise BadType(f"{name} must be a {shape_hint} torch.Tensor, got {type(value).__name__} (use the tokenizer "
                      "with return_tensors='pt' and padding_side='left')")
    if value.is_floating_point() or value.is_complex():
        raise BadType(f"{name} must hold integer token ids / 0-1 flags, got {value.dtype} (a float id would be "
                      "truncated)")
    return value


def prepare_inputs(input_ids, attention_mask, device, vocab: int | None = None):
    """Validate a (left-padded) batch: ids in [0, vocab) (the models' embedding rows), mask of 0 / 1.
    Returns ids [B, P], mask [B, P] long, lengths (host list)."""
    input_ids = _int_tensor(input_ids, "input_ids", "[B, P]")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids must be [B, P] with B >= 1, got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("empty prompt: every row needs at least one token (e.g. the BOS token)")
    input_ids = input_ids.to(device=device, dtype=torch.long)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = _int_tensor(attention_mask, "attention_mask", "[B, P]").to(device=device, dtype=torch.long)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                         f"{tuple(input_ids.shape)}")
    # one host read: the ids' and the mask's ranges (a negative id wrapped round on the NumPy path and was
    # an IndexError elsewhere), each row's length, whether the last column is real everywhere
    lo, hi, mlo, mhi, last = torch.stack([input_ids.min(), input_ids.max(), attention_mask.min(),
                                          attention_mask.max(), attention_mask[:, -1].min()]).tolist()
    if lo < 0 or (vocab is not None and hi >= vocab):
        bad = lo if lo < 0 else hi
        row = int((input_ids == bad).any(1).nonzero()[0])
        raise ValueError(f"input_ids must be token ids in [0, {vocab if vocab is not None else 'V'}) (the models' "
                         f"embedding rows; padding too), got {bad} in row {row}")
    if mlo < 0 or mhi > 1:
        raise ValueError(f"attention_mask must hold 0 (padding) and 1 (token), got values in [{mlo}, {mhi}]")
    lengths = attention_mask.sum(1).tolist()
    if min(lengths) == 0:
        raise ValueError(f"empty prompt in row {lengths.index(0)}: every row needs at least one token")
    if last != 1:
        raise ValueError("prompts must be left-padded (the last column real in every row): set "
                         "tokenizer.padding_side = 'left'")
    return input_ids, attention_mask, lengths


def check_model(model, name: str) -> None:
    """A causal LM the engine can run (a transformers PreTrainedModel): anything else is a BadType naming
    the argument, not an AttributeError from inside the loop."""
    if not (isinstance(model, torch.nn.Module) and hasattr(model, "get_input_embeddings")
            and hasattr(model, "config")):
        raise BadType(f"{name} must be a transformers causal LM (e.g. AutoModelForCausalLM.from_pretrained(...)), "
                      f"got {type(model).__name__}")


def check_engine(impl, cuda_graphs, backend=None) -> None:
    """The engine arguments the decoders take: the forward, CUDA graphs on or off, the verify backend."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not isinstance(cuda_graphs, bool):
        raise BadType(f"cuda_graphs must be True or False, got {cuda_graphs!r}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def embedding_rows(models) -> int:
    """The ids every model can embed: the smallest input embedding."""
    return min(int(m.get_input_embeddings().weight.shape[0]) for m in models)


def check_context(model, name, lengths, max_new_tokens):
    limit = max_positions(model)
    need = max(lengths) + max_new_tokens
    if limit is not None and need > limit:
        raise ValueError(f"prompt ({max(lengths)} tokens) + max_new_tokens ({max_new_tokens}) = {need} exceeds "
                         f"the {name}'s context of {limit} positions; shorten the prompt or lower max_new_tokens")


def model_name(model) -> str:
    """How a message names a model: its path or hub id, else its class."""
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)


def check_logits_flag(flag: int, models: dict, where: str) -> None:
    """Raise if a host-read flag (a sum of the keys of `models`, {bit: (role, model)}) says a model's
    logits had a row no token can be chosen from (sampling.unusable_rows); where: e.g. "decode step 3"."""
    bad = [(role, model_name(m)) for bit, (role, m) in models.items() if int(flag) & bit]
    if bad:
        raise ValueError(f"{' and '.join('the ' + r for r, _ in bad)} produced NaN logits, +inf or a row of all -inf "
                         f"({', '.join(n for _, n in bad)}, {where}): no token can be chosen from such a "
                         "row; the model or its dtype is broken (float16 overflow? try bfloat16 or float32)")


# ----------------------------------------------------------------------------------------------------
# Memory: the KV caches are the allocation that grows with batch size and length; estimated before it
# happens, so a batch that cannot fit is one line instead of an allocation traceback or the OOM killer.

def cache_bytes(model, batch: int, capacity: int, impl: str = "auto", aligned: bool = False) -> int | None:
    """Bytes of `model`'s KV cache for `batch` rows of `capacity` columns on `impl`'s path:
    layers x 2 (K, V) x batch x capacity x kv_heads x head_dim x dtype size (float64 for an int8 model on
    the lean path, runner.cache_dtype). aligned: the static cache's capacity rounded up to 64 columns.
    None when the config does not say its attention shape."""
    cfg = model.config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    head_dim = getattr(cfg, "head_dim", None) or (hidden // heads if hidden and heads else None)
    if not (isinstance(kv_heads, int) and isinstance(head_dim, int)):
        return None
    if aligned:
        capacity = -(-capacity // 64) * 64
    dtype = cache_dtype(model, resolve_impl(model, impl))
    return num_layers(model.config) * 2 * batch * capacity * kv_heads * head_dim * dtype.itemsize


def available_bytes(device) -> int | None:
    """Memory a new allocation on `device` can take: CUDA's free memory; on the CPU the kernel's
    MemAvailable, capped by the cgroup's limit minus its usage (a container's OOM killer acts on that).
    None where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text(encoding="ascii").strip()
        used = (cgroup / "memory.current").read_text(encoding="ascii").strip()
        if limit != "max":
            found.append(int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_cache_memory(models, batch: int, capacity: int, impl: str = "auto", aligned: bool = False) -> None:
    """Refuse, in one line, KV caches for `models` (on the first one's device) that need more memory than
    is available."""
    sizes = [cache_bytes(m, batch, capacity, impl, aligned) for m in models]
    need = sum(b for b in sizes if b)
    have = available_bytes(models[0].get_input_embeddings().weight.device) if need else None
    if have is not None and need > have:
        raise ValueError(f"the KV caches need {need / 2**30:.2f} GiB ({batch} rows x {capacity} columns) but "
                         f"{have / 2**30:.2f} GiB is available: lower the batch size, the prompt length or the new "
                         "tokens")
