"""The run's JSON-RPC unix socket, over real sockets and real subprocesses."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sooner import api_client
from sooner.api_client import RpcCallError, SocketClient, connect_from_env
from sooner.errors import ProtocolError, StoreError
from sooner.worker.calls import CallNotRecorded
from sooner.worker.protocol import Call
from sooner.worker.rpc import LineReader, RpcServer

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
DEADLINE_S = 20.0


class Recorder:
    """A handler that records calls; events named ``boom``/``bad`` raise."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.lock = threading.Lock()

    def __call__(self, call: Call) -> Any:
        if call.method == "emit" and call.args["event"] == "boom":
            raise RuntimeError("handler bug")
        if call.method == "emit" and call.args["event"] == "bad":
            raise ProtocolError("event 'bad' is reserved")
        if call.method == "emit" and call.args["event"] == "echo":
            return call.args["data"]
        if call.method == "emit" and call.args["event"] == "unserialisable":
            return object()
        if call.method == "emit" and call.args["event"] == "unrecorded":
            raise CallNotRecorded("emit 'unrecorded'", StoreError("cannot reach the database"))
        with self.lock:
            self.calls.append(call)
        return None


class RawClient:
    """Speaks bytes to the socket; every read is bounded by a deadline."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(DEADLINE_S)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, params: Any = None, request_id: Any = 1) -> bytes:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params is not None:
            message["params"] = params
        return json.dumps(message).encode() + b"\n"

    def read(self) -> Any:
        line = self.file.readline()
        assert line.endswith(b"\n"), f"connection closed, got {line!r}"
        return json.loads(line)

    def call(self, method: str, params: Any = None, request_id: Any = 1) -> Any:
        self.send(self.request(method, params, request_id))
        return self.read()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def server(recorder: Recorder) -> Iterator[RpcServer]:
    with RpcServer(recorder) as rpc:
        yield rpc


@pytest.fixture
def make_client(server: RpcServer) -> Iterator[Callable[[], RawClient]]:
    clients: list[RawClient] = []

    def make() -> RawClient:
        assert server.path is not None
        clients.append(RawClient(server.path))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_socket_is_private_to_the_user(server: RpcServer) -> None:
    assert server.path is not None and server.directory is not None

    assert stat.S_ISSOCK(os.stat(server.path).st_mode)
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(server.directory).st_mode) == 0o700
    assert os.path.dirname(server.path) == server.directory
    assert os.path.basename(server.path) == "sooner.sock"


def test_calls_reach_the_handler_in_order(make_client: Callable[[], RawClient], recorder: Recorder) -> None:
    client = make_client()
    requests = [
        client.request("progress", [1], 1),
        client.request("progress", {"current": 5, "max": 10}, 2),
        client.request("emit", ["built"], "three"),
        client.request("emit", {"event": "done", "data": {"k": [1, None]}}, 4),
    ]

    client.send(b"".join(requests))
    responses = [client.read() for _ in requests]

    assert responses == [
        {"jsonrpc": "2.0", "result": True, "id": 1},
        {"jsonrpc": "2.0", "result": True, "id": 2},
        {"jsonrpc": "2.0", "result": True, "id": "three"},
        {"jsonrpc": "2.0", "result": True, "id": 4},
    ]
    assert recorder.calls == [
        Call("progress", {"current": 1, "max": None}),
        Call("progress", {"current": 5, "max": 10}),
        Call("emit", {"event": "built", "data": None}),
        Call("emit", {"event": "done", "data": {"k": [1, None]}}),
    ]


ERROR_CASES = [
    (b"{not json", -32700, None),
    (b'{"jsonrpc":"2.0","method":"progress","params":[1],"id":1', -32700, None),
    (b'\xff\xfe{"jsonrpc":"2.0","method":"progress","params":[1],"id":1}', -32700, None),
    (b'{"jsonrpc":"2.0","method":"emit","params":["\xe9"],"id":1}', -32700, None),
    (b'{"jsonrpc":"2.0","method":"progress","params":[NaN],"id":1}', -32700, None),
    (b'"just a string"', -32600, None),
    (b"42", -32600, None),
    (b"[]", -32600, None),
    (b'{"method":"progress","params":[1],"id":7}', -32600, 7),
    (b'{"jsonrpc":"1.0","method":"progress","params":[1],"id":7}', -32600, 7),
    (b'{"jsonrpc":"2.0","method":5,"id":7}', -32600, 7),
    (b'{"jsonrpc":"2.0","params":[1],"id":7}', -32600, 7),
    (b'{"jsonrpc":"2.0","method":"progress","params":"50","id":7}', -32600, 7),
    (b'{"jsonrpc":"2.0","method":"progress","params":[1],"id":{"x":1}}', -32600, None),
    (b'{"jsonrpc":"2.0","method":"progress","params":[1],"id":true}', -32600, None),
    (b'{"jsonrpc":"2.0","method":"nope","params":[1],"id":7}', -32601, 7),
    (b'{"jsonrpc":"2.0","method":"rpc.discover","id":7}', -32601, 7),
    (b'{"jsonrpc":"2.0","method":"progress","id":7}', -32602, 7),
    (b'{"jsonrpc":"2.0","method":"progress","params":[-1],"id":7}', -32602, 7),
    (b'{"jsonrpc":"2.0","method":"progress","params":{"current":1,"total":2},"id":7}', -32602, 7),
    (b'{"jsonrpc":"2.0","method":"emit","params":{"event":""},"id":7}', -32602, 7),
    (b'{"jsonrpc":"2.0","method":"emit","params":[1, 2, 3],"id":7}', -32602, 7),
    (b'{"jsonrpc":"2.0","method":"emit","params":["bad"],"id":7}', -32602, 7),
    (b'{"jsonrpc":"2.0","method":"progress","params":[100000000000000000000, 10],"id":7}', -32602, 7),
    (b'{"jsonrpc":"2.0","method":"progress","params":[1e400],"id":7}', -32602, 7),
    (b'{"jsonrpc":"2.0","method":"emit","params":["e", {"$where": 1}],"id":7}', -32602, 7),
    (b'{"jsonrpc":"2.0","method":"emit","params":["e", ["\\ud800"]],"id":7}', -32602, 7),
    (b'{"jsonrpc":"2.0","method":"emit","params":["e", [-9223372036854775809]],"id":7}', -32602, 7),
    (b'{"jsonrpc":"2.0","method":"emit","params":["boom"],"id":7}', -32603, 7),
    (b'{"jsonrpc":"2.0","method":"emit","params":["unrecorded"],"id":7}', -32603, 7),
    (b'{"jsonrpc":"2.0","method":"emit","params":["unserialisable"],"id":7}', -32603, 7),
    (b'{"jsonrpc":"2.0","method":"emit","params":["e", ' + b"[" * 100_000 + b"]" * 100_000 + b'],"id":7}', -32700, None),
]


@pytest.mark.parametrize(("line", "code", "request_id"), ERROR_CASES, ids=[repr(c[0][:40]) for c in ERROR_CASES])
def test_bad_request_gets_its_error_code_and_the_server_keeps_serving(
    make_client: Callable[[], RawClient], recorder: Recorder, line: bytes, code: int, request_id: Any
) -> None:
    client = make_client()

    client.send(line + b"\n")
    response = client.read()

    assert response["jsonrpc"] == "2.0"
    assert response["id"] == request_id
    assert response["error"]["code"] == code
    assert isinstance(response["error"]["message"], str) and response["error"]["message"]
    assert "result" not in response
    assert recorder.calls == []
    assert client.call("progress", [3], 99) == {"jsonrpc": "2.0", "result": True, "id": 99}


def test_invalid_params_error_carries_the_validation_message(make_client: Callable[[], RawClient]) -> None:
    client = make_client()

    response = client.call("progress", [5, -1], 1)

    assert response["error"]["code"] == -32602
    assert "max must be a finite non-negative number" in response["error"]["message"]


def test_a_value_beyond_what_the_store_holds_is_invalid_params_naming_it(
    make_client: Callable[[], RawClient]
) -> None:
    client = make_client()

    big = client.call("progress", [10**20, 10], 1)
    key = client.call("emit", ["e", {"rows": [{"a.b": 1}]}], 2)

    assert big["error"] == {"code": -32602, "message": "Invalid params: progress: current must be a whole number "
                            "within 64 bits (-9223372036854775808 to 9223372036854775807), got 100000000000000000000"}
    assert key["error"]["message"] == 'Invalid params: emit: data["rows"][0] key "a.b" must not contain "."'


def test_a_call_the_store_did_not_record_is_an_internal_error_saying_so(make_client: Callable[[], RawClient]) -> None:
    client = make_client()

    response = client.call("emit", ["unrecorded"], 3)

    assert response == {"jsonrpc": "2.0", "id": 3, "error": {
        "code": -32603, "message": "Internal error: emit 'unrecorded' was not recorded: cannot reach the database"}}
    assert client.call("progress", [3], 4)["result"] is True


def test_handler_result_is_returned_when_it_is_json(make_client: Callable[[], RawClient]) -> None:
    client = make_client()

    assert client.call("emit", ["echo", {"a": [1, "b"]}], 1)["result"] == {"a": [1, "b"]}


def test_notification_is_handled_without_a_response(make_client: Callable[[], RawClient], recorder: Recorder) -> None:
    client = make_client()
    notification = b'{"jsonrpc":"2.0","method":"progress","params":[7]}\n'
    failing = b'{"jsonrpc":"2.0","method":"nope","params":[7]}\n'

    client.send(notification + failing + client.request("progress", [8], 2))

    assert client.read() == {"jsonrpc": "2.0", "result": True, "id": 2}
    assert [call.args["current"] for call in recorder.calls] == [7, 8]


def test_batch_gets_one_array_of_responses_without_notifications(
    make_client: Callable[[], RawClient], recorder: Recorder
) -> None:
    client = make_client()
    batch = [
        {"jsonrpc": "2.0", "method": "progress", "params": [1], "id": 1},
        {"jsonrpc": "2.0", "method": "progress", "params": [2]},
        {"jsonrpc": "2.0", "method": "nope", "id": 3},
        1,
        {"jsonrpc": "2.0", "method": "emit", "params": {"event": "e"}, "id": 5},
    ]

    client.send(json.dumps(batch).encode() + b"\n")
    responses = client.read()

    assert isinstance(responses, list)
    assert [(r["id"], r.get("result"), r.get("error", {}).get("code")) for r in responses] == [
        (1, True, None),
        (3, None, -32601),
        (None, None, -32600),
        (5, True, None),
    ]
    assert [call.method for call in recorder.calls] == ["progress", "progress", "emit"]


def test_batch_of_notifications_gets_no_response(make_client: Callable[[], RawClient], recorder: Recorder) -> None:
    client = make_client()
    batch = [{"jsonrpc": "2.0", "method": "progress", "params": [i]} for i in range(3)]

    client.send(json.dumps(batch).encode() + b"\n" + client.request("progress", [9], 4))

    assert client.read() == {"jsonrpc": "2.0", "result": True, "id": 4}
    assert [call.args["current"] for call in recorder.calls] == [0, 1, 2, 9]


def test_blank_lines_and_crlf_are_tolerated(make_client: Callable[[], RawClient]) -> None:
    client = make_client()

    client.send(b"\n \r\n" + client.request("progress", [1], 1).replace(b"\n", b"\r\n"))

    assert client.read() == {"jsonrpc": "2.0", "result": True, "id": 1}


def test_line_over_one_megabyte_is_refused_and_skipped_without_breaking_the_stream(
    make_client: Callable[[], RawClient], recorder: Recorder
) -> None:
    client = make_client()
    huge = b'{"jsonrpc":"2.0","method":"emit","params":["e","' + b"x" * (2 * 1024 * 1024) + b'"],"id":1}\n'
    sender = threading.Thread(target=client.send, args=(huge + client.request("progress", [4], 2),))

    sender.start()
    first, second = client.read(), client.read()
    sender.join(DEADLINE_S)

    assert first["error"]["code"] == -32600 and first["id"] is None
    assert "longer than" in first["error"]["message"]
    assert second == {"jsonrpc": "2.0", "result": True, "id": 2}
    assert recorder.calls == [Call("progress", {"current": 4, "max": None})]


def test_huge_line_sent_in_small_pieces_is_refused_once(make_client: Callable[[], RawClient]) -> None:
    client = make_client()

    for _ in range(40):
        client.send(b"y" * 65536)
    client.send(b"\n" + client.request("progress", [1], 2))

    assert client.read()["error"]["code"] == -32600
    assert client.read() == {"jsonrpc": "2.0", "result": True, "id": 2}


def test_client_disconnecting_mid_line_leaves_the_server_serving(
    server: RpcServer, make_client: Callable[[], RawClient], recorder: Recorder
) -> None:
    quitter = make_client()
    quitter.send(b'{"jsonrpc":"2.0","method":"progress","params":[1],"id":1}\n{"jsonrpc":"2.0","meth')
    quitter.close()

    client = make_client()

    assert client.call("progress", [2], 1) == {"jsonrpc": "2.0", "result": True, "id": 1}
    wait_for(lambda: len(recorder.calls) == 2, "both progress calls")


def test_client_may_reconnect_and_use_several_connections(server: RpcServer, recorder: Recorder) -> None:
    assert server.path is not None
    with SocketClient(server.path) as first:
        first.progress(1)
    with SocketClient(server.path) as second, SocketClient(server.path) as third:
        second.progress(2)
        third.emit("e", {"n": 3})
        second.progress(4)

    assert [call.args.get("current", call.args.get("data")) for call in recorder.calls] == [1, 2, {"n": 3}, 4]


def test_threads_sharing_one_client_all_get_their_answers(server: RpcServer, recorder: Recorder) -> None:
    assert server.path is not None
    with SocketClient(server.path) as client:
        threads = [
            threading.Thread(target=lambda: [client.progress(i) for i in range(200)]) for _ in range(5)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE_S)

    assert len(recorder.calls) == 1000


def test_client_raises_rpc_call_error_with_code_and_message(server: RpcServer) -> None:
    assert server.path is not None
    with SocketClient(server.path) as client:
        with pytest.raises(RpcCallError) as caught:
            client.progress(-1)
        with pytest.raises(RpcCallError) as unknown:
            client.call("queue", name="x")
        result = client.emit("echo", [1, 2])

    assert caught.value.code == -32602 and "non-negative" in caught.value.message
    assert isinstance(caught.value, RuntimeError)
    assert unknown.value.code == -32601
    assert result == [1, 2]


def test_client_notify_sends_without_waiting(server: RpcServer, recorder: Recorder) -> None:
    assert server.path is not None
    with SocketClient(server.path) as client:
        client.notify("progress", current=1)
        client.progress(2)

    assert [call.args["current"] for call in recorder.calls] == [1, 2]


def test_close_removes_socket_and_directory_and_disconnects_clients(recorder: Recorder) -> None:
    rpc = RpcServer(recorder)
    path = rpc.start()
    directory = rpc.directory
    assert directory is not None
    client = RawClient(path)
    assert client.call("progress", [1])["result"] is True

    rpc.close()

    assert client.file.readline() == b""
    assert not os.path.exists(path)
    assert not os.path.exists(directory)
    with pytest.raises(OSError):
        RawClient(path)
    rpc.close()  # closing twice is harmless
    client.close()


def test_client_reports_closed_socket_as_connection_error(recorder: Recorder) -> None:
    rpc = RpcServer(recorder)
    client = SocketClient(rpc.start())
    rpc.close()

    with pytest.raises(OSError):
        client.progress(1)
    client.close()


def test_server_in_a_given_directory_leaves_that_directory(recorder: Recorder) -> None:
    # pytest's tmp_path can exceed the ~107-byte limit of AF_UNIX paths.
    with tempfile.TemporaryDirectory(prefix="sooner-test-") as parent:
        with RpcServer(recorder, directory=parent) as rpc:
            assert rpc.directory is not None and os.path.dirname(rpc.directory) == parent
            assert rpc.path is not None
            with SocketClient(rpc.path) as client:
                assert client.progress(1) is True

        assert os.listdir(parent) == []


def test_connect_from_env_uses_socket_variable_then_argv(
    server: RpcServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert server.path is not None
    monkeypatch.delenv("SOONER_SOCKET", raising=False)
    monkeypatch.setattr(sys, "argv", ["job.py", str(tmp_path)])
    assert connect_from_env() is None

    monkeypatch.setattr(sys, "argv", ["job.py", server.path])
    by_argv = connect_from_env()
    monkeypatch.setattr(sys, "argv", ["job.py"])
    monkeypatch.setenv(api_client.SOCKET_ENV, server.path)
    by_env = connect_from_env()

    assert by_argv is not None and by_env is not None
    assert by_argv.progress(1) is True and by_env.progress(2) is True
    by_argv.close()
    by_env.close()


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "SOONER_SOCKET"}
    environment["PYTHONPATH"] = str(ROOT)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "rpc_client_script.py"), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_script_in_a_subprocess_gets_a_thousand_progress_calls_through(server: RpcServer, recorder: Recorder) -> None:
    assert server.path is not None

    result = run_script("1000", env={"SOONER_SOCKET": server.path})

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert [call.args["current"] for call in recorder.calls[:-1]] == list(range(1, 1001))
    assert recorder.calls[-1] == Call("emit", {"event": "rpc-script:done", "data": {"count": 1000}})


def test_script_finds_the_socket_in_argv(server: RpcServer, recorder: Recorder) -> None:
    assert server.path is not None

    result = run_script(server.path, "10")

    assert result.returncode == 0, result.stderr
    assert len(recorder.calls) == 11


def test_line_reader_splits_across_chunks_and_refuses_long_lines() -> None:
    reader = LineReader(limit=8)

    assert reader.feed(b"ab") == []
    assert reader.feed(b"c\nde\nf") == [b"abc", b"de"]
    assert reader.feed(b"ghijklmno") == [None]
    assert reader.feed(b"pqr") == []
    assert reader.feed(b"s\nt\n") == [b"t"]
    assert reader.feed(b"0123456789\nok\n") == [None, b"ok"]
    assert reader.feed(b"\n\n") == [b"", b""]


def test_pipelined_throughput_is_reported(make_client: Callable[[], RawClient], recorder: Recorder) -> None:
    client = make_client()
    count = 50_000
    payload = b"".join(
        b'{"jsonrpc":"2.0","method":"progress","params":[%d,%d],"id":%d}\n' % (i, count, i) for i in range(count)
    )
    sender = threading.Thread(target=client.send, args=(payload,))

    started = time.perf_counter()
    sender.start()
    for _ in range(count - 1):
        client.file.readline()
    assert client.read()["id"] == count - 1
    elapsed = time.perf_counter() - started
    sender.join(DEADLINE_S)

    print(f"\nJSON-RPC throughput: {count / elapsed:,.0f} calls/s ({count} pipelined calls in {elapsed:.2f}s)")
    assert len(recorder.calls) == count


EMIT = b'{"jsonrpc": "2.0", "method": "emit", "params": ["last-words"]}\n'


def test_without_an_accept_thread_a_client_that_wrote_and_left_before_any_accept_is_still_heard() -> None:
    # given a server whose owner accepts (a run's follower loop), and a script that connects,
    # sends a notification and exits before the owner got round to accepting
    recorder = Recorder()
    server = RpcServer(recorder, accept_thread=False)
    server.start()
    assert server.path is not None
    for _ in range(3):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(server.path)
        client.sendall(EMIT)
        client.close()
    # when the owner ends: pending connections first, then close
    server.accept_pending()
    server.close()
    # then every call was handled
    assert [call.args["event"] for call in recorder.calls] == ["last-words"] * 3


def test_a_connection_accepted_as_the_server_closes_is_read_to_its_end() -> None:
    recorder = Recorder()
    server = RpcServer(recorder, accept_thread=False)
    server.start()
    assert server.path is not None
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(server.path)
    client.sendall(EMIT * 5)
    client.close()
    server.accept_ready()  # its thread starts as close() begins
    server.close()
    assert len(recorder.calls) == 5
