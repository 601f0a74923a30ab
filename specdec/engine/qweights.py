"""A model's weights as quantized blocks for the CPU kernels (qkernels.py): quantize="gguf" or "q8_0".

  gguf  the blocks of the GGUF file the model was converted from (e.g. SmolLM2-135M-Instruct.Q4_1.gguf:
        Q4_1 layers, a Q8_0 tied head). The model IS that file's model: each tensor, dequantized, must
        equal the model's float32 weight bit for bit (checked once here; refused otherwise). llama.cpp
        stores q and k rows permuted for its RoPE layout (transformers undoes it on load); permuting rows
        moves whole rows of blocks, so the blocks are un-permuted the same way and stay exact.
  q8_0  any float model, every projection and the LM head rounded to q8_0 blocks in process (ggml's
        quantizer). The model's float32 weights are overwritten with the dequantized blocks, so every
        forward of the model (transformers', the lean ones, the kernels) computes one and the same model.
        With tied embeddings the input embedding is rounded too (it is the head's tensor), as llama.cpp's
        q8_0 token_embd is.
gguf-q8a / q8_0-q8a  the same blocks, run with each activation row rounded per 32-value block to Q8 and
        integer block dot products (qkernels.c qgemm_q8a; llama.cpp's own CPU arithmetic). Opt-in: a
        different model from the weight-only one (its logits are close, not equal, to it); still a fixed
        function of each row, so speculative decoding stays exact. Only the C kernels' forward
        rounds activations; impl lean / hf run the weight-only model.
Embeddings and norms stay float32 (a row gather and d-wide vectors). The weights are attached to the
model (`weights_of`), not its state_dict; they go stale if the model's parameters change afterwards
(checked where a forward is built).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..common.fingerprint import file_sha256
from . import arena
from .headmap import head_ids
from .qformats import BLOCK, BLOCK_BYTES, QUANTIZERS, dequantize
from .qkernels import GreedyHead, QMatrix, greedy_head, pack_q8a

Q8A = "-q8a"                                   # suffix: the same blocks, Q8 activations
MODES = ("gguf", "q8_0", "gguf" + Q8A, "q8_0" + Q8A)
_ATTR = "_specdec_qweights"


@dataclass
class QuantLayer:
    qkv: QMatrix            # q | k | v rows
    o: QMatrix
    gate_up: QMatrix        # gate | up rows
    down: QMatrix
    norm1: np.ndarray       # [d] float32 RMSNorm weights (not folded: the blocks are the weights)
    norm2: np.ndarray


@dataclass
class QuantWeights:
    mode: str
    layers: list[QuantLayer]
    head: QMatrix
    head_norm: np.ndarray
    source: dict = field(default_factory=dict)    # gguf: path, sha256; q8_0: {}
    key: tuple = ()                               # version_key(model) when built
    arena: bool = False                           # the blocks live in one huge-page arena (_huge_arena)
    greedy: GreedyHead | None = None              # the greedy head (greedy_of; weight-only modes)
    greedy_built: bool = False                    # greedy_of has run (greedy None: this head has none)

    @property
    def act(self) -> str:
        """The activations the kernels run with: "q8" (mode ...-q8a) or "f32" (qkernels.ACTS)."""
        return "q8" if self.mode.endswith(Q8A) else "f32"

    @property
    def nbytes(self) -> int:
        mats = [m for ly in self.layers for m in (ly.qkv, ly.o, ly.gate_up, ly.down)] + [self.head]
        return sum(m.nbytes for m in mats)


def in_kernel_layout(qw: QuantWeights) -> QuantWeights:
    """qw with its matrices in the layout its GEMM reads, in place: for Q8 activations regrouped 8 blocks
    at a time (qkernels.pack_q8a: the same bytes), once; weight-only GEMMs read the GGUF layout as
    built; then every matrix moved into one arena of huge pages (`_huge_arena`). Called where the kernels
    run (it needs the C library)."""
    if qw.act == "q8" and qw.head.layout != "q8a":
        qw.layers = [QuantLayer(pack_q8a(ly.qkv), pack_q8a(ly.o), pack_q8a(ly.gate_up), pack_q8a(ly.down),
                                ly.norm1, ly.norm2) for ly in qw.layers]
        qw.head = pack_q8a(qw.head)
    if not qw.arena:
        _huge_arena(qw)
    return qw


def _huge_arena(qw: QuantWeights) -> None:
    """Move every matrix's blocks into one huge-page buffer (engine/arena.py): a step streams them all."""
    names = ("qkv", "o", "gate_up", "down")
    mats = [getattr(ly, n) for ly in qw.layers for n in names] + [qw.head]
    sizes = [-(-m.blocks.nbytes // 4096) * 4096 for m in mats]                   # each on a 4 KB boundary
    base = arena.huge_bytes(sum(sizes))
    moved, off = [], 0
    for m, size in zip(mats, sizes):
        view = base[off:off + m.blocks.nbytes].reshape(m.blocks.shape)
        view[...] = m.blocks
        moved.append(replace(m, blocks=view))
        off += size
    qw.layers = [replace(ly, **dict(zip(names, moved[4 * i:4 * i + 4]))) for i, ly in enumerate(qw.layers)]
    qw.head = moved[-1]
    qw.arena = True


def greedy_of(qw: QuantWeights) -> GreedyHead | None:
    """qw's greedy head (qkernels.greedy_head: greedy steps take the float head's argmax from the
    integer-dot head plus an exact recheck), built on the first ask: weight-only modes with a q8_0 head;
    None elsewhere. Built on request rather than with the layout because only a model decoded greedily
    as a target reads it (runner.ModelRunner.greedy_ids): a draft never pays for it. It costs ~0.2 s
    and a second copy of the head's blocks, regrouped (SmolLM2: 30 MB, on huge pages of its own like
    the arena's), plus the blocks' L1 norms [N, K/32] float32."""
    if not qw.greedy_built:
        g = greedy_head(qw.head) if qw.act == "f32" else None
        if g is not None:
            blocks = arena.huge_bytes(g.packed.blocks.nbytes).reshape(g.packed.blocks.shape)
            blocks[...] = g.packed.blocks
            g = replace(g, packed=replace(g.packed, blocks=blocks))
        qw.greedy, qw.greedy_built = g, True
    return qw.greedy


def version_key(model) -> tuple:
    """Changes whenever a parameter is replaced or updated in place (lean.py keys its fused copies alike)."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def weights_of(model) -> QuantWeights | None:
    return getattr(model, _ATTR, None)


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


def _modules(model):
    """[(q, k, v, o, gate, up, down, norm1, norm2)] per layer, the head, the final norm (a Llama-style
    layout; None if the model has another)."""
    inner = getattr(model, "model", None)
    try:
        mods = [(ly.self_attn.q_proj, ly.self_attn.k_proj, ly.self_attn.v_proj, ly.self_attn.o_proj,
                 ly.mlp.gate_proj, ly.mlp.up_proj, ly.mlp.down_proj, ly.input_layernorm, ly.post_attention_layernorm)
                for ly in inner.layers]
        return mods, model.get_output_embeddings(), inner.norm
    except AttributeError:
        return None


def supports(model) -> str | None:
    """None if the model's projections can be quantized (a Llama-style layout of plain nn.Linear with
    float weights on the CPU, every input width a multiple of 32), else why not. The forward that runs
    them has its own check (lean.supports)."""
    found = _modules(model)
    if found is None:
        return "not a Llama-style layout (model.layers[i].self_attn.q_proj ... mlp.down_proj)"
    mods, head, _ = found
    linears = [m for layer in mods for m in layer[:7]] + [head]
    if any(type(m) is not torch.nn.Linear for m in linears):
        return "projections are not plain nn.Linear (already quantized?)"
    if any(m.weight.device.type != "cpu" or not m.weight.is_floating_point() for m in linears):
        return "weights are not floating point on the CPU"
    widths = sorted({m.in_features for m in linears if m.in_features % BLOCK})
    if widths:
        return f"input widths {widths} are not multiples of {BLOCK} (the block size)"
    if any(m.bias is not None for layer in mods for m in (layer[3],) + layer[4:7]) or head.bias is not None:
        return "biases outside q/k/v"
    return None


def _qmat(parts: list[tuple[str, np.ndarray]], biases=None) -> QMatrix:
    """One QMatrix computing `parts` side by side (their rows concatenated; one block format)."""
    kinds = {kind for kind, _ in parts}
    if len(kinds) != 1:
        raise ValueError(f"fused projections must share one block format, got {sorted(kinds)}")
    kind = kinds.pop()
    blocks = np.ascontiguousarray(np.concatenate([b for _, b in parts]))
    bias = None
    if biases is not None and any(b is not None for b in biases):
        bias = np.concatenate([b if b is not None else np.zeros(p.shape[0], np.float32)
                               for b, (_, p) in zip(biases, parts)])
    return QMatrix(kind, blocks, blocks.shape[1] // BLOCK_BYTES[kind] * BLOCK, bias)


def _bias(m):
    return None if m.bias is None else _np(m.bias)


def _assemble(model, mode: str, blocks_of, source: dict) -> QuantWeights:
    """QuantWeights from `blocks_of(module) -> (kind, blocks)` for every projection and the head."""
    mods, head, norm = _modules(model)
    kind, head_blocks = blocks_of(head)
    ids = head_ids(model)
    if ids is not None:   # a head covering some ids (headmap.py): only their rows, as lean.LeanForward's
        head_blocks = np.ascontiguousarray(head_blocks[np.asarray(ids)])
    layers = [QuantLayer(_qmat([blocks_of(q), blocks_of(k), blocks_of(v)], [_bias(q), _bias(k), _bias(v)]),
                         _qmat([blocks_of(o)]), _qmat([blocks_of(g), blocks_of(u)]), _qmat([blocks_of(d)]),
                         _np(n1.weight), _np(n2.weight))
              for q, k, v, o, g, u, d, n1, n2 in mods]
    return QuantWeights(mode, layers, _qmat([(kind, head_blocks)]), _np(norm.weight), source, version_key(model))


def quantize_q8_0(model, mode: str = "q8_0") -> QuantWeights:
    """Round every projection and the head of `model` to q8_0 in place; the blocks (see the module doc).
    mode: the name errors quote (q8_0 or q8_0-q8a)."""
    reason = supports(model)
    if reason is not None:
        raise ValueError(f'quantize="{mode}" does not support this model: {reason}')
    done: dict[int, tuple] = {}

    def blocks_of(m):
        key = m.weight.data_ptr()            # a tied head shares the embedding's tensor: round it once
        if key not in done:
            blocks = QUANTIZERS["q8_0"](_np(m.weight))
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(dequantize(blocks, "q8_0", m.in_features)).to(m.weight.dtype))
            done[key] = ("q8_0", blocks)
        return done[key]

    return _assemble(model, "q8_0", blocks_of, {})


_GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
               "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def _unpermute(rows: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (convert_hf_to_gguf's `permute`): whole rows move."""
    n = rows.shape[0]
    return rows.reshape(heads, n // heads // 2, 2, -1).swapaxes(1, 2).reshape(rows.shape)


def _gguf_names(model) -> dict[int, tuple[str, int | None]]:
    """id(module) -> (GGUF tensor name, heads to un-permute its rows by, or None)."""
    cfg = model.config
    H = cfg.num_attention_heads
    Hkv = getattr(cfg, "num_key_value_heads", None) or H
    names = {}
    for i, layer in enumerate(model.model.layers):
        for mod in (layer.self_attn, layer.mlp):
            for attr, short in _GGUF_NAMES.items():
                if hasattr(mod, attr):
                    heads = {"q_proj": H, "k_proj": Hkv}.get(attr)
                    names[id(getattr(mod, attr))] = (f"blk.{i}.{short}.weight", heads)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    names[id(model.get_output_embeddings())] = ("token_embd.weight" if tied else "output.weight", None)
    return names


def recorded_gguf(model) -> str | None:
    """The GGUF a converted model came from, as its config records it (`specdec_gguf: {path, sha256}`)."""
    rec = getattr(model.config, "specdec_gguf", None)
    return rec.get("path") if isinstance(rec, dict) else None


def from_gguf(model, path, mode: str = "gguf") -> QuantWeights:
    """The blocks of GGUF file `path` for `model`, each checked equal to the model's weight bit for bit.
    mode: the name errors quote (gguf or gguf-q8a)."""
    import gguf  # optional: only this mode reads GGUF files

    reason = supports(model)
    if reason is not None:
        raise ValueError(f'quantize="{mode}" does not support this model: {reason}')
    if not path:
        raise ValueError(f'quantize="{mode}" needs the GGUF file the model was converted from, and this model '
                         "records none (config.specdec_gguf): use a model converted from a GGUF, or q8_0")
    if not os.path.isfile(path):
        raise ValueError(f'quantize="{mode}": the GGUF file {path!r} is not a file')
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    names = _gguf_names(model)

    def blocks_of(m):
        name, heads = names[id(m)]
        t = tensors.get(name)
        if t is None:
            raise ValueError(f"{path} has no tensor {name}: not the GGUF this model was converted from")
        kind = {"Q4_1": "q4_1", "Q8_0": "q8_0"}.get(t.tensor_type.name)
        if kind is None:
            raise ValueError(f"{name} in {path} is {t.tensor_type.name}; the CPU kernels read Q4_1 and Q8_0 "
                             "(use quantize='q8_0' or 'none')")
        blocks = np.array(t.data, dtype=np.uint8).reshape(m.out_features, -1)
        want = _np(m.weight).view(np.uint32)
        for cand in ([_unpermute(blocks, heads)] if heads else []) + [blocks]:
            if np.array_equal(dequantize(cand, kind, m.in_features).view(np.uint32), want):
                return kind, np.ascontiguousarray(cand)
        raise ValueError(f"{name} in {path}, dequantized, is not the model's weight bit for bit: the model "
                         "was not converted from this file (use quantize='q8_0' or 'none')")

    return _assemble(model, "gguf", blocks_of, {"path": os.path.abspath(path), "sha256": file_sha256(path)})


def quantize_model(model, mode: str, gguf_path=None):
    """Attach quantized weights to `model` (in place; q8_0 also rounds its float weights). Returns it.
    gguf: the blocks of `gguf_path`, else of the GGUF the model's config records (`recorded_gguf`)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode.removesuffix(Q8A) == "q8_0":
        qw = quantize_q8_0(model, mode)
    else:
        qw = from_gguf(model, gguf_path or recorded_gguf(model), mode)
    qw.mode = mode
    object.__setattr__(model, _ATTR, qw)   # not a submodule: no state_dict entry
    model.config.specdec_quantize = mode
    return model


def current_weights(model) -> QuantWeights | None:
    """The model's quantized weights, rebuilt if its parameters changed since (a copy, an update)."""
    qw = weights_of(model)
    if qw is not None and qw.key != version_key(model):
        quantize_model(model, qw.mode, qw.source.get("path"))
        qw = weights_of(model)
    return qw
