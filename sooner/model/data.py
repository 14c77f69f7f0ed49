"""What a run's data (and a queue entry's) may be: JSON values that MongoDB can store and a script can receive.

Data arrives as JSON text (``sooner run --data``, ``sooner emit --data``,
``sooner queue put DATA_JSON``, later API bodies) or as parsed values (the
web, the API). Python's ``json`` accepts more than the rest of the way can
carry: ``NaN`` and ``Infinity`` (the embedded server refuses them), integers
of any size (BSON holds 64 bits; PyMongo raises ``OverflowError``), lone
surrogates (not UTF-8), keys with ``$``, ``.`` or NUL (operators, paths and
the C-string end of a BSON key), and nesting until ``RecursionError``. So:

* :func:`load_json` reads JSON text and refuses non-finite numbers, integers
  beyond 64 bits and deep nesting while parsing, naming the literal;
* :func:`check_data` checks a parsed value and names the part that breaks a
  rule (``["a"][3]``); :func:`check_run_data` adds the size a run can carry.

The rules match the bounds on values scripts send (``sooner/worker/bounds.py``):
64-bit ints, finite floats, depth 32, strings of at most 64 KiB, and run data
of at most 96 KiB as ``SOONER_DATA`` carries it (Linux refuses an
environment string over 128 KiB, so larger data would make a run that can
never start). Queue entries never pass through the environment and may be
larger (256 KiB).
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from sooner.errors import SoonerError

INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1
MAX_DEPTH = 32
"""How deeply lists and dicts may nest (a scalar is depth 0, ``[1]`` depth 1)."""
MAX_STRING_BYTES = 64 * 1024
"""The longest string, key or value, in UTF-8 bytes."""
MAX_RUN_DATA_BYTES = 96 * 1024
"""The largest run or event data, measured as ASCII JSON (as the worker puts it in ``SOONER_DATA``)."""
MAX_QUEUE_DATA_BYTES = 256 * 1024
"""The largest queue entry data, measured the same way."""
MAX_TEXT_CHARS = 4 * 1024 * 1024
"""Longer JSON text is refused before it is parsed."""

_SHOWN_CHARS = 60


class InvalidData(SoonerError, ValueError):
    """Data given for a run, an event or a queue entry is not valid JSON, or not a value Sooner can store."""

    def __init__(self, what: str, problem: str, *, message: str | None = None) -> None:
        self.what = what
        self.problem = problem
        super().__init__(message or f"{what}: {problem}")


def load_json(text: str, what: str) -> Any:
    """Parse JSON text; :class:`InvalidData` names ``what`` (``--data``) and the problem.

    Refused while parsing: ``NaN``/``Infinity``, numbers that overflow a
    64-bit float, integers beyond 64 bits, and nesting deeper than
    :data:`MAX_DEPTH`. The result still needs :func:`check_data` (keys,
    strings, size).
    """
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidData(what, f"is {len(text)} characters of JSON, far more than data may be")

    def refuse_constant(name: str) -> NoReturn:
        raise InvalidData(what, f"{name} is not allowed: numbers must be finite")

    def finite_float(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            raise InvalidData(what, f"number {_literal(literal)} does not fit in a 64-bit float")
        return value

    def int64(literal: str) -> int:
        # Checked on the text: Python refuses to convert over 4,300 digits.
        if len(literal.lstrip("-")) > 19 or not INT64_MIN <= int(literal) <= INT64_MAX:
            raise InvalidData(what, f"integer {_literal(literal)} does not fit in 64 bits")
        return int(literal)

    try:
        return json.loads(text, parse_constant=refuse_constant, parse_float=finite_float, parse_int=int64)
    except json.JSONDecodeError as exc:
        shown = text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 3] + "..."
        reason = f"{exc.msg} at column {exc.colno}"
        raise InvalidData(what, reason, message=f"{what} is not valid JSON ({reason}): {shown!r}") from None
    except RecursionError:
        raise InvalidData(what, f"nested deeper than {MAX_DEPTH} levels") from None


def check_data(value: Any, what: str, *, max_bytes: int = MAX_QUEUE_DATA_BYTES) -> Any:
    """Return ``value`` as storable JSON values (tuples become lists), or raise :class:`InvalidData`.

    The message names ``what`` and the part that is wrong, e.g.
    ``--data: key "$set" at ["$set"] must not start with "$"``.
    """
    result = _Walk(what).value(value, 0, "")
    size = len(json.dumps(result))
    if size > max_bytes:
        raise InvalidData(what, f"is {size} bytes as JSON, at most {max_bytes}")
    return result


def check_run_data(value: Any, what: str) -> Any:
    """:func:`check_data` with the size a run's data may have (it travels in ``SOONER_DATA``)."""
    return check_data(value, what, max_bytes=MAX_RUN_DATA_BYTES)


class _Walk:
    """One check of a value tree; ``path`` is where the current part is (``["a"][0]``)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def value(self, value: Any, depth: int, path: str) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                self.refuse(f"integer {_literal(str(value))}{_at(path)} does not fit in 64 bits")
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                self.refuse(f"number {value!r}{_at(path)} is not finite")
            return value
        if isinstance(value, str):
            return self.string(value, "string", path)
        if isinstance(value, (list, tuple, dict)):
            if depth >= MAX_DEPTH:  # checked before descending, so a deep value never recurses far
                self.refuse(f"nested deeper than {MAX_DEPTH} levels{_at(path)}")
            if isinstance(value, dict):
                return {self.key(key, path): self.value(item, depth + 1, f"{path}[{_key_text(key)}]")
                        for key, item in value.items()}
            return [self.value(item, depth + 1, f"{path}[{index}]") for index, item in enumerate(value)]
        self.refuse(f"{type(value).__name__} value{_at(path)} cannot be stored: only JSON values can")

    def key(self, key: Any, path: str) -> str:
        if not isinstance(key, str):
            self.refuse(f"key {_literal(repr(key))} at {path or '[]'} must be a string")
        where = f"key {_key_text(key)} at {path}[{_key_text(key)}]"
        self.string(key, where, "")
        for broken, rule in ((key.startswith("$"), 'must not start with "$"'), ("." in key, 'must not contain "."'),
                             ("\0" in key, "must not contain NUL")):
            if broken:  # MongoDB reads these as operators and paths; BSON keys end at NUL
                self.refuse(f"{where} {rule}")
        return key

    def string(self, value: str, kind: str, path: str) -> str:
        try:
            size = len(value) if value.isascii() else len(value.encode("utf-8"))
        except UnicodeEncodeError:  # UTF-8 (and so BSON) cannot hold a lone surrogate
            size = -1
        if size < 0:
            self.refuse(f"{kind}{_at(path)} is not valid Unicode (a lone surrogate)")
        if size > MAX_STRING_BYTES:
            self.refuse(f"{kind}{_at(path)} is {size} bytes, at most {MAX_STRING_BYTES}")
        return value

    def refuse(self, problem: str) -> NoReturn:
        raise InvalidData(self.what, problem)


def _at(path: str) -> str:
    return f" at {path}" if path else ""


def _key_text(key: str) -> str:
    """A key as a message shows it: JSON-quoted, shortened, lone surrogates escaped."""
    printable = key.encode("utf-8", "backslashreplace").decode("utf-8")
    short = printable if len(printable) <= 24 else printable[:21] + "..."
    return json.dumps(short, ensure_ascii=False)


def _literal(text: str) -> str:
    """A number's text, whole when short: ``1e999``, ``999999999999… (5000 digits)``."""
    digits = text.lstrip("-")
    if len(text) <= 40:
        return text
    return f"{text[:len(text) - len(digits) + 12]}… ({len(digits)} digits)"
