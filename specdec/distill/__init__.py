"""DistillSpec: train the draft toward the target to raise acceptance.

losses.py   pure divergences (fkl, rkl, jsd, tvd; full and top-K + tail) and the acceptance estimate
data.py     prompts and the data sources (dataset, teacher, student, mix, skd)
trainer.py  `specdec distill`: the training loop, evaluation, checkpoints, DDP / FSDP
cache.py    `specdec cache-teacher`: the target's top-K log-probs, for training without the target
"""
