"""Properties of the call channels, over generated input (hypothesis).

* The stderr parser, given any line, returns None, a :class:`Call` the store
  can hold (it ``bson.encode``s, its data passes the bounds check unchanged
  and is JSON a hooked run can receive), or raises ProtocolError with a
  storable message: never anything else.
* The JSON-RPC server answers any request line with a well-formed response
  (or none, for notifications), and hands its handler only storable calls.
* The bounds check accepts only values that encode, and names the part of
  a refused value by a path that leads to it.

Generated values lean on the edges: ints around 64 bits, inf and nan, lone
surrogates, keys with ``$``, ``.`` and NUL, strings around the length limit
and nesting around the depth limit. Examples are few enough for the suite
(``max_examples``); in CI the examples are derandomised so a run is repeatable.
"""

from __future__ import annotations

import json
import os
from typing import Any

import bson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sooner.errors import ProtocolError
from sooner.worker.bounds import (
    INT64_MAX,
    INT64_MIN,
    MAX_DEPTH,
    MAX_ENCODED_BYTES,
    MAX_STRING_BYTES,
    OutOfBounds,
    checked_value,
)
from sooner.worker.protocol import PREFIX, Call, parse_stderr_line
from sooner.worker.rpc import RpcServer

PROPERTIES = settings(max_examples=200, deadline=None, database=None, derandomize=bool(os.environ.get("CI")))
ERROR_CODES = {-32700, -32600, -32601, -32602, -32603}

# -- generated values ---------------------------------------------------------------------------------------

ANY_CHAR = st.characters(exclude_categories=())  # surrogates included: a "\ud800" escape makes one
EDGE_INTS = st.sampled_from([INT64_MIN - 1, INT64_MIN, INT64_MAX, INT64_MAX + 1, 10**20, -(10**20), 2**64])
INTS = st.one_of(st.integers(), st.integers(INT64_MIN - 4, INT64_MIN + 4), st.integers(INT64_MAX - 4, INT64_MAX + 4),
                 EDGE_INTS)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
LONG_STRINGS = st.integers(MAX_STRING_BYTES - 2, MAX_STRING_BYTES + 2).map(lambda n: "x" * n)
STRINGS = st.one_of(st.text(ANY_CHAR, max_size=12), LONG_STRINGS)
KEYS = st.one_of(st.text(st.sampled_from("$.\0aé\ud800 "), max_size=6), st.text(ANY_CHAR, max_size=8))
JSON_LEAVES = st.one_of(st.none(), st.booleans(), INTS, FLOATS, STRINGS)
LEAVES = st.one_of(JSON_LEAVES, st.binary(max_size=4), st.complex_numbers(max_magnitude=10),
                   st.sets(st.integers(-3, 3), max_size=3))


def nested(levels: int, inner: Any = None) -> Any:
    """``inner`` inside ``levels`` lists."""
    value = inner
    for _ in range(levels):
        value = [value]
    return value


DEEP = st.integers(MAX_DEPTH - 2, MAX_DEPTH + 2).map(nested)
VALUES = st.one_of(
    st.recursive(LEAVES, lambda children: st.one_of(
        st.lists(children, max_size=4), st.tuples(children, children),
        st.dictionaries(st.one_of(KEYS, st.integers(-2, 2)), children, max_size=4)), max_leaves=12),
    DEEP,
)
JSON_VALUES = st.one_of(
    st.recursive(JSON_LEAVES, lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=4)), max_leaves=12),
    DEEP,
)


NUMBERS = st.one_of(INTS, FLOATS, st.integers(0, 1000))
EVENT_NAMES = st.one_of(st.sampled_from(["done", "report-ready", "job:x:done"]), st.text(ANY_CHAR, max_size=8))


@st.composite
def call_lines(draw: st.DrawFn) -> str:
    """A ``>>> sooner.`` line: progress or emit with generated literal arguments, or any method and arguments."""
    kind = draw(st.sampled_from(["progress", "emit", "any"]))
    if kind == "progress":
        names, args = ("current", "max"), draw(st.lists(st.one_of(NUMBERS, NUMBERS, VALUES), min_size=1, max_size=2))
    elif kind == "emit":
        names, args = ("event", "data"), [draw(EVENT_NAMES)] + draw(st.lists(VALUES, max_size=1))
    else:
        names = ("current", "max", "event", "data", "other")
        args = draw(st.lists(VALUES, max_size=3))
    method = kind if kind != "any" else draw(st.sampled_from(["progress", "emit"]) | st.from_regex(r"[a-z_]{1,8}",
                                                                                                   fullmatch=True))
    render = draw(st.sampled_from([repr, _json_or_repr]))
    parts = [render(arg) for arg in args]
    if draw(st.booleans()) and len(parts) <= len(names):
        parts = [f"{name}={part}" for name, part in zip(names, parts)]
    return f"{PREFIX}{method}({', '.join(parts)})"


def _json_or_repr(value: Any) -> str:
    """JSON spelling where the value has one (``true``, ``null``, ``\\ud800`` escapes), else Python's."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


LINES = st.one_of(call_lines(), st.text(max_size=200).map(lambda text: PREFIX + text), st.text(max_size=40))


# -- what the store can hold --------------------------------------------------------------------------------

def assert_storable(call: Call) -> None:
    """The call's arguments as the store writes them encode as BSON; emit data is also JSON a run can receive."""
    if call.method == "progress":
        bson.encode({"progress": {"current": call.args["current"], "max": call.args["max"]}})
        return
    data = call.args["data"]
    bson.encode({"name": call.args["event"], "data": data})
    assert checked_value(data, method="emit") == data
    assert len(json.dumps(data, allow_nan=False)) <= MAX_ENCODED_BYTES


def assert_storable_message(exc: Exception) -> None:
    """A refusal's message becomes a system note in the run's output: it must be short, storable text."""
    message = str(exc)
    assert message and len(message) < 400
    message.encode("utf-8")


# -- the properties -----------------------------------------------------------------------------------------

@PROPERTIES
@given(LINES)
def test_the_stderr_parser_returns_a_storable_call_or_a_protocol_error(line: str) -> None:
    try:
        call = parse_stderr_line(line)
    except ProtocolError as exc:
        assert_storable_message(exc)
        return
    if call is None:
        assert not line.startswith(PREFIX)
    else:
        assert_storable(call)


class Recorder:
    """The JSON-RPC handler: records what reaches it (checked after each request, outside the server)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def __call__(self, call: Call) -> None:
        self.calls.append(call)


@st.composite
def request_lines(draw: st.DrawFn) -> bytes:
    """One request line: a (mostly) JSON-RPC message, a batch, a value past float range, or bytes."""
    member = st.fixed_dictionaries({}, optional={
        "jsonrpc": st.sampled_from(["2.0", "2.0", "1.0", 2]),
        "method": st.sampled_from(["progress", "emit", "nope", "sooner.confirm"]) | st.text(max_size=4),
        "params": st.one_of(st.lists(JSON_VALUES, max_size=3), JSON_VALUES,
                            st.dictionaries(st.sampled_from(["current", "max", "event", "data", "x"]), JSON_VALUES,
                                            max_size=3)),
        "id": st.one_of(st.none(), st.integers(), st.text(max_size=4), st.booleans(), st.just({"x": 1})),
    })
    kind = draw(st.sampled_from(["call", "call", "one", "batch", "overflow", "bytes"]))
    if kind == "call":  # well-formed but for the values
        progress = st.lists(NUMBERS, min_size=1, max_size=2)
        emit = st.tuples(EVENT_NAMES, JSON_VALUES).map(list)
        method, params = draw(st.sampled_from([("progress", progress), ("emit", emit)]))
        message = {"jsonrpc": "2.0", "method": method, "params": draw(params), "id": draw(st.integers(0, 9))}
        return json.dumps(message).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=60))
    if kind == "overflow":  # JSON numbers Python reads as inf or past 64 bits
        number = draw(st.sampled_from(["1e400", "-1e400", "100000000000000000000", "9223372036854775808"]))
        return f'{{"jsonrpc": "2.0", "method": "progress", "params": [{number}], "id": 1}}'.encode()
    message = draw(st.lists(member, max_size=3)) if kind == "batch" else draw(member)
    return json.dumps(message).encode()


def assert_well_formed(response: Any) -> None:
    assert isinstance(response, dict) and response.get("jsonrpc") == "2.0"
    assert set(response) in ({"jsonrpc", "result", "id"}, {"jsonrpc", "error", "id"})
    request_id = response["id"]
    assert request_id is None or (isinstance(request_id, (str, int, float)) and not isinstance(request_id, bool))
    if "error" in response:
        error = response["error"]
        assert error["code"] in ERROR_CODES and isinstance(error["message"], str) and error["message"]


@PROPERTIES
@given(request_lines())
def test_the_json_rpc_server_answers_well_formed_and_hands_on_only_storable_calls(line: bytes) -> None:
    recorder = Recorder()
    server = RpcServer(recorder)  # respond() needs no socket: the request handling alone

    reply = server.respond(line)

    if reply is not None:
        decoded = json.loads(reply)
        responses = decoded if isinstance(decoded, list) else [decoded]
        assert responses
        for response in responses:
            assert_well_formed(response)
    single = _single_request(line)
    if single is not None and "id" in single:
        assert reply is not None and json.loads(reply)["id"] == single["id"]
    for call in recorder.calls:
        assert_storable(call)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: Python reads them, JSON has no such numbers


def _single_request(line: bytes) -> dict[str, Any] | None:
    """The request when ``line`` is one well-formed request object (so its response must carry its id)."""
    try:
        message = json.loads(line, parse_constant=_not_json)
    except ValueError:
        return None
    if not (isinstance(message, dict) and message.get("jsonrpc") == "2.0" and isinstance(message.get("method"), str)):
        return None
    request_id = message.get("id")
    valid_id = request_id is None or (isinstance(request_id, (str, int, float)) and not isinstance(request_id, bool))
    params_ok = "params" not in message or isinstance(message["params"], (list, dict))
    return message if valid_id and params_ok else None


@PROPERTIES
@given(VALUES)
def test_a_value_the_bounds_check_accepts_encodes_and_a_refused_one_is_named_by_its_path(value: Any) -> None:
    try:
        result = checked_value(value, method="emit")
    except OutOfBounds as exc:
        assert_storable_message(exc)
        assert exc.rule and str(exc) == f"emit: {exc.path} {exc.rule}"
        assert exc.path.startswith("data")
        if "..." not in exc.path:
            _follow(value, exc.path)  # the path leads to the refused part
        return
    bson.encode({"data": result})
    assert len(json.dumps(result, allow_nan=False)) <= MAX_ENCODED_BYTES
    assert checked_value(result, method="emit") == result


def _follow(value: Any, path: str) -> Any:
    """The part of ``value`` that ``path`` (``data["a"][3]``) names; fails if there is none."""
    decoder = json.JSONDecoder()
    position, part = len("data"), value
    while position < len(path):
        assert path[position] == "[", path
        if path[position + 1] == '"':
            key, position = decoder.raw_decode(path, position + 1)
            part = part[key]
        else:
            end = path.index("]", position)
            part = part[int(path[position + 1:end])]
            position = end
        assert path[position] == "]", path
        position += 1
    return part


@pytest.mark.parametrize("value", [10**20, float("inf"), {"$x": 1}, {"a\0": 1}, "\ud800", nested(MAX_DEPTH + 1)])
def test_the_edges_the_generators_lean_on_are_refused(value: Any) -> None:
    # A check on the generators themselves: each of these is an edge they produce, and each is out of bounds.
    with pytest.raises(OutOfBounds):
        checked_value(value, method="emit")
