"""Atomic writes (a reader, or a crash, sees the old file or the new one, never half of one), standard
JSON (no NaN / Infinity tokens), append-only JSONL logs, and the readers of specdec's files and the
user's: a file that is not UTF-8, not JSON or not of the expected shape is one ValueError naming the file
(and the line) and what to do, never a traceback from deep inside."""
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


def read_text(path, fix: str) -> str:
    """A UTF-8 text file; other bytes are a ValueError naming the file and line, then `fix` (what to do)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line} is not UTF-8 text (byte {raw[e.start]:#04x}); {fix}") from None


def read_json(path, fix: str):
    """The JSON value in a file (read_text's errors, and invalid JSON, name the file; `fix`: what to do)."""
    path = Path(path)
    text = read_text(path, fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); {fix}") from None


def json_type(value, article: bool = False) -> str:
    """The JSON name of a Python value's type, for messages ("an array" with the article)."""
    name = type(value).__name__
    for types, json_name in ((bool, "boolean"), ((int, float), "number"), (str, "string"), (list, "array"),
                             (dict, "object"), (type(None), "null")):
        if isinstance(value, types):
            name = json_name
            break
    return (("an " if name[0] in "aeiou" else "a ") + name) if article else name


def require(obj, where, fix: str, **fields) -> dict:
    """`obj` after checking it is a JSON object holding each of `fields` (name=type or tuple of types; a
    bool is not a number here); else a ValueError naming `where` (a file, or a part of one) and `fix`."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where} holds a JSON {json_type(obj)}, not an object; {fix}")
    for name, types in fields.items():
        types = types if isinstance(types, tuple) else (types,)
        value = obj.get(name)
        if name not in obj:
            raise ValueError(f"{where} has no {name!r}; {fix}")
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            wanted = " or ".join(dict.fromkeys(json_type(t(), article=True) for t in types))
            raise ValueError(f"{where}: {name!r} is {json_type(value, article=True)}, not {wanted}; {fix}")
    return obj


def read_jsonl(path, fix: str = "the file is corrupt (delete the line or the run)") -> tuple[list[dict], int]:
    """(rows, number of torn lines dropped). Only a torn *last* line is tolerated: it is what a crash
    during append leaves (cut anywhere, even inside a UTF-8 character); a bad line elsewhere, or a line
    that is not a JSON object, is corruption: a ValueError naming the file and line."""
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    rows, torn = [], 0
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if n == len(lines):
                torn += 1
                continue
            what = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else "not JSON"
            raise ValueError(f"{path}:{n} is {what}; {fix}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n} is a JSON {json_type(row)}, not an object; {fix}")
        rows.append(row)
    return rows, torn
