"""The attention window of each layer of a model, as specdec's masks honour it.

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
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

# Layer types whose attention is a mask over a plain KV cache.
WINDOW_KINDS = {"full_attention": None, "sliding_attention": "sliding", "chunked_attention": "chunked"}


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


def cache_kwarg(model) -> str | None:
    """The name of forward's KV-cache argument (transformers 5.24 renamed `past_key_values` to `cache`),
    or None if it takes none."""
    params = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)
