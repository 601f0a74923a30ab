"""Memory on transparent huge pages for the CPU kernels' big, streamed buffers.

Why: a decode step streams every weight once (SmolLM2's quantized 100 MB); on 4 KB pages that is a TLB
miss every 4 KB, and Linux's usual transparent-huge-page mode ("madvise") gives 2 MB pages only to memory
advised so. Measured on the 2-core Xeon (bench/RESULTS.md, "The feature draft in the engine"): the
gguf-q8a step 1.09-1.12x faster with its weights here; the KV cache there too measured within noise
(1.00-1.06x), so it stays on ordinary pages. Costs: a buffer is rounded up to 2 MB; elsewhere than
Linux (no MADV_HUGEPAGE) the same memory on ordinary pages.
"""
from __future__ import annotations

import mmap

import numpy as np

HUGE = 2 << 20


def huge_bytes(nbytes: int) -> np.ndarray:
    """A zeroed uint8 array of nbytes starting on a 2 MB boundary, advised MADV_HUGEPAGE where the OS has
    it. The array keeps its mapping alive (a deep copy of it is an ordinary array)."""
    size = -(-max(int(nbytes), 1) // HUGE) * HUGE
    if not hasattr(mmap, "MAP_ANONYMOUS"):   # not a Unix
        return np.zeros(nbytes, np.uint8)
    m = mmap.mmap(-1, size + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    base = np.frombuffer(m, dtype=np.uint8)
    start = (-base.ctypes.data) % HUGE
    return base[start:start + nbytes]
