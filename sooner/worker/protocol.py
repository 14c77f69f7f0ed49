"""The calls a running script makes to Sooner, and how they are validated.

Scripts report over two channels that share one vocabulary:

* stderr lines such as ``>>> sooner.progress(5, 10)`` or
  ``>>> sooner.emit("name", {"k": 1})``, parsed by :func:`parse_stderr_line`;
* JSON-RPC requests on the run's unix socket (see :mod:`sooner.worker.rpc`).

Both end in :func:`validate_call`, which turns positional or named arguments
into a normalised :class:`Call`. Stderr arguments are JSON or Python literals,
read with :mod:`ast` and :func:`ast.literal_eval`; nothing is ever evaluated.
"""

from __future__ import annotations

import ast
import logging
import math
from dataclasses import dataclass
from typing import Any

from sooner.errors import ProtocolError

logger = logging.getLogger(__name__)

PROMPT = ">>> "
PREFIX = PROMPT + "sooner."
MAX_LINE_BYTES = 1024 * 1024

# Each method's parameters in positional order, and how many are required.
METHODS: dict[str, tuple[tuple[str, ...], int]] = {
    "progress": (("current", "max"), 1),
    "emit": (("event", "data"), 1),
}

# JSON spellings accepted in stderr calls besides Python's True/False/None.
_JSON_NAMES: dict[str, Any] = {"true": True, "false": False, "null": None}
_EXCERPT_CHARS = 60


class UnknownMethod(ProtocolError):
    """A script called a method Sooner does not offer (JSON-RPC -32601)."""

    def __init__(self, method: str) -> None:
        self.method = method
        known = ", ".join(sorted(METHODS))
        super().__init__(f"unknown method {_excerpt(method)!r} (known: {known})")


@dataclass(frozen=True)
class Call:
    """One validated call from a script.

    ``args`` holds the normalised named arguments:
    ``progress`` → ``{"current": number, "max": number | None}``;
    ``emit`` → ``{"event": str, "data": JSON-compatible value}``.
    """

    method: str
    args: dict[str, Any]


def parse_stderr_line(line: str) -> Call | None:
    """Parse one stderr line; return None unless it starts with ``>>> sooner.``.

    A trailing newline or carriage return is ignored; leading whitespace is
    not (such a line is ordinary output). Raises :class:`ProtocolError`
    (possibly :class:`UnknownMethod`) saying what is wrong with a malformed call.
    """
    line = line.rstrip("\r\n")
    if not line.startswith(PREFIX):
        return None
    _check_length(line)
    node = _parse_expression(line[len(PROMPT):])
    method = _method_name(node)
    if method not in METHODS:
        raise UnknownMethod(method)
    args = [_literal(arg, f"argument {i + 1}") for i, arg in enumerate(node.args)]
    kwargs = {name: _literal(value, f"argument {name!r}") for name, value in _keywords(node)}
    return _build_call(method, args, kwargs)


def validate_call(method: str, params: list[Any] | dict[str, Any] | None) -> Call:
    """Check a call's method and parameters (positional list or named dict).

    Raises :class:`UnknownMethod` for a method Sooner does not offer and
    :class:`ProtocolError` for missing, extra or invalid parameters.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise UnknownMethod(str(method))
    if params is None:
        return _build_call(method, [], {})
    if isinstance(params, (list, tuple)):
        return _build_call(method, list(params), {})
    if isinstance(params, dict):
        return _build_call(method, [], params)
    raise ProtocolError(f"{method}: params must be an array or an object, not {type(params).__name__}")


def _check_length(line: str) -> None:
    # Encoding is only needed when the character count alone cannot decide.
    if len(line) > MAX_LINE_BYTES or (
        len(line) * 4 > MAX_LINE_BYTES and len(line.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES
    ):
        raise ProtocolError(f"call too long: over {MAX_LINE_BYTES} bytes")


def _parse_expression(source: str) -> ast.Call:
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ProtocolError(f"not a valid call: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ProtocolError(f"not a valid call: {type(exc).__name__}") from None
    body = tree.body
    if not isinstance(body, ast.Call):
        raise ProtocolError(f"not a single call: {_excerpt(source)!r}")
    return body


def _method_name(node: ast.Call) -> str:
    func = node.func
    if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "sooner"):
        raise ProtocolError("not a call of sooner.<method>(...)")
    return func.attr


def _keywords(node: ast.Call) -> list[tuple[str, ast.expr]]:
    pairs = []
    for kw in node.keywords:
        if kw.arg is None:
            raise ProtocolError("**kwargs are not allowed; pass arguments as literals")
        pairs.append((kw.arg, kw.value))
    return pairs


def _literal(node: ast.expr, what: str) -> Any:
    if isinstance(node, ast.Starred):
        raise ProtocolError(f"{what}: *args are not allowed; pass arguments as literals")
    try:
        return ast.literal_eval(_JsonNames().visit(node))
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        raise ProtocolError(f"{what} is not a literal: {_source_excerpt(node)}") from None


class _JsonNames(ast.NodeTransformer):
    """Turn the bare names true/false/null into the constants JSON means."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in _JSON_NAMES:
            return ast.copy_location(ast.Constant(_JSON_NAMES[node.id]), node)
        return node


def _build_call(method: str, args: list[Any], kwargs: dict[str, Any]) -> Call:
    bound = _bind(method, args, kwargs)
    if method == "progress":
        return Call("progress", _progress_args(bound))
    return Call("emit", _emit_args(bound))


def _bind(method: str, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    names, required = METHODS[method]
    signature = f"{method}({', '.join(names)})"
    if len(args) > len(names):
        raise ProtocolError(f"{signature} takes at most {len(names)} arguments, got {len(args)}")
    bound = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in names:
            raise ProtocolError(f"{signature} got an unexpected argument {_excerpt(str(key))!r}")
        if key in bound:
            raise ProtocolError(f"{signature} got argument {key!r} twice")
        bound[key] = value
    missing = [name for name in names[:required] if name not in bound]
    if missing:
        raise ProtocolError(f"{signature} is missing argument {missing[0]!r}")
    return bound


def _progress_args(bound: dict[str, Any]) -> dict[str, Any]:
    current = _progress_number(bound["current"], "current")
    maximum = bound.get("max")
    if maximum is not None:
        maximum = _progress_number(maximum, "max")
        if maximum == 0:
            raise ProtocolError("progress: max must be greater than 0")
    return {"current": current, "max": maximum}


def _progress_number(value: Any, name: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"progress: {name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ProtocolError(f"progress: {name} must be a finite non-negative number, got {value!r}")
    return value


def _emit_args(bound: dict[str, Any]) -> dict[str, Any]:
    event = bound["event"]
    if not isinstance(event, str) or not event:
        raise ProtocolError(f"emit: event name must be a non-empty string, got {_excerpt(repr(event))}")
    try:
        data = _json_value(bound.get("data"), "data")
    except RecursionError:
        raise ProtocolError("emit: data is nested too deeply") from None
    return {"event": event, "data": data}


def _json_value(value: Any, path: str) -> Any:
    """Return ``value`` as JSON-compatible data (tuples become lists) or raise."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolError(f"emit: {path} must be finite, got {value!r}")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {_json_key(key, path): _json_value(item, f"{path}[{key!r}]") for key, item in value.items()}
    raise ProtocolError(f"emit: {path} is a {type(value).__name__}, which JSON cannot hold")


def _json_key(key: Any, path: str) -> str:
    if not isinstance(key, str):
        raise ProtocolError(f"emit: {path} has a non-string key {_excerpt(repr(key))}")
    return key


def _source_excerpt(node: ast.expr) -> str:
    try:
        return _excerpt(ast.unparse(node))
    except (ValueError, RecursionError):
        return type(node).__name__


def _excerpt(text: str) -> str:
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 3] + "..."
