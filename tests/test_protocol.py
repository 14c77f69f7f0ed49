"""Parsing ``>>> sooner.…`` stderr lines and validating calls."""

from __future__ import annotations

import pytest

from sooner.errors import ProtocolError
from sooner.worker.bounds import MAX_ENCODED_BYTES, OutOfBounds
from sooner.worker.protocol import Call, UnknownMethod, parse_stderr_line, validate_call


def nested(levels: int) -> list:
    """An empty list inside ``levels - 1`` lists: ``levels`` levels deep."""
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


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
    # the edges of what the store holds
    (">>> sooner.progress(9223372036854775807, 9223372036854775807)",
     Call("progress", {"current": 2**63 - 1, "max": 2**63 - 1})),
    (">>> sooner.emit('e', [-9223372036854775808, 1.7976931348623157e308])",
     Call("emit", {"event": "e", "data": [-(2**63), 1.7976931348623157e308]})),
    (">>> sooner.emit('e', {'a$': 1, '': 2, 'x y': 'nul \\x00 in a value is fine'})",
     Call("emit", {"event": "e", "data": {"a$": 1, "": 2, "x y": "nul \x00 in a value is fine"}})),
    (">>> sooner.emit('e', " + "[" * 32 + "]" * 32 + ")", Call("emit", {"event": "e", "data": nested(32)})),
    # JSON's spelling of a character beyond the BMP (what json.dumps writes) is that character, not two surrogates
    ('>>> sooner.emit("\\ud83d\\ude00", {"\\ud83d\\ude00": "x\\ud83d\\ude00"})',
     Call("emit", {"event": "\U0001f600", "data": {"\U0001f600": "x\U0001f600"}})),
    (">>> sooner.emit('e', '" + "x" * 65536 + "')", Call("emit", {"event": "e", "data": "x" * 65536})),
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
    (">>> sooner.progress(100000000000000000000, 10)",
     "progress: current must be a whole number within 64 bits (-9223372036854775808 to 9223372036854775807), "
     "got 100000000000000000000"),
    (">>> sooner.progress(5, 9223372036854775808)", "progress: max must be a whole number within 64 bits"),
    (">>> sooner.progress(" + "9" * 4000 + ")", "got an integer of 13288 bits"),
    (">>> sooner.emit('e', {'a': [1, {'b': -9223372036854775809}]})",
     'emit: data["a"][1]["b"] must be a whole number within 64 bits'),
    (">>> sooner.emit('e', {'$set': 1})", 'emit: data key "$set" must not start with "$"'),
    (">>> sooner.emit('e', {'a': {'b.c': 1}})", 'emit: data["a"] key "b.c" must not contain "."'),
    (">>> sooner.emit('e', {'a\\x00b': 1})", 'emit: data key "a\\u0000b" must not contain NUL'),
    (">>> sooner.emit('e', ['\\ud800'])", "emit: data[0] is not valid Unicode (a lone surrogate)"),
    (">>> sooner.emit('e', {'\\udfff': 1})", 'emit: data key "\\udfff" is not valid Unicode'),
    (">>> sooner.emit('\\ud800')", "emit: event name is not valid Unicode"),
    (">>> sooner.emit('e', ['\\ude00\\ud83d'])", "emit: data[0] is not valid Unicode (a lone surrogate)"),
    (">>> sooner.emit('e', {'\\ud83d\\ude00': 1, '\U0001f600': 2})", 'emit: data has the key "\U0001f600" twice'),
    (">>> sooner.emit('e', 1j)", "data is a complex, which JSON cannot hold"),
    (">>> sooner.emit('e', '" + "x" * 65537 + "')", "emit: data is too long: 65537 bytes, at most 65536"),
    (">>> sooner.emit('e', ['" + "é" * 32769 + "'])", "emit: data[0] is too long: 65538 bytes"),
    (">>> sooner.emit('e', " + "[" * 33 + "]" * 33 + ")", "is nested too deeply: more than 32 levels"),
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


def test_data_whose_json_is_over_the_limit_is_refused_as_a_whole() -> None:
    # given data of many strings, each within bounds, whose JSON (as SOONER_DATA carries it) is too large
    data = {f"k{i}": "x" * 60000 for i in range(2)}

    with pytest.raises(OutOfBounds) as caught:
        validate_call("emit", ["e", data])

    assert caught.value.path == "data" and caught.value.rule.startswith("is too large: ")
    assert f"bytes as JSON, at most {MAX_ENCODED_BYTES}" in str(caught.value)


def test_non_ascii_text_counts_as_the_json_a_hooked_run_receives() -> None:
    # given 20,000 "é" (40,000 bytes of UTF-8, 120,000 of ASCII-escaped JSON)
    with pytest.raises(OutOfBounds, match="is too large: 120002 bytes as JSON"):
        validate_call("emit", ["e", "é" * 20000])

    assert validate_call("emit", ["e", "é" * 10000]).args["data"] == "é" * 10000


def test_a_refusal_names_the_path_and_shortens_a_long_one() -> None:
    # given a bad value under long keys, deep down
    data: object = 2**64
    for i in range(20):
        data = {f"key-{i}-" + "z" * 40: data}

    with pytest.raises(OutOfBounds) as caught:
        validate_call("emit", ["e", data])

    path = caught.value.path
    assert path.startswith('data["key-19-zzzzzzzzzzzzzz..."]["key-18-')
    assert path.endswith('["key-0-zzzzzzzzzzzzzzz..."]')
    assert '["key-9-' not in path and "...zzz" in path
    assert len(caught.value.path) <= 100 and len(str(caught.value)) < 300
