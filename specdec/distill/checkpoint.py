"""What a distillation run keeps on disk: checkpoints, the exported draft, metrics.jsonl.

    DIR/checkpoints/step_NNNNNN/trainer_state.pt   weights, optimizer, RNG and step, every --save-every steps
    DIR/checkpoints/step_NNNNNN/checkpoint.json    the state file's size and sha256
    DIR/model.safetensors, config.json, tokenizer   the final draft (a Hugging Face checkpoint)
    DIR/metrics.jsonl                               one JSON row per train step and per evaluation

A checkpoint is written into a temporary folder and renamed into place, so a kill at any moment leaves
the previous checkpoint or the new one, never half of one. A checkpoint damaged afterwards (a full
disk, a copy cut short, a flipped bit: its sha256 is checked before it loads) is skipped on resume with
a warning naming the one used instead, the next older intact one.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import sys
from pathlib import Path

import torch

from ..common.files import append_jsonl, read_jsonl, write_json_atomic, write_text_atomic
from ..common.fingerprint import file_digest

STATE_FILE = "trainer_state.pt"
CHECKSUM_FILE = "checkpoint.json"
# What a run writes into DIR besides the exported draft, whose files `export_hf` records as it writes them
# (common.outdir: --overwrite deletes these and nothing else).
OUTPUTS = ("distill_config.json", "metrics.jsonl", "checkpoints", ".tmp-hf-*")
_STATE_KEYS = ("step", "model", "optimizer", "rng")


def checkpoint_dirs(out) -> list[Path]:
    """Checkpoint folders in DIR/checkpoints, oldest first."""
    root = Path(out) / "checkpoints"
    return sorted(p for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []


def save_checkpoint(out, step: int, model_state: dict, optimizer_state: dict, keep: int) -> Path:
    """Checkpoint of optimizer step `step`; only the newest `keep` are kept."""
    root = Path(out) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save({"step": step, "model": model_state, "optimizer": optimizer_state, "rng": rng_state()},
               tmp / STATE_FILE)
    # read back once to be hashed (from the page cache): what resume checks before it trusts the file
    write_json_atomic(tmp / CHECKSUM_FILE, {"step": step, "file": STATE_FILE, "size": (tmp / STATE_FILE).stat().st_size,
                                            "sha256": file_digest(tmp / STATE_FILE)})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)                   # the checkpoint appears whole, or not at all
    for old in checkpoint_dirs(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_latest(out, verbose: bool = True) -> tuple[Path, dict] | None:
    """(folder, state) of the newest checkpoint that is intact (its sha256 matches) and reads back whole;
    None when there is none. Newer ones that are not are skipped and, when verbose, each is reported on
    stderr in one line that names the checkpoint used instead."""
    skipped, found = [], None
    for folder in reversed(checkpoint_dirs(out)):
        why = _damage(folder)
        if why is None:
            try:
                state = _check_state(torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False))
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
                why = "unreadable: " + (str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__)
        if why is None:
            found = folder, state
            break
        skipped.append((folder, why))
    for folder, why in skipped if verbose else ():
        instead = f"resuming from {found[0].name}" if found else "no older one is intact"
        print(f"warning: checkpoint {folder} is damaged ({why}); {instead}", file=sys.stderr, flush=True)
    return found


def _check_state(state) -> dict:
    """A loaded trainer state, after checking it holds what resuming uses, of the types it uses."""
    if not isinstance(state, dict):
        raise TypeError(f"a {type(state).__name__}, not a trainer state")
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise KeyError(f"no {', '.join(missing)}")
    step, rng = state["step"], state["rng"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"its step is {step!r}")
    if not (isinstance(state["model"], dict) and isinstance(state["optimizer"], dict) and isinstance(rng, dict)
            and torch.is_tensor(rng.get("torch")) and isinstance(rng.get("python"), tuple)):
        raise TypeError("its weights, optimizer or RNG state is not what a checkpoint holds")
    return state


def _damage(folder: Path) -> str | None:
    """What is wrong with a checkpoint's state file by its checksum, or None (a checkpoint from before
    checksums has none to check)."""
    record = folder / CHECKSUM_FILE
    if not record.is_file():
        return None
    try:
        expected = json.loads(record.read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{CHECKSUM_FILE} does not read"
    if not (folder / STATE_FILE).is_file():
        return f"no {STATE_FILE}"
    if file_digest(folder / STATE_FILE) != expected:
        return f"the sha256 of {STATE_FILE} is not the one {CHECKSUM_FILE} lists"
    return None


def export_hf(model, tokenizer, folder, record=None) -> None:
    """The draft as a Hugging Face checkpoint (+ tokenizer) in `folder`, written to a temporary sibling
    first; files are then moved in one by one with os.replace (each file appears whole). record: called
    with the files' names before they are moved in (the run folder's list of what it wrote)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-hf-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if record is not None:
        record(*(f.name for f in tmp.iterdir()))
    for f in sorted(tmp.iterdir()):
        os.replace(f, folder / f.name)
    tmp.rmdir()


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


class MetricsLog:
    """DIR/metrics.jsonl, appended one row at a time (on rank 0 only; other ranks hold a disabled log)."""

    def __init__(self, path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def write(self, row: dict) -> None:
        if self.enabled:
            append_jsonl(self.path, row)

    def truncate_after(self, step: int) -> None:
        """On resume: drop the rows the previous run wrote after its checkpoint (and a line torn by a
        kill during its last write)."""
        if not self.enabled or not self.path.exists():
            return
        rows, _ = read_jsonl(self.path)
        bad = next((r for r in rows if not isinstance(r.get("step", 0), int)), None)
        if bad is not None:
            raise ValueError(f"{self.path}: a row's step is {bad['step']!r}, not a number; the file is corrupt "
                             "(delete the row or the run)")
        keep = [r for r in rows if r.get("step", 0) <= step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))
