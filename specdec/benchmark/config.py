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
from ..models.options import EngineBlock

BASELINES = ("ar", "hf")

# The sweeps, in one place. "default" is a first run sized for a small CPU (no gamma 8, a smaller second
# batch size); "full" is the whole grid. HF assisted generation runs at batch size 1 only.
SWEEPS = {
    "default": {"gamma": (2, 4, AUTO), "temperature": (0.0, 1.0), "batch_size": (1,), "baselines": ("ar", "hf"),
                "repeats": 2},
    "full": {"gamma": (1, 2, 4, 8, AUTO), "temperature": (0.0, 1.0), "batch_size": (1, 8), "baselines": ("ar", "hf"),
             "repeats": 3},
}

# Settings that may change between a run and its --resume (they do not change what is measured).
RESUMABLE_CHANGES = ("out", "threads", "no_plots", "progress", "no_progress")   # no_progress: runs before 0.2


@dataclass
class BenchConfig(ProgressBlock, ResumableOutputBlock, EngineBlock):
    """The models, engine and output blocks (models/options.py, common/blocks.py), and the sweep. After
    __post_init__ every sweep axis holds the values to run: the --sweep preset's where none was given."""
    out: str | None = with_default(ResumableOutputBlock, "out", "bench_out")
    device_map: str | None = option(None, "e.g. auto: spread the target over several GPUs (transformers/accelerate)",
                                    group="models")
    cuda_graphs: str = option("auto", "replay the draft step and the verify as CUDA graphs: on, off, auto (on "
                              "with CUDA and the lean forward)", group="engine", choices=("auto", "on", "off"))
    # sweep
    sweep: str = option("default", "preset of gamma / temperature / batch size / baselines / repeats: default "
                        "(gamma 2,4,auto; T 0,1; batch 1; 2 repeats: a first run of a few minutes on a small "
                        "CPU) or full (gamma 1,2,4,8,auto; T 0,1; batch 1,8; 3 repeats)",
                        group="sweep", choices=tuple(SWEEPS))
    gamma: tuple[int | str, ...] | None = option(None, "draft tokens per step, comma-separated; auto = chosen each "
                                                 "round from the measured costs and acceptance, e.g. 1,2,4,auto "
                                                 "(default: the --sweep's)", group="sweep")
    temperature: tuple[float, ...] | None = option(None, "sampling temperatures, comma-separated; 0 = greedy "
                                                   "(default: the --sweep's)", group="sweep")
    batch_size: tuple[int, ...] | None = option(None, "batch sizes, comma-separated; HF assisted runs only at 1 "
                                                "(default: the --sweep's)", group="sweep")
    baselines: tuple[str, ...] | None = option(None, "comma-separated subset of ar,hf; '' for none (default: "
                                               "the --sweep's)", group="sweep")
    # prompts
    prompts: str | None = option(None, 'JSONL prompts: {"prompt", "category"} lines or Spec-Bench question.jsonl '
                                 "(default: the built-in held-out sets)", group="prompts")
    num_prompts: int = option(2, "prompts per category; 0 = all", group="prompts")
    max_new_tokens: int = option(64, "new tokens per prompt", group="prompts")
    # timing
    warmup: int = option(1, "untimed runs of the first batch per configuration", group="timing")
    repeats: int | None = option(None, "timed passes over all prompts per configuration (median and spread "
                                 "reported; default: the --sweep's, 2 or 3)", group="timing")
    seed: int = option(0, "base seed of the samplers", group="timing")
    no_plots: bool = option(False, "skip the plots", group="output")

    def __post_init__(self):
        super().__post_init__()
        preset = SWEEPS.get(self.sweep)
        if preset is None:
            raise ValueError(f"--sweep must be one of {', '.join(SWEEPS)}, got {self.sweep!r}")
        hints = typing.get_type_hints(type(self))
        for name, value in preset.items():  # an axis not given takes the preset's values; "1,2" works too
            given = getattr(self, name)
            setattr(self, name, value if given is None else parse_value(given, hints[name], flag_name(name)))
        for flag, values in (("--gamma", self.gamma), ("--temperature", self.temperature),
                             ("--batch-size", self.batch_size)):
            if not values:
                raise ValueError(f"{flag} needs at least one value (comma-separated)")
        self.gamma = tuple(check_gamma(g, "--gamma") for g in self.gamma)
        if len(set(self.gamma)) < len(self.gamma):
            raise ValueError(f"--gamma lists a value twice: {','.join(map(str, self.gamma))}")
        self.temperature = tuple(check_temperature(t, "--temperature") for t in self.temperature)
        self.batch_size = tuple(check_int(b, "--batch-size", 1) for b in self.batch_size)
        self.baselines = tuple(str(b).strip().lower() for b in self.baselines)
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline {unknown[0]!r}; --baselines takes a comma-separated subset of "
                             f"{','.join(BASELINES)}")
        self.num_prompts = 0 if self.num_prompts is None else self.num_prompts   # None, like 0: all
        for name, low in (("max_new_tokens", 1), ("warmup", 0), ("repeats", 1), ("num_prompts", 0)):
            setattr(self, name, check_int(getattr(self, name), flag_name(name), low))
        self.seed = check_seed(self.seed, "--seed")
        if self.prompts is not None and not Path(self.prompts).exists():
            raise FileNotFoundError(f"prompts file {self.prompts!r} does not exist; pass a JSONL file with one "
                                    '{"prompt": ..., "category": ...} per line')

    @property
    def prompts_per_category(self) -> int | None:
        return self.num_prompts or None  # 0 means all

    @property
    def fixed_gammas(self) -> tuple:
        return tuple(g for g in self.gamma if g != AUTO)

    @property
    def cost_gammas(self) -> list:
        """The gammas whose verify cost is measured: the fixed ones, and every one auto may choose."""
        auto = set(range(1, AutoConfig().max_gamma + 1)) if AUTO in self.gamma else set()
        return sorted(set(self.fixed_gammas) | auto)
