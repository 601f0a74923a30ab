"""Config blocks every command shares: each flag defined once (its default, help and check).

A command's config dataclass inherits the blocks it takes (specdec/models/options.py holds the models
block; listed last among the bases, its flags come first in --help) and adds its own fields. Each
block's `__post_init__` checks its own fields and calls super()'s, so a config built from several
blocks checks every one of them once, before anything is loaded; a command's own `__post_init__` calls
`super().__post_init__()` first. A command whose default differs from the block's re-declares the
field with `config.with_default` (the help and the check stay the block's).
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import option


class Block:
    """The end of the blocks' cooperative `__post_init__` chain."""

    def __post_init__(self):
        pass


@dataclass
class ProgressBlock(Block):
    progress: bool = option(True, "progress bar and status lines on stderr (and transformers' loading bars)",
                            group="output")


@dataclass
class OutputBlock(Block):
    """An output folder that holds one run (common/outdir.py: the policy)."""
    out: str | None = option(None, "output folder: a new or empty folder, or a run of this command with "
                             "--overwrite", group="output", required=True)
    overwrite: bool = option(False, "delete the run already in --out first (never files specdec did not write)",
                             group="output")

    def __post_init__(self):
        super().__post_init__()
        if not self.out:
            raise ValueError("--out DIR is required (where this command writes its run)")


@dataclass
class ResumableOutputBlock(OutputBlock):
    resume: bool = option(False, "continue the run in --out (its settings must equal these, except those that do "
                          "not change the results, e.g. --threads)", group="output")

    def __post_init__(self):
        super().__post_init__()
        if self.overwrite and self.resume:
            raise ValueError("--overwrite and --resume exclude each other: --overwrite deletes the run in --out, "
                             "--resume continues it; pass one of them")
