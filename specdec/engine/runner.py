"""One model with its KV cache: the cached decode step that every loop in specdec runs on.

`ModelRunner(model, batch, capacity)` owns a KVCache (specdec/engine/kvcache.py) and runs the model over it:
  * the lean forward (specdec/engine/lean.py) for Llama-family models, else the transformers forward with
    the cache behind transformers' public Cache API (`impl="auto"` picks; both write in place);
  * optionally as CUDA graphs (specdec/engine/graphs.py): every (batch, tokens) shape captured once, then
    replayed, so a decode step costs one graph launch instead of hundreds of kernel launches.
`forward(ids, pos, valid)` appends S columns (valid = which of them are real) and returns logits;
`peek` does the same and forgets them; `prefill` feeds a left-padded prompt but its last token.
Positions are explicit per row, so a row's cache may hold holes (rejected drafts) without shifting
anything.
"""
from __future__ import annotations

import torch

from . import families, lean, lean_numpy, quant
from .headmap import HeadMap
from .kvcache import KVCache, hf_cache
from .sampling import argmax, unusable_rows
from .devices import input_device, logit_width

IMPLS = ("auto", "lean", "numpy", "hf")


def cache_kwarg(model) -> str:
    """transformers 5.24 renamed forward's `past_key_values` to `cache`; accept both."""
    return families.cache_kwarg(model) or "past_key_values"


def model_dtype(model) -> torch.dtype:
    return model.get_input_embeddings().weight.dtype


def lean_forward_of(model) -> lean.LeanForward:
    """The model's LeanForward, built once and kept on the model (rebuilt if its weights change)."""
    fwd = getattr(model, "_specdec_lean", None)
    if fwd is None or fwd.model is not model:
        fwd = lean.LeanForward(model)
        object.__setattr__(model, "_specdec_lean", fwd)   # not a submodule: no state_dict entry
    else:
        fwd.refresh()
    return fwd


def resolve_impl(model, impl: str = "auto") -> str:
    """The forward a model runs on. auto: the NumPy lean forward for small float32 models on the CPU
    (dispatch-bound) when NumPy's BLAS runs one thread, the PyTorch lean forward for other Llama-family
    models, transformers' forward otherwise."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        if lean.supports(model) is not None:
            return "hf"
        small = lean_numpy.is_small(model) and lean_numpy.blas_single_threaded()
        quantized = lean_numpy.quantized(model)   # quantize="gguf" / "q8_0": the C kernels' forward
        return "numpy" if (small or quantized) and lean_numpy.supports(model) is None else "lean"
    check = {"lean": lean.supports, "numpy": lean_numpy.supports}.get(impl)
    reason = check(model) if check else None
    if reason is not None:
        raise ValueError(f"impl={impl!r} does not support {type(model).__name__}: {reason}; use impl='auto' or 'hf'")
    return impl


def numpy_forward_of(model):
    """NumpyLeanForward, or QuantLeanForward for a model with quantized weights (lean_numpy.forward_of)."""
    npf = lean_numpy.forward_of(model, lean_forward_of(model), getattr(model, "_specdec_numpy", None))
    object.__setattr__(model, "_specdec_numpy", npf)
    return npf


KV_CACHES = ("float32", "float16")   # --kv-cache (models/options.py EngineBlock)


def set_kv_cache(model, kind: str) -> None:
    """What `model`'s KV cache holds from now on: "float32" (the default: the float forward's own values)
    or "float16" (llama.cpp's default cache type: half the bytes a long context streams every step; K and V
    rounded to nearest even as they are written, so the model's numbers change slightly, the same for every
    row, batch and draft: greedy speculative decoding still reproduces plain decoding of this model).
    float16 runs on the C kernels only (a model with quantized weights, --quantize gguf / q8_0 / -q8a)."""
    if kind not in KV_CACHES:
        raise ValueError(f"--kv-cache must be one of {', '.join(KV_CACHES)}, got {kind!r}")
    if kind == "float16" and not lean_numpy.quantized(model):
        raise ValueError("--kv-cache float16 runs on the C kernels: use it with --quantize gguf, gguf-q8a, q8_0 or "
                         f"q8_0-q8a on the CPU ({type(model).__name__} here has no quantized weights)")
    object.__setattr__(model, "_specdec_kv_cache", kind)   # not a submodule: no state_dict entry


def kv_cache_of(model) -> str:
    """set_kv_cache's choice for `model` ("float32" unless set)."""
    return getattr(model, "_specdec_kv_cache", "float32")


def cache_dtype(model, impl: str) -> torch.dtype:
    """The KV cache's dtype: the model's, except float64 for an int8 model on the lean forward.

    Why: attention sums over the cache's columns, and where padding and holes sit (which differs between
    a row decoded alone, in a ragged batch, or as a speculative verify) changes the order of those sums
    and so the last bits of the result. In float32 that is float rounding. An int8 model then rounds every
    activation row to 255 levels, and a last-bit change that lands on a rounding boundary moves a level
    (the bundled int8 target's greedy output once changed with the batch a row was in). With K, V (and
    so the scores and both reductions) in float64, the result rounded back to float32 no longer depends
    on the layout. The cost is attention arithmetic and twice the cache's bytes, most at batch > 1, where
    the cache outweighs the int8 weights (measured: bench/RESULTS.md, "Fast decode path").
    float16 where set_kv_cache asked for it (the C kernels convert on load and attend in float32)."""
    if kv_cache_of(model) == "float16":
        if impl != "numpy":
            raise ValueError(f"--kv-cache float16 runs on the C kernels (impl auto or numpy), not impl {impl!r}")
        return torch.float16
    if impl == "lean" and quant.quantization_of(model) == "int8":
        return torch.float64
    return model_dtype(model)


class ModelRunner:
    def __init__(self, model, batch: int, capacity: int, impl: str = "auto", cuda_graphs: bool = False,
                 static: bool | None = None):
        """static: the cache's static mode (default: on with cuda_graphs); tests force it on the CPU to
        check that the shapes graphs need compute the same logits."""
        families.check(model)
        self.model = model
        self.device = input_device(model)
        self.impl = resolve_impl(model, impl)
        if cuda_graphs and (self.device.type != "cuda" or self.impl != "lean"):
            raise ValueError("CUDA graphs need a CUDA device and a model the lean forward supports "
                             f"(here: {self.device.type}, {self.impl}); turn them off")
        static = cuda_graphs if static is None else static
        if cuda_graphs and not static:
            raise ValueError("CUDA graphs need the static cache")
        if static:
            capacity = -(-capacity // 64) * 64   # SDPA's fused kernels want an aligned mask width
        # Windowed layers (the lean forwards have none: lean.supports) need each column's position.
        self._plan = families.mask_plan(model.config) if self.impl == "hf" else None
        dtype = cache_dtype(model, self.impl)
        self.kv = KVCache(batch, capacity, dtype, self.device, static=static, positions=self._plan is not None,
                          mask_dtype=torch.float32 if dtype == torch.float16 else None)
        self.graphs = None
        # a draft whose head covers only some ids (engine/headmap.py): full-width logits, -inf elsewhere
        self.head = HeadMap.of(model, logit_width(model), self.device)
        if self.impl == "lean":
            self._lean = lean_forward_of(model)
        elif self.impl == "numpy":
            self._lean = numpy_forward_of(model)
        else:
            self._hf_cache = hf_cache(self.kv, [w for _, w in families.layer_windows(model.config)])
            self._kw = cache_kwarg(model)
        if cuda_graphs:
            from .graphs import GraphSet
            self.graphs = GraphSet(self)

    # -- forwards
    def eager(self, ids, pos, mask, logits_to_keep: int = 0, embeds_add=None, hidden: bool = False):
        """One forward over the cache whose begin() produced `mask`. ids, pos: [B, S]. embeds_add, hidden:
        a feature draft's input and a target's features (lean.LeanForward.__call__; the lean forwards only)."""
        if self.impl in ("lean", "numpy"):
            return self._lean(ids, pos, self.kv, mask, logits_to_keep, embeds_add=embeds_add, hidden=hidden)
        if embeds_add is not None or hidden:
            raise ValueError("a feature draft and its target run on the lean forwards (impl lean or numpy), "
                             f"not {self.impl!r}: use impl='auto' with a Llama-family pair")
        out = self.model(input_ids=ids, attention_mask=self._layer_masks(mask), position_ids=pos, use_cache=True,
                         logits_to_keep=logits_to_keep, **{self._kw: self._hf_cache})
        return out.logits

    def _layer_masks(self, mask):
        """The attention_mask the transformers forward gets (families.mask_plan): the full-attention mask,
        one windowed mask, or a mask per layer type."""
        plan = self._plan
        if plan is None:
            return mask
        if isinstance(plan, families.Window):
            return self.kv.windowed(mask, plan)
        return {t: mask if w is None else self.kv.windowed(mask, w) for t, w in plan.items()}

    def forward(self, ids, pos, valid, logits_to_keep: int = 0, embeds_add=None, hidden: bool = False,
                expand: bool = True):
        """Append S columns (ids, pos: [B, S] int64; valid: [B, S] bool); logits [B, S', V].
        embeds_add [B, S, d] is added to the embeddings; hidden: return (logits, features [B, S, d]).
        expand=False: a head covering some ids (self.head) returns its logits as the forward made them,
        [B, S', len(self.head.ids)] where the lean forwards computed only those (a greedy draft's argmax
        needs no full-width copy)."""
        mask = self.kv.begin(valid, pos)
        plain = embeds_add is None and not hidden   # what CUDA graphs capture
        if self.graphs is not None and plain and self.graphs.eligible(ids.shape[1]):
            out = self.graphs.run(ids, pos, mask, logits_to_keep)
        else:
            out = self.eager(ids, pos, mask, logits_to_keep, embeds_add, hidden)
        self.kv.end()
        logits, feats = out if hidden else (out, None)
        logits = logits if self.head is None or not expand else self.head.expand(logits)
        return (logits, feats) if hidden else logits

    @property
    def greedy_ids(self) -> bool:
        """Whether forward_greedy runs on a greedy head (lean_numpy.QuantLeanForward.greedy: the C kernels'
        forward of a weight-only quantized model with a q8_0 head) rather than on forward's logits. The
        first ask builds the greedy head (qweights.greedy_of): ask only for a model decoded greedily as a
        target."""
        return self.impl == "numpy" and self.head is None and getattr(self._lean, "greedy_head", False)

    def forward_greedy(self, ids, pos, valid, vocab: int):
        """forward for greedy decoding: (argmax [B, S] int64 of logits[..., :vocab], whether any of those
        rows is unusable: sampling.unusable_rows), the same as from forward's logits, bit for bit; on a
        greedy head without computing the V logits (greedy_ids)."""
        if not self.greedy_ids:
            logits = self.forward(ids, pos, valid)[..., :vocab]
            return argmax(logits), bool(unusable_rows(logits).any())
        mask = self.kv.begin(valid, pos)
        out = self._lean.greedy(ids, pos, self.kv, mask, vocab)
        self.kv.end()
        return out

    @property
    def dense(self) -> bool:
        """Whether greedy_row can run: greedy_ids, on one row whose cache has no holes (KVCache.dense)."""
        return self.greedy_ids and self.kv.dense()

    def greedy_row(self, ids: list, pos: int, vocab: int) -> tuple[list, bool]:
        """forward_greedy for one row of a dense cache on host ints: ids [S] at positions pos, pos+1, ...
        -> (argmax ids [S] as a list, whether any of those rows is unusable); the same bits. A decode loop
        at batch 1 runs on it (decoding.py): it crops what it rejects, so the cache stays dense."""
        self.kv.begin_dense(len(ids))
        out = self._lean.greedy_row(ids, pos, self.kv, vocab)
        self.kv.end()
        return out

    def peek(self, ids, pos, valid, logits_to_keep: int = 0):
        """A forward whose columns are forgotten afterwards (the cache is left as it was)."""
        length = self.kv.length
        logits = self.forward(ids, pos, valid, logits_to_keep)
        self.kv.crop(length)
        return logits

    def prefill(self, ids, mask, hidden: bool = False):
        """Feed every prompt token but the last (which the decode loop feeds as its pending token).
        ids, mask: [B, P] left-padded. Positions are cumsum(mask) - 1 as in transformers' generate;
        pads get position 0 and stay holes. hidden: return the features [B, P-1, d] of the tokens fed
        (None when there are none)."""
        if ids.shape[1] > 1:
            pos = (mask.cumsum(1) - 1).clamp_min(0)
            out = self.forward(ids[:, :-1], pos[:, :-1], mask[:, :-1].bool(), logits_to_keep=1, hidden=hidden)
            return out[1] if hidden else None
        return None

    # -- cache bookkeeping (see KVCache)
    @property
    def columns(self) -> int:
        return self.kv.length

    def set_tail_validity(self, valid_tail):
        self.kv.set_tail_validity(valid_tail)

    def crop(self, length: int):
        self.kv.crop(length)

    def select_rows(self, idx):
        self.kv.select_rows(idx)

    def maybe_compact(self, lower_bound_valid: int):
        self.kv.maybe_compact(lower_bound_valid)
