"""Output folders: the policy every command follows (an output folder holds one run), and the claim that
holds a folder for the life of one run.

The policy, the same for every command:
  * a new or empty folder is used as is;
  * a folder holding a specdec run (RUN_FILE) is refused unless --overwrite (which deletes that run
    first) or, for commands that can continue, --resume (which checks that the saved settings equal the
    new ones and names every one that differs);
  * a non-empty folder that is not a specdec run is always refused (--overwrite never deletes files
    specdec did not write).
A run that fails before it has written anything beyond its settings (a bad model path, an interrupt
while loading) leaves the folder as it found it: a folder it created is removed, an empty one is left
empty, and a run it was replacing (--overwrite) is put back.

    with claim("runs/x", "bench", settings, overwrite=...) as run:    # refused: ValueError, one line
        ... write into run.path ...
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

from .config import differences
from .files import write_json_atomic

RUN_FILE = "specdec_run.json"
# A run's predecessor set aside by --overwrite until the new run has written something (then deleted)
# or failed without doing so (then put back).
REPLACED = ".specdec-replaced"


def claim(path, command: str, config: dict, *, overwrite: bool = False, resume: bool = False,
          can_resume: bool = False, free=(), setup_files=()) -> "RunFolder":
    """Check and claim an output folder for one run of `command` (see the policy above).

    config: the run's settings (JSON-ready), saved in RUN_FILE and compared on resume, except the
    names in `free` (settings that may change between a run and its resumption, e.g. threads).
    setup_files: names the command writes while it sets up, before its work (its settings file): a run
    that fails having written only these still leaves the folder as it found it."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out")
    try:
        created = _make_dirs(out)
    except OSError as e:
        raise ValueError(f"cannot write to --out {out}: {e.strerror or e}") from None
    run = RunFolder(out, command, created, setup_files)
    try:
        run.take(config, overwrite=overwrite, resume=resume, can_resume=can_resume, free=free)
    except BaseException:
        run.close(failed=True)
        raise
    return run


class RunFolder:
    """An output folder claimed for one run (what `claim` returns): `path`; `commit()` once the run's
    setup succeeded (its models loaded); `close(failed)`, which a `with` block calls. Closing after a
    failure before the commit and before any file beyond the setup files leaves the folder as found."""

    def __init__(self, path: Path, command: str, created: list, setup_files=()):
        self.path, self.command, self.created = path, command, created
        self.setup_files = set(setup_files) | {RUN_FILE}
        self.fresh = False             # a new run (not --resume): rolled back when it fails before any work
        self.committed = False
        self.found: set = set()        # the folder's entries right after the claim
        self.closed = False

    def take(self, config: dict, *, overwrite: bool, resume: bool, can_resume: bool, free) -> None:
        out = self.path
        flag_hint = "pass --overwrite to replace it" + (" or --resume to continue it" if can_resume else "")
        run_file = out / RUN_FILE
        entries = _entries(out)
        if entries:
            if not run_file.is_file():
                raise ValueError(f"--out {out} is a non-empty folder that holds no specdec run; choose a new or "
                                 "empty folder")
            try:
                saved = json.loads(run_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                saved = {}
            if resume:
                if saved.get("command") != self.command:
                    raise ValueError(f"--resume: {out} holds a `specdec {saved.get('command')}` run, not "
                                     f"`specdec {self.command}`")
                diff = differences(saved.get("config", {}), config, ignore=set(free) | {"resume", "overwrite"})
                if diff:
                    raise ValueError(f"--resume: the settings differ from the run in {out}: " + "; ".join(diff)
                                     + " (resume with the saved settings, or start a new --out)")
                self.found = set(_entries(out))
                return
            if not overwrite:
                raise ValueError(f"--out {out} already holds a `specdec {saved.get('command', '?')}` run; "
                                 f"{flag_hint}, or choose a new --out")
            _set_aside(out, entries)
        elif resume:
            raise ValueError(f"--resume: {out} holds no run to continue; run without --resume to start one")
        self.fresh = True
        try:
            write_json_atomic(run_file, {"command": self.command, "config": config, "started": _now()})
        except OSError as e:
            raise ValueError(f"cannot write to --out {out}: {e.strerror or e}") from None
        self.found = set(_entries(out))

    @classmethod
    def elsewhere(cls, path) -> "RunFolder":
        """The folder as a process sees it that does not hold it (a distributed run's other ranks, while
        rank 0 holds it): every method is a no-op."""
        run = cls(Path(path), "", [])
        run.closed = True
        return run

    def commit(self) -> None:
        """The run's setup succeeded and its work begins: a failure from here on keeps what it wrote, and
        the run it replaces (--overwrite) is deleted now rather than at the end (its disk space)."""
        if not self.closed:
            self.committed = True
            shutil.rmtree(self.path / REPLACED, ignore_errors=True)

    def worked(self) -> bool:
        """Has the run begun its work (committed, or written anything beyond its setup files)?"""
        return self.committed or bool(set(_entries(self.path)) - self.found - self.setup_files)

    def close(self, failed: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        out = self.path
        if failed and self.fresh and not self.worked():
            for name in self.setup_files:
                _remove(out / name)
            _put_back(out)
            for folder in reversed(self.created):   # innermost first; only if nothing else is there
                try:
                    folder.rmdir()
                except OSError:
                    break
        else:
            shutil.rmtree(out / REPLACED, ignore_errors=True)

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _entries(out: Path) -> list[str]:
    """The folder's entries, but for specdec's own bookkeeping."""
    return sorted(p.name for p in out.iterdir() if p.name != REPLACED) if out.is_dir() else []


def _make_dirs(out: Path) -> list[Path]:
    """Create `out` and its missing parents; returns the folders created, outermost first."""
    missing = []
    p = out
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    out.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


def _set_aside(out: Path, entries) -> None:
    """Move the run being replaced into out/REPLACED (one rename per entry: no data is copied)."""
    aside = out / REPLACED
    shutil.rmtree(aside, ignore_errors=True)   # a leftover of a run killed while replacing one
    aside.mkdir()
    for name in entries:
        os.replace(out / name, aside / name)


def _put_back(out: Path) -> None:
    aside = out / REPLACED
    if not aside.is_dir():
        return
    for p in aside.iterdir():
        os.replace(p, out / p.name)
    aside.rmdir()
