"""Fingerprints of a run's inputs, saved with its settings, so that --resume refuses an input that changed
behind an unchanged path (an edited prompts file, retrained draft weights) instead of mixing two inputs
in one run.

  file_digest(path)        a file's content hash (prompt and data files: small, and read by the run anyway;
                           also the checksums of teacher-cache steps and checkpoints)
  file_sha256(path)        the same hash, memoised per path, size and mtime (a GGUF's: its cache key and
                           the source quantize="gguf" records)
  model_fingerprint(name)  per file of a model folder (config, tokenizer, weights): the content hash of a
                           small file; for a large one (the weights) its size, modification time and, for
                           safetensors, its header (every tensor's name, dtype, shape and offsets).
                           Hashing the weights would read every byte at every start and resume (seconds
                           per GB); rewriting a weights file changes its modification time, so what this
                           misses is a different file copied in with the size and mtime of the one it
                           replaces, which takes doing on purpose. The cost: a copy of the same weights
                           under a new mtime counts as a change (refused, never mixed).
  changes(saved, now)      what differs between two sets of fingerprints, in words
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
from pathlib import Path

SMALL = 16 << 20   # bytes: files up to this size are fingerprinted by their content
# The files transformers reads to build a causal LM and its tokenizer.
MODEL_FILES = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json", "*.bin",
               "*.bin.index.json", "*.gguf", "tokenizer*", "special_tokens_map.json", "added_tokens.json",
               "vocab.*", "merges.txt", "*.model", "chat_template.*", "*.tiktoken")


def _sha256_hex(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path) -> str:
    """"sha256:<hex>" of the file's bytes, read every time (checksums: a file damaged in place keeps its
    size and mtime)."""
    return "sha256:" + _sha256_hex(path)


_sha_memo: dict = {}


def file_sha256(path) -> str:
    """sha256 hex of the file's bytes, memoised per (path, size, mtime) within the process: a model's
    source file (a GGUF: ~100 MB) is hashed once however many times a run loads from it."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _sha_memo:
        _sha_memo[key] = _sha256_hex(p)
    return _sha_memo[key]


def bytes_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _stamp(path: Path) -> dict:
    st = path.stat()
    if st.st_size <= SMALL:
        return {"content": file_digest(path)}
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if path.suffix == ".safetensors":
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            stamp["header"] = "sha256:" + hashlib.sha256(f.read(min(n, SMALL))).hexdigest()
    return stamp


def _local_folder(name) -> Path | None:
    """The folder a model name loads from: itself, or a hub id's snapshot in the local cache (None when
    it is not there yet: the run downloads it, and only the id is recorded)."""
    path = Path(str(name)).expanduser()
    if path.exists():
        return path
    try:
        from huggingface_hub import snapshot_download   # installed with transformers
        return Path(snapshot_download(str(name), local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, not a hub id, no hub library: nothing to fingerprint
        return None


def model_fingerprint(name) -> dict:
    """{"files": {file: stamp}} of the model folder `name` (a file: itself), or {"hub_id"} when not local."""
    folder = _local_folder(name)
    if folder is None:
        return {"hub_id": str(name)}
    if folder.is_file():
        return {"files": {folder.name: _stamp(folder)}}
    files = sorted(p for p in folder.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, pat)
                                                                      for pat in MODEL_FILES))
    return {"files": {p.name: _stamp(p) for p in files}}


def changes(saved: dict, now: dict) -> list[str]:
    """'--flag: what changed' for every input whose fingerprint differs. An input the saved run did not
    fingerprint (a run from before fingerprints) is not compared."""
    out = []
    for flag in sorted(set(saved) & set(now)):
        a, b = saved[flag], now[flag]
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and "files" in a and "files" in b:
            out.append(f"{flag}: " + ", ".join(_file_changes(a["files"], b["files"])))
        else:
            out.append(f"{flag}: its content changed")
    return out


def _file_changes(a: dict, b: dict) -> list[str]:
    out = [f"{name} is new" for name in sorted(set(b) - set(a))]
    out += [f"{name} is gone" for name in sorted(set(a) - set(b))]
    out += [f"{name} changed" for name in sorted(set(a) & set(b)) if a[name] != b[name]]
    return out


def fingerprint_inputs(models: dict, files: dict) -> dict:
    """flag -> fingerprint: `models` flag -> model name, `files` flag -> file path; None values are skipped
    (an input left at its default that is part of specdec)."""
    out = {flag: model_fingerprint(name) for flag, name in models.items() if name is not None}
    out.update({flag: file_digest(path) for flag, path in files.items() if path is not None and os.path.isfile(path)})
    return out
