"""The decode loops: plain autoregressive decoding (the baseline) and batched speculative decoding.

KV-cache bookkeeping. Each model keeps one Hugging Face DynamicCache plus a validity mask over its
columns ([B, C], passed as the 2-D attention_mask). A row that rejects drafts does not shrink its
cache: the rejected columns become holes (mask 0) that attention skips, and positions come from an
explicit per-row counter, so each row advances by its own accepted count and no row is cut back to
the batch minimum or recomputed for another's sake. Trailing columns that are holes in every row are
cropped after each step (at batch size 1 that is every hole); when holes pile up inside the batch the
cache is compacted with one gather. Finished rows (EOS or length) are dropped from the batch.

The draft cache lags the committed sequence by at most one token: when a row accepts all K drafts, the
draft never saw d_K, so the next round feeds [d_K, bonus] (2 tokens); rows that rejected feed a masked
dummy in that first column.

Host synchronisation: one read per round of the verified tokens and accepted counts (needed to decide
what each row emits and when it stops). Sampling uses the exponential race, which needs no sync.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import torch

from .metrics import DecodeStats
from .sampling import mask_logits, probs_from_logits, sample_tokens
from .verify import LENIENCE_KINDS, verify


# ----------------------------------------------------------------------------------------------------
# Parameters: one source of truth for defaults (the CLI is built from these dataclasses).

@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0   # 0 = greedy
    top_k: int = 0             # 0 = off
    top_p: float = 1.0         # 1 = off
    seed: int | None = None
    eos_token_id: int | list | None = None  # None = no stop token

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p}")

    @property
    def eos_ids(self) -> set:
        if self.eos_token_id is None:
            return set()
        if isinstance(self.eos_token_id, int):
            return {self.eos_token_id}
        return set(int(e) for e in self.eos_token_id)


@dataclass
class GenerationOutput:
    new_tokens: list          # list[list[int]]: per input row, only the generated ids (EOS kept if hit)
    stats: DecodeStats = field(default_factory=DecodeStats)


# ----------------------------------------------------------------------------------------------------
# One model's KV cache with holes.

def cache_kwarg(model) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache` in forward(); accept both."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache():
    from transformers import DynamicCache
    # No config: every layer a plain full-length DynamicLayer, whose tensors we crop / gather directly.
    return DynamicCache()


class _KVState:
    """A model, its DynamicCache, and the validity mask of the cache's columns."""

    def __init__(self, model, batch_size: int, device):
        self.model = model
        self.cache = _new_cache()
        self.kw = cache_kwarg(model)
        self.mask = torch.zeros((batch_size, 0), dtype=torch.long, device=device)  # [B, C]

    @property
    def columns(self) -> int:
        return self.mask.shape[1]

    def forward(self, ids, pos, valid, logits_to_keep: int = 0):
        """ids, pos: [B, S] int64; valid: [B, S] bool. Appends S columns. Returns logits [B, S', V] fp."""
        self.mask = torch.cat([self.mask, valid.to(self.mask.dtype)], dim=1)
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=pos, use_cache=True,
                         logits_to_keep=logits_to_keep, **{self.kw: self.cache})
        return out.logits

    def _layers(self):
        return [layer for layer in getattr(self.cache, "layers", []) if getattr(layer, "keys", None) is not None
                and layer.keys.numel() > 0]

    def set_tail_validity(self, valid_tail):
        """Overwrite the validity of the last S columns. valid_tail: [B, S] bool."""
        S = valid_tail.shape[1]
        self.mask[:, self.columns - S:] = valid_tail.to(self.mask.dtype)

    def crop_trailing_holes(self, valid_cols: int):
        """Drop trailing columns that are holes in every row. valid_cols (host int) = last valid column + 1."""
        if valid_cols >= self.columns:
            return
        self.mask = self.mask[:, :valid_cols]
        for layer in self._layers():
            layer.keys = layer.keys[:, :, :valid_cols]
            layer.values = layer.values[:, :, :valid_cols]

    def select_rows(self, idx):
        self.mask = self.mask.index_select(0, idx)
        for layer in self._layers():
            layer.keys = layer.keys.index_select(0, idx)
            layer.values = layer.values.index_select(0, idx)

    def compact(self):
        """Right-align each row's valid columns (one gather over the cache; costs a full cache copy)."""
        valid = self.mask.bool()                                   # [B, C]
        counts = valid.sum(1)                                      # [B]
        L = int(counts.max())
        C = self.columns
        # Stable order: valid columns keep their order; holes go first and are then cut away.
        order = torch.argsort(valid.to(torch.int8), dim=1, stable=True)[:, C - L:]   # [B, L]
        self.mask = valid.gather(1, order).to(self.mask.dtype)
        for layer in self._layers():
            B, H, _, D = layer.keys.shape
            gidx = order[:, None, :, None].expand(B, H, L, D)
            layer.keys = layer.keys.gather(2, gidx)
            layer.values = layer.values.gather(2, gidx)

    # Holes cost attention work and memory; compaction costs a full cache copy. Compact when the holes
    # waste more than COMPACT_SLACK columns and a quarter of the cache.
    COMPACT_SLACK = 64

    def maybe_compact(self, lower_bound_valid: int):
        """lower_bound_valid: a host-side lower bound on the longest row's valid columns, so that the
        exact count (a host sync) is read only when compaction may be worthwhile."""
        if self.columns - lower_bound_valid <= self.COMPACT_SLACK:
            return
        waste = self.columns - int(self.mask.sum(1).max())
        if waste > self.COMPACT_SLACK and waste * 4 > self.columns:
            self.compact()


class _Timer:
    """Wall-time sections. On CUDA it records events and reads them once at the end (no per-step sync)."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.totals: dict = {}
        self.events: list = []

    def start(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def stop(self, name, t0):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.events.append((name, t0, e))
        else:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0

    def finish(self) -> dict:
        if self.events:
            torch.cuda.synchronize()
            for name, a, b in self.events:
                self.totals[name] = self.totals.get(name, 0.0) + a.elapsed_time(b) / 1000.0
            self.events = []
        return self.totals


# ----------------------------------------------------------------------------------------------------
# Shared input handling.

def _model_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


def _max_positions(model) -> int | None:
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _prepare_inputs(input_ids, attention_mask, device):
    """Validate a (left-padded) batch. Returns ids [B, P], mask [B, P] long, lengths (host list)."""
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError("input_ids must be a [B, P] tensor of token ids (use the tokenizer with padding_side='left')")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids must be [B, P] with B >= 1, got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("empty prompt: every row needs at least one token (e.g. the BOS token)")
    input_ids = input_ids.to(device=device, dtype=torch.long)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device=device, dtype=torch.long)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}")
    lengths = attention_mask.sum(1).tolist()
    if min(lengths) == 0:
        raise ValueError(f"empty prompt in row {lengths.index(0)}: every row needs at least one token")
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("prompts must be left-padded (the last column real in every row): set "
                         "tokenizer.padding_side = 'left'")
    return input_ids, attention_mask, lengths


def _check_context(model, name, lengths, max_new_tokens):
    limit = _max_positions(model)
    need = max(lengths) + max_new_tokens
    if limit is not None and need > limit:
        raise ValueError(f"prompt ({max(lengths)} tokens) + max_new_tokens ({max_new_tokens}) = {need} exceeds "
                         f"the {name}'s context of {limit} positions; shorten the prompt or lower max_new_tokens")


def _prefill(state: _KVState, ids, mask):
    """Feed all prompt tokens but the last (which becomes the pending token). Positions are
    cumsum(mask) - 1 as in Hugging Face generate; pads get position 0 and stay masked."""
    P = ids.shape[1]
    if P > 1:
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        state.forward(ids[:, :-1], pos[:, :-1], mask[:, :-1].bool(), logits_to_keep=1)


def _generator(seed, device):
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


class _Rows:
    """Host-side per-row bookkeeping: what each live row emitted, its budget, and when it stops."""

    def __init__(self, B, params: SamplingParams):
        self.out = [[] for _ in range(B)]
        self.live = list(range(B))       # original row index of each live batch row
        self.params = params
        self.eos = params.eos_ids

    def remaining(self):
        return [self.params.max_new_tokens - len(self.out[r]) for r in self.live]

    def emit(self, emitted_per_live_row):
        """Append tokens; returns the batch indices of rows still live afterwards."""
        keep = []
        for b, toks in enumerate(emitted_per_live_row):
            r = self.live[b]
            room = self.params.max_new_tokens - len(self.out[r])
            toks = toks[:room]
            done = len(toks) == room
            for i, t in enumerate(toks):
                if t in self.eos:
                    toks = toks[:i + 1]
                    done = True
                    break
            self.out[r].extend(toks)
            if not done:
                keep.append(b)
        return keep


# ----------------------------------------------------------------------------------------------------
# Plain autoregressive decoding (the baseline).

@torch.no_grad()
def autoregressive_generate(target, input_ids, attention_mask=None, max_new_tokens=64, temperature=0.0,
                            top_k=0, top_p=1.0, seed=None, eos_token_id=None, vocab_size=None) -> GenerationOutput:
    """Plain decoding of `target` with a KV cache: one forward per token for the whole batch.

    vocab_size: only ids below it are ever emitted (default: the model's logit width).
    """
    params = SamplingParams(max_new_tokens, temperature, top_k, top_p, seed, eos_token_id)
    device = _model_device(target)
    ids, mask, lengths = _prepare_inputs(input_ids, attention_mask, device)
    _check_context(target, "target", lengths, params.max_new_tokens)
    B = ids.shape[0]
    gen = _generator(seed, device)
    stats = DecodeStats(gamma=0)
    timer = _Timer(device)
    t_all = time.perf_counter()

    state = _KVState(target, B, device)
    _prefill(state, ids, mask)
    stats.prefill_calls += 1
    rows = _Rows(B, params)
    pending = ids[:, -1:]                                  # [B, 1]
    pos = (mask.sum(1, keepdim=True) - 1)                  # [B, 1] position of the pending token
    while rows.live:
        t0 = timer.start()
        logits = state.forward(pending, pos, torch.ones_like(pending, dtype=torch.bool))[:, -1]  # [B, V]
        stats.target_calls += 1
        if vocab_size is not None:
            logits = logits[:, :vocab_size]
        nxt = sample_tokens(mask_logits(logits, temperature, top_k, top_p), temperature, gen)  # [B]
        timer.stop("target_s", t0)
        host = nxt.tolist()                                # the one host sync per step
        keep = rows.emit([[t] for t in host])
        pending, pos = nxt.unsqueeze(1), pos + 1
        if len(keep) < len(host):
            rows.live = [rows.live[b] for b in keep]
            if not keep:
                break
            idx = torch.tensor(keep, device=device)
            state.select_rows(idx)
            pending, pos = pending.index_select(0, idx), pos.index_select(0, idx)
    totals = timer.finish()
    stats.target_s = totals.get("target_s", 0.0)
    stats.total_s = time.perf_counter() - t_all
    stats.new_tokens = sum(len(o) for o in rows.out)
    return GenerationOutput(new_tokens=rows.out, stats=stats)


# ----------------------------------------------------------------------------------------------------
# Speculative decoding.

class SpeculativeDecoder:
    """Batched, lossless speculative decoding of `target` with `draft` (two HF causal LMs sharing a
    tokenizer). Greedy output equals plain greedy decoding of the target token for token; sampled output
    is distributed exactly as the target's (after the same temperature / top-k / top-p), unless a lossy
    `lenience` ("lin", "sq", "exp" with lenience_eps in (0, 1]) is asked for.
    """

    def __init__(self, target, draft, gamma: int = 4, vocab_size: int | None = None, backend: str = "auto",
                 lenience: str | None = None, lenience_eps: float = 1.0):
        if int(gamma) != gamma or gamma < 1:
            raise ValueError(f"gamma (draft tokens per step) must be an integer >= 1, got {gamma}")
        if lenience is not None and lenience not in LENIENCE_KINDS:
            raise ValueError(f"lenience must be one of {LENIENCE_KINDS} or None, got {lenience!r}")
        if not (0.0 < lenience_eps <= 1.0):
            raise ValueError(f"lenience_eps must be in (0, 1], got {lenience_eps}")
        self.target, self.draft, self.gamma = target, draft, int(gamma)
        self.device = _model_device(target)
        ddev = _model_device(draft)
        if ddev != self.device:
            raise ValueError(f"target and draft are on different devices ({self.device} vs {ddev}); "
                             "move the draft to the target's input device")
        t_width = target.get_output_embeddings().weight.shape[0]
        d_width = draft.get_output_embeddings().weight.shape[0]
        shared = min(t_width, d_width)
        vocab_size = shared if vocab_size is None else int(vocab_size)
        if not (0 < vocab_size <= shared):
            raise ValueError(f"vocab_size {vocab_size} exceeds a model's logit width (target {t_width}, draft {d_width})")
        # Ids >= vocab_size (logit padding, e.g. Qwen2.5 0.5B 151936 vs 7B 152064) are never compared or emitted.
        self.vocab_size = vocab_size
        self.backend, self.lenience, self.lenience_eps = backend, lenience, lenience_eps
        self._round_hook = None

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens=64, temperature=0.0, top_k=0, top_p=1.0,
                 seed=None, eos_token_id=None) -> GenerationOutput:
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, seed, eos_token_id)
        device, V, gamma = self.device, self.vocab_size, self.gamma
        ids, mask, lengths = _prepare_inputs(input_ids, attention_mask, device)
        _check_context(self.target, "target", lengths, params.max_new_tokens)
        _check_context(self.draft, "draft", lengths, params.max_new_tokens)
        B = ids.shape[0]
        gen = _generator(seed, device)
        stats = DecodeStats(gamma=gamma)
        timer = _Timer(device)
        t_all = time.perf_counter()

        tgt, drf = _KVState(self.target, B, device), _KVState(self.draft, B, device)
        _prefill(tgt, ids, mask)
        _prefill(drf, ids, mask)
        stats.prefill_calls += 2
        rows = _Rows(B, params)
        pending = ids[:, -1]                              # [B] last committed token, in neither cache yet
        pos = mask.sum(1) - 1                             # [B] its position
        prev = pending.clone()                            # [B] d_K of rows that accepted every draft
        prev_needed = torch.zeros(B, dtype=torch.bool, device=device)  # [B]
        any_prev_needed = False                           # host copy, from the round's one sync

        while rows.live:
            # Per-row draft budget: never draft past max_new_tokens (the last token needs no draft).
            n_row = [min(gamma, r - 1) for r in rows.remaining()]
            K = max(n_row)
            Bl = len(rows.live)

            # ---- draft: K tokens autoregressively on the draft's cache
            t0 = timer.start()
            draft_tokens, draft_logits = [], []
            h = 1 if (K > 0 and any_prev_needed) else 0   # an extra leading draft column this round
            if K > 0:
                if h:  # [d_K or a masked dummy, pending]
                    d_ids = torch.stack([prev, pending], 1)
                    d_pos = torch.stack([pos - 1, pos], 1)
                    d_valid = torch.stack([prev_needed, torch.ones_like(prev_needed)], 1)
                else:
                    d_ids, d_pos, d_valid = pending[:, None], pos[:, None], torch.ones((Bl, 1), dtype=torch.bool, device=device)
                for k in range(K):
                    logits = drf.forward(d_ids, d_pos, d_valid, logits_to_keep=1)[:, -1, :V]  # [B, V]
                    stats.draft_calls += 1
                    masked = mask_logits(logits, temperature, top_k, top_p)
                    tok = sample_tokens(masked, temperature, gen)                    # [B]
                    draft_tokens.append(tok)
                    draft_logits.append(masked)
                    if k + 1 < K:  # d_K itself is fed next round, only where it is accepted
                        d_ids, d_pos = tok[:, None], (pos + k + 1)[:, None]
                        d_valid = torch.ones((Bl, 1), dtype=torch.bool, device=device)
                drafts = torch.stack(draft_tokens, 1)                               # [B, K]
                q_logits = torch.stack(draft_logits, 1)                             # [B, K, V]
            else:
                drafts = torch.zeros((Bl, 0), dtype=torch.long, device=device)
                q_logits = torch.zeros((Bl, 0, V), device=device)
            timer.stop("draft_s", t0)

            # ---- target: one forward over [pending, d_1..d_K]
            t0 = timer.start()
            t_ids = torch.cat([pending[:, None], drafts], 1)                          # [B, K+1]
            t_pos = pos[:, None] + torch.arange(K + 1, device=device)[None]           # [B, K+1]
            p_logits = tgt.forward(t_ids, t_pos, torch.ones_like(t_ids, dtype=torch.bool))[:, :, :V]
            p_logits = p_logits.to(device)
            stats.target_calls += 1
            p_masked = mask_logits(p_logits, temperature, top_k, top_p)              # same processing as q
            timer.stop("target_s", t0)

            # ---- verify
            t0 = timer.start()
            n_t = torch.tensor(n_row, device=device)
            res = verify(p_masked, q_logits.to(p_masked.dtype), drafts, temperature=temperature,
                         num_draft_tokens=n_t, generator=gen, backend=self.backend,
                         lenience=self.lenience, lenience_eps=self.lenience_eps)
            host = torch.cat([res.tokens, res.num_accepted[:, None]], 1).tolist()    # the one host sync
            timer.stop("verify_s", t0)

            # ---- bookkeeping: caches keep exactly the accepted prefix as valid columns
            acc = res.num_accepted                                                    # [B]
            ar = torch.arange(K + 1, device=device)[None]
            tgt.set_tail_validity(ar <= acc[:, None])           # pending + accepted drafts
            drf_tail = ar[:, :K] <= acc[:, None]                # pending, d_1..d_{K-1} where accepted
            if K > 0:
                if h:
                    drf_tail = torch.cat([prev_needed[:, None], drf_tail], 1)
                drf.set_tail_validity(drf_tail)
            accepted_host = [row[-1] for row in host]
            max_acc = max(accepted_host)
            emitted = [row[:a + 1] for row, a in zip(host, accepted_host)]
            stats.observe(n_row, accepted_host)
            # Crop the columns that are holes in every row (host ints: no sync). The target added K+1
            # columns (pending + drafts); the draft added h + K (maybe d_K of last round, pending, d_1..d_{K-1}).
            tgt.crop_trailing_holes(tgt.columns - (K + 1) + max_acc + 1)
            if K > 0:
                drf.crop_trailing_holes(drf.columns - (h + K) + h + min(max_acc, K - 1) + 1)
            pending = res.tokens.gather(1, acc[:, None]).squeeze(1)                   # recovered / bonus token
            prev = drafts[:, -1] if K > 0 else pending
            prev_needed = acc == K if K > 0 else torch.zeros_like(prev_needed)
            any_prev_needed = K > 0 and max_acc == K
            pos = pos + acc + 1

            keep = rows.emit(emitted)
            if len(keep) < Bl:
                rows.live = [rows.live[b] for b in keep]
                if not keep:
                    break
                sel = torch.tensor(keep, device=device)
                for st in (tgt, drf):
                    st.select_rows(sel)
                pending, pos, prev, prev_needed = (t.index_select(0, sel) for t in (pending, pos, prev, prev_needed))
                any_prev_needed = K > 0 and any(accepted_host[b] == K for b in keep)
            # Valid columns of the longest row >= its committed tokens minus the pending one (and minus d_K
            # for the draft): a host-side bound, so the exact count is read only when compaction may pay.
            longest = max(lengths[r] + len(rows.out[r]) for r in rows.live) - 2
            tgt.maybe_compact(longest)
            drf.maybe_compact(longest)
            if self._round_hook is not None:  # tests inspect the caches between rounds
                self._round_hook(tgt=tgt, drf=drf, pending=pending, pos=pos, prev=prev, prev_needed=prev_needed,
                                 live=list(rows.live), out=rows.out)

        totals = timer.finish()
        stats.draft_s = totals.get("draft_s", 0.0)
        stats.target_s = totals.get("target_s", 0.0)
        stats.verify_s = totals.get("verify_s", 0.0)
        stats.total_s = time.perf_counter() - t_all
        stats.new_tokens = sum(len(o) for o in rows.out)
        return GenerationOutput(new_tokens=rows.out, stats=stats)
