"""Loading target / draft models and tokenizers, vocabulary alignment, and the bundled default pair."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..engine import families, features, lean_numpy, ngram, qweights
from ..engine.quant import QUANTIZE, projection_weight, quantize_model
from ..common.values import BadType
from ..engine.devices import input_device, logit_width, resolve_device
from ..engine.params import max_positions
from .gguf_cache import converted_folder, is_gguf_path
from .draft import resolve_packed

ASSETS = Path(__file__).resolve().parents[1] / "assets"

# quantize="auto": chosen per model once it is loaded (quantize_auto); the CPU-only paths.
AUTO_QUANTIZE = "auto"
CPU_QUANTIZE = ("int8",) + qweights.MODES

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
    """AutoModelForCausalLM from a local folder, a .gguf file (converted once: gguf_cache.py) or a hub id, in
    eval mode with gradients off. quantize (CPU): "int8" row-independent int8 projections (engine/quant.py),
    "gguf" the blocks of the GGUF the model was converted from, "q8_0" weights rounded to Q8_0 blocks
    (engine/qweights.py; "gguf-q8a" / "q8_0-q8a": the same blocks with Q8 activations, opt-in), "auto" the first of those the model supports (quantize_auto), "none"."""
    from transformers import AutoModelForCausalLM

    _check_exists(name_or_path)
    if quantize not in (AUTO_QUANTIZE,) + QUANTIZE:
        raise ValueError(f"quantize must be one of {(AUTO_QUANTIZE,) + QUANTIZE}, got {quantize!r}")
    gguf_path = str(name_or_path) if is_gguf_path(name_or_path) else None   # its blocks, for quantize gguf
    name_or_path = local_source(name_or_path)
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
    if Path(str(name_or_path)).is_dir():
        features.load_proj(model, name_or_path)   # a feature draft's projection (engine/features.py)
    if device_map is None:
        model = model.to(device)
    model.eval().requires_grad_(False)
    if quantize == AUTO_QUANTIZE:
        return quantize_auto(model, gguf_path)
    return quantize_model(model, quantize, gguf_path)


def quantize_auto(model, gguf_path=None):
    """quantize="auto", chosen for the loaded model (in place; engine/quant.py quantization_of says what
    ran). On the CPU the first that applies: "gguf" for a model converted from a GGUF file whose blocks
    the kernels read (its own weights, bit for bit; gguf_path, else the file its config records), "q8_0"
    for a model the C kernels' forward runs (a float32 Llama-family model: qweights.supports and
    lean_numpy.supports; elsewhere q8_0 would only round the weights), "int8" for a model with
    projections; else, and off the CPU, the float model. Why this order (bench/RESULTS.md, "Quantized
    CPU kernels"): q8_0 ran faster than int8 on every model measured and far closer to the float model;
    each keeps a row's logits independent of the other rows, so greedy speculative output still equals
    plain decoding."""
    if input_device(model).type != "cpu" or getattr(model, "hf_device_map", None):
        return model
    if qweights.supports(model) is None and lean_numpy.supports(model) is None:
        path = gguf_path or qweights.recorded_gguf(model)
        if path and os.path.isfile(path):
            try:
                return quantize_model(model, "gguf", path)
            except (ValueError, ImportError):
                pass   # block types the kernels do not read (e.g. Q6_K), or not this model's file: q8_0
        return quantize_model(model, "q8_0")
    if any(projection_weight(m) is not None for m in model.modules()):
        return quantize_model(model, "int8")
    return model


def check_family(name_or_path) -> None:
    """Refuse a model specdec cannot run exactly (ALiBi, recurrent state, ...: engine/families.py) from
    its config, before any weights load. A config that cannot be read is left to load_model to report."""
    from transformers import AutoConfig

    name_or_path = local_source(name_or_path)
    try:
        config = AutoConfig.from_pretrained(str(name_or_path))
    except (OSError, ValueError):
        return
    families.check(config)


def load_config(name_or_path):
    """The model's transformers config alone (config.json, no weights): for checks before any model loads.
    A GGUF file's config is its conversion's (converted here on first use: models/gguf_cache.py)."""
    from transformers import AutoConfig

    _check_exists(name_or_path)
    name_or_path = local_source(name_or_path)
    try:
        return AutoConfig.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read a model config from {name_or_path!r}: {str(e).splitlines()[0]}") from None


def context_of(*models) -> int | None:
    """The smallest context (positions) of the models at these paths, from their config.json alone (the
    n-gram lookup draft, "ngram", has none)."""
    limits = [n for n in (max_positions(load_config(m)) for m in models if not ngram.is_lookup(m)) if n]
    return min(limits) if limits else None


def load_tokenizer(name_or_path):
    from transformers import AutoTokenizer

    _check_exists(name_or_path)
    name_or_path = local_source(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load a tokenizer from {name_or_path!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # the decode loops expect left padding
    return tok


def local_source(name_or_path):
    """What transformers loads for `name_or_path`: a GGUF file's converted folder in specdec's cache
    (specdec/models/gguf_cache.py: converted on first use), anything else as given."""
    return converted_folder(name_or_path) if is_gguf_path(name_or_path) else name_or_path


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
        if value not in (AUTO_QUANTIZE,) + QUANTIZE and not (name == "draft_quantize" and value is None):
            raise ValueError(f"{name} must be one of {(AUTO_QUANTIZE,) + QUANTIZE}, got {value!r}")


def _load_device(target, draft, dtype, device, device_map, quantize, draft_quantize) -> str:
    """load_pair's and load_target's checks before anything is read; the device the models load onto."""
    check_pair_args(target, draft, device_map, quantize, draft_quantize)
    resolve_dtype(dtype)
    return str(resolve_device(device, "device")) if device_map is None else device


def _check_logits(name, model, vocab: int) -> None:
    width = logit_width(model)
    if width < vocab:
        raise ValueError(f"{name} has {width} output logits but its tokenizer has {vocab} tokens")


def load_target(target, dtype="float32", device="cpu", device_map=None, quantize: str = "none"):
    """(target_model, tokenizer, vocab) for a run with no draft (plain decoding only): load_pair's checks
    for the target alone; vocab is its tokenizer's size (what check_vocab returns for a matching pair)."""
    device = _load_device(target, None, dtype, device, device_map, quantize, None)
    _check_exists(target)
    check_family(target)
    tok = load_tokenizer(target)
    vocab = len(tok.get_vocab())
    model = load_model(target, dtype, device, device_map, quantize)
    _check_logits(str(target), model, vocab)
    return model, tok, vocab


def draft_quantize_for(draft, quantize: str) -> str:
    """The draft's quantization: as asked, except that gguf / gguf-q8a (a GGUF file's own blocks, as
    `--quantize` asks for both models) for a draft not converted from a GGUF (specdec's own drafts) mean
    its weights rounded to blocks in process, q8_0 / q8_0-q8a: the same kernels and arithmetic."""
    if quantize.startswith("gguf") and not is_gguf_path(draft) \
            and getattr(load_config(draft), "specdec_gguf", None) is None:
        return "q8_0" + quantize.removeprefix("gguf")
    return quantize


def load_pair(target=None, draft=None, dtype="float32", device="cpu", device_map=None, quantize: str = "none",
              draft_quantize: str | None = None):
    """(target_model, draft_model, tokenizer, shared_vocab) for two paths (folders or .gguf files) or hub
    ids; None = bundled pair; draft "ngram" (or an NgramDraft): the n-gram lookup draft, returned as is.
    quantize (load_model's: "none", "int8", "gguf", "q8_0", "auto") for the target, and for the draft
    unless draft_quantize says otherwise."""
    lookup = ngram.as_ngram(draft)
    if lookup is not None:   # the n-gram lookup draft (engine/ngram.py): no model; the target's tokenizer
        tmodel, tok, vocab = load_target(bundled_pair()[0] if target is None else target, dtype, device, device_map,
                                         quantize)
        return tmodel, lookup, tok, vocab
    device = _load_device(target, draft, dtype, device, device_map, quantize, draft_quantize)
    if target is None or draft is None:
        bt, bd = bundled_pair()
        target = bt if target is None else target
        draft = bd if draft is None else draft
    for name in (target, draft):
        _check_exists(name)
    # a packed draft (models/draft.py): completed once from the target's embedding
    draft = resolve_packed(draft, local_source(target))
    for name in (target, draft):
        check_family(name)
    ttok, dtok = load_tokenizer(target), load_tokenizer(draft)
    vocab = check_vocab(ttok, dtok, str(target), str(draft))
    tmodel = load_model(target, dtype, device, device_map, quantize)
    # The draft is small: it goes whole onto the device of the target's input embeddings, where the
    # decoder keeps its state (the target's logits are moved there for verification).
    dmodel = load_model(draft, dtype, input_device(tmodel) if device_map is not None else device,
                        quantize=draft_quantize_for(draft, quantize if draft_quantize is None else draft_quantize))
    for name, m in ((str(target), tmodel), (str(draft), dmodel)):
        _check_logits(name, m, vocab)
    return tmodel, dmodel, ttok, vocab

