"""The cost table: what a measurement produces, the cache and results.json store, and the policy reads.

A costs entry (one batch size) holds step costs and/or round times, every number a finite positive one:
  c, v                 measure_step_costs: c = draft step / target step, v = {k: target forward over
                       k+1 tokens / target step}, with the seconds behind them (target_step_s,
                       draft_step_s, target_verify_s = {k: seconds}); greedy: whether the target's
                       forwards were timed as a greedy decode runs them (absent: as sampling does)
  round_s              measure_round_costs: {"greedy" | "sampling": {k: seconds of a round drafting k}}
A table maps batch size -> entry. JSON turns the integer keys into strings; `read_entry` turns them back
and refuses (ValueError naming the field) an entry that no prediction or choice may use: zeros,
negatives, NaN, missing tables (a cost of 0 divided the speedup by zero; a negative one made auto
draft nothing).
"""
from __future__ import annotations

import math
from typing import Mapping

MODES = ("greedy", "sampling")
_SECONDS = ("c", "target_step_s", "draft_step_s")   # single numbers
_TABLES = ("v", "target_verify_s")                  # {k: number}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _table_problem(table) -> str | None:
    if not isinstance(table, Mapping) or not table:
        return "not a non-empty {k: number} object"
    for k, x in table.items():
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            return f"count {k!r} is not an integer >= 1"
        if not _positive(x):
            return f"k={k}: {x!r} is not a positive number"
    return None


def entry_problem(entry) -> str | None:
    """Why a costs entry (integer keys, as read_entry returns it) cannot be used; None when it can."""
    if not isinstance(entry, Mapping):
        return "not an object"
    for name in _SECONDS:
        if name in entry and not _positive(entry[name]):
            return f"{name} = {entry[name]!r} is not a positive number"
    for name in _TABLES:
        if name in entry and (why := _table_problem(entry[name])):
            return f"{name}: {why}"
    rounds = entry.get("round_s") or {}
    if not isinstance(rounds, Mapping):
        return "round_s is not an object"
    for mode, table in rounds.items():
        if mode not in MODES:
            return f"round_s: unknown mode {mode!r} (greedy or sampling)"
        if why := _table_problem(table):
            return f"round_s.{mode}: {why}"
    if not rounds and not ("c" in entry and "v" in entry):
        return "neither round times (round_s) nor step costs (c and v)"
    return None


def _int_keys(d) -> dict:
    return {int(k): x for k, x in d.items()} if isinstance(d, Mapping) else d


def read_entry(entry) -> dict:
    """One costs entry as read back from JSON (string keys), checked: ValueError names what is wrong."""
    try:
        out = dict(entry)
        for name in _TABLES:
            if name in out:
                out[name] = _int_keys(out[name])
        if isinstance(out.get("round_s"), Mapping):
            out["round_s"] = {mode: _int_keys(t) for mode, t in out["round_s"].items()}
    except (TypeError, ValueError):
        raise ValueError("not a costs entry (an object whose tables have integer keys)") from None
    why = entry_problem(out)
    if why:
        raise ValueError(why)
    return out


def read_table(table) -> dict:
    """batch size -> costs entry, from JSON (results.json meta.costs) or a caller; ValueError names the
    first batch size whose entry cannot be used."""
    if not isinstance(table, Mapping):
        raise ValueError("not a {batch size: costs entry} object")
    out = {}
    for bs, entry in table.items():
        try:
            b = int(bs)
        except (TypeError, ValueError):
            raise ValueError(f"batch size {bs!r} is not an integer") from None
        if isinstance(bs, bool) or b < 1:
            raise ValueError(f"batch size {bs!r} is not an integer >= 1")
        try:
            out[b] = read_entry(entry)
        except ValueError as e:
            raise ValueError(f"batch size {b}: {e}") from None
    return out


def round_costs(entry: dict, sampling: bool) -> dict:
    """k -> the cost of a round drafting k tokens, from one costs entry: the measured round times of the
    mode (greedy or sampling; the other mode's when only that one was measured), else the step-cost
    model k c + v(k) at the gammas v was measured at (in target steps; the unit does not matter)."""
    rounds = entry.get("round_s") or {}
    for mode in (("sampling", "greedy") if sampling else ("greedy", "sampling")):
        if rounds.get(mode):
            return dict(rounds[mode])
    return {int(k): int(k) * entry["c"] + v for k, v in entry["v"].items()}


def costs_at(table: dict, batch_size: int):
    """The value of `table` (batch size -> costs) at the batch size nearest `batch_size` (on a log
    scale; the larger on a tie): the live batch shrinks as rows finish and is rarely measured itself."""
    if not table:
        raise ValueError("the cost table is empty; measure it with specdec.costmodel.measure_step_costs")
    return table[min(table, key=lambda b: (abs(math.log(b) - math.log(batch_size)), -b))]
