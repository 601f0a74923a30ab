"""The bundled corpus: the Python source of the running interpreter's standard library.

Every machine that runs specdec has it, so the bundled pair's training data and the built-in prompt
sets need no download and no file from this repository.

Split rule (fixed, the same on every machine and Python version): a module is held out iff
``zlib.crc32(relpath) % 10 == 0``, where ``relpath`` is its path relative to the stdlib root, in
POSIX form (``"email/mime/text.py"``). The rule looks only at the path, so a module that exists on two
interpreters lands on the same side of the split on both; only the set of files differs.

Prompt categories (all cut from held-out modules, deterministic for a given interpreter):
  function   the code before a function, its signature and docstring; continue with the body
  class      the start of a class (header, docstring, first lines); continue with the rest
  docstring  the code before a function, its signature and the opening quotes; continue the docstring
  comment    the code before a ``#`` comment and the ``# ``; continue the comment and the code
"""

from __future__ import annotations

import ast
import functools
import re
import sysconfig
import zlib
from pathlib import Path

HELDOUT_MODULUS = 10  # 1 module in 10 is held out

# Folders skipped anywhere in the path: tests (duplicated, huge), vendored code, GUI demo scripts,
# and generated data tables (codec charmaps, pydoc topics) that are not source anyone writes.
_SKIP_DIRS = frozenset({
    "test", "tests", "idle_test", "idlelib", "turtledemo", "lib2to3", "site-packages",
    "dist-packages", "__pycache__", "ensurepip", "encodings", "pydoc_data", "lib-dynload",
})
_SKIP_FILE = re.compile(r"^(test_.*|_sysconfigdata_.*)\.py$")

CATEGORIES = ("function", "class", "docstring", "comment")
PROMPT_MIN_CHARS = 200
PROMPT_MAX_CHARS = 1200
REFERENCE_MAX_CHARS = 1200  # the true continuation kept beside each prompt, for inspection/scoring
_FUNCTION_CONTEXT_CHARS = 600  # code shown before a function's signature
_MAX_PER_FILE = 3  # per category, so one big module cannot fill a category


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def stdlib_files(root: Path | None = None) -> list[Path]:
    """All kept ``*.py`` files of the stdlib, sorted by relative path (POSIX form)."""
    root = stdlib_root() if root is None else Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"stdlib folder {root} not found; pass root= explicitly")
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        # config-3.11-x86_64-linux-gnu and friends hold build helpers, not library code
        if any(part in _SKIP_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        if _SKIP_FILE.match(rel.name) or not path.is_file():
            continue
        out.append(path)
    return sorted(out, key=lambda p: _relpath(p, root))


def is_heldout(relpath: str) -> bool:
    """True iff the module at ``relpath`` (relative to the stdlib root) belongs to the held-out split."""
    rel = str(relpath).replace("\\", "/").lstrip("/")
    return zlib.crc32(rel.encode("utf-8")) % HELDOUT_MODULUS == 0


def split_files(root: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(train, heldout): the kept stdlib files on each side of the fixed split, each sorted."""
    root = stdlib_root() if root is None else Path(root)
    train, heldout = [], []
    for path in stdlib_files(root):
        (heldout if is_heldout(_relpath(path, root)) else train).append(path)
    return train, heldout


def read_source(path: Path) -> str:
    # a few stdlib files hold latin-1 bytes in comments; never fail the whole corpus on one
    return Path(path).read_text(encoding="utf-8", errors="replace")


# ----------------------------------------------------------------------------- prompt sets

def _line_offsets(src: str) -> list[int]:
    """offsets[i] = character offset of the start of line i+1 (ast line numbers are 1-based)."""
    offs, pos = [0], 0
    for line in src.splitlines(keepends=True):
        pos += len(line)
        offs.append(pos)
    return offs


def _context_before(lines: list[str], first: int, budget: int) -> str:
    """Whole lines ending just before 0-based line ``first``, as many as fit in ``budget`` chars."""
    out, size, i = [], 0, first - 1
    while i >= 0 and size + len(lines[i]) <= budget:
        out.append(lines[i])
        size += len(lines[i])
        i -= 1
    return "".join(reversed(out))


def _first_line(node: ast.AST) -> int:
    """1-based first line of a statement, decorators included."""
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


def _docstring_node(node: ast.AST) -> ast.Constant | None:
    body = getattr(node, "body", None)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[0].value
    return None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit]


def _prompts_from_file(rel: str, src: str) -> dict[str, list[dict]]:
    """Candidate prompts per category from one module, in source order."""
    out: dict[str, list[dict]] = {c: [] for c in CATEGORIES}
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return out
    lines = src.splitlines(keepends=True)
    offs = _line_offsets(src)
    nodes = sorted((n for n in ast.walk(tree)
                    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))),
                   key=lambda n: n.lineno)
    candidates = [c for node in nodes for c in (_class_candidates(node, src, offs) if isinstance(node, ast.ClassDef)
                                                 else _function_candidates(node, src, lines, offs))]
    for cat, lineno, prompt, reference in candidates + _comment_candidates(lines):
        if PROMPT_MIN_CHARS <= len(prompt) <= PROMPT_MAX_CHARS and reference.strip() \
                and len(out[cat]) < _MAX_PER_FILE:
            out[cat].append({"id": f"{cat}/{rel}:{lineno}", "category": cat, "prompt": prompt,
                             "reference": _cut(reference, REFERENCE_MAX_CHARS), "source": rel})
    return out


def _class_candidates(node: ast.ClassDef, src: str, offs: list[int]) -> list[tuple]:
    """class: the header, docstring and first statements, about a third of the class, cut where a
    statement starts (never inside a docstring or a continued line); then the rest."""
    first = _first_line(node)
    start, end = offs[first - 1], offs[node.end_lineno]
    whole = src[start:end]
    if len(whole) < 2 * PROMPT_MIN_CHARS:
        return []
    doc = _docstring_node(node)
    want = min(PROMPT_MAX_CHARS, max(PROMPT_MIN_CHARS, len(whole) // 3))
    floor = offs[doc.end_lineno] - start if doc is not None else 0
    cuts = [offs[_first_line(n) - 1] - start for n in ast.walk(node)
            if isinstance(n, ast.stmt) and n is not node]
    cuts = [c for c in cuts if floor <= c <= want]
    if not cuts:
        return []
    cut = max(cuts)
    return [("class", first, whole[:cut], whole[cut:])]


def _function_candidates(node, src: str, lines: list[str], offs: list[int]) -> list[tuple]:
    """function: the code just before it (context), its signature and docstring; then the body.
    docstring: context lines, then the signature up to and including the opening quotes; then the
    docstring."""
    doc = _docstring_node(node)
    if doc is None or len(node.body) < 2:
        return []
    first = _first_line(node)
    start, end = offs[first - 1], offs[node.end_lineno]
    body_start = offs[doc.end_lineno]
    head = src[start:body_start]
    budget = min(_FUNCTION_CONTEXT_CHARS, PROMPT_MAX_CHARS - len(head))
    out = [("function", first, _context_before(lines, first - 1, budget) + head, src[body_start:end])]
    quote = re.search(r'[rRbBuU]?("""|\'\'\')', lines[doc.lineno - 1])
    if quote is not None:
        head_end = offs[doc.lineno - 1] + quote.end()
        head = src[start:head_end]
        ctx = _context_before(lines, first - 1, PROMPT_MAX_CHARS - len(head))
        close = src.find(quote.group(1), head_end)
        if close != -1:
            out.append(("docstring", first, ctx + head, src[head_end:close + 3]))
    return out


def _comment_candidates(lines: list[str]) -> list[tuple]:
    """comment: a whole-line comment of some length, preceded by code; the prompt stops after "# "."""
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)# (\S.{20,})$", line.rstrip("\n"))
        if m is None or i < 5 or lines[i - 1].lstrip().startswith("#"):
            continue
        head = m.group(1) + "# "
        ctx = _context_before(lines, i, PROMPT_MAX_CHARS - len(head))
        out.append(("comment", i + 1, ctx + head, "".join(lines[i:i + 12])[len(head):]))
    return out


def _spread(items: list, k: int) -> list:
    """k items evenly spaced over the list (all of them if k >= len)."""
    if k >= len(items):
        return list(items)
    return [items[(i * len(items)) // k] for i in range(k)]


@functools.lru_cache(maxsize=4)
def _all_prompts(root: str) -> tuple[tuple[dict, ...], ...]:
    _, heldout = split_files(Path(root))
    per_cat: dict[str, list[dict]] = {c: [] for c in CATEGORIES}
    for path in heldout:
        found = _prompts_from_file(_relpath(path, Path(root)), read_source(path))
        for cat in CATEGORIES:
            per_cat[cat].extend(found[cat])
    return tuple(tuple(per_cat[c]) for c in CATEGORIES)


def builtin_prompts(max_per_category: int | None = None, categories: tuple[str, ...] | None = None,
                    root: Path | None = None) -> list[dict]:
    """Prompts cut from the held-out stdlib modules, grouped by category in ``CATEGORIES`` order.

    Each item: ``{"id", "category", "prompt", "reference", "source"}``; ``reference`` is the source that
    really follows the prompt (truncated). With ``max_per_category`` the prompts are taken evenly
    spaced over each category's list, so they cover many modules. Deterministic: sorted files, fixed
    rules, no RNG.
    """
    root = stdlib_root() if root is None else Path(root)
    cats = CATEGORIES if categories is None else tuple(categories)
    unknown = set(cats) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown prompt categories {sorted(unknown)}; choose from {CATEGORIES}")
    if max_per_category is not None and max_per_category < 1:
        raise ValueError(f"max_per_category must be >= 1 or None, got {max_per_category}")
    table = dict(zip(CATEGORIES, _all_prompts(str(root))))
    out = []
    for cat in cats:
        items = list(table[cat])
        if max_per_category is not None:
            items = _spread(items, max_per_category)
        out.extend(dict(item) for item in items)  # copies: callers may mutate them
    return out
