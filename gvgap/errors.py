"""User-facing errors, and the one way gvgap checks a value a user gave.

A bad input raises :class:`UserError`; the CLI prints its message on one line and exits with
code 2. Every check names the field (a Config field, a TOML key or a ``--flag``), the values
allowed and the value given: ``<name> must be <rule>; got <value>``
(:func:`check_choice`, :func:`check_range`, :func:`check_int`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

#: The largest int64 (seeds, counts): the default upper bound of :func:`check_int`.
INT64_MAX = 2**63 - 1


class UserError(ValueError):
    """Bad input from a user: the message names the field and the allowed values."""


def did_you_mean(name: str, choices: Any) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` (difflib), else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (huge or deeply nested values stay one line)."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_choice(name: str, value: Any, allowed: Any) -> Any:
    """``value`` if it is one of ``allowed``, else UserError naming ``name`` (with a
    did-you-mean hint)."""
    if value not in allowed:
        hint = did_you_mean(value, allowed)
        shown = ", ".join(str(a) for a in allowed)
        raise UserError(f"{name} must be one of {shown}; got {short_repr(value)}{hint}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_range(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
) -> Any:
    """``value`` if it is a number with lo ≤ value ≤ hi (lo < value if ``lo_open``; a
    missing bound is ∓∞), else UserError naming ``name``. NaN, ±inf, bools and non-numbers
    are always refused."""
    bad = not _is_number(value) or not math.isfinite(value)
    bad = bad or (lo is not None and (value <= lo if lo_open else value < lo))
    bad = bad or (hi is not None and value > hi)
    if bad:
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        shown = value if _is_number(value) else short_repr(value)
        raise UserError(f"{name} must be in {'(' if lo_open else '['}{lo_s}, {hi_s}]; got {shown}")
    return value


def check_int(name: str, value: Any, lo: int, hi: int = INT64_MAX) -> int:
    """``value`` if it is an integer (not a bool, not a float) in [lo, hi], else UserError
    naming ``name`` (the bound shown as ``>= lo`` when ``hi`` is the int64 default)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or not lo <= value <= hi:
        big = ok and abs(int(value)) >= 10**30
        shown = "a huge int" if big else short_repr(value)
        bound = f">= {lo}" if hi == INT64_MAX else f"in [{lo}, {hi}]"
        if hi == INT64_MAX and ok and value > hi:
            bound = f"in [{lo}, 2**63 - 1]"
        raise UserError(f"{name} must be an integer {bound}, got {shown}")
    return int(value)
