"""Row-independent int8 projections (linear layers, and the modules computing one) for the CPU.

Why int8: a decode step streams every weight once, and on the CPU a verify over gamma+1 tokens is
compute-bound in fp32 (a skinny GEMM runs at a small fraction of peak): both costs fall with int8.

Why not the usual dynamic quantization: fbgemm's `quantize_dynamic` picks ONE activation scale per
input tensor, so a row's output depends on the other rows and tokens in the same call. A target whose
logits depend on batch composition is not a fixed distribution: greedy speculative output would no
longer equal plain decoding, and sampling would not be lossless.

What this does instead (W8A8, per-row dynamic activations, per-channel weights):
  r_i   = max_j |x_ij|                       one scale per row (token), from that row alone
  x'_i  = [x_i / r_i, +1, -1]                every row now spans exactly [-1, 1]: two constant
                                             columns whose weights are 0 pin the tensor's min and max
  y     = fbgemm_dynamic_linear(x', W8) * r  the per-tensor range fbgemm computes is always [-1, 1],
                                             so its activation scale is a constant, and the int32
                                             accumulation is exact: row i's output depends on row i only
Bitwise identical rows alone or batched, at any number of rows (tests/test_quant.py checks it), at
~1/4 of the weight bytes; activations keep 7 bits per row (fbgemm's reduce_range on AVX2).
Cost: 4 extra small ops per projection (max |x|, a clamp, divide, multiply; the constant columns
live in a cached buffer). Measured against fp32 and the weight-only alternative in bench/step_costs.py.

`torch.ops.aten._weight_int8pack_mm` (weight-only int8, bf16 activations) is also row-independent but
its CPU kernel re-dequantizes the weights for every row, so a 5-token verify costs ~2.3 one-token
steps: it lowers the step but not the verify ratio v that speculative decoding lives on.
"""
from __future__ import annotations

import warnings

import torch

from . import qweights

# "gguf" / "q8_0": weight-only blocks with float32 activations for the C kernels (specdec/engine/qweights.py)
QUANTIZE = ("none", "int8") + qweights.MODES


# The projection modules quantized, by exact type (qualified name: no transformers import here), and how
# to read each as y = x W^T + b with W [out, in]. Exact types, not isinstance(nn.Linear): a subclass may
# compute something else (LoRA, bitsandbytes, ...); these three are checked to compute exactly that.
def _linear_weight(m):
    return m.weight, m.bias


def _conv1d_weight(m):   # transformers' Conv1D (GPT-2): y = x W + b with W [in, out], a transposed linear
    return m.weight.t(), m.bias


PROJECTIONS = {
    "torch.nn.modules.linear.Linear": _linear_weight,
    "transformers.models.falcon.modeling_falcon.FalconLinear": _linear_weight,   # x @ W.T (+ b)
    "transformers.pytorch_utils.Conv1D": _conv1d_weight,
}


def _qualname(m) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


def projection_weight(module):
    """(W [out, in], b [out] or None) of a projection module quantize_model converts, else None."""
    read = PROJECTIONS.get(_qualname(module))
    return None if read is None else read(module)


class RowwiseInt8Linear(torch.nn.Module):
    """A projection replacement (nn.Linear, FalconLinear, transformers' Conv1D: PROJECTIONS): int8
    per-channel weights, per-row int8 activations (CPU only)."""

    def __init__(self, linear: torch.nn.Module | None = None, *, _int8=None, _scale=None, _bias=None):
        super().__init__()
        if linear is not None:
            weight, bias = projection_weight(linear) or _linear_weight(linear)
            w = weight.detach().float().cpu()
            w_ext = torch.cat([w, w.new_zeros(w.shape[0], 2)], 1)                   # the +-1 columns weigh 0
            _scale = (w_ext.abs().amax(1) / 127.0).clamp_min(1e-12).double()        # [out] per channel
            _int8 = torch.round(w_ext / _scale[:, None].float()).clamp(-127, 127).to(torch.int8)
            _bias = None if bias is None else bias.detach().float().clone()
        self.out_features, self.in_features = _int8.shape[0], _int8.shape[1] - 2
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensor constructors warn of a future deprecation
            warnings.simplefilter("ignore")
            qw = torch._make_per_channel_quantized_tensor(_int8, _scale, zero, 0)
            self._packed = torch.ops.quantized.linear_prepack(qw, None)
        self._int8, self._scale = _int8, _scale                                    # [out, in+2], [out]
        self.register_buffer("bias", _bias)
        self._buffers_by_rows: dict[int, torch.Tensor] = {}

    @classmethod
    def concat(cls, layers) -> "RowwiseInt8Linear":
        """One layer computing `layers` side by side (outputs concatenated). Each output channel keeps
        its int8 weights and scale, and every layer quantizes the shared input the same way, so the
        outputs are bitwise those of the separate layers, at one call instead of several."""
        if len({m.in_features for m in layers}) != 1:
            raise ValueError("concatenated layers must share their input size")
        biases = [m.bias if m.bias is not None else torch.zeros(m.out_features) for m in layers]
        bias = None if all(m.bias is None for m in layers) else torch.cat(biases)
        return cls(_int8=torch.cat([m._int8 for m in layers]), _scale=torch.cat([m._scale for m in layers]),
                   _bias=bias)

    def _input_buffer(self, rows: int) -> torch.Tensor:
        buf = self._buffers_by_rows.get(rows)
        if buf is None:
            buf = torch.empty(rows, self.in_features + 2)
            buf[:, -2], buf[:, -1] = 1.0, -1.0
            if len(self._buffers_by_rows) > 64:
                self._buffers_by_rows.clear()
            self._buffers_by_rows[rows] = buf
        return buf

    @torch.no_grad()   # inference only: no gradient flows through quantized weights
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise ValueError("int8 layers run on the CPU only; on CUDA use bfloat16 (--quantize none)")
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, self.in_features).float()                               # [N, in]
        r = torch.linalg.vector_norm(x2, float("inf"), dim=1, keepdim=True).clamp_min_(1e-30)  # [N, 1] max |x|
        buf = self._input_buffer(x2.shape[0])
        torch.div(x2, r, out=buf[:, :self.in_features])
        y = torch.ops.quantized.linear_dynamic(buf, self._packed, True).mul_(r)   # [N, out]
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features).to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 rowwise"

    def __deepcopy__(self, memo):
        return RowwiseInt8Linear(_int8=self._int8, _scale=self._scale,
                                 _bias=None if self.bias is None else self.bias.clone())


def quantize_model(model, mode: str = "int8", gguf_path=None):
    """Replace every projection of `model` (PROJECTIONS: nn.Linear, FalconLinear, transformers' Conv1D; the
    LM head included) by a RowwiseInt8Linear, in place. Embeddings and norms stay in floating point, and
    so does any other weight matrix (e.g. a mixture of experts' fused expert tensors and its router): those
    are named in one warning line and in `model.config.specdec_float_layers` (`float_layers`). Returns the
    model. mode "none" does nothing; "gguf" and "q8_0" attach weight-only blocks instead
    (qweights.quantize_model; gguf_path for "gguf")."""
    if mode not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {mode!r}")
    if mode == "none":
        return model
    if mode in qweights.MODES:
        return qweights.quantize_model(model, mode, gguf_path)
    dev = next(model.parameters()).device
    if dev.type != "cpu":
        raise ValueError(f"--quantize int8 is a CPU path (the model is on {dev}); on CUDA use bfloat16")
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    targets = [(name, mod) for name, mod in model.named_modules() if projection_weight(mod) is not None]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, RowwiseInt8Linear(mod))
    left = float_layers(model)
    if left:
        kinds = sorted({kind for _, kind in left})
        warnings.warn(f"int8: {len(left)} weight matrices stay float ({', '.join(kinds)}, e.g. {left[0][0]}); "
                      "specdec quantizes nn.Linear, FalconLinear and transformers' Conv1D", stacklevel=2)
    # The LM head no longer shares the input embedding's weight; tell transformers not to re-tie them.
    if hasattr(model, "config"):
        model.config.tie_word_embeddings = False
        model.config.specdec_quantize = mode
        model.config.specdec_float_layers = [name for name, _ in left]
    return model


def float_layers(model) -> list[tuple[str, str]]:
    """(name, type) of every module that holds a weight matrix (a parameter of 2 or more dimensions)
    quantize_model leaves in floating point, embeddings aside (they are looked up, not multiplied)."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, (RowwiseInt8Linear, torch.nn.Embedding)):
            continue
        if any(p.dim() >= 2 for p in mod.parameters(recurse=False)):
            out.append((name, type(mod).__name__))
    return out


def quantization_of(model) -> str:
    """'int8' / 'gguf' / 'q8_0' if quantize_model converted `model`, else 'none'."""
    qw = qweights.weights_of(model)
    if qw is not None:
        return qw.mode
    return "int8" if any(isinstance(m, RowwiseInt8Linear) for m in model.modules()) else "none"
