"""The run's unix socket: newline-delimited JSON-RPC 2.0 for one script.

:class:`RpcServer` listens on ``sooner.sock`` inside a private directory
(0700; the socket itself is 0600), accepts any number of connections and
serves each on its own thread. Every request line gets one response line;
notifications get none. Requests are validated with
:func:`sooner.worker.protocol.validate_call` against the handler's method
registry and handed to the handler, which is never called concurrently, so it
sees calls in the order they were read.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from sooner.errors import ProtocolError, StoreError
from sooner.worker.methods import registry_of
from sooner.worker.protocol import MAX_LINE_BYTES, Call, UnknownMethod, validate_call

logger = logging.getLogger(__name__)

SOCKET_NAME = "sooner.sock"
RECV_BYTES = 256 * 1024

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_loads = json.JSONDecoder(parse_constant=_reject_constant).decode


class LineReader:
    """Split a byte stream into lines, refusing lines over ``limit`` bytes.

    :meth:`feed` returns the complete lines found so far; an over-long line
    is reported once as ``None`` and the rest of it is skipped without being
    buffered.
    """

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self.limit = limit
        self._partial = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | None]:
        """Consume ``data`` and return the lines it completes (None = too long)."""
        lines: list[bytes | None] = []
        start = 0
        if self._discarding:
            start = data.find(b"\n") + 1
            if start == 0:
                return lines
            self._discarding = False
        newline = data.find(b"\n", start)
        if newline < 0:
            self._keep(data[start:], lines)
            return lines
        first = bytes(self._partial) + data[start:newline] if self._partial else data[start:newline]
        self._partial.clear()
        pieces = data[newline + 1 :].split(b"\n")
        tail = pieces.pop()
        for line in (first, *pieces):
            lines.append(line if len(line) <= self.limit else None)
        self._keep(tail, lines)
        return lines

    def _keep(self, chunk: bytes, lines: list[bytes | None]) -> None:
        if len(self._partial) + len(chunk) > self.limit:
            lines.append(None)
            self._partial.clear()
            self._discarding = True
        else:
            self._partial += chunk


class RpcServer:
    """Serve JSON-RPC 2.0 for one run on a private unix socket.

    ``handler`` receives each valid :class:`Call`; its return value becomes
    the result (``None`` becomes ``true``). Requests are checked against the
    handler's ``registry`` (a plain callable gets the default
    :data:`~sooner.worker.methods.METHODS`), so the socket offers exactly the
    methods the handler dispatches. A :class:`ProtocolError` it raises
    becomes an invalid-params error, a :class:`StoreError` (the call was not
    recorded) an internal error carrying its message; any other exception is
    logged and becomes an internal error. ``directory`` is where the private
    directory is made (default: the system temporary directory).
    """

    def __init__(
        self,
        handler: Callable[[Call], Any],
        directory: str | None = None,
        *,
        max_connections: int = 64,
        accept_thread: bool = True,
    ) -> None:
        self._handler = handler
        # Without an accept thread the owner selects on fileno() and calls accept_ready() (a run's
        # follower loop does: one thread less per run; most scripts never connect).
        self._own_accept = accept_thread
        self.registry = registry_of(handler)
        self._parent = directory
        self._max_connections = max_connections
        self._handler_lock = threading.Lock()
        self._conns_lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._closing = threading.Event()
        self.directory: str | None = None
        self.path: str | None = None

    def __enter__(self) -> RpcServer:
        if self.path is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> str:
        """Create the directory and socket, start serving, return the socket path."""
        if self.path is not None or self._closing.is_set():
            raise RuntimeError("an RpcServer can be started only once")
        self.directory = tempfile.mkdtemp(prefix="sooner-rpc-", dir=self._parent)
        path = os.path.join(self.directory, SOCKET_NAME)
        try:
            self._listener = self._listen(path)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
            raise
        self.path = path
        if self._own_accept:
            self._wake_r, self._wake_w = socket.socketpair()
            self._accept_thread = threading.Thread(target=self._accept_loop, name="sooner-rpc-accept", daemon=True)
            self._accept_thread.start()
        logger.debug("serving JSON-RPC on %s", path)
        return path

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving, close every connection, remove the socket and directory."""
        if self._closing.is_set():
            return
        self._closing.set()
        if self._wake_w is not None:
            self._wake_w.send(b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        elif self._listener is not None:
            self._listener.close()
        with self._conns_lock:
            conns = dict(self._conns)
        for conn in conns:
            _shutdown(conn)
        for thread in conns.values():
            thread.join(timeout)
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
        logger.debug("closed JSON-RPC socket %s", self.path)

    def _listen(self, path: str) -> socket.socket:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            # The directory is already 0700; chmod before listen() so the
            # socket never accepts a connection with the umask's mode.
            os.chmod(path, 0o600)
            listener.listen(16)
        except BaseException:
            listener.close()
            raise
        return listener

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        with selectors.DefaultSelector() as selector, self._listener:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._closing.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._listener and not self._closing.is_set():
                        self._accept()

    def fileno(self) -> int:
        """The listening socket, readable when a client connects (see ``accept_thread=False``)."""
        assert self._listener is not None, "start() first"
        return self._listener.fileno()

    def accept_ready(self) -> None:
        """Accept the connection waiting on :meth:`fileno` and serve it on its own thread."""
        if not self._closing.is_set():
            self._accept()

    def accept_pending(self) -> None:
        """Accept every connection still waiting (a script that connected, wrote and exited at once).

        Called before :meth:`close`: what such a script sent is then read and handled, not dropped
        with the listening socket.
        """
        if self._listener is None or self._closing.is_set():
            return
        self._listener.setblocking(False)
        try:
            while True:
                try:
                    conn, _ = self._listener.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    logger.warning("accept on %s failed: %s", self.path, exc)
                    return
                conn.setblocking(True)
                self._serve_on_thread(conn)
        finally:
            self._listener.setblocking(True)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except OSError as exc:
            logger.warning("accept on %s failed: %s", self.path, exc)
            return
        self._serve_on_thread(conn)

    def _serve_on_thread(self, conn: socket.socket) -> None:
        with self._conns_lock:
            if len(self._conns) >= self._max_connections:
                logger.warning("refusing connection to %s: %d already open", self.path, len(self._conns))
                conn.close()
                return
            thread = threading.Thread(target=self._serve, args=(conn,), name="sooner-rpc-conn", daemon=True)
            self._conns[conn] = thread
        thread.start()

    def _serve(self, conn: socket.socket) -> None:
        reader = LineReader()
        try:
            # Until EOF, even once closing: close() shuts the connection down, after which recv
            # returns what the client had sent (a script's last calls) and then EOF.
            while True:
                data = conn.recv(RECV_BYTES)
                if not data:
                    break
                replies = [reply for line in reader.feed(data) if (reply := self.respond(line)) is not None]
                if replies:
                    replies.append(b"")
                    conn.sendall(b"\n".join(replies), _SEND_FLAGS)
        except OSError as exc:
            logger.debug("connection to %s ended: %s", self.path, exc)
        finally:
            with self._conns_lock:
                self._conns.pop(conn, None)
            conn.close()

    def respond(self, line: bytes | None) -> bytes | None:
        """Return the response line (without newline) for one request line, or None."""
        if line is None:
            return _error_line(INVALID_REQUEST, f"Invalid Request: line longer than {MAX_LINE_BYTES} bytes")
        try:
            message = _loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            return _error_line(PARSE_ERROR, "Parse error: request is not UTF-8")
        except (ValueError, RecursionError) as exc:
            if not line.strip():
                return None  # blank lines between requests are harmless
            return _error_line(PARSE_ERROR, f"Parse error: {exc}")
        if isinstance(message, list):
            return self._respond_batch(message)
        reply = self._respond_one(message)
        return None if reply is None else _encode(reply)

    def _respond_batch(self, messages: list[Any]) -> bytes | None:
        if not messages:
            return _error_line(INVALID_REQUEST, "Invalid Request: empty batch")
        replies = [_encode(reply) for message in messages if (reply := self._respond_one(message)) is not None]
        return b"[" + b",".join(replies) + b"]" if replies else None

    def _respond_one(self, message: Any) -> dict[str, Any] | None:
        problem = _request_problem(message)
        if problem is not None:
            request_id = message.get("id") if isinstance(message, dict) and _valid_id(message.get("id")) else None
            return _error(INVALID_REQUEST, f"Invalid Request: {problem}", request_id)
        request_id = message.get("id")
        reply = self._dispatch(message["method"], message.get("params"), request_id)
        return None if "id" not in message else reply

    def _dispatch(self, method: str, params: Any, request_id: Any) -> dict[str, Any]:
        try:
            call = validate_call(method, params, self.registry)
        except UnknownMethod as exc:
            return _error(METHOD_NOT_FOUND, f"Method not found: {exc}", request_id)
        except ProtocolError as exc:
            return _error(INVALID_PARAMS, f"Invalid params: {exc}", request_id)
        try:
            with self._handler_lock:
                result = self._handler(call)
        except ProtocolError as exc:
            return _error(INVALID_PARAMS, f"Invalid params: {exc}", request_id)
        except StoreError as exc:  # the call was not recorded (the handler logged it); the script may go on
            return _error(INTERNAL_ERROR, f"Internal error: {exc}", request_id)
        except Exception:
            logger.exception("handler failed on %s call from %s", call.method, self.path)
            return _error(INTERNAL_ERROR, "Internal error", request_id)
        return {"jsonrpc": "2.0", "result": True if result is None else result, "id": request_id}


def _request_problem(message: Any) -> str | None:
    """Say why ``message`` is not a JSON-RPC 2.0 request object, or None."""
    if not isinstance(message, dict):
        return "expected an object"
    if message.get("jsonrpc") != "2.0":
        return 'member "jsonrpc" must be "2.0"'
    if not isinstance(message.get("method"), str):
        return 'member "method" must be a string'
    if "params" in message and not isinstance(message["params"], (list, dict)):
        return 'member "params" must be an array or an object'
    if "id" in message and not _valid_id(message["id"]):
        return 'member "id" must be a string, a number or null'
    return None


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


def _error(code: int, message: str, request_id: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": request_id}


def _error_line(code: int, message: str) -> bytes:
    return _encode(_error(code, message))


def _encode(reply: dict[str, Any]) -> bytes:
    try:
        return _dumps(reply).encode()
    except (TypeError, ValueError, RecursionError):
        logger.error("handler returned a result that is not JSON: %.200r", reply.get("result"))
        return _dumps(_error(INTERNAL_ERROR, "Internal error: result is not JSON", reply.get("id"))).encode()


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already disconnected
