"""Prompts for the benchmark and for distillation: the built-in sets, user JSONL, and Spec-Bench. This
is the one prompt loader of specdec.

Every loader returns a list of `Prompt` records, grouped by category in the order categories first
appear (the benchmark forms batches from consecutive prompts of one category).

Sources (`--prompts`, `load_prompts(source)`):
  builtin:code  (also None) the bundled pair's held-out stdlib code prompts (specdec/data/corpus.py)
  builtin:chat  short chat requests written for specdec, 11 categories (specdec/data/chat_prompts.py)
  a file        JSONL, each line one of (detected per line):
    user JSONL  ``{"prompt": "...", "category": "...", "completion": "..."}``; category optional
                ("default"); completion optional: the fixed continuation distillation's `dataset`
                source trains on (the benchmark ignores it)
    Spec-Bench  ``{"question_id": 81, "category": "writing", "turns": ["...", "..."]}`` (its
                ``question.jsonl``: 480 questions, 13 categories): the first turn and its category

Chat template (`--chat-template`; its values: common/values.py): every prompt of every source is one
user turn put through the tokenizer's chat template (add_generation_prompt=True) when the mode is `on`,
or `auto` and the tokenizer has a template; `off` leaves the text raw. A completion is never wrapped (it is the
assistant's reply, which follows the generation prompt).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

from ..common.files import read_text
from ..common.values import check_chat_template
from .chat_prompts import CHAT_PROMPTS
from .corpus import builtin_prompts

DEFAULT_CATEGORY = "default"
BUILTIN_SETS = {"builtin:code": "builtin (held-out stdlib, specdec/data/corpus.py)",
                "builtin:chat": "builtin chat prompts (specdec/data/chat_prompts.py)"}


class _PromptBase(TypedDict):
    id: str
    category: str
    prompt: str


class Prompt(_PromptBase, total=False):
    """One prompt record: id, category and text; `completion` only where the file gives one."""
    completion: str


def builtin(max_per_category: int | None = None) -> list[dict]:
    """The bundled pair's held-out stdlib prompts (see specdec/data/corpus.py); no file needed."""
    return [{"id": str(p["id"]), "category": p["category"], "prompt": p["prompt"]}
            for p in builtin_prompts(max_per_category=max_per_category)]


def builtin_chat(max_per_category: int | None = None) -> list[dict]:
    """The built-in chat requests (specdec/data/chat_prompts.py), raw (not yet in a chat template)."""
    return [{"id": f"{cat}-{i}", "category": cat, "prompt": text}
            for cat, texts in CHAT_PROMPTS.items() for i, text in enumerate(texts[:max_per_category])]


def is_builtin_source(source) -> bool:
    return source is None or str(source) in BUILTIN_SETS


def uses_chat_template(tokenizer, mode: str = "auto") -> bool:
    """Whether prompts go through the tokenizer's chat template under `mode` (on / auto / off)."""
    has = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if check_chat_template(mode) == "on" and tokenizer is not None and not has:
        raise ValueError("--chat-template on, but the tokenizer has no chat template; use --chat-template auto "
                         "or off")
    return has and mode != "off"


def apply_chat_template(tokenizer, text: str) -> str:
    """One user turn through the tokenizer's chat template (raw text when it has none)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return text
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def with_chat_template(prompts: list[dict], tokenizer, mode: str = "auto") -> list[dict]:
    """The records with each prompt wrapped as one user turn when `mode` says so (uses_chat_template)."""
    if not uses_chat_template(tokenizer, mode):
        return list(prompts)
    return [{**p, "prompt": apply_chat_template(tokenizer, p["prompt"])} for p in prompts]


def _parse_line(obj, lineno: int, path: Path) -> Prompt:
    where = f"{path}:{lineno}"
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object with 'prompt' (or Spec-Bench 'turns'), got {type(obj).__name__}")
    if "turns" in obj:  # Spec-Bench question.jsonl
        turns = obj["turns"]
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) or not turns[0]:
            raise ValueError(f"{where}: 'turns' must be a non-empty list of strings")
        qid = obj.get("question_id", lineno)
        return {"id": str(qid), "category": str(obj.get("category") or DEFAULT_CATEGORY), "prompt": turns[0]}
    if "prompt" in obj:
        text = obj["prompt"]
        if not isinstance(text, str) or not text:
            raise ValueError(f"{where}: 'prompt' must be a non-empty string")
        record = {"id": str(obj.get("id", lineno)), "category": str(obj.get("category") or DEFAULT_CATEGORY),
                  "prompt": text}
        completion = obj.get("completion")
        if completion is not None:
            if not isinstance(completion, str) or not completion:
                raise ValueError(f"{where}: 'completion' must be a non-empty string (or left out)")
            record["completion"] = completion
        return record
    raise ValueError(f"{where}: no 'prompt' or 'turns' field; each line must be "
                     '{"prompt": "...", "category": "..."} or a Spec-Bench question')


def load_prompts_file(path, tokenizer=None, chat_template: str = "auto") -> list[Prompt]:
    """Prompts from a JSONL file (user format or Spec-Bench's question.jsonl; blank lines skipped), put
    through the tokenizer's chat template as `chat_template` says (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompts file {str(path)!r} does not exist; pass a JSONL file with one "
                                '{"prompt": ..., "category": ...} per line')
    if path.is_dir():
        raise ValueError(f"prompts path {str(path)!r} is a folder; pass a JSONL file")
    out = []
    text = read_text(path, "save the prompts file as UTF-8 (one JSON object per line)")
    for lineno, line in enumerate(text.split("\n"), start=1):   # not splitlines(): U+2028 may sit in a string
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: malformed JSON on line {lineno} ({e.msg}); each line must be one "
                             "JSON object") from None
        out.append(_parse_line(obj, lineno, path))
    if not out:
        raise ValueError(f"prompts file {str(path)!r} is empty; add one JSON object per line")
    return with_chat_template(group_by_category(out), tokenizer, chat_template)


def group_by_category(prompts: list[dict]) -> list[dict]:
    """Stable regroup: categories in first-appearance order, prompts in file order within each."""
    order: dict[str, list[dict]] = {}
    for p in prompts:
        order.setdefault(p["category"], []).append(p)
    return [p for items in order.values() for p in items]


def limit_per_category(prompts: list[dict], n: int | None) -> list[dict]:
    """The first n prompts of each category (all when n is None)."""
    if n is None:
        return list(prompts)
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        k = seen.get(p["category"], 0)
        if k < n:
            out.append(p)
            seen[p["category"]] = k + 1
    return out


def load_prompts(source=None, tokenizer=None, num_per_category: int | None = None,
                 chat_template: str = "auto") -> tuple[list[dict], str]:
    """(prompts, description of the source). source: a file, a BUILTIN_SETS name, or None (builtin:code);
    each prompt through the tokenizer's chat template as `chat_template` says."""
    check_chat_template(chat_template)
    if source is None or str(source) == "builtin:code":
        prompts, described = builtin(max_per_category=num_per_category), BUILTIN_SETS["builtin:code"]
    elif str(source) == "builtin:chat":
        prompts, described = builtin_chat(max_per_category=num_per_category), BUILTIN_SETS["builtin:chat"]
    elif str(source).startswith("builtin:"):
        raise ValueError(f"unknown built-in prompt set {source!r}; use one of {', '.join(BUILTIN_SETS)} or a "
                         "JSONL file")
    else:
        return limit_per_category(load_prompts_file(source, tokenizer, chat_template), num_per_category), str(source)
    return with_chat_template(prompts, tokenizer, chat_template), described


def categories(prompts: list[dict]) -> list[str]:
    return list(dict.fromkeys(p["category"] for p in prompts))
