"""Small shared helpers: where a model takes its input, device names, atomic writes, the environment a
result was measured in, and the output-folder policy every command follows."""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

from .config import differences


# ----------------------------------------------------------------------------------------------------
# Devices.

def input_device(model) -> torch.device:
    """Where a (possibly multi-device) model takes its input ids: its input embeddings' device."""
    return model.get_input_embeddings().weight.device


def logit_width(model) -> int:
    """Number of logits the model emits (an int8 head has no .weight: it carries out_features)."""
    head = model.get_output_embeddings()
    width = getattr(head, "out_features", None)
    return int(width) if width is not None else int(head.weight.shape[0])


def resolve_device(name: str | None, flag: str = "--device") -> torch.device:
    """'auto' -> cuda when a CUDA device is visible, else cpu. A bad name or an absent device is a
    one-line ValueError that says what to pass instead."""
    name = "auto" if name is None else str(name).strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag} {name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name}: no CUDA device is visible (torch {torch.__version__}); "
                             f"use {flag} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type != "cpu":
        raise ValueError(f"{flag} {name!r}: specdec runs on cpu or cuda")
    return dev


# ----------------------------------------------------------------------------------------------------
# Atomic writes: a reader (or a crash) sees the old file or the new one, never half of one.

def write_text_atomic(path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def json_safe(obj):
    """Non-finite floats become None, so files stay standard JSON (no NaN / Infinity tokens)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(path, obj, indent: int | None = 1) -> None:
    write_text_atomic(path, json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n")


def append_jsonl(path, row: dict) -> None:
    """One JSON line, appended and flushed (a crash can tear only the last line; readers skip it)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(json_safe(row), allow_nan=False) + "\n")
        f.flush()


def read_jsonl(path) -> tuple[list[dict], int]:
    """(rows, number of torn lines dropped). Only a torn *last* line is tolerated: it is what a crash
    during append leaves; a bad line elsewhere is corruption and raises a ValueError naming the file."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    rows, torn = [], 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):
                torn += 1
                continue
            raise ValueError(f"{path}:{n} is not JSON; the file is corrupt (delete the line or the run)") from None
    return rows, torn


# ----------------------------------------------------------------------------------------------------
# The environment a measurement was made in (recorded beside every result).

def git_commit(short: bool = False) -> str | None:
    try:
        args = ["git", "rev-parse"] + (["--short=12"] if short else []) + ["HEAD"]
        out = subprocess.run(args, cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001 - no git, not a checkout: the commit is unknown
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def environment(device="cpu") -> dict:
    """Date, machine, versions and commit: what a result file must say about where it came from."""
    import importlib.metadata

    import transformers  # heavy: imported when a result is written, not when the CLI starts

    try:
        ours = importlib.metadata.version("specdec")
    except importlib.metadata.PackageNotFoundError:
        ours = None
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "specdec": ours}
    try:
        import triton
        versions["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - triton is optional off Linux
        versions["triton"] = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": str(device), "device_name": device_name(device), "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "versions": versions, "commit": git_commit()}


# ----------------------------------------------------------------------------------------------------
# Output folders. The policy, the same for every command: an output folder holds one run.
#   * a new or empty folder is used as is;
#   * a folder holding a specdec run (RUN_FILE) is refused unless --overwrite (which deletes that run
#     first) or, for commands that can continue, --resume (which checks that the saved settings equal
#     the new ones and names every one that differs);
#   * a non-empty folder that is not a specdec run is always refused (--overwrite never deletes files
#     specdec did not write).

RUN_FILE = "specdec_run.json"


def prepare_out_dir(path, command: str, config: dict, *, overwrite: bool = False, resume: bool = False,
                    can_resume: bool = False, free=()) -> Path:
    """Check and claim an output folder for one run of `command` (see the policy above); returns it.

    config: the run's settings (JSON-ready), saved in RUN_FILE and compared on resume, except the
    names in `free` (settings that may change between a run and its resumption, e.g. threads)."""
    out = Path(path)
    flag_hint = "pass --overwrite to replace it" + (" or --resume to continue it" if can_resume else "")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out")
    run_file = out / RUN_FILE
    if out.is_dir() and any(out.iterdir()):
        if not run_file.is_file():
            raise ValueError(f"--out {out} is a non-empty folder that holds no specdec run; choose a new or "
                             "empty folder")
        try:
            saved = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            saved = {}
        if resume:
            if saved.get("command") != command:
                raise ValueError(f"--resume: {out} holds a `specdec {saved.get('command')}` run, not `specdec {command}`")
            diff = differences(saved.get("config", {}), config, ignore=set(free) | {"resume", "overwrite"})
            if diff:
                raise ValueError(f"--resume: the settings differ from the run in {out}: " + "; ".join(diff)
                                 + " (resume with the saved settings, or start a new --out)")
            return out
        if not overwrite:
            raise ValueError(f"--out {out} already holds a `specdec {saved.get('command', '?')}` run; {flag_hint}, "
                             "or choose a new --out")
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    elif resume:
        raise ValueError(f"--resume: {out} holds no run to continue; run without --resume to start one")
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_file, {"command": command, "config": config,
                                     "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    except OSError as e:
        raise ValueError(f"cannot write to --out {out}: {e.strerror or e}") from None
    return out


# ----------------------------------------------------------------------------------------------------
# Text tables.

def format_table(rows: list[dict], columns: list[tuple]) -> str:
    """A fixed-width table. columns: (key, header, width, format spec); None prints '-', booleans
    'yes' / 'NO'."""
    def cell(v, spec):
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "NO"
        return format(v, spec)
    head = " ".join(f"{h:>{w}}" for _, h, w, _ in columns)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(" ".join(f"{cell(r.get(k), spec):>{w}}" for k, _, w, spec in columns))
    return "\n".join(lines)
