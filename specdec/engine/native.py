"""Build, cache and load specdec's C kernels (specdec/engine/*.c) with the system C compiler.

Why C: the CPU target path needs a weight-only quantized GEMM at float32 activations that sums every
output in one fixed order (specdec/engine/qkernels.c says why); neither PyTorch nor NumPy has one on the
CPU (torch's int4 pack kernels are fast only with bf16 activations, which change the model).

A library is compiled on first use with `$CC` (else cc, gcc, clang):
    <cc> -O3 -march=native -ffp-contract=off -shared -fPIC <source> -o <lib> -lm
(without -march=native where the compiler refuses it) and cached as
    <cache>/native/<name>-<key>.so,  cache = common/cachedir.cache_root() ($SPECDEC_CACHE_DIR, else
                                     $XDG_CACHE_HOME/specdec, else ~/.cache/specdec)
key = sha256 of the source, the compiler's identity (`<cc> --version`), the flags and the CPU's feature
flags: a new source, compiler or machine builds anew, and a CPU without the builder's instructions never
loads its library. A build is written to a temporary file and renamed into place, so a concurrent
process never loads half a library; a cached library that does not load (corrupt, truncated) or
answers the wrong ABI version is rebuilt once. Compiling costs a few seconds once per key.

No compiler: `NativeUnavailable`, whose message is one line saying what to install; callers fall back
to the float32 NumPy paths.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..common.cachedir import cache_root

HERE = Path(__file__).resolve().parent
FLAG_SETS = (("-O3", "-march=native", "-ffp-contract=off"), ("-O3", "-ffp-contract=off"))
_loaded: dict[tuple, ctypes.CDLL] = {}


class NativeUnavailable(RuntimeError):
    """The C kernels cannot be built or loaded here; the message is one line that says why and what to do."""


def cache_dir() -> Path:
    """<specdec cache>/native (common/cachedir.cache_root(): the one root of every specdec cache)."""
    return cache_root() / "native"


def compiler() -> list[str]:
    """The C compiler command ($CC, which may carry arguments, else cc / gcc / clang)."""
    cc = os.environ.get("CC")
    if cc:
        cmd = shlex.split(cc)
        if not cmd or shutil.which(cmd[0]) is None:
            raise NativeUnavailable(f"CC={cc!r} is not an executable; set CC to a C compiler (e.g. gcc) "
                                    "or unset it")
        return cmd
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return [name]
    raise NativeUnavailable("no C compiler found (cc, gcc, clang): install one (e.g. `apt-get install gcc`) "
                            "or set CC; until then the float32 paths run instead")


def _compiler_identity(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=30)
        return (shutil.which(cmd[0]) or cmd[0]) + "\n" + out.stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeUnavailable(f"the C compiler {cmd[0]!r} does not run ({e}); set CC to a working one") from e


def cpu_flags() -> str:
    """The CPU's feature flags (Linux: /proc/cpuinfo's `flags` line), else the platform's name."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def build_key(source: bytes, identity: str, flags: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for part in (source, identity.encode(), " ".join(flags).encode(), cpu_flags().encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:20]


def _compile(cmd: list[str], flags, source: Path, target: Path) -> str | None:
    """Compile `source` to `target` atomically; None on success, else the compiler's last error line."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        out = subprocess.run(cmd + list(flags) + ["-shared", "-fPIC", str(source), "-o", tmp, "-lm"],
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            lines = [line for line in (out.stderr or out.stdout).splitlines() if line.strip()]
            return lines[-1] if lines else f"exit code {out.returncode}"
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _open(path: Path, abi: tuple[str, int] | None):
    """The library at `path`, or None if it does not load or answers another ABI version."""
    try:
        lib = ctypes.CDLL(str(path))
        if abi is not None:
            fn = getattr(lib, abi[0])
            fn.restype = ctypes.c_int
            if fn() != abi[1]:
                return None
        return lib
    except (OSError, AttributeError):
        return None


def load(name: str, abi: tuple[str, int] | None = None, source: Path | None = None) -> ctypes.CDLL:
    """specdec/engine/<name>.c (or `source`) as a loaded library, built and cached on first use (see the
    module docstring). abi: (function, version) the library must answer, so a stale build is never used."""
    source = Path(source) if source is not None else HERE / f"{name}.c"
    text = source.read_bytes()
    cmd = compiler()
    memo = (name, tuple(cmd), hashlib.sha256(text).hexdigest(), str(cache_dir()), FLAG_SETS)
    if memo in _loaded:
        return _loaded[memo]
    identity = _compiler_identity(cmd)
    errors = []
    for flags in FLAG_SETS:
        path = cache_dir() / f"{name}-{build_key(text, identity, flags)}.so"
        lib = _open(path, abi) if path.exists() else None
        if lib is None:   # not built yet, or corrupt / stale: (re)build once
            err = _compile(cmd, flags, source, path)
            if err is not None:
                errors.append(f"{' '.join(flags)}: {err}")
                continue
            lib = _open(path, abi)
        if lib is not None:
            _loaded[memo] = lib
            return lib
        errors.append(f"{' '.join(flags)}: built {path.name} but it does not load")
    raise NativeUnavailable(f"could not build {source.name} with {' '.join(cmd)} ({'; '.join(errors)}); "
                            "set CC to a working C compiler")
