"""One check per kind of value, whoever hands the value in.

A check takes a value and the name of what it is for, returns it (as the type it
stands for) or raises :class:`ConfigError` in one line.  The config classes use the
checks as attrs validators (:func:`validator`), the command line as argparse types
(:func:`from_text`, then ``_cli``'s one wrapper), the load generator's config as the
server's: a bound or a message changes here, once, for all of them.

With a name (a config field), the message leads with it: ``handshake_timeout must be
a positive number of seconds, not 0``.  Without one (a flag: argparse says which, and
the user sees what they typed), it says what the text is not (``'soon' is not a number
of seconds``) or what the number must be (``must be at least 1``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from .._exceptions import ConfigError
from .._net import Address

T = TypeVar("T")

#: ``check(value, name)``: the value, checked, or a ConfigError naming *name*.
Check = Callable[[object, str | None], T]


def _refusal(value: object, name: str | None, expected: str, *, unnamed: str) -> ConfigError:
    # Unnamed, the value is a flag's text, or that text read as a number: argparse names
    # the flag, and quoting the number would misquote what the user typed a moment ago
    # (-1.0 for "-1", inf for "1e400"), so *unnamed* words it.
    if name is None:
        return ConfigError(unnamed)
    return ConfigError(f"{name} must be {expected}, not {value!r}")


def _not_a(value: object, name: str | None, kind: str) -> ConfigError:
    return _refusal(value, name, kind, unnamed=f"{value!r} is not {kind}")


def _outside(value: object, name: str | None, bound: str) -> ConfigError:
    return _refusal(value, name, bound, unnamed=f"must be {bound}")


def count(value: object, name: str | None = None) -> int:
    """A whole number of at least 1: clients, workers, connections, requests."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _not_a(value, name, "a whole number")
    if value < 1:
        raise _outside(value, name, "at least 1")
    return value


def _positive(
    value: object, name: str | None, unit: str, *, or_zero: bool = False, kind: str | None = None
) -> float:
    # bool is an int to Python but never a number to a user: timeout=True is a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _not_a(value, name, kind or f"a number of {unit}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float: as good as infinite
        number = math.inf
    above_floor = number >= 0 if or_zero else number > 0  # False for NaN
    if not above_floor or number == math.inf:
        raise _outside(value, name, f"a positive number of {unit}" + (" or 0" if or_zero else ""))
    return number + 0.0  # -0.0 is zero, and should print as 0


def seconds(value: object, name: str | None = None) -> float:
    """A finite, positive number of seconds: a timeout, a duration."""
    return _positive(value, name, "seconds")


def seconds_or_zero(value: object, name: str | None = None) -> float:
    """Seconds, or zero: a grace period of none, no warm-up (and, for the CLI, a timeout that is off)."""
    return _positive(value, name, "seconds", or_zero=True)


#: Units a duration may be given in (``loadgen -d 30s``, as wrk, wrk2 and h2load spell them).
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
#: What a duration that is no number is not: the forms it could have had, which
#: "a number of seconds" would hide from someone who typed ``5x``.
_A_DURATION = "a duration (seconds, or with a unit: 500ms, 30s, 2m, 1h)"
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)\s*$")


def _read_duration(value: object) -> object:
    # Text with a unit becomes its seconds; anything else is left to _positive to judge
    # (a bare number is seconds, and "-1", "nan" or "soon" are refused there, one way).
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        pass
    match = _DURATION_RE.match(value)
    if match is None:
        return value
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def duration(value: object, name: str | None = None) -> float:
    """:func:`seconds`, also as text with a unit: ``"500ms"``, ``"30s"``, ``"2m"``, ``"1h"``
    (a bare number is seconds).  A number out of bounds is refused in :func:`seconds`'
    words; text that is none, listing the forms: ``'5x' is not a duration (...)``."""
    return _positive(_read_duration(value), name, "seconds", kind=_A_DURATION)


def duration_or_zero(value: object, name: str | None = None) -> float:
    """:func:`duration`, or zero (no warm-up): :func:`seconds_or_zero` with units."""
    return _positive(_read_duration(value), name, "seconds", or_zero=True, kind=_A_DURATION)


def round_trip_rate(value: object, name: str | None = None) -> float:
    """A finite, positive number of round trips per second."""
    return _positive(value, name, "round trips per second")


def to_address(value: Address | str) -> Address:
    """An :class:`Address`, or ``HOST:PORT`` text for one (an attrs converter)."""
    return value if isinstance(value, Address) else Address.parse(value)


def validator(
    check: Check[Any], *, optional: bool = False
) -> Callable[[object, attrs.Attribute[Any], object], None]:
    """*check* as an attrs validator, the field's name in its message; *optional*: or ``None``."""

    def validate(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        check(value, attribute.name)

    return validate


def from_text(check: Check[T], parse: Callable[[str], object]) -> Callable[[str], T]:
    """*check* for a value typed as text, read with *parse* (``int``, ``float``).

    Text that *parse* refuses goes to *check* as it is, so that the message says what
    kind of value was expected: ``'many' is not a whole number``.
    """

    def read(text: str) -> T:
        value: object
        try:
            value = parse(text)
        except ValueError:
            value = text
        return check(value, None)

    return read
