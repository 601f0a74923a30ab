"""`BenchConfig`: every setting of `specdec bench`, its default and its help, in one place; and the sweep
presets (`--sweep`). The CLI is built from it (common.config) and `run_bench(BenchConfig(...))` takes the
same object; `__post_init__` validates every field before anything is loaded."""
from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

from ..common.blocks import ProgressBlock, ResumableOutputBlock
from ..common.config import flag_name, option, parse_value, with_default
from ..common.values import AUTO, check_gamma, check_int, check_seed, check_temperature
from ..costmodel.policy import AutoConfig
from ..engine import ngram
from ..models.options import EngineBlock
from ..models.pairs import draft_problem

# ar: specdec's plain decoding (every speedup's denominator); hf_generate: transformers' generate();
# hf_assisted: its assisted generation (batch size 1); hf: both HF rows; llamacpp: llama.cpp's plain
# decoding of a GGUF target (batch size 1, where llama-cpp-python is installed; benchmark/llamacpp.py).
BASELINES = ("ar", "hf", "hf_generate", "hf_assisted", "llamacpp")

# The sweeps, in one place. "default" is a first run sized for a small CPU (no gamma 8, a smaller second
# batch size); "full" is the whole grid; "quick" is a named pair's first run (models/pairs.py): one
# repeat, no HF assisted generation (on a 135M CPU target its many small calls take longer than the rest
# of the run together). HF assisted generation runs at batch size 1 only.
SWEEPS = {
    "default": {"gamma": (2, 4, AUTO), "temperature": (0.0, 1.0), "batch_size": (1,),
                "baselines": ("ar", "hf", "llamacpp"), "repeats": 2},
    "full": {"gamma": (1, 2, 4, 8, AUTO), "temperature": (0.0, 1.0), "batch_size": (1, 8),
             "baselines": ("ar", "hf", "llamacpp"), "repeats": 3},
    "quick": {"gamma": (4, AUTO), "temperature": (0.0, 1.0), "batch_size": (1,),
              "baselines": ("ar", "hf_generate", "llamacpp"), "repeats": 1},
}
DEFAULT_SWEEP, DEFAULT_NUM_PROMPTS, DEFAULT_PROMPTS = "default", 2, "builtin:code"

# Settings that may change between a run and its --resume (they do not change what is measured).
RESUMABLE_CHANGES = ("out", "threads", "no_plots", "progress", "no_progress")   # no_progress: runs before 0.2


@dataclass
class BenchConfig(ProgressBlock, ResumableOutputBlock, EngineBlock):
    """The models, engine and output blocks (models/options.py, common/blocks.py), and the sweep. After
    __post_init__ every sweep axis holds the values to run: the --sweep preset's where none was given.
    A --pair whose draft is missing (and no --draft) runs the rows that need no draft: no gamma, no HF
    assisted generation (`no_draft` says why; asking for either is refused)."""
    RUNS_WITHOUT_DRAFT: typing.ClassVar[bool] = True   # models/pairs.py apply_pair
    out: str | None = with_default(ResumableOutputBlock, "out", "bench_out")
    device_map: str | None = option(None, "e.g. auto: spread the target over several GPUs (transformers/accelerate)",
                                    group="models")
    cuda_graphs: str = option("auto", "replay the draft step and the verify as CUDA graphs: on, off, auto (on "
                              "with CUDA and the lean forward)", group="engine", choices=("auto", "on", "off"))
    # sweep
    sweep: str | None = option(None, "preset of gamma / temperature / batch size / baselines / repeats: default "
                               "(gamma 2,4,auto; T 0,1; batch 1; ar, hf, llamacpp; 2 repeats: a first run of a few "
                               "minutes on a small CPU), quick (gamma 4,auto; T 0,1; batch 1; ar, hf_generate, "
                               "llamacpp; 1 repeat), full (gamma 1,2,4,8,auto; T 0,1; batch 1,8; ar, hf, "
                               f"llamacpp; 3 repeats) (default: the --pair's, else {DEFAULT_SWEEP})",
                               group="sweep", choices=tuple(SWEEPS))
    gamma: tuple[int | str, ...] | None = option(None, "draft tokens per step, comma-separated; auto = chosen each "
                                                 "round from the measured costs and acceptance, e.g. 1,2,4,auto "
                                                 "(default: the --sweep's)", group="sweep")
    temperature: tuple[float, ...] | None = option(None, "sampling temperatures, comma-separated; 0 = greedy "
                                                   "(default: the --sweep's)", group="sweep")
    batch_size: tuple[int, ...] | None = option(None, "batch sizes, comma-separated; HF assisted runs only at 1 "
                                                "(default: the --sweep's)", group="sweep")
    baselines: tuple[str, ...] | None = option(None, f"comma-separated subset of {','.join(BASELINES)}; '' for none "
                                               "(hf: hf_generate and hf_assisted; llamacpp: llama.cpp's plain "
                                               "decoding of a GGUF target, batch size 1, where llama-cpp-python "
                                               "is installed; default: the --sweep's)", group="sweep")
    # prompts
    prompts: str | None = option(None, 'JSONL prompts: {"prompt", "category"} lines or Spec-Bench question.jsonl; '
                                 "or a built-in set: builtin:code (the held-out stdlib sets) or builtin:chat "
                                 f"(default: the --pair's, else {DEFAULT_PROMPTS})", group="prompts")
    num_prompts: int | None = option(None, "prompts per category; 0 = all (default: the --pair's, else "
                                     f"{DEFAULT_NUM_PROMPTS})", group="prompts")
    max_new_tokens: int = option(64, "new tokens per prompt", group="prompts")
    ignore_eos: bool = option(False, "decode max_new_tokens for every prompt, past the end-of-sequence token (as "
                              "vLLM's benchmarks' --ignore-eos): every method then decodes answers of the same "
                              "length, which sampled rows otherwise do not (other samples end elsewhere, and a "
                              "token's cost grows with its context)", group="prompts")
    # timing
    warmup: int = option(1, "untimed runs of the first batch per configuration", group="timing")
    repeats: int | None = option(None, "timed passes over all prompts per configuration (median and spread "
                                 "reported; default: the --sweep's, 2 or 3)", group="timing")
    seed: int = option(0, "base seed of the samplers", group="timing")
    no_plots: bool = option(False, "skip the plots", group="output")

    def __post_init__(self):
        asked = {"--gamma": self.gamma is not None, "--baselines": self.baselines is not None}
        super().__post_init__()   # the models block first: --pair fills what is still None
        self.sweep = DEFAULT_SWEEP if self.sweep is None else self.sweep
        self.num_prompts = DEFAULT_NUM_PROMPTS if self.num_prompts is None else self.num_prompts
        preset = SWEEPS.get(self.sweep)
        if preset is None:
            raise ValueError(f"--sweep must be one of {', '.join(SWEEPS)}, got {self.sweep!r}")
        hints = typing.get_type_hints(type(self))
        for name, value in preset.items():  # an axis not given takes the preset's values; "1,2" works too
            given = getattr(self, name)
            setattr(self, name, value if given is None else parse_value(given, hints[name], flag_name(name)))
        self.baselines = tuple(str(b).strip().lower() for b in self.baselines)
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline {unknown[0]!r}; --baselines takes a comma-separated subset of "
                             f"{','.join(BASELINES)}")
        if self.no_draft:
            self._without_draft(asked)
        axes = (("--temperature", self.temperature), ("--batch-size", self.batch_size))
        for flag, values in axes if self.no_draft else (("--gamma", self.gamma),) + axes:
            if not values:
                raise ValueError(f"{flag} needs at least one value (comma-separated)")
        self.gamma = tuple(check_gamma(g, "--gamma") for g in self.gamma)
        if len(set(self.gamma)) < len(self.gamma):
            raise ValueError(f"--gamma lists a value twice: {','.join(map(str, self.gamma))}")
        self.temperature = tuple(check_temperature(t, "--temperature") for t in self.temperature)
        self.batch_size = tuple(check_int(b, "--batch-size", 1) for b in self.batch_size)
        for name, low in (("max_new_tokens", 1), ("warmup", 0), ("repeats", 1), ("num_prompts", 0)):
            setattr(self, name, check_int(getattr(self, name), flag_name(name), low))
        self.seed = check_seed(self.seed, "--seed")
        if self.prompts is not None and not str(self.prompts).startswith("builtin:") and not Path(self.prompts).exists():
            raise FileNotFoundError(f"prompts file {self.prompts!r} does not exist; pass a JSONL file with one "
                                    '{"prompt": ..., "category": ...} per line')

    @property
    def no_draft(self) -> str | None:
        """Why the run has no draft (None: it has one): a --pair without its draft and no --draft."""
        return draft_problem(self.pair) if self.pair is not None and self.draft is None else None

    def _without_draft(self, asked: dict) -> None:
        """The preset's speculative rows (gamma, HF assisted generation) dropped; asked for, refused."""
        if asked["--gamma"] and self.gamma:
            raise ValueError(f"--gamma needs a draft: {self.no_draft}")
        if asked["--baselines"] and "hf_assisted" in self.baselines:
            raise ValueError(f"--baselines hf_assisted needs a draft: {self.no_draft}")
        self.gamma = ()
        self.baselines = tuple(dict.fromkeys("hf_generate" if b == "hf" else b
                                             for b in self.baselines if b != "hf_assisted"))
        if not {"ar", "hf_generate", "llamacpp"} & set(self.baselines):
            raise ValueError(f"nothing to run without a draft: --baselines has no ar, hf_generate or llamacpp; "
                             f"{self.no_draft}")

    def runs(self, baseline: str) -> bool:
        """Whether the run has `baseline` (hf stands for hf_generate and hf_assisted)."""
        return baseline in self.baselines or (baseline in ("hf_generate", "hf_assisted") and "hf" in self.baselines)

    @property
    def prompts_per_category(self) -> int | None:
        return self.num_prompts or None  # 0 means all

    @property
    def fixed_gammas(self) -> tuple:
        return tuple(g for g in self.gamma if g != AUTO)

    @property
    def cost_gammas(self) -> list:
        """The gammas whose verify cost is measured: the fixed ones, and every one auto may choose."""
        top = ngram.LONG_CAP_MAX if ngram.is_lookup(self.draft) else AutoConfig().max_gamma   # the most auto drafts
        auto = set(range(1, top + 1)) if AUTO in self.gamma else set()
        return sorted(set(self.fixed_gammas) | auto)
