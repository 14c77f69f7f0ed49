"""How a running script's calls are read: parsed, bound to a method's parameters, validated.

Scripts report over two channels that share one vocabulary, a
:class:`~sooner.worker.methods.MethodRegistry` (by default
:data:`~sooner.worker.methods.METHODS`):

* stderr lines such as ``>>> sooner.progress(5, 10)`` or
  ``>>> sooner.emit("name", {"k": 1})``, parsed by :func:`parse_stderr_line`;
* JSON-RPC requests on the run's unix socket (see :mod:`sooner.worker.rpc`),
  checked by :func:`validate_call`.

Both bind positional or named arguments to the method's declared parameters
here and end in the method's own ``validate``, giving a normalised
:class:`Call`. Stderr arguments are JSON or Python literals, read with
:mod:`ast` and :func:`ast.literal_eval`; nothing is ever evaluated.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from typing import Any

from sooner.errors import ProtocolError
from sooner.worker.methods import METHODS, Method, MethodRegistry, UnknownMethod, excerpt

__all__ = ["MAX_LINE_BYTES", "METHODS", "PREFIX", "PROMPT", "Call", "UnknownMethod", "parse_stderr_line",
           "validate_call"]

logger = logging.getLogger(__name__)

PROMPT = ">>> "
PREFIX = PROMPT + "sooner."
MAX_LINE_BYTES = 1024 * 1024

# JSON spellings accepted in stderr calls besides Python's True/False/None.
_JSON_NAMES: dict[str, Any] = {"true": True, "false": False, "null": None}


@dataclass(frozen=True)
class Call:
    """One validated call from a script: the method's name and its normalised named arguments.

    ``args`` holds every declared parameter, as the method's ``validate``
    returned it; e.g. ``progress`` → ``{"current": number, "max": number | None}``,
    ``emit`` → ``{"event": str, "data": JSON-compatible value}``.
    """

    method: str
    args: dict[str, Any]


def parse_stderr_line(line: str, registry: MethodRegistry = METHODS) -> Call | None:
    """Parse one stderr line; return None unless it starts with ``>>> sooner.``.

    A trailing newline or carriage return is ignored; leading whitespace is
    not (such a line is ordinary output). Raises :class:`ProtocolError`
    (:class:`UnknownMethod` for a name ``registry`` lacks) saying what is
    wrong with a malformed call.
    """
    line = line.rstrip("\r\n")
    if not line.startswith(PREFIX):
        return None
    _check_length(line)
    node = _parse_expression(line[len(PROMPT):])
    method = registry.get(_method_name(node))
    args = [_literal(arg, f"argument {i + 1}") for i, arg in enumerate(node.args)]
    kwargs = {name: _literal(value, f"argument {name!r}") for name, value in _keywords(node)}
    return _build_call(method, args, kwargs)


def validate_call(method: str, params: list[Any] | dict[str, Any] | None,
                  registry: MethodRegistry = METHODS) -> Call:
    """Check a call's method and parameters (positional list or named dict).

    Raises :class:`UnknownMethod` for a method ``registry`` does not offer and
    :class:`ProtocolError` for missing, extra or invalid parameters.
    """
    declared = registry.get(method)
    if params is None:
        return _build_call(declared, [], {})
    if isinstance(params, (list, tuple)):
        return _build_call(declared, list(params), {})
    if isinstance(params, dict):
        return _build_call(declared, [], params)
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
        raise ProtocolError(f"not a single call: {excerpt(source)!r}")
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
        raise ProtocolError(f"{what} is not a literal: {_sourceexcerpt(node)}") from None


class _JsonNames(ast.NodeTransformer):
    """Turn the bare names true/false/null into the constants JSON means."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in _JSON_NAMES:
            return ast.copy_location(ast.Constant(_JSON_NAMES[node.id]), node)
        return node


def _build_call(method: Method, args: list[Any], kwargs: dict[str, Any]) -> Call:
    return Call(method.name, method.validate(_bind(method, args, kwargs)))


def _bind(method: Method, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Match arguments to the method's parameters as Python would; omitted optional ones get their default."""
    names, signature = method.names, method.signature
    if len(args) > len(names):
        raise ProtocolError(f"{signature} takes at most {len(names)} arguments, got {len(args)}")
    bound = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in names:
            raise ProtocolError(f"{signature} got an unexpected argument {excerpt(str(key))!r}")
        if key in bound:
            raise ProtocolError(f"{signature} got argument {key!r} twice")
        bound[key] = value
    for param in method.params:
        if param.name not in bound:
            if param.required:
                raise ProtocolError(f"{signature} is missing argument {param.name!r}")
            bound[param.name] = param.default
    return bound


def _sourceexcerpt(node: ast.expr) -> str:
    try:
        return excerpt(ast.unparse(node))
    except (ValueError, RecursionError):
        return type(node).__name__


