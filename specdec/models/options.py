"""The models block of the commands' configs: which target and draft, where and how they run.

    TargetBlock  target, device, threads          (cache-teacher)
    ModelsBlock  + draft                          (distill, demo)
    EngineBlock  + dtype, quantize, impl          (bench, generate)
Each is a base dataclass (common/blocks.py explains the mechanism). A new way to name the models (e.g.
a named pair) is a field here and a line in `TargetBlock.__post_init__`: every command gets it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..common.blocks import Block
from ..common.config import option
from ..common.values import check_int
from ..engine.quant import QUANTIZE
from ..engine.runner import IMPLS
from .load import resolve_dtype

QUANTIZE_CHOICES = ("auto",) + QUANTIZE


@dataclass
class TargetBlock(Block):
    target: str | None = option(None, "target model folder or hub id (default: the bundled target)", group="models")
    device: str = option("auto", "cpu | cuda | cuda:N | auto (cuda when one is visible)", group="models")
    threads: int | None = option(None, "torch CPU threads (1 is fastest on a busy shared CPU; not given: torch's "
                                 "own count)", group="models")

    def __post_init__(self):
        super().__post_init__()
        if self.threads is not None:
            self.threads = check_int(self.threads, "--threads", 1)


@dataclass
class ModelsBlock(TargetBlock):
    draft: str | None = option(None, "draft model folder or hub id (default: the bundled draft)", group="models")


@dataclass
class EngineBlock(ModelsBlock):
    dtype: str | None = option(None, "float32 | bfloat16 | float16 (default: bfloat16 on CUDA, float32 on CPU)",
                               group="engine")
    quantize: str = option("auto", "int8: row-independent int8 projections for both models (CPU); none; auto: "
                           "the fastest lossless path measured for the device (CPU: int8 target, float draft, whose "
                           "step is dispatch-bound; CUDA: none). Plain decoding runs the same models",
                           group="engine", choices=QUANTIZE_CHOICES)
    impl: str = option("auto", "forward: lean (specdec's, Llama-family), numpy (the lean forward in NumPy, small "
                       "float32 models on the CPU), hf (transformers', any model), auto", group="engine", choices=IMPLS)

    def __post_init__(self):
        super().__post_init__()
        if self.dtype is not None:
            try:
                resolve_dtype(self.dtype)
            except ValueError as e:
                raise ValueError(f"--dtype: {e}") from None
        for name, choices in (("quantize", QUANTIZE_CHOICES), ("impl", IMPLS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"--{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")

    def dtype_on(self, device) -> str:
        """--dtype, or the device's default."""
        return self.dtype or ("bfloat16" if device.type == "cuda" else "float32")

    def quantization_on(self, device) -> tuple[str, str]:
        """(target, draft) quantization; auto = the fastest lossless path measured for the device."""
        if self.quantize != "auto":
            if self.quantize == "int8" and device.type != "cpu":
                raise ValueError("--quantize int8 is a CPU path; on CUDA use --dtype bfloat16 (--quantize none)")
            return self.quantize, self.quantize
        return ("int8", "none") if device.type == "cpu" else ("none", "none")
