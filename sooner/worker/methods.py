"""The methods a running script may call, each declared once.

A :class:`Method` binds everything about one call: its parameters (names,
order, which are required, the defaults of the others), how its bound
arguments are checked and normalised (``validate``), and what it does
(``handle``). :mod:`sooner.worker.protocol` parses both channels (stderr lines
and JSON-RPC) against a :class:`MethodRegistry`; the run's
:class:`~sooner.worker.calls.CallHandler` dispatches through the same
registry, and the socket server and stderr reader take it from that handler.

Adding a method is one declaration here (plus its wrapper in
:mod:`sooner.api`)::

    @METHODS.declare("text", Param("times", default=1), validate=_echo_args)
    def echo(context: RunContext, args: dict[str, Any]) -> str:
        return args["text"] * args["times"]

Tests build their own registry (:meth:`MethodRegistry.extended`) rather than
adding to :data:`METHODS`.
"""

from __future__ import annotations

import keyword
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from sooner.errors import ProtocolError
from sooner.worker.bounds import checked_int, checked_string, checked_value, excerpt

__all__ = ["METHODS", "REQUIRED", "Method", "MethodRegistry", "Param", "RunContext", "UnknownMethod", "excerpt",
           "registry_of"]


class _Required:
    """The default of a parameter that every call must give."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

Validate = Callable[[dict[str, Any]], dict[str, Any]]
Handle = Callable[[Any, dict[str, Any]], Any]


class RunContext(Protocol):
    """What the built-in methods need from the run (the CallHandler provides it)."""

    def progress(self, current: float, maximum: float) -> None: ...

    def emit(self, event: str, data: Any = None) -> Any: ...


class UnknownMethod(ProtocolError):
    """A script called a method Sooner does not offer (JSON-RPC -32601)."""

    def __init__(self, method: str, known: Iterable[str] = ()) -> None:
        self.method = method
        super().__init__(f"unknown method {excerpt(method)!r} (known: {', '.join(sorted(known))})")


@dataclass(frozen=True)
class Param:
    """One parameter of a method; without a ``default`` every call must give it."""

    name: str
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Method:
    """One callable method: its parameter schema, its argument check, its effect.

    ``validate`` receives every parameter by name (omitted ones hold their
    default) and returns the normalised arguments, raising
    :class:`ProtocolError` for a bad one; its result is what :class:`Call`
    carries, so it must be plain data the store can hold: check every value
    a script sends with :mod:`sooner.worker.bounds` (64-bit ints, finite
    floats, bounded strings and nesting), so a bad call is refused before
    it is accepted rather than failing in the database. ``handle(context,
    args)`` applies a validated call and returns the JSON-RPC result (None
    becomes ``true``).
    """

    name: str
    params: tuple[Param, ...]
    validate: Validate
    handle: Handle

    def __post_init__(self) -> None:
        _check_identifier(self.name, "method name")
        seen: set[str] = set()
        for param in self.params:
            _check_identifier(param.name, f"{self.name}: parameter name")
            if param.name in seen:
                raise ValueError(f"{self.name}: parameter {param.name!r} is declared twice")
            seen.add(param.name)
        if list(self.params[: self.required]) != [p for p in self.params if p.required]:
            raise ValueError(f"{self.name}: required parameters must come before optional ones")

    @property
    def names(self) -> tuple[str, ...]:
        """The parameter names in positional order."""
        return tuple(param.name for param in self.params)

    @property
    def required(self) -> int:
        """How many leading parameters every call must give."""
        return sum(param.required for param in self.params)

    @property
    def signature(self) -> str:
        """How error messages name the method, e.g. ``progress(current, max)``."""
        return f"{self.name}({', '.join(self.names)})"


class MethodRegistry:
    """The methods one channel pair (stderr + socket) offers, by name.

    A name is declared once: registering it again raises ValueError, so a
    method cannot be silently replaced. Iterating yields the methods in
    declaration order, so ``MethodRegistry([*METHODS, extra])`` copies one.
    """

    def __init__(self, methods: Iterable[Method] = ()) -> None:
        self._methods: dict[str, Method] = {}
        for method in methods:
            self.register(method)

    def register(self, method: Method) -> Method:
        """Add ``method``; raises ValueError if its name is taken."""
        if method.name in self._methods:
            raise ValueError(f"method {method.name!r} is already declared")
        self._methods[method.name] = method
        return method

    def declare(self, *params: str | Param, name: str | None = None,
                validate: Validate) -> Callable[[Handle], Method]:
        """Decorator form: the decorated function is the handler; returns the registered Method.

        A parameter given as a plain string is required. The method's name is
        the function's unless ``name`` is given.
        """
        schema = tuple(p if isinstance(p, Param) else Param(p) for p in params)

        def decorate(handle: Handle) -> Method:
            return self.register(Method(name or handle.__name__, schema, validate, handle))

        return decorate

    def extended(self, *methods: Method) -> MethodRegistry:
        """A new registry with these methods plus ``methods`` (this one is unchanged)."""
        return MethodRegistry([*self, *methods])

    def get(self, name: str) -> Method:
        """The method called ``name``; raises :class:`UnknownMethod` listing the known names."""
        method = self._methods.get(name) if isinstance(name, str) else None
        if method is None:
            raise UnknownMethod(str(name), self._methods)
        return method

    def names(self) -> list[str]:
        """The declared names, sorted."""
        return sorted(self._methods)

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def __iter__(self) -> Iterator[Method]:
        return iter(list(self._methods.values()))

    def __len__(self) -> int:
        return len(self._methods)

    def __repr__(self) -> str:
        return f"MethodRegistry({self.names()})"


def registry_of(handler: object) -> MethodRegistry:
    """The registry a call handler dispatches through; :data:`METHODS` for a plain callable."""
    registry = getattr(handler, "registry", None)
    return registry if isinstance(registry, MethodRegistry) else METHODS


def _check_identifier(name: str, what: str) -> None:
    # Stderr calls are parsed as ``sooner.<name>(<param>=...)``, so names must be Python identifiers.
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"{what} must be a Python identifier, got {name!r}")


METHODS = MethodRegistry()
"""The methods Sooner offers every run."""


def _progress_args(bound: dict[str, Any]) -> dict[str, Any]:
    current = _progress_number(bound["current"], "current")
    maximum = bound["max"]
    if maximum is not None:
        maximum = _progress_number(maximum, "max")
        if maximum == 0:
            raise ProtocolError("progress: max must be greater than 0")
    return {"current": current, "max": maximum}


def _progress_number(value: Any, name: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"progress: {name} must be a number, not {type(value).__name__}")
    if (isinstance(value, float) and not math.isfinite(value)) or value < 0:
        raise ProtocolError(f"progress: {name} must be a finite non-negative number, got {value!r}")
    return checked_int(value, method="progress", path=name) if isinstance(value, int) else value


@METHODS.declare("current", Param("max", default=None), validate=_progress_args)
def progress(context: RunContext, args: dict[str, Any]) -> None:
    """Move the run's progress bar; without ``max``, ``current`` is a percentage."""
    # Imported here: scripts import this module through sooner.api and need none of the model.
    from sooner.model.run import DEFAULT_PROGRESS_MAX

    maximum = args.get("max")
    context.progress(args["current"], DEFAULT_PROGRESS_MAX if maximum is None else maximum)


def _emit_args(bound: dict[str, Any]) -> dict[str, Any]:
    event = bound["event"]
    if not isinstance(event, str) or not event:
        raise ProtocolError(f"emit: event name must be a non-empty string, got {excerpt(repr(event))}")
    # The name's own rule (characters, length) is the event service's; here only what any string must be.
    event = checked_string(event, method="emit", path="event name")
    return {"event": event, "data": checked_value(bound["data"], method="emit", path="data")}


@METHODS.declare("event", Param("data", default=None), validate=_emit_args)
def emit(context: RunContext, args: dict[str, Any]) -> Any:
    """Store an event and start its hooked jobs; returns ``{"event", "runs"[, "note"]}``."""
    return context.emit(args["event"], args.get("data"))
