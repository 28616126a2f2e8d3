"""Thresholds as exact keys: the decimal a user wrote, normalised once, never a formatted float.

A threshold names a task, a selection and two model files, so two thresholds must be equal
exactly when their keys are. The key is the shortest decimal string of the value: what the user
typed ("0.0333333333", "2%" -> "0.02"), or for a number read from TOML or Python the shortest
decimal that round-trips that float (0.1 + 0.2 -> "0.30000000000000004", not "0.3"). Arithmetic
uses `value`, the float of that same decimal, so the key and the value never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import total_ordering

MAX_KEY_LENGTH = 40


@total_ordering
@dataclass(frozen=True)
class Threshold:
    """A relative clean-accuracy drop in (0, 1), identified by its canonical decimal `key`."""

    key: str

    @property
    def decimal(self) -> Decimal:
        return Decimal(self.key)

    @property
    def value(self) -> float:
        return float(self.key)

    @property
    def percent(self) -> str:
        """'2%', '3.33333333%': for labels, exact like the key."""
        return f"{_plain(self.decimal * 100)}%"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Threshold):
            return NotImplemented
        return self.decimal < other.decimal

    def __str__(self) -> str:
        return self.key


def parse_threshold(value: object) -> Threshold:
    """A Threshold from a float, an int, a decimal string or a percent string ('2%'); ValueError if not one.

    Booleans are refused (True is an int in Python), and so are NaN, infinities and values outside (0, 1).
    """
    if isinstance(value, Threshold):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"a threshold must be a number or a string like '0.02' or '2%', not {value!r}")
    text = _text(value, "threshold")
    percent = text.endswith("%")
    number = _decimal(text[:-1].strip() if percent else text, "threshold")
    if percent:
        number /= 100
    if not Decimal(0) < number < Decimal(1):
        raise ValueError(f"threshold {text} is outside (0, 1): thresholds are relative accuracy drops")
    return Threshold(_plain(number))


def decimal_key(value: object, what: str = "value") -> str:
    """The exact key of a finite number given as a float, an int, a decimal string or a Decimal, by the
    rule thresholds follow (what a user typed, normalised; a float's shortest round-trip decimal), so that
    other numbers that name results (CLP's u) are keys the same way; ValueError naming `what` if not one."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"{what} must be a number, not {value!r}")
    return _plain(_decimal(_text(value, what), what))


def _text(value: int | float | str | Decimal, what: str) -> str:
    # repr of a float is the shortest decimal that reads back as this very float
    text = repr(value) if isinstance(value, float) else str(value).strip()
    if len(text) > MAX_KEY_LENGTH:
        raise ValueError(f"{what} {text[:MAX_KEY_LENGTH]}... is longer than {MAX_KEY_LENGTH} characters")
    return text


def _decimal(text: str, what: str) -> Decimal:
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{what} {text!r} is not a finite number")
    return number


def parse_thresholds(values: object) -> tuple[Threshold, ...]:
    """At least one threshold, none repeated (after normalising: '0.02' and '2%' repeat), ascending."""
    if isinstance(values, str | bytes) or not hasattr(values, "__iter__"):
        raise ValueError(f"thresholds must be a list, not {values!r}")
    parsed = [parse_threshold(value) for value in values]  # type: ignore[attr-defined]
    if not parsed:
        raise ValueError("at least one threshold is needed")
    repeated = sorted({t.key for t in parsed if parsed.count(t) > 1})
    if repeated:
        raise ValueError(f"thresholds repeat: {', '.join(repeated)}")
    values = [t.value for t in parsed]
    same = sorted({t.key for t in parsed if values.count(t.value) > 1})
    if same:
        raise ValueError(f"thresholds {', '.join(same)} differ only past a float64's precision")
    return tuple(sorted(parsed))


def _plain(number: Decimal) -> str:
    """Fixed-point text without trailing zeros: Decimal('2.000E-2') -> '0.02'."""
    text = format(number.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
