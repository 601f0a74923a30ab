"""The KV cache of one model: preallocated buffers written in place, with holes.

Layout. Per layer, keys and values live in one buffer [B0, Hkv, capacity, D] allocated once (B0 = the
batch a decode starts with). Columns [0, length) hold tokens; `length` is one write position shared by
every row, a host int. A 2-D validity mask [B0, capacity] says which columns of each row are real:
a rejected draft stays where it was written and becomes a hole (valid = False) that attention skips.
Each forward over S new tokens
  1. `begin(valid_new)` marks columns [length, length+S) and builds the 4-D additive attention mask
     [B, 1, S, length+S] (0 = visible, dtype min = hidden; not -inf, so a query that sees nothing, e.g.
     a left pad, gets finite garbage instead of NaN that a later 0-weight would turn into NaN),
  2. every layer's `write` copies its new K/V into those columns and attends to the buffer's first
     length+S columns (a view: no concatenation, no allocation),
  3. `end(S)` moves the write position past them.
Rewinding is moving `length` back (`crop`); finished rows leave with one in-place row gather
(`select_rows`); when holes waste much of the cache, `compact` moves each row's valid columns to the
front in one gather. A peek (a forward whose tokens are then forgotten) is a forward followed by a
crop: columns at or beyond `length` are never read.

Static mode (for CUDA graphs): shapes must not change between replays, so every forward attends to
all `capacity` columns (the mask hides the unused tail) and writes at a device tensor of column
indices (`write_index`) with index_copy_, which a captured graph replays at new positions.

Windowed attention (sliding windows, chunks: see families.py) needs each column's position: a cache made
with `positions=True` keeps them beside the validity mask (moved with it by compaction and row
selection), and `windowed(mask, window)` hides the columns outside each query's window, counted in
positions, so holes and padding never shift a window.

transformers models see the same buffers through `HFCache`, a subclass of transformers' public
`Cache` whose per-layer `update` is `KVCache.write` (transformers 5.17 to 5.25 all call
`cache.update(k, v, layer_idx, ...)` from every attention layer, and use a 4-D mask, or a dict of
them by layer type, unchanged).
"""
from __future__ import annotations

import torch

# Holes cost attention work and memory; compaction costs a copy of the live cache. Compact when the
# holes waste more than COMPACT_SLACK columns and a quarter of the cache.
COMPACT_SLACK = 64


class KVCache:
    """Preallocated K/V buffers of one model, with holes (see the module docstring). A layer's buffers
    are allocated at its first write, from the shapes the model writes ([B0, Hkv, capacity, D])."""

    def __init__(self, batch: int, capacity: int, dtype: torch.dtype, device, static: bool = False,
                 positions: bool = False, mask_dtype: torch.dtype | None = None):
        """positions: keep each column's position (for windowed masks, `windowed`); costs one small
        write per forward and a gather per compaction or row selection. mask_dtype: the attention mask's
        (default: `dtype`; a float16 cache on the C kernels attends in float32, runner.cache_dtype)."""
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.valid = torch.zeros((batch, capacity), dtype=torch.bool, device=device)  # [B0, capacity]
        self.pos = torch.zeros((batch, capacity), dtype=torch.long, device=device) if positions else None
        self._q_pos = None            # [B, S] positions of the forward in flight (with `pos`)
        self.batch = batch            # live rows: the first `batch` rows of every buffer
        self.length = 0               # columns in use (host int): the shared write position
        self.capacity = capacity
        self.static = static
        self.dtype = dtype
        self.write_index = None       # static mode: [S] int64 device columns of the current forward
        self._pending = 0             # S of the forward in flight (between begin and end)
        self._live_k: list[torch.Tensor] = []
        self._live_v: list[torch.Tensor] = []
        self._numpy = None
        self._valid_np = None         # begin_dense's NumPy view of `valid` (CPU)
        mask_dtype = dtype if mask_dtype is None else mask_dtype
        self._zero = torch.zeros((), dtype=mask_dtype, device=device)
        self._hidden = torch.full((), torch.finfo(mask_dtype).min, dtype=mask_dtype, device=device)

    # -- one forward
    def begin(self, valid_new: torch.Tensor, pos_new: torch.Tensor | None = None) -> torch.Tensor:
        """Mark the S new columns of each row (valid_new: [B, S] bool; pos_new: [B, S] their positions,
        needed when the cache keeps positions) and return the additive mask [B, 1, S, L] of this forward
        (L = length + S, or capacity in static mode): full attention; `windowed` narrows it."""
        B, S = valid_new.shape
        if B != self.batch:
            raise ValueError(f"forward over {B} rows but the cache holds {self.batch}")
        if self.length + S > self.capacity:
            self.compact()
            if self.length + S > self.capacity:
                raise ValueError(f"KV cache full: {self.length} + {S} columns > capacity {self.capacity}")
        start, stop = self.length, self.length + S
        self.valid[:B, start:stop] = valid_new
        if self.pos is not None:
            if pos_new is None:
                raise ValueError("this cache keeps positions (windowed attention): pass each new column's position")
            self.pos[:B, start:stop] = pos_new
            self._q_pos = pos_new
        L = self.capacity if self.static else stop
        if S == 1 and not self.static:  # the decode step: visibility is validity (3 ops, no causal part)
            visible = self.valid[:B, None, None, :L]                                   # [B, 1, 1, L]
        else:  # column c is visible to new token s iff valid and c <= start + s (causal in the block)
            allow = torch.ones((S, L), dtype=torch.bool, device=self.valid.device).tril_(start)  # [S, L]
            visible = (self.valid[:B, None, :L] & allow).unsqueeze(1)                  # [B, 1, S, L]
        if self.static:
            self.write_index = torch.arange(start, stop, device=self.valid.device)
        self._pending = S
        return torch.where(visible, self._zero, self._hidden)

    def dense(self) -> bool:
        """Whether this is one row with no holes in its columns (what a row decoded alone keeps once every
        hole is cropped, unless its prompt came left-padded): begin_dense's precondition. One host read."""
        return (self.batch == 1 and not self.static and self.pos is None
                and bool(self.valid[0, :self.length].all()))

    def begin_dense(self, S: int) -> int:
        """begin() for a dense() cache, on host ints and without the mask (the forward makes the causal one
        itself: lean_numpy.QuantLeanForward.greedy_row): marks the S new columns valid and returns where
        they start. The caller keeps it dense: it crops what it rejects and never leaves a hole."""
        start = self.length
        if self.batch != 1:
            raise ValueError(f"begin_dense is for one row; this cache holds {self.batch}")
        if start + S > self.capacity:   # dense: compaction would free nothing
            raise ValueError(f"KV cache full: {start} + {S} columns > capacity {self.capacity}")
        if self._valid_np is None:
            self._valid_np = self.valid.numpy()
        self._valid_np[0, start:start + S] = True
        self._pending = S
        return start

    def windowed(self, mask: torch.Tensor, window) -> torch.Tensor:
        """`mask` (this forward's, from begin) with every column outside each query's window hidden too.
        window: families.Window, in positions: sliding keeps q_pos - k_pos < size, chunked keeps
        q_pos // size == k_pos // size. Columns already hidden (holes, pads, the future) stay hidden
        whatever position they hold. Costs ~4 small ops per distinct window per forward."""
        B, L = mask.shape[0], mask.shape[-1]
        q = self._q_pos[:, None, :, None]                                        # [B, 1, S, 1]
        k = self.pos[:B, None, None, :L]                                         # [B, 1, 1, L]
        outside = (q - k >= window.size) if window.kind == "sliding" else (q // window.size != k // window.size)
        return mask.masked_fill(outside, self._hidden)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: [B, Hkv, S, D] of the forward in flight. Returns the K, V to attend to: views
        [B, Hkv, L, D] of this layer's buffers."""
        if layer == len(self.keys):  # first forward: allocate this layer's buffers once
            B0, cap = self.valid.shape
            self.keys.append(k.new_zeros((B0, k.shape[1], cap, k.shape[3]), dtype=self.dtype))
            self.values.append(v.new_zeros((B0, v.shape[1], cap, v.shape[3]), dtype=self.dtype))
            self._live_views()
        kb, vb = self._live_k[layer], self._live_v[layer]   # [B, Hkv, capacity, D] views
        if self.static:
            kb.index_copy_(2, self.write_index, k.to(kb.dtype))
            vb.index_copy_(2, self.write_index, v.to(vb.dtype))
            return kb, vb
        start, stop = self.length, self.length + k.shape[2]
        kb[:, :, start:stop] = k
        vb[:, :, start:stop] = v
        return kb[:, :, :stop], vb[:, :, :stop]

    def _live_views(self) -> None:
        """The live rows' views of every buffer, made once per batch change (each view costs a dispatch)."""
        self._live_k = [b[:self.batch] for b in self.keys]
        self._live_v = [b[:self.batch] for b in self.values]
        self._numpy = None

    def numpy_views(self) -> list:
        """[(K, V)] NumPy views of the live rows' buffers (CPU, zero-copy; the NumPy forward's cache)."""
        if self._numpy is None or len(self._numpy) != len(self._live_k):
            self._numpy = [(k.numpy(), v.numpy()) for k, v in zip(self._live_k, self._live_v)]
        return self._numpy

    def end(self) -> None:
        self.length += self._pending
        self._pending = 0

    # -- bookkeeping between forwards (all in place; host ints, no sync unless said)
    def set_tail_validity(self, valid_tail: torch.Tensor) -> None:
        """Overwrite the validity of the last S columns. valid_tail: [B, S] bool."""
        S = valid_tail.shape[1]
        self.valid[:self.batch, self.length - S:self.length] = valid_tail

    def crop(self, length: int) -> None:
        """Forget every column at or beyond `length` (a host int <= self.length)."""
        self.length = min(self.length, int(length))

    def select_rows(self, idx: torch.Tensor) -> None:
        """Keep rows idx (ascending, [B'] int64) as rows 0..B'-1; costs one copy of their columns."""
        n, L = int(idx.numel()), self.length
        for buf in self.keys + self.values:
            buf[:n, :, :L] = buf[idx, :, :L]
        self.valid[:n, :L] = self.valid[idx, :L]
        if self.pos is not None:
            self.pos[:n, :L] = self.pos[idx, :L]
        self.batch = n
        self._live_views()

    def waste(self) -> int:
        """Columns that are holes in the fullest row (one host sync)."""
        return self.length - int(self.valid[:self.batch, :self.length].sum(1).max()) if self.length else 0

    def compact(self) -> None:
        """Move each row's valid columns to the front, keeping their order (one gather over the cache)."""
        B, L = self.batch, self.length
        valid = self.valid[:B, :L]                                                   # [B, L]
        keep = int(valid.sum(1).max()) if L else 0
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)[:, :keep]  # [B, keep]
        self.valid[:B, :keep] = valid.gather(1, order)
        if self.pos is not None:
            self.pos[:B, :keep] = self.pos[:B, :L].gather(1, order)
        for buf in self.keys + self.values:
            Hkv, D = buf.shape[1], buf.shape[3]
            gidx = order[:, None, :, None].expand(B, Hkv, keep, D)
            buf[:B, :, :keep] = buf[:B, :, :L].gather(2, gidx)
        self.length = keep

    def maybe_compact(self, lower_bound_valid: int) -> None:
        """Compact when holes waste more than COMPACT_SLACK columns and a quarter of the cache.
        lower_bound_valid: a host-side lower bound on the fullest row's valid columns, so that the
        exact count (a host sync) is read only when compaction may be worthwhile."""
        if self.length - lower_bound_valid <= COMPACT_SLACK:
            return
        waste = self.waste()
        if waste > COMPACT_SLACK and waste * 4 > self.length:
            self.compact()


def _hf_cache_class():
    """HFCache is defined on first use: importing transformers costs seconds, and the CLI's --help and
    the math modules must not pay it."""
    global _HF_CACHE
    if _HF_CACHE is not None:
        return _HF_CACHE
    from transformers.cache_utils import Cache, CacheLayerMixin

    class _Layer(CacheLayerMixin):
        is_compileable = False
        is_sliding = False

        def __init__(self, kv: KVCache, index: int, window=None):
            super().__init__()
            self.kv, self.index = kv, index
            self.is_initialized = True
            # Declared as transformers' own cache would (DynamicSlidingWindowLayer), though this layer keeps
            # every column: specdec passes the masks, which hide what lies outside the window.
            self.is_sliding = window is not None
            self.sliding_window = None if window is None else window.size

        def lazy_initialization(self, key_states, value_states):
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            return self.kv.write(self.index, key_states, value_states)

        def get_seq_length(self) -> int:
            return self.kv.length

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.kv.length + query_length, 0

        def get_max_length(self) -> int:
            return self.kv.capacity

    class HFCache(Cache):
        """transformers' public Cache API over a KVCache (see the module docstring)."""

        def __init__(self, kv: KVCache, windows: list):
            super().__init__(layers=[_Layer(kv, i, w) for i, w in enumerate(windows)])
            self.kv = kv

    _HF_CACHE = HFCache
    return HFCache


_HF_CACHE = None


def hf_cache(kv: KVCache, windows: list):
    """A transformers Cache that writes into `kv` in place, one layer per entry of `windows` (each a
    families.Window or None for full attention)."""
    return _hf_cache_class()(kv, windows)
