"""`BenchConfig`: every setting of `specdec bench`, its default and its help, in one place; and the sweep
presets (`--sweep`). The CLI is built from it (common.config) and `run_bench(BenchConfig(...))` takes the
same object; `__post_init__` validates every field before anything is loaded."""
from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

from ..common.config import flag_name, option, parse_value
from ..engine.decoding import AUTO, AUTO_MAX_GAMMA
from ..engine.quant import QUANTIZE
from ..engine.runner import IMPLS

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
RESUMABLE_CHANGES = ("out", "threads", "no_plots", "no_progress")


@dataclass
class BenchConfig:
    # models
    target: str | None = option(None, "target model path or hub id (default: the bundled pair)", group="models")
    draft: str | None = option(None, "draft model path or hub id (default: the bundled pair)", group="models")
    device: str = option("auto", "cpu | cuda | cuda:N | auto (cuda when one is visible)", group="models")
    dtype: str | None = option(None, "float32 | bfloat16 | float16 (default: bfloat16 on CUDA, float32 on CPU)",
                               group="models")
    device_map: str | None = option(None, "e.g. auto: spread the target over several GPUs (transformers/accelerate)",
                                    group="models")
    threads: int | None = option(None, "torch CPU threads (default: torch's own; 1 is fastest on a busy shared CPU)",
                                 group="models")
    quantize: str = option("auto", "int8: row-independent int8 projections for both models (CPU); none; auto: "
                           "the fastest lossless path measured for the device (CPU: int8 target, float draft, "
                           "whose step is dispatch-bound; CUDA: none). Plain decoding runs the same models",
                           group="engine", choices=("auto",) + QUANTIZE)
    impl: str = option("auto", "forward: lean (specdec's, Llama-family), hf (transformers', any model), auto",
                       group="engine", choices=IMPLS)
    cuda_graphs: str = option("auto", "replay the draft step and the verify as CUDA graphs: on, off, auto (on "
                              "with CUDA and the lean forward)", group="engine", choices=("auto", "on", "off"))
    # sweep
    sweep: str = option("default", "preset of gamma / temperature / batch size / baselines / repeats: default "
                        "(gamma 2,4,auto; T 0,1; batch 1; 2 repeats: a first run of a few minutes on a small "
                        "CPU) or full (gamma 1,2,4,8,auto; T 0,1; batch 1,8; 3 repeats)",
                        group="sweep", choices=tuple(SWEEPS))
    gamma: tuple[str, ...] | None = option(None, "draft tokens per step, comma-separated; auto = chosen each round "
                                           "from the measured costs and acceptance, e.g. 1,2,4,auto (default: the "
                                           "--sweep's)", group="sweep")
    temperature: tuple[float, ...] | None = option(None, "sampling temperatures, comma-separated; 0 = greedy "
                                                   "(default: the --sweep's)", group="sweep")
    batch_size: tuple[int, ...] | None = option(None, "batch sizes, comma-separated; HF assisted runs only at 1 "
                                                "(default: the --sweep's)", group="sweep")
    baselines: tuple[str, ...] | None = option(None, "comma-separated subset of ar,hf; '' for none (default: "
                                               "the --sweep's)", group="sweep")
    # prompts
    prompts: str | None = option(None, 'JSONL prompts: {"prompt", "category"} lines or Spec-Bench question.jsonl '
                                 "(default: the built-in held-out sets)", group="prompts")
    num_prompts: int | None = option(2, "prompts per category; 0 = all", group="prompts")
    max_new_tokens: int = option(64, "new tokens per prompt", group="prompts")
    # timing
    warmup: int = option(1, "untimed runs of the first batch per configuration", group="timing")
    repeats: int | None = option(None, "timed passes over all prompts per configuration (median and spread "
                                 "reported; default: the --sweep's, 2 or 3)", group="timing")
    seed: int = option(0, "base seed of the samplers", group="timing")
    # output
    out: str = option("bench_out", "output folder: results.json and the plots (a new or empty folder, or a "
                      "specdec bench run with --overwrite / --resume)", group="output")
    overwrite: bool = option(False, "delete the specdec run already in --out first", group="output")
    resume: bool = option(False, "continue the run in --out: measure only the groups it lacks (same settings)",
                          group="output")
    no_plots: bool = option(False, "skip the plots", group="output")
    no_progress: bool = option(False, "no progress bar or status line", group="output")

    def __post_init__(self):
        preset = SWEEPS.get(self.sweep)
        if preset is None:
            raise ValueError(f"--sweep must be one of {', '.join(SWEEPS)}, got {self.sweep!r}")
        hints = typing.get_type_hints(type(self))
        for name, value in preset.items():  # an axis not given takes the preset's values; "1,2" works too
            given = getattr(self, name)
            setattr(self, name, value if given is None else parse_value(given, hints[name], flag_name(name)))
        self.gamma = tuple(_gamma(g) for g in self.gamma)
        self.temperature = tuple(float(t) for t in self.temperature)
        self.batch_size = tuple(int(b) for b in self.batch_size)
        self.baselines = tuple(str(b).strip().lower() for b in self.baselines)
        self._check()

    def _check(self):
        for flag, values in (("--gamma", self.gamma), ("--temperature", self.temperature),
                             ("--batch-size", self.batch_size)):
            if not values:
                raise ValueError(f"{flag} needs at least one value (comma-separated)")
        if any(g != AUTO and g < 1 for g in self.gamma):
            raise ValueError(f"--gamma values must be >= 1 (draft tokens per step) or auto, got "
                             f"{min(g for g in self.gamma if g != AUTO)}")
        if len(set(self.gamma)) < len(self.gamma):
            raise ValueError(f"--gamma lists a value twice: {','.join(map(str, self.gamma))}")
        bad = [t for t in self.temperature if not (0 <= t < float("inf"))]  # also NaN
        if bad:
            raise ValueError(f"--temperature values must be >= 0 and finite (0 = greedy), got {bad[0]}")
        if any(b < 1 for b in self.batch_size):
            raise ValueError(f"--batch-size values must be >= 1, got {min(self.batch_size)}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline {unknown[0]!r}; --baselines takes a comma-separated subset of "
                             f"{','.join(BASELINES)}")
        for name, low in (("max_new_tokens", 1), ("warmup", 0), ("repeats", 1), ("num_prompts", 0), ("threads", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
        if self.overwrite and self.resume:
            raise ValueError("--overwrite and --resume exclude each other: replace the run or continue it")
        if self.prompts is not None and not Path(self.prompts).exists():
            raise FileNotFoundError(f"prompts file {self.prompts!r} does not exist; pass a JSONL file with one "
                                    '{"prompt": ..., "category": ...} per line')

    @property
    def prompts_per_category(self) -> int | None:
        return self.num_prompts or None  # 0 and None mean all

    @property
    def fixed_gammas(self) -> tuple:
        return tuple(g for g in self.gamma if g != AUTO)

    @property
    def cost_gammas(self) -> list:
        """The gammas whose verify cost is measured: the fixed ones, and every one auto may choose."""
        return sorted(set(self.fixed_gammas) | (set(range(1, AUTO_MAX_GAMMA + 1)) if AUTO in self.gamma else set()))


def _gamma(value):
    """One --gamma value: an integer, or auto."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        try:
            return int(text)
        except ValueError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"--gamma must be an integer or auto, got {value!r}")
