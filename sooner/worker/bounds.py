"""What a value sent by a script may be: only what the store, and a run it starts, can carry.

A script's call is recorded in MongoDB (``runs.progress``, ``events.data``)
and an event's data becomes each hooked run's ``data`` and its
``SOONER_DATA``. A value any of those cannot take used to be accepted and
then fail inside the worker (PyMongo raises ``OverflowError`` for an int past
64 bits, ``UnicodeEncodeError`` for a lone surrogate, the embedded server
refuses ``inf``). So every method's ``validate`` checks its arguments here,
before the call is accepted, and a refusal is a :class:`OutOfBounds` (a
:class:`~sooner.errors.ProtocolError`) naming the part and the rule:

* ints are 64-bit signed (BSON int64), floats finite;
* strings are valid Unicode (no lone surrogates: UTF-8 cannot hold them) of
  at most :data:`MAX_STRING_BYTES` in UTF-8;
* containers are lists (tuples become lists) and dicts with string keys,
  nested at most :data:`MAX_DEPTH` deep;
* keys do not start with ``$`` and hold no ``.`` or NUL: MongoDB reads those
  as operators and paths, and BSON keys are NUL-terminated;
* the whole value's JSON, as ``SOONER_DATA`` carries it, is at most
  :data:`MAX_ENCODED_BYTES`: Linux refuses an environment string over
  128 KiB, so a larger event would start hooked runs that cannot start.
  Its BSON then stays far below MongoDB's 16 MiB document limit.

No database driver is imported: scripts import this through :mod:`sooner.api`.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from sooner.errors import ProtocolError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_STRING_BYTES = 64 * 1024
"""The longest string (UTF-8 bytes), a key or a value, anywhere in a value."""
MAX_DEPTH = 32
"""How deeply lists and dicts may nest (a scalar is depth 0, ``[1]`` depth 1)."""
MAX_ENCODED_BYTES = 96 * 1024
"""The largest value, measured as its JSON text (ASCII, as ``SOONER_DATA`` carries it)."""

_PATH_CHARS = 100  # a path in a message is shortened in the middle past this
_KEY_CHARS = 24  # each key in a path is shortened past this
_NUMBER_BITS = 256  # ints longer than this are described, not printed
_EXCERPT_CHARS = 60


class OutOfBounds(ProtocolError):
    """A value a script sent that the store could not hold; ``path`` names the part, ``rule`` what is wrong."""

    def __init__(self, method: str, path: str, rule: str) -> None:
        self.method = method
        self.path = path
        self.rule = rule
        super().__init__(f"{method}: {path} {rule}")


def checked_value(value: Any, *, method: str, path: str = "data") -> Any:
    """Return ``value`` as storable JSON-compatible data (tuples become lists) or raise :class:`OutOfBounds`.

    ``method`` and ``path`` start the message (``emit: data["a"][3] …``).
    The value may come from a Python literal on stderr, so sets, bytes and
    complex numbers are refused here too.
    """
    result = _Walk(method, path).value(value, 0)
    size = len(json.dumps(result))
    if size > MAX_ENCODED_BYTES:
        raise OutOfBounds(method, path, f"is too large: {size} bytes as JSON, at most {MAX_ENCODED_BYTES}")
    return result


def checked_int(value: int, *, method: str, path: str) -> int:
    """``value`` if it fits a 64-bit signed integer (what BSON stores); else :class:`OutOfBounds`."""
    rule = _int_rule(value)
    if rule is not None:
        raise OutOfBounds(method, path, rule)
    return value


def checked_string(value: str, *, method: str, path: str) -> str:
    """``value`` as valid Unicode of at most :data:`MAX_STRING_BYTES` in UTF-8; else :class:`OutOfBounds`.

    A surrogate pair becomes the character it spells: JSON writes characters
    beyond the BMP as ``"\\ud83d\\ude00"`` (Python's ``json.dumps`` does), and
    a Python literal reads that as two lone surrogates, which UTF-8 cannot hold.
    """
    value, rule = _string(value)
    if rule is not None:
        raise OutOfBounds(method, path, rule)
    return value


def _int_rule(value: int) -> str | None:
    if INT64_MIN <= value <= INT64_MAX:
        return None
    return f"must be a whole number within 64 bits ({INT64_MIN} to {INT64_MAX}), got {_int_text(value)}"


def _string(value: str) -> tuple[str, str | None]:
    """The string as stored (surrogate pairs joined) and the rule it breaks, if any."""
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            try:
                value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
            except UnicodeDecodeError:
                return value, "is not valid Unicode (a lone surrogate)"
            size = len(value.encode("utf-8"))
    if size > MAX_STRING_BYTES:
        return value, f"is too long: {size} bytes, at most {MAX_STRING_BYTES}"
    return value, None


class _Walk:
    """One check of a value tree; keeps the path to the current part so a refusal can name it."""

    def __init__(self, method: str, root: str) -> None:
        self.method = method
        self.root = root
        self.trail: list[str] = []

    def value(self, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            return self.checked(value, _int_rule(value))
        if isinstance(value, float):
            return self.checked(value, None if math.isfinite(value) else f"must be finite, got {value!r}")
        if isinstance(value, str):
            return self.checked(*_string(value))
        if isinstance(value, (list, tuple, dict)):
            if depth >= MAX_DEPTH:
                self.refuse(f"is nested too deeply: more than {MAX_DEPTH} levels")
            return self.mapping(value, depth) if isinstance(value, dict) else self.items(value, depth)
        self.refuse(f"is a {type(value).__name__}, which JSON cannot hold")

    def items(self, values: list[Any] | tuple[Any, ...], depth: int) -> list[Any]:
        result = []
        for index, item in enumerate(values):
            self.trail.append(f"[{index}]")
            result.append(self.value(item, depth + 1))
            self.trail.pop()
        return result

    def mapping(self, values: dict[Any, Any], depth: int) -> dict[str, Any]:
        result = {}
        for raw in values:
            key = self.key(raw)
            if key in result:  # two spellings of one key: a literal with a surrogate pair and one with its character
                self.refuse(f"has the key {_key_text(key)} twice")
            self.trail.append(f"[{_key_text(key)}]")
            result[key] = self.value(values[raw], depth + 1)
            self.trail.pop()
        return result

    def key(self, key: Any) -> str:
        if not isinstance(key, str):
            self.refuse(f"has a non-string key {excerpt(repr(key))}")
        stored, problem = _string(key)
        if problem is not None:
            self.refuse(f"key {_key_text(key)} {problem}")
        key = stored
        for rule, broken in (('must not start with "$"', key.startswith("$")), ('must not contain "."', "." in key),
                             ("must not contain NUL", "\0" in key)):
            if broken:
                self.refuse(f"key {_key_text(key)} {rule}")
        return key

    def checked(self, value: Any, rule: str | None) -> Any:
        """``value``, unless it breaks ``rule`` (the path is built only then: most values are fine)."""
        if rule is not None:
            self.refuse(rule)
        return value

    def path(self) -> str:
        text = self.root + "".join(self.trail)
        if len(text) <= _PATH_CHARS:
            return text
        half = (_PATH_CHARS - 3) // 2
        return text[:half] + "..." + text[-half:]

    def refuse(self, rule: str) -> NoReturn:
        raise OutOfBounds(self.method, self.path(), rule)


def _key_text(key: str) -> str:
    """A key as a message shows it: JSON-quoted, shortened, lone surrogates escaped so the message is storable."""
    quoted = json.dumps(excerpt(key, _KEY_CHARS), ensure_ascii=False)
    return quoted.encode("utf-8", "backslashreplace").decode("utf-8")


def _int_text(value: int) -> str:
    return str(value) if value.bit_length() <= _NUMBER_BITS else f"an integer of {value.bit_length()} bits"


def excerpt(text: str, limit: int = _EXCERPT_CHARS) -> str:
    """Shorten ``text`` for an error message: scripts control it, and messages must stay short."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
