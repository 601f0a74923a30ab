"""Row-independent int8 linear layers for the CPU.

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
Cost: 4 extra small ops per projection (abs-max, divide, multiply; the constant columns live in a
cached buffer). Measured against fp32 and the weight-only alternative in bench/step_costs.py.

`torch.ops.aten._weight_int8pack_mm` (weight-only int8, bf16 activations) is also row-independent but
its CPU kernel re-dequantizes the weights for every row, so a 5-token verify costs ~2.3 one-token
steps: it lowers the step but not the verify ratio v that speculative decoding lives on.
"""
from __future__ import annotations

import warnings

import torch

QUANTIZE = ("none", "int8")


class RowwiseInt8Linear(torch.nn.Module):
    """An nn.Linear replacement: int8 per-channel weights, per-row int8 activations (CPU only)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = linear.weight.detach().float().cpu()
        out_features, in_features = w.shape
        self.in_features, self.out_features = in_features, out_features
        w_ext = torch.cat([w, w.new_zeros(out_features, 2)], 1)                    # the +-1 columns weigh 0
        scale = (w_ext.abs().amax(1) / 127.0).clamp_min(1e-12).double()             # [out] per channel
        zero = torch.zeros(out_features, dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensor constructors warn of a future deprecation
            warnings.simplefilter("ignore")
            qw = torch.quantize_per_channel(w_ext, scale, zero, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(qw, None)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self._buffers_by_rows: dict[int, torch.Tensor] = {}

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
        r = x2.abs().amax(1, keepdim=True).clamp_min_(1e-30)                       # [N, 1]
        buf = self._input_buffer(x2.shape[0])
        torch.div(x2, r, out=buf[:, :self.in_features])
        y = torch.ops.quantized.linear_dynamic(buf, self._packed, True).mul_(r)   # [N, out]
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features).to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 rowwise"

    def __deepcopy__(self, memo):
        new = RowwiseInt8Linear.__new__(RowwiseInt8Linear)
        torch.nn.Module.__init__(new)
        new.in_features, new.out_features = self.in_features, self.out_features
        new._packed = self._packed  # immutable packed weights: shared
        new.register_buffer("bias", None if self.bias is None else self.bias.clone())
        new._buffers_by_rows = {}
        return new


def quantize_model(model, mode: str = "int8"):
    """Replace every nn.Linear of `model` (the LM head included) by a RowwiseInt8Linear, in place.
    Embeddings and norms stay in floating point. Returns the model. mode "none" does nothing."""
    if mode not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {mode!r}")
    if mode == "none":
        return model
    dev = next(model.parameters()).device
    if dev.type != "cpu":
        raise ValueError(f"--quantize int8 is a CPU path (the model is on {dev}); on CUDA use bfloat16")
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    targets = [(name, mod) for name, mod in model.named_modules() if type(mod) is torch.nn.Linear]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, RowwiseInt8Linear(mod))
    # The LM head no longer shares the input embedding's weight; tell transformers not to re-tie them.
    if hasattr(model, "config"):
        model.config.tie_word_embeddings = False
        model.config.specdec_quantize = mode
    return model


def quantization_of(model) -> str:
    """'int8' if quantize_model converted `model`, else 'none'."""
    return "int8" if any(isinstance(m, RowwiseInt8Linear) for m in model.modules()) else "none"
