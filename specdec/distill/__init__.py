"""DistillSpec: train the draft toward the target to raise acceptance.

config.py      `DistillConfig`: every setting of `specdec distill`, validated
losses.py      pure divergences (fkl, rkl, jsd, tvd; full and top-K + tail) and the acceptance estimate
data.py        prompts (held-out, unseen categories), micro-batches and the live data sources (dataset, teacher,
               student, mix, skd)
rollout.py     sampling continuations on the decoders' ModelRunner, keeping the target's logits where it ran
skd.py         SKD sampling (the draft proposes, the target replaces tokens outside its top-K)
cache.py       `specdec cache-teacher`: the target's top-K log-probs on disk, a data source without the target
schedule.py    the warm-up + cosine learning-rate schedule
evaluate.py    estimated acceptance and real mean acceptance length on held-out prompts
dist.py        one process, DDP or FSDP
checkpoint.py  checkpoints, the exported draft, metrics.jsonl
trainer.py     `specdec distill`: setup, the loop (train_step, log_eval, save), export
"""
from .cache import CacheConfig, build_cache
from .config import DistillConfig
from .trainer import train

__all__ = ["DistillConfig", "train", "CacheConfig", "build_cache"]
