"""Atomic writes (a reader, or a crash, sees the old file or the new one, never half of one), standard
JSON (no NaN / Infinity tokens), and append-only JSONL logs."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


def write_bytes_atomic(path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


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
