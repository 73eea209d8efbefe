"""Numbers as users type them: every numeric option, form field and `--set FIELD=VALUE` goes through here.

Python's own int() and float() take more than anyone means to write: `int("1_0")` is 10, `int(" 10 ")` and
`int("١٠")` (Arabic-Indic digits) too, and float() also takes 'nan', 'inf' and 'infinity'. A value that reaches
a model as something other than what was typed is worse than a refusal, so only these are numbers here:

- whole: an optional sign and ASCII digits ("10", "-4", "+3");
- decimal: an optional sign, ASCII digits with an optional point, an optional exponent ("2.5", ".5", "1e-3",
  "4."), finite (1e999 is refused, as nan and inf are).

Anything else is a ValueError whose message says what was given, so callers that already catch int()'s and
float()'s ValueError keep working. No surrounding spaces, underscores or other digits.
"""

from __future__ import annotations

import math
import re

MAX_DIGITS = 40  # far beyond any count or seed (2**64 has 20 digits); int() of 5,000 digits is refused anyway
_DIGITS = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")
_WHOLE = re.compile(r"[-+]?[0-9]+")
_DECIMAL = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def whole(text: str) -> int:
    """`text` as an int, if it is an optional sign and ASCII digits; ValueError otherwise."""
    if not isinstance(text, str) or not _WHOLE.fullmatch(text):
        raise ValueError(f"'{shown(text)}' is not a whole number")
    if len(text.lstrip("+-")) > MAX_DIGITS:
        raise ValueError(f"'{shown(text)}' is too long for a number")
    return int(text)


def decimal(text: str) -> float:
    """`text` as a finite float, if it is written in decimal or exponent form; ValueError otherwise."""
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text):
        raise ValueError(f"'{shown(text)}' is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"'{shown(text)}' is out of range")
    return value


def is_digits(text: str) -> bool:
    """Whether `text` is ASCII digits only (a count with no sign): str.isdigit() is also true of "٤" and "²"."""
    return isinstance(text, str) and bool(_DIGITS.fullmatch(text))


def shown(text, limit: int = 40) -> str:
    """The value for a one-line message: bytes a shell passed as surrogates escaped, and a paste of thousands
    of characters cut to its first `limit`."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."
