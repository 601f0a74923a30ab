"""Loading target / draft models and tokenizers, vocabulary alignment, and the bundled default pair."""
from __future__ import annotations

from pathlib import Path

import torch

from ..engine.quant import QUANTIZE, quantize_model
from ..engine.devices import input_device, logit_width
from .draft import resolve_packed

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
    if device_map is None:
        model = model.to(device)
    model.eval().requires_grad_(False)
    return quantize_model(model, quantize)


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


def load_pair(target=None, draft=None, dtype="float32", device="cpu", device_map=None, quantize: str = "none",
              draft_quantize: str | None = None):
    """(target_model, draft_model, tokenizer, shared_vocab) for two paths or hub ids; None = bundled pair.
    quantize "int8": row-independent int8 projections (specdec.engine.quant; CPU only) for the target, and for
    the draft unless draft_quantize says otherwise."""
    if target is None or draft is None:
        bt, bd = bundled_pair()
        target = bt if target is None else target
        draft = bd if draft is None else draft
    draft = resolve_packed(draft, target)   # a packed draft (models/draft.py): completed from the target once
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

