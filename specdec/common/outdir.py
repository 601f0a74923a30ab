"""Output folders: the policy every command follows (an output folder holds one run)."""
from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

from .config import differences
from .files import write_json_atomic

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
