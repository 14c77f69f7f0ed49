"""Client side of the run's JSON-RPC socket, for job scripts (stdlib only).

A script started by Sooner gets the socket path as ``argv[1]`` and in
``SOONER_SOCKET``; :func:`connect_from_env` finds it::

    client = connect_from_env()
    if client is not None:
        client.progress(5, max=10)
        client.emit("report-ready", {"rows": 120})
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import sys
import threading
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

SOCKET_ENV = "SOONER_SOCKET"
DEFAULT_TIMEOUT_S = 30.0

_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class RpcCallError(RuntimeError):
    """The server answered a call with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        self.code = code
        self.message = message
        self.data = data
        super().__init__(f"JSON-RPC error {code}: {message}")


class SocketClient:
    """A connection to a run's JSON-RPC socket; safe to share between threads.

    Each :meth:`call` waits for its own response. ``timeout_s`` bounds each
    socket operation (None waits forever); a timed-out call raises
    :class:`TimeoutError` and its late response is skipped by id later.
    """

    def __init__(self, path: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._next_id = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout_s)
            self._sock.connect(path)
        except BaseException:
            self._sock.close()
            raise
        self._responses = self._sock.makefile("rb")

    def __enter__(self) -> SocketClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def call(self, method: str, **params: Any) -> Any:
        """Call ``method`` with named ``params`` and return its result.

        Raises :class:`RpcCallError` if the server answers with an error (code
        -32602 for a call Sooner refuses: bad arguments, a value the store cannot
        hold, over the emit rate limit; -32603 when it could not record it) and
        :class:`ConnectionError` if it closes the connection.
        """
        with self._lock:
            self._next_id += 1
            request_id = self._next_id
            request = {"jsonrpc": "2.0", "method": method, "params": params, "id": request_id}
            self._sock.sendall(_dumps(request).encode() + b"\n")
            return self._await(request_id)

    def notify(self, method: str, **params: Any) -> None:
        """Send ``method`` as a notification: no response, no error reported."""
        request = {"jsonrpc": "2.0", "method": method, "params": params}
        with self._lock:
            self._sock.sendall(_dumps(request).encode() + b"\n")

    def progress(self, current: float, max: float | None = None) -> Any:  # noqa: A002 - the protocol's name
        """Report progress: ``current`` out of ``max`` (percent when max is None)."""
        return self.call("progress", current=current, max=max)

    def emit(self, event: str, data: Any = None) -> Any:
        """Emit ``event`` with JSON-compatible ``data``; hooked jobs will run."""
        return self.call("emit", event=event, data=data)

    def close(self) -> None:
        """Close the connection; further calls fail."""
        try:
            # Wakes a call waiting in another thread, which holds the lock.
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed or disconnected
        with self._lock:
            self._responses.close()
            self._sock.close()

    def _await(self, request_id: int) -> Any:
        while True:
            line = self._responses.readline()
            if not line.endswith(b"\n"):
                raise ConnectionError(f"Sooner closed the socket {self.path}")
            response = json.loads(line)
            if isinstance(response, list):
                continue  # a batch reply is never ours: this client sends none
            if response.get("id") not in (request_id, None):
                continue  # a late reply to a call that timed out
            error = response.get("error")
            if error is not None:
                raise RpcCallError(error.get("code", 0), error.get("message", ""), error.get("data"))
            return response.get("result")


def connect_from_env(timeout_s: float | None = DEFAULT_TIMEOUT_S) -> SocketClient | None:
    """Connect to the socket named by ``SOONER_SOCKET`` or ``sys.argv[1]``.

    Returns None when neither names a socket (the script runs outside
    Sooner). A named socket that refuses the connection raises ``OSError``.
    """
    path = os.environ.get(SOCKET_ENV) or _socket_argument()
    if not path:
        return None
    return SocketClient(path, timeout_s)


def _socket_argument() -> str | None:
    if len(sys.argv) < 2:
        return None
    try:
        return sys.argv[1] if stat.S_ISSOCK(os.stat(sys.argv[1]).st_mode) else None
    except (OSError, ValueError):
        return None
