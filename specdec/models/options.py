"""The models block of the commands' configs: which target and draft, where and how they run.

    TargetBlock  pair, target, device, threads, chat_template   (cache-teacher)
    ModelsBlock  + draft                                        (distill, demo)
    EngineBlock  + dtype, quantize, impl, kv_cache              (bench, generate)
Each is a base dataclass (common/blocks.py explains the mechanism). A new way to name the models is a
field here and a line in `TargetBlock.__post_init__`: every command gets it.

`--pair NAME` (models/pairs.py) fills the target, the draft and the pair's defaults of every setting the
user left unset (None), in `TargetBlock.__post_init__`: the models block is the deepest base, so this
runs before any block or command checks a field, and a command resolves what is still None to its own
default afterwards. `--chat-template` lives here too: every command feeds prompts to the target's
tokenizer, and a pair may set it.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass

from ..common.blocks import Block
from ..common.config import flag_name, option
from ..common.values import CHAT_TEMPLATE, check_chat_template, check_int
from ..engine import ngram
from ..engine.quant import QUANTIZE
from ..engine.runner import IMPLS, KV_CACHES, set_kv_cache
from ..engine.qweights import MODES as QWEIGHT_MODES
from .load import AUTO_QUANTIZE, CPU_QUANTIZE, resolve_dtype
from .pairs import PAIRS, apply_pair

QUANTIZE_CHOICES = (AUTO_QUANTIZE,) + QUANTIZE


@dataclass
class TargetBlock(Block):
    pair: str | None = option(None, "a named target / draft pair and its defaults (specdec/models/pairs.py); "
                              "--target, --draft and any flag given override them", group="models",
                              choices=tuple(PAIRS))
    target: str | None = option(None, "target model folder, .gguf file (converted once into the cache) or hub id "
                                "(default: the --pair's, else the bundled target)", group="models")
    device: str = option("auto", "cpu | cuda | cuda:N | auto (cuda when one is visible)", group="models")
    threads: int | None = option(None, "torch CPU threads (1 is fastest on a busy shared CPU; not given: torch's "
                                 "own count)", group="models")
    chat_template: str | None = option(None, "each prompt as one user turn in the tokenizer's chat template: on, "
                                       "off, auto (on when the tokenizer has one; default: the --pair's, else "
                                       "auto)", group="prompts", choices=CHAT_TEMPLATE)

    def __post_init__(self):
        super().__post_init__()
        apply_pair(self)   # first: it fills only what is still None, before anything reads a field
        self.chat_template = check_chat_template("auto" if self.chat_template is None else self.chat_template)
        if self.threads is not None:
            self.threads = check_int(self.threads, "--threads", 1)


@dataclass
class ModelsBlock(TargetBlock):
    """+ the draft: a model (distill and demo train it), or for the commands that only decode with it
    (EngineBlock: bench, generate) also "ngram", the n-gram lookup draft (engine/ngram.py)."""
    DRAFT_MAY_BE_LOOKUP: typing.ClassVar[bool] = False
    draft: str | None = option(None, "draft model folder or hub id, or ngram: the n-gram lookup draft (bench and "
                               "generate; proposals copied from earlier in the prompt and output, no model), "
                               "or ngram:FILE: the same, falling back to an n-gram store of the target's own "
                               "outputs (bench/ngram_store.py writes one) "
                               "(default: the --pair's, else the bundled draft)", group="models")

    def __post_init__(self):
        super().__post_init__()
        if not ngram.is_lookup(self.draft):
            return
        if not self.DRAFT_MAY_BE_LOOKUP:   # refused before a store loads
            whose = "the --pair's draft is" if self.pair is not None else "--draft ngram is"
            raise ValueError(f"{whose} the n-gram lookup (no model), which has no weights to train; pass --draft DIR, "
                             "a draft model that shares the target's tokenizer")
        ngram.as_ngram(self.draft)         # a store that cannot be read: one line now, before anything runs


@dataclass
class EngineBlock(ModelsBlock):
    DRAFT_MAY_BE_LOOKUP: typing.ClassVar[bool] = True
    dtype: str | None = option(None, "float32 | bfloat16 | float16 (default: bfloat16 on CUDA, float32 on CPU)",
                               group="engine")
    quantize: str = option("auto", "how both models run (CPU paths): gguf (a model converted from a GGUF runs "
                           "that file's own Q4_1 / Q8_0 blocks: the same model; a draft not converted from one runs q8_0), q8_0 (weights rounded to Q8_0 "
                           "blocks; float Llama-style models), gguf-q8a / q8_0-q8a (opt-in: the same blocks with each "
                           "activation row rounded per 32 values to Q8 and integer dot products, as llama.cpp "
                           "computes; close to, not equal to, the weight-only model), int8 (row-independent int8 projections, any "
                           "model), none (the float model); auto: per model, gguf where it was converted from a "
                           "GGUF, else q8_0 where the C kernels run it, else int8 (CPU; with --impl lean or hf: "
                           "int8 target, float draft), none on CUDA. Plain decoding runs the same models",
                           group="engine", choices=QUANTIZE_CHOICES)
    impl: str = option("auto", "forward: lean (specdec's, Llama-family), numpy (the lean forward in NumPy, and the "
                       "C kernels of gguf / q8_0 models; float32 Llama-family models on the CPU), hf "
                       "(transformers', any model), auto", group="engine", choices=IMPLS)
    kv_cache: str = option("float32", "what the KV cache holds on the C kernels (--quantize gguf / q8_0 and their -q8a): "
                           "float32, or float16 (llama.cpp's default: half the bytes a long context streams every "
                           "step; K and V rounded as written, so the model's numbers change slightly, and greedy "
                           "speculative output still equals plain decoding's)", group="engine", choices=KV_CACHES)

    def __post_init__(self):
        super().__post_init__()
        if self.dtype is not None:
            try:
                resolve_dtype(self.dtype)
            except ValueError as e:
                raise ValueError(f"--dtype: {e}") from None
        for name, choices in (("quantize", QUANTIZE_CHOICES), ("impl", IMPLS), ("kv_cache", KV_CACHES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{flag_name(name)} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.kv_cache == "float16" and (self.quantize not in (AUTO_QUANTIZE,) + QWEIGHT_MODES
                                           or self.impl not in ("auto", "numpy")):
            raise ValueError(f"--kv-cache float16 runs on the C kernels: use it with --quantize gguf, gguf-q8a, q8_0, "
                             f"q8_0-q8a or auto and --impl auto or numpy (here --quantize {self.quantize}, "
                             f"--impl {self.impl})")

    def apply_kv_cache(self, *models) -> None:
        """--kv-cache on the loaded models that have weights (a lookup draft has none)."""
        for m in models:
            if m is not None and not ngram.is_lookup(m):
                set_kv_cache(m, self.kv_cache)

    def dtype_on(self, device) -> str:
        """--dtype, or the device's default."""
        return self.dtype or ("bfloat16" if device.type == "cuda" else "float32")

    def quantization_on(self, device) -> tuple[str, str]:
        """(target, draft) quantization as load_pair takes it. auto: none on CUDA; on the CPU chosen per
        model as it loads (models/load.py quantize_auto: gguf, q8_0, int8), whose C kernels run on the
        NumPy forward (impl auto / numpy); with --impl lean or hf, the fastest lossless path measured on
        those forwards (an int8 target, a float draft, whose step is dispatch-bound)."""
        if self.quantize != AUTO_QUANTIZE:
            if self.quantize in CPU_QUANTIZE and device.type != "cpu":
                raise ValueError(f"--quantize {self.quantize} is a CPU path; on CUDA use --dtype bfloat16 "
                                 "(--quantize none)")
            return self.quantize, self.quantize
        if device.type != "cpu":
            return "none", "none"
        return ("int8", "none") if self.impl in ("lean", "hf") else (AUTO_QUANTIZE, AUTO_QUANTIZE)
