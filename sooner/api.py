"""What Python job scripts import: ``from sooner import api``.

::

    from sooner import api

    rows = api.data() or {}            # the trigger's data (SOONER_DATA)
    api.progress(5, 10)                # the run's progress bar
    api.emit("report-ready", {"n": 1}) # start jobs hooked to the event
    pages = api.queue("pages")         # a MongoDB queue collection

``progress`` and ``emit`` go over the run's unix socket; outside a socket
(an old worker, or the script run by hand) they fall back to the stderr
protocol line, which Sooner reads too (and a terminal simply shows). The
socket connection and the database connection for :func:`queue` are opened
lazily, once per process.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from sooner.worker.protocol import validate_call

if TYPE_CHECKING:
    from sooner.api_client import SocketClient
    from sooner.store import Store
    from sooner.store.queues import Queue

_lock = threading.Lock()
_client: SocketClient | None = None
_client_ready = False
_store: Store | None = None
_unconfirmed = False  # a notification was sent since the last answered call

CONFIRM_METHOD = "sooner.confirm"


def progress(current: float, max: float | None = None) -> None:  # noqa: A002 - the protocol's name
    """Report ``current`` out of ``max`` (a percentage when ``max`` is None).

    Over the socket this is a notification (no round trip, so a loop may call
    it freely); arguments are checked here (ValueError: not a number, negative,
    past 64 bits, not finite), and the worker has applied every value by the
    time the script exits.
    """
    global _unconfirmed
    validate_call("progress", {"current": current, "max": max})
    client = _socket()
    if client is not None:
        try:
            client.notify("progress", current=current, max=max)
            _unconfirmed = True
            return
        except OSError:
            pass  # the worker closed the socket; stderr still reaches it
    args = json.dumps(current) if max is None else f"{json.dumps(current)}, {json.dumps(max)}"
    _stderr_call(f"progress({args})")


def emit(event: str, data: Any = None) -> Any:
    """Emit ``event`` with JSON-compatible ``data``: every enabled job hooked to it gets a run.

    Over the socket, returns ``{"event": id, "runs": [run ids]}`` (and a
    ``note`` when the chain depth limit stopped it); over stderr, None.
    Raises :class:`sooner.api_client.RpcCallError` if Sooner refuses the call
    (code -32602: data the store cannot hold, or over the run's emit rate
    limit) or could not record it (-32603); the run goes on either way. Over
    stderr, data is checked here (ValueError), as Sooner would check it.
    """
    global _unconfirmed
    client = _socket()
    if client is not None:
        result = client.emit(event, data)
        _unconfirmed = False  # calls are answered in order: earlier notifications are applied
        return result
    data = validate_call("emit", {"event": event, "data": data}).args["data"]
    payload = "" if data is None else ", " + json.dumps(data, separators=(",", ":"), allow_nan=False)
    _stderr_call(f"emit({json.dumps(event)}{payload})")
    return None


def data() -> Any:
    """The run's data: the emitting event's data, or what was given to `sooner run`/the API (None if none)."""
    raw = os.environ.get("SOONER_DATA")
    return json.loads(raw) if raw else None


def run_id() -> str | None:
    """This run's id (None outside Sooner)."""
    return os.environ.get("SOONER_RUN_ID")


def job() -> str | None:
    """This job's name, i.e. the script's path in the repository (None outside Sooner)."""
    return os.environ.get("SOONER_JOB")


def queue(name: str) -> Queue:
    """The queue collection ``queue_<name>`` in Sooner's database (see :class:`sooner.store.queues.Queue`)."""
    return _database().queues(name)


def _socket() -> SocketClient | None:
    global _client, _client_ready
    if _client_ready:
        return _client
    with _lock:
        if not _client_ready:
            from sooner.api_client import connect_from_env

            try:
                _client = connect_from_env()
            except OSError:
                _client = None  # the socket is gone: stderr still works
            if _client is not None:
                atexit.register(_confirm)
            _client_ready = True
    return _client


def _confirm() -> None:
    """At exit, wait until the worker has applied every notification sent.

    The worker answers calls in the order it reads them, so any answer will
    do: a method it does not offer is answered with an error and changes nothing.
    """
    if not _unconfirmed or _client is None:
        return
    try:
        _client.call(CONFIRM_METHOD)
    except (OSError, RuntimeError):
        pass  # RpcCallError (the expected "method not found") or the run is ending anyway


def _stderr_call(call: str) -> None:
    sys.stderr.write(f">>> sooner.{call}\n")
    sys.stderr.flush()


def _database() -> Store:
    global _store
    with _lock:
        if _store is None:
            from sooner.errors import SoonerError
            from sooner.store import Store

            url = os.environ.get("SOONER_MONGO_URL")
            if not url:
                raise SoonerError("SOONER_MONGO_URL is not set: queues are available to scripts run by a "
                                  "Sooner worker (or set SOONER_MONGO_URL and SOONER_DATABASE yourself)")
            _store = Store(url, os.environ.get("SOONER_DATABASE") or "sooner")
        return _store
