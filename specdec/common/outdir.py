"""Output folders: the policy every command follows (an output folder holds one run), and the claim that
holds a folder for the life of one run.

The policy, the same for every command:
  * a new or empty folder is used as is;
  * a folder holding a specdec run (RUN_FILE) is refused unless --overwrite (which deletes the files that
    run wrote, and only those: RUN_FILE lists them) or, for commands that can continue, --resume (which
    checks that the saved settings and inputs equal the new ones and names every one that differs);
  * a non-empty folder that is not a specdec run is always refused (--overwrite never deletes files
    specdec did not write);
  * one run at a time: a claim holds an exclusive lock on LOCK_FILE in the folder until the run ends, so a
    second run into the folder (with --overwrite or --resume too) is refused while the first one lives.
    The lock is the kernel's (flock): it goes with the process, even after kill -9, so a dead run never
    blocks the folder.
A run that fails before it has written anything beyond its settings (a bad model path, an interrupt
while loading) leaves the folder as it found it: a folder it created is removed, an empty one is left
empty, and a run it was replacing (--overwrite) is put back.

    with claim("runs/x", "bench", settings, outputs=("results.json",)) as run:   # refused: ValueError
        ... write into run.path ...
"""
from __future__ import annotations

import datetime
import fnmatch
import os
import shutil
from pathlib import Path

from . import fingerprint
from .config import differences
from .files import read_json, require, write_json_atomic

try:
    import fcntl
except ImportError:  # not POSIX: no lock (one run per folder is then the user's to keep)
    fcntl = None

RUN_FILE = "specdec_run.json"
LOCK_FILE = ".specdec.lock"
# The run --overwrite replaces, set aside until the new run begins its work (then deleted) or fails
# before it (then put back).
REPLACED = ".specdec-replaced"
_OWN = (LOCK_FILE, REPLACED)    # bookkeeping: never part of a run, never a user's file


def claim(path, command: str, config: dict, *, overwrite: bool = False, resume: bool = False,
          can_resume: bool = False, free=(), inputs=None, outputs=(), setup_files=()) -> "RunFolder":
    """Check, lock and claim an output folder for one run of `command` (see the policy above).

    config: the run's settings (JSON-ready), saved in RUN_FILE and compared on resume, except the
    names in `free` (settings that may change between a run and its resumption, e.g. threads).
    inputs: flag -> fingerprint of what the run reads (common.fingerprint), saved beside the settings;
    --resume refuses an input whose fingerprint changed (an edited prompts file, other draft weights).
    outputs: the names (shell patterns) of what the command writes at the top of the folder; RUN_FILE
    keeps them (and what `record` adds) so that --overwrite deletes those and nothing else.
    setup_files: names the command writes while it sets up, before its work (its settings file): a run
    that fails having written only these still leaves the folder as it found it."""
    if not str(path).strip():
        raise ValueError("--out is empty; name a folder for the run (e.g. --out runs/first)")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out")
    try:
        created = _make_dirs(out)
    except OSError as e:
        raise ValueError(f"cannot write to --out {out}: {e.strerror or e}") from None
    run = RunFolder(out, command, created, outputs, setup_files)
    try:
        run.lock = _lock(out)
        run.take(config, inputs or {}, overwrite=overwrite, resume=resume, can_resume=can_resume, free=free)
    except BaseException:
        run.close(failed=True)
        raise
    return run


class RunFolder:
    """An output folder claimed for one run (what `claim` returns): `path`; `record(names)` before
    writing a file whose name the command could not declare up front; `commit()` once the run's setup
    succeeded (its models loaded); `close(failed)`, which a `with` block calls. Closing after a failure
    before the commit and before any file beyond the setup files leaves the folder as found."""

    def __init__(self, path: Path, command: str, created: list, outputs=(), setup_files=()):
        self.path, self.command, self.created = path, command, created
        self.outputs = sorted(set(outputs) | {RUN_FILE})
        self.setup_files = set(setup_files) | {RUN_FILE}
        self.lock: int | None = None
        self.info: dict = {}           # RUN_FILE's content
        self.fresh = False             # a new run (not --resume): rolled back when it fails before any work
        self.committed = False
        self.found: set = set()        # the folder's entries right after the claim
        self.closed = False

    def take(self, config: dict, inputs: dict, *, overwrite: bool, resume: bool, can_resume: bool, free) -> None:
        out = self.path
        _recover(out)
        entries = _entries(out)
        if entries:
            if not (out / RUN_FILE).is_file():
                raise ValueError(f"--out {out} is a non-empty folder that holds no specdec run; choose a new or "
                                 "empty folder")
            saved = _read_run(out)
            if resume:
                self._resume(saved, config, inputs, free)
                return
            if not overwrite:
                hint = "pass --overwrite to replace it" + (" or --resume to continue it" if can_resume else "")
                raise ValueError(f"--out {out} already holds a `specdec {saved.get('command', '?')}` run; {hint}, "
                                 "or choose a new --out")
            _set_aside(out, out / REPLACED, self._saved_outputs(saved))
        elif resume:
            raise ValueError(f"--resume: {out} holds no run to continue; run without --resume to start one")
        self.fresh = True
        self.info = {"command": self.command, "config": config, "inputs": inputs, "outputs": self.outputs,
                     "started": _now()}
        self._write_info()
        self.found = set(_entries(out))

    def _resume(self, saved: dict, config: dict, inputs: dict, free) -> None:
        out = self.path
        if saved.get("command") != self.command:
            raise ValueError(f"--resume: {out} holds a `specdec {saved.get('command')}` run, not "
                             f"`specdec {self.command}`")
        diff = differences(saved.get("config", {}), config, ignore=set(free) | {"resume", "overwrite"})
        if diff:
            raise ValueError(f"--resume: the settings differ from the run in {out}: " + "; ".join(diff)
                             + " (resume with the saved settings, or start a new --out)")
        changed = fingerprint.changes(saved.get("inputs") or {}, inputs)
        if changed:
            raise ValueError(f"--resume: an input changed since the run in {out} started: " + "; ".join(changed)
                             + " (put the original back, or start a new --out)")
        self.info = saved
        outputs = sorted(set(self._saved_outputs(saved)) | set(self.outputs))
        if outputs != saved.get("outputs"):
            self.info["outputs"] = outputs
            self._write_info()
        self.found = set(_entries(out))

    def _saved_outputs(self, saved: dict) -> list:
        """What the saved run wrote; a run file from before specdec listed it: this command's names."""
        outputs = saved.get("outputs")
        if outputs is None and saved.get("command") == self.command:
            outputs = self.outputs
        if outputs is None:
            raise ValueError(f"{self.path / RUN_FILE} (a `specdec {saved.get('command')}` run from an older specdec) "
                             "does not list the files it wrote; delete them yourself, or choose another --out")
        return list(outputs) + [RUN_FILE]

    def _write_info(self) -> None:
        try:
            write_json_atomic(self.path / RUN_FILE, self.info)
        except OSError as e:
            raise ValueError(f"cannot write to --out {self.path}: {e.strerror or e}") from None

    @classmethod
    def elsewhere(cls, path) -> "RunFolder":
        """The folder as a process sees it that does not hold it (a distributed run's other ranks, while
        rank 0 holds it): every method is a no-op."""
        run = cls(Path(path), "", [])
        run.closed = True
        return run

    def record(self, *names: str) -> None:
        """Add names to the files this run wrote (call before writing them: a crash in between leaves a
        name listed for a file that is not there, never a file of the run that --overwrite would keep)."""
        new = sorted(set(names) - set(self.outputs))
        if new and not self.closed:
            self.outputs = sorted(set(self.outputs) | set(new))
            self.info["outputs"] = self.outputs
            self._write_info()

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
        undo = failed and not self.worked()
        if undo and self.fresh:
            for name in self.setup_files:
                _remove(out / name)
            _put_back(out / REPLACED, out)
        else:
            shutil.rmtree(out / REPLACED, ignore_errors=True)
        _unlock(out, self.lock)
        for folder in reversed(self.created if undo else []):   # innermost first, while empty
            try:
                folder.rmdir()
            except OSError:
                break

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


# ----------------------------------------------------------------------------------------------------
# The lock.

def _lock(out: Path) -> int | None:
    """An exclusive, non-blocking flock on out/LOCK_FILE; its descriptor. The file holds the holder's pid
    (for the message a second run gets) and is removed when the run ends."""
    if fcntl is None:
        return None
    path = out / LOCK_FILE
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ValueError(f"cannot write to --out {out}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise ValueError(f"--out {out} is in use by another specdec run{pid}; wait for it to end, or choose "
                             "another --out") from None
        # A run that ended between our open and our flock removed the file we locked: lock the new one.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)
    raise ValueError(f"--out {out} is being claimed by other specdec runs; choose another --out")


def _unlock(out: Path, fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.unlink(out / LOCK_FILE)       # while still holding it (see the inode check in _lock)
    except OSError:
        pass
    os.close(fd)


# ----------------------------------------------------------------------------------------------------
# Files.

def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _entries(out: Path) -> list[str]:
    """The folder's entries, but for specdec's own bookkeeping."""
    return sorted(p.name for p in out.iterdir() if p.name not in _OWN) if out.is_dir() else []


def _read_run(out: Path) -> dict:
    """A folder's run record; a damaged one (specdec cannot tell what the run was or which files it wrote)
    is a ValueError naming it."""
    path = out / RUN_FILE
    fix = "the run's record is damaged: delete the folder's files yourself, or choose another --out"
    saved = require(read_json(path, fix), path, fix, command=str, config=dict)
    outputs = saved.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(x, str) for x in outputs):
        raise ValueError(f"{path}: 'outputs' is not a list of names; {fix}")
    require(saved, path, fix, **({"inputs": dict} if "inputs" in saved else {}))
    return saved


def _ours(name: str, outputs) -> bool:
    """Is `name` one of `outputs` (shell patterns), or the temporary file of an atomic write of one?"""
    return any(fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(name, f".{pat}.*.tmp") for pat in outputs)


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


def _set_aside(folder: Path, aside: Path, outputs) -> None:
    """Move what the run in `folder` wrote (the entries `outputs` names) into `aside`, one rename each (no
    data is copied). A subfolder that is a run of its own (the demo's before/, draft/) is treated the same
    way with its own list, so a file the user added anywhere stays where it is."""
    aside.mkdir()
    for p in sorted(folder.iterdir()):
        if p.name in _OWN or not _ours(p.name, outputs):
            continue
        if p.is_dir() and not p.is_symlink() and (p / RUN_FILE).is_file():
            inner = _read_run(p).get("outputs")
            if inner is not None:
                _set_aside(p, aside / p.name, list(inner) + [RUN_FILE])
                if not any(p.iterdir()):
                    p.rmdir()
                continue
        os.replace(p, aside / p.name)


def _put_back(aside: Path, folder: Path) -> None:
    """Undo _set_aside."""
    if not aside.is_dir():
        return
    folder.mkdir(exist_ok=True)
    for p in aside.iterdir():
        if p.is_dir() and (folder / p.name).is_dir():
            _put_back(p, folder / p.name)
        else:
            os.replace(p, folder / p.name)
    aside.rmdir()


def _recover(out: Path) -> None:
    """A run killed while replacing another leaves REPLACED: with no RUN_FILE beside it the replacement had
    not started (put the old run back); with one, it had (the old run is garbage)."""
    aside = out / REPLACED
    if aside.is_dir():
        if (out / RUN_FILE).exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            _put_back(aside, out)
