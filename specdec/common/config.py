"""One config mechanism for every command.

A command's settings are one dataclass. Each field says its default once, with `option(...)`, and
carries its help text, its group in `--help` and its choices; `add_arguments` builds the argparse flags
from the fields and `config_from_args` builds the dataclass back from the parsed flags (its
`__post_init__` validates, once, before anything is loaded). The Python API constructs the same
dataclass directly, so the CLI and the API cannot drift apart.

Types come from the annotations: `int`, `float`, `str`, `bool` (a `--flag`, or `--no-flag` when the
default is True), `X | None` (parsed as X; the default may be None) and `tuple[X, ...]` (a
comma-separated list, e.g. `--gamma 1,2,4`). argparse hands every value over as the string the user
typed; `parse_value` converts it and raises one line naming the flag when it cannot (a float must be
finite: NaN and inf are never a sensible setting and would leak into results as non-standard JSON).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing

_UNSET = dataclasses.MISSING


def option(default=_UNSET, help: str = "", *, group: str = "options", choices=None, required: bool = False,
           default_factory=_UNSET, positional: bool = False, repeat: bool = False):
    """A config field: its default, help line, `--help` group and allowed values, in one place.

    positional: a tuple field taken as positional arguments (`specdec plot a.json b.json`).
    repeat: a tuple of free text given once per flag (`--prompt "a, b" --prompt c`), where commas
    cannot separate the values."""
    meta = {"help": help, "group": group, "choices": tuple(choices) if choices else None, "required": required,
            "positional": positional, "repeat": repeat}
    if default_factory is not _UNSET:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def with_default(block, name: str, default):
    """The field `name` of the dataclass `block` with another default (help, group and choices kept), for
    the command whose default differs from the block's (e.g. `specdec bench` writes to bench_out)."""
    f = {f.name: f for f in dataclasses.fields(block)}[name]
    return dataclasses.field(default=default, metadata={**f.metadata, "required": False})


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kind(tp) -> tuple[type, bool, bool]:
    """(scalar type, optional, is_tuple) of a resolved annotation."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else str
    if typing.get_origin(tp) is tuple or tp is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        elem = args[0] if args else str
        return (elem if elem in (int, float, str, bool) else str), optional, True   # e.g. int | str: text
    return (tp if tp in (int, float, str, bool) else str), optional, False


def _scalar(text: str, kind: type, flag: str):
    text = text.strip()
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{flag} must be an integer, got {text!r}") from None
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{flag} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number, got {text!r}")
        return value
    if kind is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{flag} must be true or false, got {text!r}")
    return text


def parse_value(value, tp, flag: str):
    """A typed value from what the user typed (non-strings, e.g. dataclass defaults, pass through)."""
    kind, _, is_tuple = _kind(tp)
    if isinstance(value, list):  # a positional or repeated flag: one string per value, taken as typed
        return tuple(v if kind is str else _scalar(v, kind, flag) for v in value)
    if not isinstance(value, str):
        return value
    if is_tuple:
        return tuple(_scalar(s, kind, flag) for s in value.split(",") if s.strip())
    return _scalar(value, kind, flag)


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _default(f):
    if f.default is not _UNSET:
        return f.default
    return f.default_factory() if f.default_factory is not _UNSET else None


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def add_arguments(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One flag per field of the dataclass `cls`, in `--help` groups named by each field's `group`."""
    hints = _hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        meta = f.metadata
        group = meta.get("group", "options")
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        g = groups[group]
        help_ = meta.get("help", "")
        kind, _, is_tuple = _kind(hints[f.name])
        default = _default(f)
        if meta.get("positional"):
            g.add_argument(f.name, nargs="+" if is_tuple else None, help=help_.replace("%", "%%"),
                           metavar=f.name.upper())
            continue
        if meta.get("repeat"):
            g.add_argument(flag_name(f.name), dest=f.name, action="append", default=None,
                           help=help_.replace("%", "%%") + " (repeatable)", metavar=kind.__name__.upper())
            continue
        if kind is bool and not is_tuple:
            if default:
                g.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                               help=f"turn off: {help_}")
            else:
                g.add_argument(flag_name(f.name), dest=f.name, action="store_true", help=help_)
            continue
        kw = {}
        if meta.get("choices"):
            kw["choices"] = list(meta["choices"])
        if meta.get("required"):
            kw["required"] = True
        elif default is not None and "default" not in help_:
            help_ = f"{help_} (default: {_shown(default)})"
        # argparse keeps the raw string: config_from_args converts it with a one-line error.
        g.add_argument(flag_name(f.name), dest=f.name, default=default, help=help_.replace("%", "%%"),
                       metavar=kind.__name__.upper() + ("S" if is_tuple else ""), **kw)


def config_from_args(args: argparse.Namespace, cls, **overrides):
    """Build (and so validate) the dataclass `cls` from parsed flags; overrides win over flags."""
    hints = _hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in overrides:
            kw[f.name] = overrides[f.name]
        elif hasattr(args, f.name):
            kw[f.name] = parse_value(getattr(args, f.name), hints[f.name], flag_name(f.name))
    return cls(**kw)


def parse_script_args(argv, description: str | None, *classes):
    """A script's command line -> one config per class in `classes` (their flags share one parser); a bad
    value is argparse's usage error (one line, exit code 2). For the bench/ scripts."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for cls in classes:
        add_arguments(ap, cls)
    ns = ap.parse_args(argv)
    try:
        configs = tuple(config_from_args(ns, cls) for cls in classes)
    except ValueError as e:
        ap.error(str(e))
    return configs[0] if len(configs) == 1 else configs


def to_argv(cfg) -> list[str]:
    """The flags that rebuild `cfg` from the command's defaults: only the settings that differ."""
    hints, argv = _hints(type(cfg)), []
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value = getattr(cfg, f.name)
        default = _default(f)
        if value == default:
            continue
        kind, _, is_tuple = _kind(hints[f.name])
        if f.metadata.get("positional"):
            argv += [str(v) for v in value]
        elif f.metadata.get("repeat"):
            argv += [a for v in value for a in (flag_name(f.name), str(v))]
        elif kind is bool and not is_tuple:
            argv.append(flag_name(f.name) if value else "--no-" + f.name.replace("_", "-"))
        else:
            argv += [flag_name(f.name), _exact(value)]
    return argv


def _exact(value) -> str:
    """Like _shown, but floats keep every digit (the flags must rebuild the same config)."""
    if isinstance(value, (tuple, list)):
        return ",".join(_exact(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def to_dict(cfg) -> dict:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def differences(saved: dict, new: dict, ignore=()) -> list[str]:
    """'name: saved -> new' for every setting that differs (tuples and lists compare equal)."""
    out = []
    for k in sorted(set(saved) | set(new)):
        if k in ignore:
            continue
        a, b = saved.get(k), new.get(k)
        a = list(a) if isinstance(a, tuple) else a
        b = list(b) if isinstance(b, tuple) else b
        if a != b:
            out.append(f"{flag_name(k)}: {a!r} -> {b!r}")
    return out
