"""Parsing ``>>> sooner.…`` stderr lines and validating calls."""

from __future__ import annotations

import pytest

from sooner.errors import ProtocolError
from sooner.worker.protocol import Call, UnknownMethod, parse_stderr_line, validate_call

GOOD_LINES = [
    (">>> sooner.progress(50)", Call("progress", {"current": 50, "max": None})),
    (">>> sooner.progress(5, 10)", Call("progress", {"current": 5, "max": 10})),
    (">>> sooner.progress(5, max=10)", Call("progress", {"current": 5, "max": 10})),
    (">>> sooner.progress(current=2.5, max=10)", Call("progress", {"current": 2.5, "max": 10})),
    (">>> sooner.progress(0)", Call("progress", {"current": 0, "max": None})),
    (">>> sooner.progress( 5 ,  max = 10 )  ", Call("progress", {"current": 5, "max": 10})),
    (">>> sooner.progress(5, None)", Call("progress", {"current": 5, "max": None})),
    (">>> sooner.progress(5, null)", Call("progress", {"current": 5, "max": None})),
    (">>> sooner.progress(50)\n", Call("progress", {"current": 50, "max": None})),
    (">>> sooner.progress(50)\r\n", Call("progress", {"current": 50, "max": None})),
    (">>> sooner.emit(\"name\")", Call("emit", {"event": "name", "data": None})),
    (">>> sooner.emit('name')", Call("emit", {"event": "name", "data": None})),
    (">>> sooner.emit(\"name\", {\"k\": 1})", Call("emit", {"event": "name", "data": {"k": 1}})),
    (
        ">>> sooner.emit('name', {'k': [1, 2.5, None, True]})",
        Call("emit", {"event": "name", "data": {"k": [1, 2.5, None, True]}}),
    ),
    (
        '>>> sooner.emit("name", {"k": [true, false, null], "s": "x\\u00e9"})',
        Call("emit", {"event": "name", "data": {"k": [True, False, None], "s": "xé"}}),
    ),
    (
        '>>> sooner.emit("deep", {"a": {"b": {"c": [{"d": (1, 2)}]}}})',
        Call("emit", {"event": "deep", "data": {"a": {"b": {"c": [{"d": [1, 2]}]}}}}),
    ),
    (">>> sooner.emit(event='e', data=-3)", Call("emit", {"event": "e", "data": -3})),
    (">>> sooner.emit('e', 'text with ) and # inside')", Call("emit", {"event": "e", "data": "text with ) and # inside"})),
    (">>> sooner.emit('ünïcode', [])", Call("emit", {"event": "ünïcode", "data": []})),
]

BAD_LINES = [
    (">>> sooner.explode(1)", "unknown method 'explode'"),
    (">>> sooner.__import__('os')", "unknown method '__import__'"),
    (">>> sooner.emit(__import__('os'))", "argument 1 is not a literal: __import__('os')"),
    (">>> sooner.emit('e', os.environ)", "argument 2 is not a literal: os.environ"),
    (">>> sooner.emit('e', data=secret)", "argument 'data' is not a literal: secret"),
    (">>> sooner.emit(name)", "argument 1 is not a literal: name"),
    (">>> sooner.emit('e', lambda: 1)", "argument 2 is not a literal"),
    (">>> sooner.emit(f'e{1}')", "argument 1 is not a literal"),
    (">>> sooner.emit('e', [x for x in 'ab'])", "argument 2 is not a literal"),
    (">>> sooner.progress(float('nan'))", "argument 1 is not a literal"),
    (">>> sooner.progress(2 ** 10)", "argument 1 is not a literal"),
    (">>> sooner.emit(*args)", "*args are not allowed"),
    (">>> sooner.emit(**kwargs)", "**kwargs are not allowed"),
    (">>> sooner.progress()", "missing argument 'current'"),
    (">>> sooner.emit()", "missing argument 'event'"),
    (">>> sooner.progress(max=5)", "missing argument 'current'"),
    (">>> sooner.progress(1, 2, 3)", "at most 2 arguments, got 3"),
    (">>> sooner.emit('e', 1, 2)", "at most 2 arguments, got 3"),
    (">>> sooner.progress(1, total=2)", "unexpected argument 'total'"),
    (">>> sooner.progress(1, current=2)", "argument 'current' twice"),
    (">>> sooner.progress(-1)", "finite non-negative number, got -1"),
    (">>> sooner.progress(5, -10)", "max must be a finite non-negative number"),
    (">>> sooner.progress(5, 0)", "max must be greater than 0"),
    (">>> sooner.progress(1e999)", "finite non-negative number, got inf"),
    (">>> sooner.progress('50')", "current must be a number, not str"),
    (">>> sooner.progress(True)", "current must be a number, not bool"),
    (">>> sooner.emit(42)", "event name must be a non-empty string"),
    (">>> sooner.emit('')", "event name must be a non-empty string"),
    (">>> sooner.emit(None)", "event name must be a non-empty string"),
    (">>> sooner.emit('e', {1: 2})", "non-string key"),
    (">>> sooner.emit('e', {1, 2})", "set, which JSON cannot hold"),
    (">>> sooner.emit('e', b'raw')", "bytes, which JSON cannot hold"),
    (">>> sooner.emit('e', [1e999])", "data[0] must be finite"),
    (">>> sooner.emit(\"unterminated)", "not a valid call: unterminated string"),
    (">>> sooner.emit('e'", "not a valid call"),
    (">>> sooner.progress", "not a single call"),
    (">>> sooner.progress(1) + 1", "not a single call"),
    (">>> sooner.progress(1); import os", "not a valid call"),
    (">>> sooner.emit('a')('b')", "not a call of sooner.<method>"),
    (">>> sooner.emit('e', " + "[" * 500 + "]" * 500 + ")", "not a valid call"),
    (">>> sooner.emit('e', '" + "x" * (1024 * 1024) + "')", "call too long"),
    (">>> sooner.emit('e', '" + "é" * (600 * 1024) + "')", "call too long"),
]

PLAIN_LINES = [
    "",
    "\n",
    "hello",
    "sooner.progress(5)",
    " >>> sooner.progress(5)",
    "\t>>> sooner.progress(5)",
    ">>> print('hi')",
    ">>>sooner.progress(5)",
    ">> sooner.progress(5)",
    ">>> Sooner.progress(5)",
]


@pytest.mark.parametrize(("line", "expected"), GOOD_LINES, ids=[line[:40] for line, _ in GOOD_LINES])
def test_well_formed_call_is_parsed_into_normalised_arguments(line: str, expected: Call) -> None:
    assert parse_stderr_line(line) == expected


@pytest.mark.parametrize(("line", "message"), BAD_LINES, ids=[line[:40] for line, _ in BAD_LINES])
def test_malformed_call_raises_protocol_error_saying_what_is_wrong(line: str, message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_stderr_line(line)

    assert message in str(caught.value)
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize("line", PLAIN_LINES)
def test_line_without_the_prefix_is_ordinary_output(line: str) -> None:
    assert parse_stderr_line(line) is None


def test_unknown_method_is_a_distinct_protocol_error() -> None:
    with pytest.raises(UnknownMethod) as caught:
        parse_stderr_line(">>> sooner.queue('x')")

    assert isinstance(caught.value, ProtocolError)
    assert isinstance(caught.value, ValueError)
    assert caught.value.method == "queue"


def test_parsing_never_evaluates_code(tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"
    line = f">>> sooner.emit(open({str(marker)!r}, 'w').write('x'))"

    with pytest.raises(ProtocolError):
        parse_stderr_line(line)

    assert not marker.exists()


def test_validate_call_accepts_positional_named_and_missing_params() -> None:
    assert validate_call("progress", [3, 4]) == Call("progress", {"current": 3, "max": 4})
    assert validate_call("progress", {"current": 3}) == Call("progress", {"current": 3, "max": None})
    assert validate_call("emit", ["e"]) == Call("emit", {"event": "e", "data": None})
    assert validate_call("emit", {"event": "e", "data": {"x": [1]}}) == Call("emit", {"event": "e", "data": {"x": [1]}})


@pytest.mark.parametrize(
    ("method", "params", "error", "message"),
    [
        ("nope", [], UnknownMethod, "unknown method 'nope'"),
        ("progress", None, ProtocolError, "missing argument 'current'"),
        ("progress", "50", ProtocolError, "params must be an array or an object"),
        ("progress", {"current": 1, "extra": 2}, ProtocolError, "unexpected argument 'extra'"),
        ("progress", [float("nan")], ProtocolError, "finite non-negative"),
        ("emit", [""], ProtocolError, "non-empty string"),
        ("emit", {"data": 1}, ProtocolError, "missing argument 'event'"),
    ],
)
def test_validate_call_rejects_bad_method_or_params(method: str, params: object, error: type, message: str) -> None:
    with pytest.raises(error) as caught:
        validate_call(method, params)  # type: ignore[arg-type]

    assert message in str(caught.value)


def test_validate_call_rejects_data_nested_beyond_the_recursion_limit() -> None:
    data: list[object] = []
    for _ in range(5000):
        data = [data]

    with pytest.raises(ProtocolError, match="nested too deeply"):
        validate_call("emit", ["e", data])
