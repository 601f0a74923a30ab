"""Where specdec keeps what it computes once and reuses: $SPECDEC_CACHE_DIR, else
$XDG_CACHE_HOME/specdec, else ~/.cache/specdec. Each kind of entry has its own folder below it
(`costs/` for measured round costs: costmodel/cache.py; `gguf/` for converted GGUF models:
models/gguf_cache.py; `drafts/` for packed drafts completed from their target: models/draft.py; `native/` for
the compiled C kernels: engine/native.py). Every cache asks this one
function, so one variable moves them all."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("SPECDEC_CACHE_DIR"):
        return Path(os.environ["SPECDEC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "specdec"
