"""The learning-rate schedule shared by distillation and bench/train_pair.py's pretraining."""
from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, progress: float, min_frac: float = 0.1) -> float:
    """LR multiplier of optimizer step `step` (0-based): linear warm-up over the first `warmup_steps`
    steps ((step + 1) / warmup_steps), then cosine decay from 1 to `min_frac` as `progress` goes from
    0 to 1 (clamped). The caller says what progress is: the fraction of the post-warm-up steps done
    (distillation), or of a step or wall-clock budget (pretraining)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    p = min(1.0, max(0.0, progress))
    return min_frac + (1.0 - min_frac) * 0.5 * (1.0 + math.cos(math.pi * p))
