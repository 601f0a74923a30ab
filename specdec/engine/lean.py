"""A lean decode forward for Llama-family models (Llama, Mistral, Qwen2): the same math as the
transformers forward in about a quarter of the operations.

Why: at decode sizes a transformers forward is mostly framework time. A 2-layer, 1M-parameter draft
does ~2 MFLOP per token but ~150 PyTorch operations (module calls, mask building, per-projection
matmuls, cache concatenation), each costing microseconds on a CPU or a kernel launch on a GPU; that
overhead, not the weights, sets its step time. This forward reads the model's own weights (no copy,
unless fusing pays: see below) and runs one layer as: RMSNorm, one QKV matmul, rotary embedding of q
and k together, an in-place cache write, SDPA, the output projection, RMSNorm, one gate-up matmul,
SiLU-gating, the down projection.

Fusing: on the CPU q/k/v and gate/up are concatenated into one weight each, with the preceding
RMSNorm weight multiplied into its columns, and the residual adds ride on the output projections
(addmm): fewer, larger operations, at the price of a copy of those weights (small models there). On
CUDA the weights stay as they are: CUDA graphs remove the dispatch cost instead, and a fused copy of a
7B model's projections would cost GBs. Fused weights are rebuilt when a parameter changes (its version
counter moves), so a draft being trained is always decoded with its current weights.

Equivalence: logits equal the transformers forward up to float rounding (tests/test_runner.py); plain
and speculative decoding use the same forward, so greedy speculative output equals plain greedy
output exactly. Models outside the family (or with attention windows shorter than their context,
length-dependent RoPE, biases where Llama has none) use the transformers forward over the same cache,
which honours windows (`supports` says which).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import families
from .headmap import head_ids
from .quant import RowwiseInt8Linear

_FAMILY = ("llama", "mistral", "qwen2")
_STATIC_ROPE = ("default", "linear", "llama3", "yarn")   # inv_freq independent of the sequence length


def supports(model) -> str | None:
    """None if `model` can run on the lean forward, else the reason it cannot (a short phrase)."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in _FAMILY:
        return f"model_type {kind!r} is not one of {_FAMILY}"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "unexpected module layout"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    if getattr(cfg, "mlp_bias", False) or getattr(cfg, "pretraining_tp", 1) != 1:
        return "mlp_bias / pretraining_tp"
    windows = sorted({w.size for _, w in families.layer_windows(cfg) if w is not None})
    if windows:   # full attention only; windowed models run transformers' forward with windowed masks
        return f"attention window {windows[0]} shorter than the context"
    rope = (getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in _STATIC_ROPE:
        return f"rope_type {rope_type!r} depends on the sequence length"
    attn = inner.layers[0].self_attn
    if getattr(attn, "o_proj", None) is None or getattr(attn.o_proj, "bias", None) is not None:
        return "attention output bias"
    if hasattr(attn, "q_norm"):
        return "per-head q/k norms"
    return None


class _Linear:
    """y = x W^T (+ b) for one fused or plain projection (x 2-D). `module` keeps an int8 (or any
    non-Linear) projection module as is. `wt`, when set, is W^T as a contiguous [in, out] copy (the
    CPU's folded weights): mm / addmm on it skip the transpose dispatch of F.linear."""

    def __init__(self, weight=None, bias=None, module=None, wt=None):
        self.weight, self.bias, self.module, self.wt = weight, bias, module, wt

    def __call__(self, x):
        if self.module is not None:
            return self.module(x)
        if self.wt is not None:
            return torch.mm(x, self.wt) if self.bias is None else torch.addmm(self.bias, x, self.wt)
        return F.linear(x, self.weight, self.bias)

    def add_to(self, residual, x):
        """residual + self(x); one fused multiply-add where the projection is a plain matrix."""
        if self.module is None and self.bias is None:
            return torch.addmm(residual, x, self.wt if self.wt is not None else self.weight.t())
        return residual + self(x)


def _is_plain(m) -> bool:
    return type(m) is torch.nn.Linear


def _plain(m) -> _Linear:
    if _is_plain(m):
        return _Linear(m.weight.detach(), None if m.bias is None else m.bias.detach())
    return _Linear(module=m)


def _projections(mods, norm=None, fold: bool = False):
    """The projections computing `mods` (outputs concatenated in order) from one input, and the RMSNorm
    weight still to multiply that input by (None where it is folded in).
    fold (the CPU): plain weights become one contiguous W^T with `norm` multiplied into its rows
    (x (g W)^T = (x g) W^T: one matmul, no scaling op); int8 layers are concatenated exactly (the norm
    still applied to the input). Otherwise (CUDA: no copies of big weights) one projection per module."""
    if fold and all(_is_plain(m) for m in mods):
        w = torch.cat([m.weight.detach() for m in mods])
        if norm is not None:
            w = w * norm[None, :].to(w.dtype)
        b = None if all(m.bias is None for m in mods) else torch.cat(
            [m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.weight.shape[0]) for m in mods])
        return [_Linear(bias=b, wt=w.t().contiguous())], None
    if fold and len(mods) > 1 and all(isinstance(m, RowwiseInt8Linear) for m in mods):
        return [_Linear(module=RowwiseInt8Linear.concat(mods))], norm
    return [_plain(m) for m in mods], norm


class _Layer:
    def __init__(self, layer, fold: bool):
        a, mlp = layer.self_attn, layer.mlp
        self.qkv, self.norm1 = _projections([a.q_proj, a.k_proj, a.v_proj],
                                            layer.input_layernorm.weight.detach(), fold)
        self.gate_up, self.norm2 = _projections([mlp.gate_proj, mlp.up_proj],
                                                layer.post_attention_layernorm.weight.detach(), fold)
        self.o = _projections([a.o_proj], None, fold)[0][0]
        self.down = _projections([mlp.down_proj], None, fold)[0][0]


def _version_key(model) -> tuple:
    """Changes whenever a parameter is replaced or updated in place (optimizer steps)."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


class LeanForward:
    """The lean forward of one model. `__call__(ids, pos, cache, mask, logits_to_keep)` -> logits."""

    def __init__(self, model, fold: bool | None = None):
        """fold: fuse and fold weights (default: on the CPU only; tests turn it off to check the CUDA
        layout on the CPU)."""
        reason = supports(model)
        if reason is not None:
            raise ValueError(f"the lean forward does not support this model: {reason}")
        cfg = model.config
        self.model = model
        self.H = cfg.num_attention_heads
        self.Hkv = getattr(cfg, "num_key_value_heads", None) or self.H
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        self.eps = cfg.rms_norm_eps
        self.scale = self.D ** -0.5
        self._key = None
        self._fold = fold
        self._build()

    def _build(self):
        m = self.model
        inner = m.model
        dev = inner.embed_tokens.weight.device
        fold = dev.type == "cpu" if self._fold is None else self._fold
        self.embed = inner.embed_tokens.weight.detach()
        self.layers = [_Layer(layer, fold) for layer in inner.layers]
        head = m.get_output_embeddings()
        ids = head_ids(m)
        if ids is not None and _is_plain(head):   # a head covering some ids: only their rows (headmap.py)
            head = torch.nn.Linear(head.in_features, len(ids), bias=False, device=dev, dtype=head.weight.dtype)
            head.weight.data = m.lm_head.weight.detach()[torch.as_tensor(ids, device=dev)]
        (self.head,), self.head_norm = _projections([head], inner.norm.weight.detach(), fold)
        self.norm = inner.norm.weight.detach()   # the final norm's weight, for `hidden` (features)
        self.vocab = int(getattr(head, "out_features", None) or head.weight.shape[0])
        rot = inner.rotary_emb
        self.inv_freq = rot.inv_freq.detach().float().to(dev)
        self.attention_scaling = float(getattr(rot, "attention_scaling", 1.0))
        self._rope_len = 0
        self._key = _version_key(m)

    def refresh(self):
        """Rebuild views and fused weights if the model's parameters changed since the last call."""
        if _version_key(self.model) != self._key:
            self._build()

    # -- rotary embedding: one table [n, 2D] of (cos | signed sin) over positions, grown on demand
    def _table(self, max_pos: int, dtype):
        if max_pos >= self._rope_len or self._rope.dtype != dtype:
            n = max(2 * max_pos, 256)
            f = torch.outer(torch.arange(n, device=self.inv_freq.device, dtype=torch.float32), self.inv_freq)
            emb = torch.cat([f, f], dim=-1)                                   # [n, D] (half-split layout)
            sin = emb.sin()
            # rotate_half(x) * sin == roll(x, D/2) * [-sin_1, sin_2]: one roll instead of slice-neg-cat
            sin[:, :self.D // 2] *= -1
            self._rope = (torch.cat([emb.cos(), sin], dim=-1) * self.attention_scaling).to(dtype)
            self._rope_len = n
        return self._rope

    def _rms(self, x, weight=None):
        """transformers' LlamaRMSNorm: in fp32, then back to the input dtype, times `weight` (None where
        the next projection has it folded in)."""
        if x.dtype == torch.float32:   # skip two no-op casts: each still costs a dispatch
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        else:
            xf = x.float()
            x = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return x if weight is None else weight * x

    def __call__(self, ids, pos, cache, mask, logits_to_keep: int = 0, embeds_add=None, hidden: bool = False):
        """ids, pos: [B, S] int64; cache: KVCache (begin() already called; mask [B, 1, S, L] from it).
        Returns logits [B, S', V] of the last logits_to_keep positions (0 = all).
        embeds_add [B, S, d]: added to the token embeddings (a feature draft's input, engine/features.py);
        hidden: also return the final-normed states [B, S, d] of every position (what the head reads:
        a target's features), as (logits, hidden).
        Activations stay 2-D ([B*S, d]) between attentions: a 3-D matmul costs two reshapes more."""
        B, S = ids.shape
        H, Hkv, D = self.H, self.Hkv, self.D
        x = F.embedding(ids.reshape(-1), self.embed)                          # [N, d], N = B*S
        if embeds_add is not None:
            x = x + embeds_add.reshape(x.shape).to(x.dtype)
        rope = F.embedding(pos.reshape(-1), self._table(cache.capacity, x.dtype)).view(-1, 1, 2 * D)
        cos, sin = rope[..., :D], rope[..., D:]                                # [N, 1, D] each
        G = H // Hkv                                                          # query heads per KV head
        gmask = mask if G == 1 else mask.repeat(1, 1, G, 1)                   # [B, 1, G*S, L]
        for i, layer in enumerate(self.layers):
            h = self._rms(x, layer.norm1)
            if len(layer.qkv) == 1:
                qkv = layer.qkv[0](h).view(-1, H + 2 * Hkv, D)                # [N, H+2Hkv, D]
                qk, v = qkv[:, :H + Hkv], qkv[:, H + Hkv:]
            else:
                q, k, v = (p(h) for p in layer.qkv)
                qk = torch.cat([q.view(-1, H, D), k.view(-1, Hkv, D)], 1)
                v = v.view(-1, Hkv, D)
            qk = torch.addcmul(qk * cos, qk.roll(D // 2, dims=-1), sin)       # RoPE on q and k at once
            K, V = cache.write(i, qk[:, H:].view(B, S, Hkv, D).transpose(1, 2),
                               v.reshape(B, S, Hkv, D).transpose(1, 2))        # [B, Hkv, L, D]
            # Grouped-query attention without copying K/V: the G query heads of one KV head become
            # G * S queries of that head (head h = kv * G + j, transformers' repeat_kv order).
            q = qk[:, :H].view(B, S, H, D)
            q = q.transpose(1, 2) if G == 1 else \
                q.reshape(B, S, Hkv, G, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, G * S, D)
            # A float64 cache (int8 models, runner.cache_dtype): attention runs in float64, back to x's dtype.
            o = F.scaled_dot_product_attention(q.to(K.dtype), K, V, attn_mask=gmask, scale=self.scale).to(x.dtype)
            o = o.transpose(1, 2) if G == 1 else o.view(B, Hkv, G, S, D).permute(0, 3, 1, 2, 4)
            x = layer.o.add_to(x, o.reshape(-1, H * D))
            h = self._rms(x, layer.norm2)
            if len(layer.gate_up) == 1:
                g, u = layer.gate_up[0](h).chunk(2, dim=-1)
            else:
                g, u = (p(h) for p in layer.gate_up)
            x = layer.down.add_to(x, F.silu(g) * u)
        feats = self._rms(x, self.norm).view(B, S, -1) if hidden else None   # [B, S, d]
        if logits_to_keep and logits_to_keep < S:
            x = x.view(B, S, -1)[:, -logits_to_keep:].reshape(B * logits_to_keep, -1)
        logits = self.head(self._rms(x, self.head_norm)).view(B, -1, self.vocab)
        return (logits, feats) if hidden else logits
