"""Fixed-width text tables (what commands and bench scripts print)."""
from __future__ import annotations


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
