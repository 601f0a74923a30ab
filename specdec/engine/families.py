"""Which models the engine runs exactly, and the attention window of each of their layers.

specdec runs a model over its own KV cache (kvcache.py): K/V written in place, rejected drafts left
behind as holes that the mask hides, each row's positions given explicitly. That reproduces the model
exactly when its attention depends on nothing but the tokens, their positions and the mask. Each layer's
mask follows its attention type, read from the config by the rule transformers itself uses (its
DynamicCache and `create_masks_for_generate`, 5.17 to 5.25): `layer_types` when the config has them,
else every layer sliding when `sliding_window` is set, else chunked when `attention_chunk_size` is:
  full_attention     every earlier valid column;
  sliding_attention  those within the window: q_pos - k_pos < W;
  chunked_attention  those in the query's chunk: q_pos // C == k_pos // C.
Windows are measured in positions, never in cache columns: holes (and left padding) sit between
columns, so a column distance overstates how far back a token is. transformers counts columns, which
equals positions in its own cache (no holes, padding only on the left).

Refused, with one line naming the model type (`check`):
  * ALiBi (bloom, falcon with alibi=True, mpt): transformers derives the biases from a 2-D padding mask
    (bloom, falcon fails with `too many values to unpack` on a 4-D one) or from cache columns (mpt);
  * layers that keep a recurrent or convolution state instead of (or beside) a KV cache: layer types such
    as linear_attention, conv, hybrid (Mamba, Jamba, Qwen3-Next, LFM2, Falcon-H1, ...), and RWKV, xLSTM,
    RecurrentGemma;
  * KV caches shared between layers (Gemma3n, Gemma4 with shared layers): not one cache layer per layer;
  * encoder-decoders;
  * positions or windows counted in cache columns by the model itself: forwards without position_ids
    (the decoder halves of encoder-decoders such as BartForCausalLM: exact at batch size 1, not once a
    batch holds holes), GPT-Neo's local layers;
  * forwards that take no KV cache (openai-gpt).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

# Layer types whose attention is a mask over a plain KV cache.
WINDOW_KINDS = {"full_attention": None, "sliding_attention": "sliding", "chunked_attention": "chunked"}
# Models without layer_types whose state is recurrent (not one K/V entry per token).
RECURRENT_TYPES = ("rwkv", "xlstm", "recurrent_gemma", "mamba", "mamba2", "falcon_mamba")
ALIBI_TYPES = ("bloom",)   # always ALiBi; falcon and mpt have a flag


@dataclass(frozen=True)
class Window:
    """A layer's attention window, in positions: sliding (q - k < size) or chunked (same size-block)."""
    kind: str
    size: int


def text_config(config):
    """The decoder's config (the text config of a composite model)."""
    get = getattr(config, "get_text_config", None)
    return get() if get is not None else config


def _layer_configs(cfg, n: int) -> list:
    """Per-layer configs: transformers >= 5.25 may give layers their own values (per_layer_config)."""
    try:
        per = getattr(cfg, "per_layer_config", None)
    except Exception:  # noqa: BLE001 - a heterogeneous config guards some attributes
        per = None
    return list(per) if per is not None and len(per) == n else [cfg] * n


def num_layers(cfg) -> int:
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    raise ValueError(f"cannot tell how many layers model_type {getattr(cfg, 'model_type', None)!r} has "
                     "(no num_hidden_layers in its config)")


def layer_types(config) -> list[str]:
    """Each layer's attention type, by transformers' rule (module docstring)."""
    cfg = text_config(config)
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        return list(types)
    out = []
    for layer in _layer_configs(cfg, num_layers(cfg)):
        if getattr(layer, "sliding_window", None) is not None:
            out.append("sliding_attention")
        elif getattr(layer, "attention_chunk_size", None) is not None:
            out.append("chunked_attention")
        else:
            out.append("full_attention")
    return out


def layer_windows(config) -> list[tuple[str, Window | None]]:
    """(attention type, window) of every layer; None = full attention. A window no shorter than the
    model's context (max_position_embeddings) never binds and counts as full attention."""
    cfg = text_config(config)
    types = layer_types(cfg)
    limit = getattr(cfg, "max_position_embeddings", None)
    out = []
    for t, layer in zip(types, _layer_configs(cfg, len(types))):
        kind = WINDOW_KINDS.get(t)
        size = None
        if kind is not None:
            size = getattr(layer, "sliding_window" if kind == "sliding" else "attention_chunk_size", None)
        if size is None or (isinstance(limit, int) and size >= limit):
            out.append((t, None))
        else:
            out.append((t, Window(kind, int(size))))
    return out


def mask_plan(config):
    """What the transformers forward gets as attention_mask: None = the full-attention mask for every
    layer; a Window = one windowed mask for every layer; {layer type: Window | None} = a mask per layer
    type, for models whose layers differ (they take such a dict, as from create_masks_for_generate)."""
    layers = layer_windows(config)
    windows = {w for _, w in layers}
    if len(windows) == 1:
        return windows.pop()
    by_type = dict(layers)
    if len(by_type) != len({t for t, _ in layers}) or any(by_type[t] != w for t, w in layers):
        raise ValueError(f"specdec cannot run model_type {getattr(text_config(config), 'model_type', None)!r} "
                         "exactly: layers of one attention type have different windows")
    return by_type


def _alibi(cfg) -> bool:
    if getattr(cfg, "model_type", None) in ALIBI_TYPES or getattr(cfg, "alibi", False) is True:
        return True
    attn = getattr(cfg, "attn_config", None)   # mpt
    return bool(getattr(attn, "alibi", False) if not isinstance(attn, dict) else attn.get("alibi", False))


def unsupported(config) -> str | None:
    """Why specdec cannot run a model of this config exactly (a short phrase), or None."""
    cfg = text_config(config)
    kind = getattr(cfg, "model_type", None)
    if _alibi(cfg):
        return "ALiBi position biases (transformers builds them from a 2-D padding mask or from cache columns)"
    if getattr(cfg, "is_encoder_decoder", False):
        return "an encoder-decoder (specdec decodes decoder-only causal LMs)"
    if kind in RECURRENT_TYPES:
        return "a recurrent state, not a KV cache"
    other = sorted({t for t in layer_types(cfg) if t not in WINDOW_KINDS})
    if other:
        return f"layers of type {', '.join(other)} keep a recurrent or convolution state, not a KV cache"
    if getattr(cfg, "num_kv_shared_layers", 0) or "reuse" in (getattr(cfg, "kv_sharing_modes", None) or ()):
        return "layers share KV caches"
    local = "local" in (getattr(cfg, "attention_layers", None) or ())
    if local and getattr(cfg, "window_size", 0) < (getattr(cfg, "max_position_embeddings", None) or 1 << 30):
        return f"its local layers count their window ({cfg.window_size}) in cache columns, where specdec leaves holes"
    try:
        mask_plan(cfg)
    except ValueError as e:
        return str(e).split("exactly: ", 1)[-1]
    return None


def cache_kwarg(model) -> str | None:
    """The name of forward's KV-cache argument (transformers 5.24 renamed `past_key_values` to `cache`),
    or None if it takes none."""
    params = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def check(model_or_config) -> None:
    """Raise ValueError (one line naming the model type) if specdec cannot run this model exactly."""
    model = model_or_config if isinstance(model_or_config, torch.nn.Module) else None
    config = model_or_config if model is None else getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no config: specdec runs transformers causal LMs")
    reason = unsupported(config)
    if reason is None and model is not None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model   # a PEFT wrapper's model
        params = inspect.signature(base.forward).parameters
        if cache_kwarg(base) is None:
            reason = "its forward takes no KV cache"
        elif "position_ids" not in params:
            reason = "its forward takes no position_ids (it counts positions in cache columns, where specdec leaves holes)"
    if reason is not None:
        kind = getattr(text_config(config), "model_type", None)
        raise ValueError(f"specdec cannot run model_type {kind!r} exactly: {reason}")
