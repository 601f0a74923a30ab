"""Where a model runs: its input device, its logit width, and device names from the user."""
from __future__ import annotations

import torch


def input_device(model) -> torch.device:
    """Where a (possibly multi-device) model takes its input ids: its input embeddings' device."""
    return model.get_input_embeddings().weight.device


def logit_width(model) -> int:
    """Number of logits the model emits (an int8 head has no .weight: it carries out_features)."""
    head = model.get_output_embeddings()
    width = getattr(head, "out_features", None)
    return int(width) if width is not None else int(head.weight.shape[0])


def resolve_device(name: str | None, flag: str = "--device") -> torch.device:
    """'auto' -> cuda when a CUDA device is visible, else cpu. A bad name or an absent device is a
    one-line ValueError that says what to pass instead."""
    name = "auto" if name is None else str(name).strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag} {name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name}: no CUDA device is visible (torch {torch.__version__}); "
                             f"use {flag} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type != "cpu":
        raise ValueError(f"{flag} {name!r}: specdec runs on cpu or cuda")
    return dev
