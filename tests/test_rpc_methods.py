"""The method registry: one declaration gives a method to both channels, stderr lines and the socket.

The method under test, ``echo(text, times=1)``, is declared here, in a copy
of the default registry; no Sooner module is changed to offer it.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from sooner.api_client import RpcCallError, SocketClient
from sooner.config import Settings
from sooner.errors import ProtocolError
from sooner.model import Run
from sooner.runs.service import RunService
from sooner.store import Store
from sooner.worker.calls import CallHandler
from sooner.worker.methods import METHODS, Method, MethodRegistry, Param
from sooner.worker.output import OutputWriter
from sooner.worker.protocol import Call, UnknownMethod, parse_stderr_line, validate_call
from sooner.worker.rpc import RpcServer
from sooner.worker.streams import StreamDecoder

DEADLINE_S = 20.0
RUN = Run(id="r-echo", job="echo.py")

REGISTRY = METHODS.extended()


def _echo_args(bound: dict[str, Any]) -> dict[str, Any]:
    text, times = bound["text"], bound["times"]
    if not isinstance(text, str):
        raise ProtocolError(f"echo: text must be a string, not {type(text).__name__}")
    if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= 10:
        raise ProtocolError(f"echo: times must be a whole number from 1 to 10, got {times!r}")
    return {"text": text, "times": times}


@REGISTRY.declare("text", Param("times", default=1), validate=_echo_args)
def echo(context: CallHandler, args: dict[str, Any]) -> str:
    """The text repeated: a method with a result, a required and a defaulted parameter."""
    return args["text"] * args["times"]


@pytest.fixture
def service(mock_store: Store) -> RunService:
    return RunService(mock_store, Settings(chain_depth_limit=3))


@pytest.fixture
def handler(service: RunService) -> CallHandler:
    return CallHandler(service, RUN, throttle_s=60, registry=REGISTRY)


@pytest.fixture
def server(handler: CallHandler) -> Iterator[RpcServer]:
    with RpcServer(handler) as rpc:
        yield rpc


def exchange(path: str, payload: bytes, replies: int) -> list[Any]:
    """Send raw request lines on a fresh connection and read ``replies`` response lines (each bounded)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(DEADLINE_S)
        sock.connect(path)
        sock.sendall(payload)
        with sock.makefile("rb") as lines:
            return [json.loads(lines.readline()) for _ in range(replies)]


def request(method: str, params: Any, request_id: Any = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if request_id is not None:
        message["id"] = request_id
    return json.dumps(message).encode() + b"\n"


def test_the_default_registry_does_not_offer_the_new_method() -> None:
    with pytest.raises(UnknownMethod) as on_stderr:
        parse_stderr_line(">>> sooner.echo('hi')")
    with pytest.raises(UnknownMethod) as on_socket:
        validate_call("echo", ["hi"])

    assert "echo" not in METHODS and METHODS.names() == ["emit", "progress"]
    assert on_stderr.value.method == "echo"
    assert "unknown method 'echo' (known: emit, progress)" in str(on_stderr.value)
    assert "(known: emit, progress)" in str(on_socket.value)
    with pytest.raises(UnknownMethod, match=r"known: echo, emit, progress"):
        validate_call("shout", ["hi"], REGISTRY)


def test_a_stderr_line_calls_the_new_method_through_the_call_handler(handler: CallHandler) -> None:
    call = parse_stderr_line('>>> sooner.echo("hi", times=2)', REGISTRY)
    defaulted = parse_stderr_line(">>> sooner.echo(text='ho')", REGISTRY)

    assert call == Call("echo", {"text": "hi", "times": 2})
    assert defaulted == Call("echo", {"text": "ho", "times": 1})
    assert handler(call) == "hihi"
    assert handler(defaulted) == "ho"
    assert handler.calls == 2


def test_the_stderr_reader_parses_against_its_handlers_registry(mock_store: Store, handler: CallHandler) -> None:
    writer = OutputWriter(mock_store, RUN.id, flush_s=60)
    decoder = StreamDecoder(writer, handler)

    decoder.stderr(b'before\n>>> sooner.echo("hi", times=2)\n>>> sooner.echo(5)\nafter\n')
    decoder.close()
    writer.flush()
    writer.release()

    chunks = [(chunk["stream"], chunk["text"]) for chunk in mock_store.output.read(RUN.id)]
    assert chunks == [
        ("stderr", "before\n>>> sooner.echo(5)\n"),
        ("system", "sooner: ignored malformed call: echo: text must be a string, not int\n"),
        ("stderr", "after\n"),
    ]
    assert handler.calls == 1  # the good call was handled and left out of the output


def test_a_json_rpc_request_on_the_socket_calls_the_new_method(server: RpcServer, handler: CallHandler) -> None:
    assert server.path is not None
    payload = request("echo", ["ab"], 1) + request("echo", ["note"]) + request("echo", {"text": "c", "times": 3}, 2)

    replies = exchange(server.path, payload, 2)
    with SocketClient(server.path, timeout_s=DEADLINE_S) as client:
        named = client.call("echo", text="xy", times=2)

    assert replies == [{"jsonrpc": "2.0", "result": "ab", "id": 1}, {"jsonrpc": "2.0", "result": "ccc", "id": 2}]
    assert named == "xyxy"
    assert handler.calls == 4  # the notification was handled too, in order, without a reply


def test_the_built_in_methods_still_work_in_the_extended_registry(server: RpcServer) -> None:
    assert server.path is not None

    (reply,) = exchange(server.path, request("progress", {"current": 1, "total": 2}, 1), 1)

    assert validate_call("progress", [3], REGISTRY) == Call("progress", {"current": 3, "max": None})
    assert parse_stderr_line(">>> sooner.emit('e')", REGISTRY) == Call("emit", {"event": "e", "data": None})
    assert reply["error"]["code"] == -32602 and "unexpected argument 'total'" in reply["error"]["message"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"text": 5}, "echo: text must be a string, not int"),
        (["hi", 0], "echo: times must be a whole number from 1 to 10, got 0"),
        ({"times": 2}, "echo(text, times) is missing argument 'text'"),
        (["hi", 2, 3], "echo(text, times) takes at most 2 arguments, got 3"),
        ({"text": "hi", "loud": True}, "echo(text, times) got an unexpected argument 'loud'"),
    ],
)
def test_a_bad_argument_is_invalid_params_on_the_socket_and_a_protocol_error_on_stderr(
    server: RpcServer, handler: CallHandler, params: Any, message: str
) -> None:
    assert server.path is not None
    if isinstance(params, dict):
        line = ">>> sooner.echo(" + ", ".join(f"{key}={value!r}" for key, value in params.items()) + ")"
    else:
        line = ">>> sooner.echo(" + ", ".join(repr(value) for value in params) + ")"

    (reply,) = exchange(server.path, request("echo", params, 7), 1)
    with pytest.raises(ProtocolError) as on_stderr:
        parse_stderr_line(line, REGISTRY)

    assert reply["id"] == 7 and reply["error"]["code"] == -32602
    assert reply["error"]["message"] == f"Invalid params: {message}"
    assert str(on_stderr.value) == message
    assert handler.calls == 0


def test_a_server_for_a_default_handler_answers_method_not_found(service: RunService) -> None:
    plain = CallHandler(service, RUN)

    with RpcServer(plain) as rpc, SocketClient(rpc.path or "", timeout_s=DEADLINE_S) as client:
        with pytest.raises(RpcCallError) as caught:
            client.call("echo", text="hi")

    assert plain.registry is METHODS
    assert caught.value.code == -32601
    assert "known: emit, progress" in caught.value.message


def test_declaring_a_method_twice_is_refused() -> None:
    again = Method("echo", (Param("text"),), _echo_args, lambda context, args: None)

    with pytest.raises(ValueError, match="method 'echo' is already declared"):
        REGISTRY.register(again)
    with pytest.raises(ValueError, match="method 'echo' is already declared"):
        REGISTRY.extended(again)
    with pytest.raises(ValueError, match="method 'progress' is already declared"):
        METHODS.declare("current", name="progress", validate=dict)(lambda context, args: None)
    with pytest.raises(ValueError, match="method 'echo' is already declared"):
        MethodRegistry([echo, again])

    assert REGISTRY.get("echo") is echo
    assert METHODS.names() == ["emit", "progress"]


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("sooner.confirm", (), "method name must be a Python identifier"),
        ("class", (), "method name must be a Python identifier"),
        ("shout", (Param("loud", default=False), Param("text")), "required parameters must come before"),
        ("shout", (Param("text"), Param("text", default="")), "parameter 'text' is declared twice"),
        ("shout", (Param("two words"),), "parameter name must be a Python identifier"),
    ],
)
def test_a_method_whose_schema_a_stderr_call_could_not_express_is_refused(
    name: str, params: tuple[Param, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Method(name, params, dict, lambda context, args: None)
