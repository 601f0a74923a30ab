"""Loading target / draft models and tokenizers, vocabulary alignment, and the bundled default pair."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..engine import families
from ..engine.quant import QUANTIZE, quantize_model
from ..common.values import BadType
from ..engine.devices import input_device, logit_width, resolve_device
from ..engine.params import max_positions

ASSETS = Path(__file__).resolve().parents[1] / "assets"

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "auto": "auto"}


def bundled_pair() -> tuple[Path, Path]:
    """Paths (target, draft) of the small Llama pair shipped inside the package (trained by
    bench/train_pair.py on the Python standard library; no download needed)."""
    target, draft = ASSETS / "target", ASSETS / "draft"
    for p in (target, draft):
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"bundled model missing at {p}: reinstall specdec, or rebuild it with "
                                    "`python bench/train_pair.py` and its --export step")
    return target, draft


def resolve_dtype(dtype) -> torch.dtype | str:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    if not isinstance(dtype, str):
        raise BadType(f"dtype must be a name ({', '.join(sorted(DTYPES))}) or a torch.dtype, got {dtype!r}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_model(name_or_path, dtype="float32", device="cpu", device_map=None, quantize: str = "none"):
    """AutoModelForCausalLM from a local folder or a hub id, in eval mode with gradients off.
    quantize "int8": row-independent int8 projections (specdec.engine.quant; CPU only)."""
    from transformers import AutoModelForCausalLM

    _check_exists(name_or_path)
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    check_family(name_or_path)
    kwargs = {"dtype": resolve_dtype(dtype)}
    if device_map is not None:
        kwargs["device_map"] = device_map  # transformers/accelerate place the layers across devices
    try:
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, and the safetensors reader's own error
        if not isinstance(e, (OSError, ValueError)) and "safetensor" not in type(e).__module__.lower():
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"cannot load a causal LM from {name_or_path!r}: {first} (a truncated or corrupt "
                         "weights file? download or copy it again)") from None
    families.check(model)   # what only the model tells (its forward's arguments)
    if device_map is None:
        model = model.to(device)
    model.eval().requires_grad_(False)
    return quantize_model(model, quantize)


def check_family(name_or_path) -> None:
    """Refuse a model specdec cannot run exactly (ALiBi, recurrent state, ...: engine/families.py) from
    its config, before any weights load. A config that cannot be read is left to load_model to report."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(name_or_path))
    except (OSError, ValueError):
        return
    families.check(config)


def load_config(name_or_path):
    """The model's transformers config alone (config.json, no weights): for checks before any model loads."""
    from transformers import AutoConfig

    _check_exists(name_or_path)
    try:
        return AutoConfig.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read a model config from {name_or_path!r}: {str(e).splitlines()[0]}") from None


def context_of(*models) -> int | None:
    """The smallest context (positions) of the models at these paths, from their config.json alone."""
    limits = [n for n in (max_positions(load_config(m)) for m in models) if n]
    return min(limits) if limits else None


def load_tokenizer(name_or_path):
    from transformers import AutoTokenizer

    _check_exists(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load a tokenizer from {name_or_path!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # the decode loops expect left padding
    return tok


def _check_exists(name_or_path) -> None:
    """A path that looks local but is not there gets a clear error instead of a hub lookup."""
    s = str(name_or_path)
    looks_local = s.startswith((".", "/", "~")) or Path(s).exists() or s.count("/") > 1 or "\\" in s
    if looks_local and not Path(s).expanduser().exists():
        raise ValueError(f"model path {s!r} does not exist; pass a local folder with config.json or a hub id")


def check_vocab(target_tok, draft_tok, target_name="target", draft_name="draft") -> int:
    """The two tokenizers must map the same ids; returns the shared vocabulary size.

    Model logit widths may be padded beyond the tokenizer (Qwen2.5-0.5B: 151936, 7B: 152064); the
    decoders compare only ids below the shared size and never emit an id outside it.
    """
    tv, dv = target_tok.get_vocab(), draft_tok.get_vocab()
    if tv != dv:
        only_t = sorted(set(tv) - set(dv))[:3]
        only_d = sorted(set(dv) - set(tv))[:3]
        moved = sorted(k for k in set(tv) & set(dv) if tv[k] != dv[k])[:3]
        raise ValueError(
            f"tokenizers differ: {target_name} has {len(tv)} tokens, {draft_name} has {len(dv)} "
            f"(only in {target_name}: {only_t}, only in {draft_name}: {only_d}, different ids: {moved}); "
            "speculative decoding needs a draft that shares the target's tokenizer")
    for attr in ("eos_token_id", "bos_token_id"):
        if getattr(target_tok, attr) != getattr(draft_tok, attr):
            raise ValueError(f"tokenizers differ in {attr}: {target_name} {getattr(target_tok, attr)}, "
                             f"{draft_name} {getattr(draft_tok, attr)}")
    return len(tv)


def check_pair_args(target, draft, device_map, quantize, draft_quantize) -> None:
    """load_pair's arguments, by type and value, before anything is read."""
    for name, value in (("target", target), ("draft", draft)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise BadType(f"{name} must be a model folder, a hub id or None (the bundled pair), got "
                          f"{type(value).__name__}")
    if device_map is not None and not isinstance(device_map, (str, dict)):
        raise BadType(f"device_map must be a string (e.g. 'auto'), a dict or None, got {type(device_map).__name__}")
    for name, value in (("quantize", quantize), ("draft_quantize", draft_quantize)):
        if value not in QUANTIZE and not (name == "draft_quantize" and value is None):
            raise ValueError(f"{name} must be one of {QUANTIZE}, got {value!r}")


def load_pair(target=None, draft=None, dtype="float32", device="cpu", device_map=None, quantize: str = "none",
              draft_quantize: str | None = None):
    """(target_model, draft_model, tokenizer, shared_vocab) for two paths or hub ids; None = bundled pair.
    quantize "int8": row-independent int8 projections (specdec.engine.quant; CPU only) for the target, and for
    the draft unless draft_quantize says otherwise."""
    check_pair_args(target, draft, device_map, quantize, draft_quantize)
    resolve_dtype(dtype)
    device = str(resolve_device(device, "device")) if device_map is None else device
    if target is None or draft is None:
        bt, bd = bundled_pair()
        target = bt if target is None else target
        draft = bd if draft is None else draft
    for name in (target, draft):
        _check_exists(name)
        check_family(name)
    ttok, dtok = load_tokenizer(target), load_tokenizer(draft)
    vocab = check_vocab(ttok, dtok, str(target), str(draft))
    tmodel = load_model(target, dtype, device, device_map, quantize)
    # The draft is small: it goes whole onto the device of the target's input embeddings, where the
    # decoder keeps its state (the target's logits are moved there for verification).
    dmodel = load_model(draft, dtype, input_device(tmodel) if device_map is not None else device,
                        quantize=quantize if draft_quantize is None else draft_quantize)
    for name, m in ((str(target), tmodel), (str(draft), dmodel)):
        width = logit_width(m)
        if width < vocab:
            raise ValueError(f"{name} has {width} output logits but its tokenizer has {vocab} tokens")
    return tmodel, dmodel, ttok, vocab

