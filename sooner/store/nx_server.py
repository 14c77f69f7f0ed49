"""Entry point of the embedded database process: nx-27017 with one correction and a data-directory lock.

The process takes an exclusive ``flock`` on ``<data-dir>/.lock`` before it
opens any database file and holds it for its whole life (the kernel drops it
when the process dies, even by ``kill -9``). A second server on the same data
directory exits with :data:`EXIT_DATA_DIR_IN_USE` and one line on stderr
naming the holder. The holder writes its record into the lock file (pid,
port, start time, the ``--instance`` token it was given), so a client whose
``db.json`` is lost or corrupt can still find and verify it
(:mod:`sooner.store.embedded`).

A server started on demand by a one-shot command stops itself when no client
has been connected for ``--idle-stop-s`` seconds (:class:`IdleWatch`), unless
``--keep-file`` holds its ``--instance`` token: ``sooner up`` and ``sooner db
start`` write it, and ``0`` never stops. nx-27017 counts its client
connections in ``NeoSQLiteHandler.increment_connections`` /
``decrement_connections`` (one per socket, for the socket's whole life, so a
PyMongo client's monitor connection counts while the client is open); the
watch hooks those two methods. Stopping is the same SIGTERM that ``sooner db
stop`` sends, so the server shuts down the same way.

nx-27017 0.8.1 (neosqlite 1.17) stores a datetime given to ``$set`` on an
existing document as a *string* when it takes its SQL fast path (sqlite3's
default datetime adapter), while inserts and its Python update path keep
BSON dates. Sooner sets timestamps with ``$set`` all the time, so the server
is started through this module, which sends updates carrying datetimes down
the Python path. Measured and covered by tests/test_store_dates.py; drop this
when the upstream fast path handles dates.

The server runs in nx-27017's ``--threaded`` mode: one thread per client
connection runs that connection's commands itself. Its default asyncio mode
hands every command from the event loop to an executor thread and back, and
every command of a database is serialised by one lock anyway, so the hand-off
was pure cost: on this project's 2-core machine it took half the server's
CPU per command (0.64 -> 0.31-0.43 ms) and one client's round trip fell from
1.28 to 0.57 ms (``bench/embedded_server.py``). The main thread only accepts
connections, so SIGTERM is handled at once whatever the connections run.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

# Defined beside the clients: this module runs as __main__, so if the client
# module imported it, it would be imported twice in the server (runpy warns).
from sooner.store.embedded import EXIT_DATA_DIR_IN_USE, LOCK_NAME

FIRST_CLIENT_GRACE_S = 30.0  # longer than a client waits for a server to start (embedded.START_TIMEOUT_S)
# How long operations in flight at SIGTERM get (after their SQLite statements are interrupted) before the
# process exits anyway; well under embedded.STOP_TIMEOUT_S, after which `sooner db stop` kills.
STOP_BOUND_S = 3.0


def _has_datetime(value: Any) -> bool:
    if isinstance(value, datetime.datetime):
        return True
    if isinstance(value, dict):
        return any(_has_datetime(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_datetime(v) for v in value)
    return False


def patch_date_updates() -> None:
    """Route updates that carry datetimes to neosqlite's Python update path."""
    from neosqlite.collection.query_helper._sql_updates import SqlUpdatesMixin

    original = SqlUpdatesMixin._can_use_sql_updates
    if getattr(original, "_sooner_patched", False):
        return

    def can_use_sql_updates(self: Any, update_spec: dict, doc_id: int, original_doc: Any = None) -> bool:
        if _has_datetime(update_spec):
            return False
        return original(self, update_spec, doc_id, original_doc)

    can_use_sql_updates._sooner_patched = True  # type: ignore[attr-defined]
    SqlUpdatesMixin._can_use_sql_updates = can_use_sql_updates  # type: ignore[method-assign]


# The write commands whose documents nx-27017 writes one statement (one SQLite commit) at a time.
WRITE_COMMANDS = frozenset({"insert", "update", "delete", "findAndModify", "findandmodify", "bulkWrite"})


def _batched_write(msg: Any) -> bool:
    """Whether ``msg`` is a write command outside a client's transaction (``autocommit: false`` on each of its
    commands), which :func:`batch_writes` runs in one SQLite transaction."""
    for section_type, doc in (msg.get("sections") or ()) if isinstance(msg, dict) else ():
        if section_type == "body" and isinstance(doc, dict):
            return (next(iter(doc), None) in WRITE_COMMANDS
                    and not ("startTransaction" in doc or doc.get("autocommit") is False))
    return False


def batch_writes() -> None:
    """Run each write command in one SQLite transaction instead of one per document.

    nx-27017 applies a command's documents one by one on a connection in autocommit
    mode, so ``insert_many`` of a thousand runs was a thousand commits. Under the
    database's lock (the one every command of that database takes), the command now
    starts a transaction, runs as before, and commits what it wrote: a duplicate key
    still fails only its own statement (SQLite rolls back that statement, not the
    transaction), so the reply's ``writeErrors`` are what they were; an exception out
    of the command rolls its writes back, and the client, told it failed, retries the
    whole command (before, the documents written up to the error stayed). A command in
    a client's own transaction is left to that transaction. Measured with
    ``bench/round_trips.py`` (database CPU per cron fire) and ``bench/scheduler_scale.py``.
    """
    from nx_27017.handler import NeoSQLiteHandler

    for name in ("handle_insert", "handle_command"):
        original = getattr(NeoSQLiteHandler, name)
        if getattr(original, "_sooner_batched", False):
            continue
        setattr(NeoSQLiteHandler, name, _batched(original))


def _batched(operation: Callable[..., Any]) -> Callable[..., Any]:
    from nx_27017.handler import _msg_db_name  # how nx-27017's own lock (_serialize) names the database

    def batched(handler: Any, msg: Any, *args: Any, **kwargs: Any) -> Any:
        if not _batched_write(msg):
            return operation(handler, msg, *args, **kwargs)
        db_name = _msg_db_name(msg)
        with handler._lock_for(db_name):  # an RLock: the command takes it again inside
            try:
                raw = handler.get_database(db_name).db
            except Exception:  # noqa: BLE001 - a bad database name: the command answers with its own error
                return operation(handler, msg, *args, **kwargs)
            if raw.in_transaction:  # a client's transaction (or a SAVEPOINT of one) is open on it
                return operation(handler, msg, *args, **kwargs)
            raw.execute("BEGIN")
            try:
                reply = operation(handler, msg, *args, **kwargs)
            except BaseException:
                if raw.in_transaction:
                    raw.rollback()
                raise
            if raw.in_transaction:
                raw.commit()
            return reply

    batched._sooner_batched = True  # type: ignore[attr-defined]
    return batched


def hold_data_dir(data_dir: str, record: dict[str, Any]) -> int:
    """Lock ``data_dir`` for this process's life and write ``record`` into the lock file; returns the fd.

    Exits with :data:`EXIT_DATA_DIR_IN_USE` when another process holds it.
    """
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # not inheritable: only this process holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder_pid(fd)
        print(f"sooner.store.nx_server: error: {data_dir} is in use by the embedded database with pid {holder} "
              f"(lock {path}); not starting a second server on it", file=sys.stderr)
        sys.exit(EXIT_DATA_DIR_IN_USE)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
    return fd


def _holder_pid(fd: int) -> str:
    try:
        pid = json.loads(os.pread(fd, 4096, 0) or b"null").get("pid")
        return str(pid) if isinstance(pid, int) else "unknown"
    except (OSError, ValueError, AttributeError):
        return "unknown"


def own_record(data_dir: str, port: int, instance: str) -> dict[str, Any]:
    """What the lock file says about this process (the same fields as ``db.json``)."""
    import psutil

    me = psutil.Process()
    return {"pid": me.pid, "port": port, "create_time": me.create_time(), "boot_time": psutil.boot_time(),
            "instance": instance, "data_dir": data_dir}


class IdleWatch:
    """How long the server has had no client connection, and whether that is long enough to stop.

    ``keep_file`` holding ``instance`` means someone asked for this server to
    keep running (``sooner up``, ``sooner db start``); ``idle_stop_s`` 0 never
    stops.
    """

    def __init__(self, idle_stop_s: float, keep_file: str | None, instance: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_stop_s = idle_stop_s
        self.keep_file = keep_file
        self.instance = instance
        self.clock = clock
        self._lock = threading.Lock()
        self._connections = 0
        self._idle_since = clock()
        self._seen_client = False

    def opened(self) -> None:
        with self._lock:
            self._connections += 1
            self._seen_client = True

    def closed(self) -> None:
        with self._lock:
            self._connections = max(0, self._connections - 1)
            if self._connections == 0:
                self._idle_since = self.clock()

    def idle_for(self) -> float:
        """Seconds since the last client disconnected (0 while one is connected)."""
        with self._lock:
            return 0.0 if self._connections else self.clock() - self._idle_since

    def kept(self) -> bool:
        if not self.keep_file:
            return False
        try:
            with open(self.keep_file) as handle:
                return handle.read().strip() == self.instance
        except OSError:
            return False

    def should_stop(self) -> bool:
        # Until the command that started it has connected, the server may still be
        # opening its databases: a short idle limit must not stop it under that command.
        limit = self.idle_stop_s if self._seen_client else max(self.idle_stop_s, FIRST_CLIENT_GRACE_S)
        return self.idle_stop_s > 0 and self.idle_for() >= limit and not self.kept()

    def check_every_s(self) -> float:
        return min(max(self.idle_stop_s / 4, 0.05), 5.0)


def watch_connections(watch: IdleWatch) -> None:
    """Count nx-27017's client connections into ``watch``."""
    from nx_27017.handler import NeoSQLiteHandler

    increment, decrement = NeoSQLiteHandler.increment_connections, NeoSQLiteHandler.decrement_connections

    def opened(self: Any) -> None:
        increment(self)
        watch.opened()

    def closed(self: Any) -> None:
        decrement(self)
        watch.closed()

    NeoSQLiteHandler.increment_connections = opened  # type: ignore[method-assign]
    NeoSQLiteHandler.decrement_connections = closed  # type: ignore[method-assign]


def stop_when_idle(watch: IdleWatch) -> threading.Thread | None:
    """A daemon thread that SIGTERMs this process once ``watch`` says so (None when it never would)."""
    if watch.idle_stop_s <= 0:
        return None

    def run() -> None:
        while True:
            time.sleep(watch.check_every_s())
            if watch.should_stop():
                print(f"sooner.store.nx_server: no client for {watch.idle_stop_s:g} s; stopping "
                      f"(started on demand; `sooner db start` keeps it running)", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGTERM)  # nx-27017's handler exits cleanly, as on `sooner db stop`
                return

    thread = threading.Thread(target=run, name="sooner-idle-stop", daemon=True)
    thread.start()
    return thread


class Shutdown:
    """A clean exit within :data:`STOP_BOUND_S` on SIGTERM/SIGINT, whatever is in flight.

    nx-27017's own handler raised SystemExit in the event loop, and
    ``asyncio.run`` then joined its executor threads: a SIGTERM waited for the
    operation in flight to end. On a million queue entries an unindexed
    ``count_documents`` takes ~36 s, so ``sooner db stop`` gave up after 10 s
    and killed the server (measured; tests/test_db_stop.py). Here the handler
    (in the main thread, which only accepts connections) first closes the gate:
    a command that arrives on any connection from then on waits and is never
    run (its client sees the connection close and retries against the next
    server). It then interrupts every SQLite statement running
    (``sqlite3.Connection.interrupt``, thread-safe: the statement fails, its
    transaction rolls back), waits for the operations to return, at most
    ``bound_s``, closes the databases (a WAL checkpoint) when none is left
    running, and exits. Committed data is in
    the WAL either way: an exit with an operation still running is like
    ``kill -9``, which the data survives.
    """

    def __init__(self, pid_file: str | None, bound_s: float = STOP_BOUND_S) -> None:
        self.pid_file = pid_file
        self.bound_s = bound_s
        self.handlers: list[Any] = []
        self._changed = threading.Condition()
        self._in_flight = 0
        self._stopping = False

    def track(self) -> None:
        """Record nx-27017's handler and count the operations it runs (each in an executor thread)."""
        from nx_27017.handler import NeoSQLiteHandler

        init = NeoSQLiteHandler.__init__

        def recorded_init(handler: Any, *args: Any, **kwargs: Any) -> None:
            init(handler, *args, **kwargs)
            self.handlers.append(handler)
        NeoSQLiteHandler.__init__ = recorded_init  # type: ignore[method-assign]
        for name in ("handle_insert", "handle_command", "handle_query"):
            setattr(NeoSQLiteHandler, name, self._counted(getattr(NeoSQLiteHandler, name)))

    def _counted(self, operation: Callable[..., Any]) -> Callable[..., Any]:
        def counted(handler: Any, *args: Any, **kwargs: Any) -> Any:
            with self._changed:
                if self._stopping:  # never start what the exit would cut short; os._exit ends this wait
                    self._changed.wait_for(lambda: False)
                self._in_flight += 1
            try:
                return operation(handler, *args, **kwargs)
            finally:
                with self._changed:
                    self._in_flight -= 1
                    self._changed.notify_all()
        return counted

    def in_flight(self) -> int:
        with self._changed:
            return self._in_flight

    def on_signal(self, signum: int, frame: object) -> None:
        with self._changed:
            if self._stopping:
                return
            self._stopping = True
            running = self._in_flight
        print(f"sooner.store.nx_server: signal {signum}: stopping ({running} operation(s) in flight"
              f"{', interrupted' if running else ''})", file=sys.stderr, flush=True)
        if running:
            self._interrupt()
        with self._changed:
            self._changed.wait_for(lambda: self._in_flight == 0, timeout=self.bound_s)
            left = self._in_flight
        if left:
            print(f"sooner.store.nx_server: {left} operation(s) still running after {self.bound_s:g} s; "
                  f"exiting without closing (the WAL keeps committed data)", file=sys.stderr, flush=True)
        else:
            for handler in self.handlers:
                try:
                    handler.close_all()
                except Exception as exc:  # noqa: BLE001 - exiting anyway; the next start recovers the WAL
                    print(f"sooner.store.nx_server: closing the databases failed: {exc}", file=sys.stderr)
        if self.pid_file:
            try:
                os.unlink(self.pid_file)
            except OSError:
                pass
        sys.stderr.flush()
        os._exit(0)

    def _interrupt(self) -> None:
        for handler in self.handlers:
            connections = list(getattr(handler, "_conns", {}).values()) + [getattr(handler, "conn", None)]
            for connection in connections:
                raw = getattr(connection, "db", None)
                try:
                    if raw is not None:
                        raw.interrupt()
                except Exception:  # noqa: BLE001 - closed meanwhile: nothing runs on it
                    pass


def main() -> None:
    import logging

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--instance", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle-stop-s", type=float, default=0.0)
    parser.add_argument("--keep-file")
    parser.add_argument("--asyncio", action="store_true")  # nx-27017's default mode: bench/embedded_server.py only
    ours, rest = parser.parse_known_args()
    data_dir = os.path.abspath(ours.data_dir)
    lock = hold_data_dir(data_dir, own_record(data_dir, ours.port, ours.instance))
    # nx-27017 parses sys.argv itself and knows none of the options above; the
    # token only has to be on this process's command line, where clients verify it.
    sys.argv = [sys.argv[0], *rest, *([] if ours.asyncio else ["--threaded"]), "--data-dir", data_dir, "--port", str(ours.port)]
    patch_date_updates()
    batch_writes()
    shutdown = Shutdown(_value_of(rest, "--pid-file"))
    shutdown.track()
    import nx_27017.daemon

    # run_foreground installs this module global as its SIGTERM/SIGINT handler.
    nx_27017.daemon._signal_exit_handler = shutdown.on_signal  # type: ignore[assignment]
    watch = IdleWatch(ours.idle_stop_s, ours.keep_file, ours.instance)
    watch_connections(watch)
    stop_when_idle(watch)
    # nx-27017 logs every ping at INFO into <site>/.sooner/db.log; keep the log
    # to what someone would want to read (warnings and errors).
    logging.getLogger("nx_27017").setLevel(logging.WARNING)
    from nx_27017.nx_27017 import main as nx_main

    try:
        nx_main()
    finally:
        os.close(lock)


def _value_of(args: list[str], name: str) -> str | None:
    try:
        return args[args.index(name) + 1]
    except (ValueError, IndexError):
        return None


if __name__ == "__main__":
    main()
