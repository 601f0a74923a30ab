"""One validator per value.

A setting that several commands or API entries take is checked by one function here, with one message
that names it as the caller knows it (a flag, `--gamma`, or an argument, `gamma`) and the range it
accepts. Python types are checked too: `top_k=2.5` or `seed="abc"` is a `BadType` naming the argument
(a TypeError, and a ValueError so that the CLI's one error path and callers that catch bad values catch
it), never an error from deep inside torch. Torch-free: a command's config validates before torch loads.

The rules decided here, once:
  temperature  0 is greedy (argmax); a sampling temperature is at least MIN_TEMPERATURE (below it
               logits / T overflows float32 towards 1e-38, which once turned a row into NaN and emitted
               token 0, and long before that sampling is greedy in all but name: at T = 1e-3 a token
               whose logit is 0.01 below the maximum keeps e^-10 ~ 5e-5 of its probability). Refused,
               not rounded to greedy: "0 for greedy" is the one spelling.
  gamma        draft tokens per round: an integer in 1..MAX_GAMMA, or "auto". The expected tokens per
               round (1 - alpha^(gamma+1)) / (1 - alpha) are within 1% of their limit once
               alpha^(gamma+1) < 0.01, which gamma 64 reaches for every alpha up to 0.93; a larger gamma
               only adds draft steps (and the caches reserve room for gamma drafts).
  seed         None (unseeded) or an integer in 0..MAX_SEED (torch generators take 64 bits; the
               benchmark adds small offsets per repeat and batch).
"""
from __future__ import annotations

import math
import operator

AUTO = "auto"            # gamma="auto": each round's draft count chosen from the cost model
MIN_TEMPERATURE = 1e-3
MAX_GAMMA = 64
MAX_SEED = 2 ** 63 - 1
LENIENCE_KINDS = ("lin", "sq", "exp")   # DistillSpec's lossy acceptance f(p): p / eps, p / eps^2, p^eps


class BadType(TypeError, ValueError):
    """A value of the wrong Python type (e.g. a float where token ids or a count go)."""


def _shown(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if isinstance(low, float) and isinstance(high, float):   # an interval of reals: "in (0, 1]"
        return f"in {'(' if low_open else '['}{_shown(low)}, {_shown(high)}{')' if high_open else ']'}"
    lo = f"{'>' if low_open else '>='} {_shown(low)}" if low is not None else ""
    hi = f"{'<' if high_open else '<='} {_shown(high)}" if high is not None else ""
    return " and ".join(t for t in (lo, hi) if t)


def _outside(x, low, high, low_open: bool, high_open: bool) -> bool:
    if low is not None and (x <= low if low_open else x < low):
        return True
    return high is not None and (x >= high if high_open else x > high)


def check_int(value, name: str, low: int | None = None, high: int | None = None, what: str = "") -> int:
    """An integer (int, NumPy or 0-d integer tensor; not bool, float or str) within [low, high]."""
    if isinstance(value, (bool, str, bytes)):
        raise BadType(f"{name} must be an integer{what}, got {value!r}")
    try:
        x = operator.index(value)
    except TypeError:
        raise BadType(f"{name} must be an integer{what}, got {value!r} ({type(value).__name__})") from None
    if _outside(x, low, high, False, False):
        raise ValueError(f"{name} must be {_range_text(low, high, False, False)}{what}, got {x}")
    return x


def check_number(value, name: str, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                 high_open: bool = False, what: str = "") -> float:
    """A finite real number (int, float, NumPy or 0-d tensor; not bool or str) within the given bounds."""
    if isinstance(value, (bool, str, bytes)):
        raise BadType(f"{name} must be a number{what}, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError, RuntimeError):   # RuntimeError: a tensor of several elements
        raise BadType(f"{name} must be a number{what}, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number{what}, got {x}")
    if _outside(x, low, high, low_open, high_open):
        raise ValueError(f"{name} must be {_range_text(low, high, low_open, high_open)}{what}, got {x:g}")
    return x


def is_greedy(temperature):
    """The one rule for "greedy": temperature 0. Elementwise on a tensor of per-row temperatures."""
    return temperature == 0


def check_temperature(value, name: str = "temperature") -> float:
    """0 (greedy) or a finite temperature >= MIN_TEMPERATURE (module docstring)."""
    what = f" (0 for greedy, or >= {MIN_TEMPERATURE:g} to sample)"
    t = check_number(value, name, what=what)
    if t < 0:
        raise ValueError(f"{name} must be a finite number >= 0{what}, got {t:g}")
    if 0 < t < MIN_TEMPERATURE:
        raise ValueError(f"{name} {t:g} is below the smallest sampling temperature {MIN_TEMPERATURE:g}: use 0 for "
                         "greedy decoding")
    return t


def check_gamma(value, name: str = "gamma", auto: bool = True, text: bool = True) -> int | str:
    """Draft tokens per round: an integer in 1..MAX_GAMMA, or "auto" where allowed. Text ("4", "auto")
    is read as the CLI hands it over (text=False: an int is required, e.g. a frozen dataclass field)."""
    what = (" or auto" if auto else "") + " (draft tokens per round)"
    if isinstance(value, str) and text:
        text = value.strip().lower()
        if auto and text == AUTO:
            return AUTO
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{name} must be an integer{what}, got {value!r}") from None
    return check_int(value, name, 1, MAX_GAMMA, what)


def check_seed(value, name: str = "seed") -> int | None:
    """None, or an integer in 0..MAX_SEED."""
    if value is None:
        return None
    return check_int(value, name, 0, MAX_SEED)


def check_token_ids(value, name: str = "eos_token_id") -> tuple[int, ...]:
    """None, one id, or a list / tuple / set of ids -> a tuple of non-negative ints (a string is not a
    list of ids: "36" was once read as the ids 3 and 6)."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(check_int(v, name, 0, what=" (token ids)") for v in value)
    return (check_int(value, name, 0, what=" (a token id or a list of them)"),)


def check_lenience(kind, eps) -> tuple[str | None, float]:
    """A lossy lenience (None = lossless) and its eps in (0, 1] (eps 1 is lossless)."""
    if kind is not None and kind not in LENIENCE_KINDS:
        raise ValueError(f"lenience must be one of {LENIENCE_KINDS} or None, got {kind!r}")
    return kind, check_number(eps, "lenience_eps", 0.0, 1.0, low_open=True)
