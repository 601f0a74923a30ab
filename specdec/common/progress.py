"""The progress bar of a long command (tqdm on stderr), or nothing when it is off."""
from __future__ import annotations

import sys


class Progress:
    """A bar of `total` steps (from `initial`, e.g. a resumed run's), its postfix the current status or
    the latest figures. Disabled (enabled=False, --no-progress, a rank other than 0): every call is a no-op."""

    def __init__(self, total: int, desc: str, enabled: bool = True, unit: str = "it", initial: int = 0):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm   # heavy optional dependency: imported on use

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def status(self, text: str) -> None:
        """What the command is doing now (loading, measuring...), shown after the bar."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    def advance(self, n: int = 1, **figures) -> None:
        """n steps done; figures (name -> text), when given, replace the postfix."""
        if self.bar is None:
            return
        if figures:
            self.bar.set_postfix(figures, refresh=False)
        self.bar.update(n)

    def close(self, keep: bool = True) -> None:
        """keep=False clears the bar (an error message then gets a line of its own)."""
        if self.bar is not None:
            self.bar.leave = keep
            self.bar.close()
